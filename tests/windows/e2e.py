r"""Cross-process end-to-end test of framebroker on Windows, run under Wine.

``tests/windows/run.sh`` builds the Windows binaries, prepares a fresh Wine
prefix and a Windows ffmpeg, then runs this driver with the project's Linux
Python (``.venv``). Every framebroker process here is a real Windows program
(``framebroker.exe``, ``fb-reader.exe``, ``fb-follow.exe``, ``fb-hostile.exe``,
``framebroker-gateway.exe``) talking over a named pipe and named file mappings;
ffmpeg is the Windows build from the ``imageio-ffmpeg`` wheel; the RTSP camera
is the Linux test camera on 127.0.0.1 (Wine shares the host's loopback).

What it checks, in order (each step prints one ``ok`` line or fails):

1. ``testsrc``: two reader processes get byte-identical frames whose CRC is the
   one the broker stored in the slot; exactly one ffmpeg.
2. ``framebroker reload`` adds the RTSP camera (its URL with credentials) from
   the edited config file; two readers get the camera's SMPTE bars,
   byte-identical, CRC as the broker's; one ffmpeg per camera; the credentials
   appear in no log, listing, stats or gateway answer.
3. The Windows-Python reader hook (``windows_python_readers``).
4. The gateway: raw ``/frame``, ``snapshot.jpg`` and a WebSocket frame.
5. Hostile input: a pipe client sending garbage is refused and dropped, the
   broker keeps serving (``fb-hostile.exe``). (A mapping with a wrong magic or
   size is refused by the Windows unit tests run under Wine just before.)
6. A frozen camera's ffmpeg is killed by the stall timeout and restarted; then
   the broker is killed: its ffmpeg dies with it (the Job object), a following
   reader notices within the heartbeat limit and re-attaches to a new broker.
7. Ctrl-C (SIGINT, which Wine delivers as CTRL_C_EVENT) shuts the new broker
   down cleanly: exit 0, no ffmpeg, no segment left.
8. Without ``--socket`` broker and CLI meet on ``\\.\pipe\framebroker-<user>``;
   ``FRAMEBROKER_SOCKET`` names a pipe the same way ``--socket`` does.

``--figures`` also measures wake latency and read cost here and, with the Linux
build, on Linux (not a pass/fail criterion: Wine is an emulation layer).

Every wait is bounded; every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
WIN_BIN = ROOT / "target" / "x86_64-pc-windows-gnu" / "debug"
LINUX_BIN = ROOT / "target" / "debug"
WORK = ROOT / "target" / "windows"
WINE = os.environ.get("WINE", "/usr/lib/wine/wine64")
SMPTE_BARS_BGR = [
    (255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0),
    (255, 0, 255), (0, 0, 255), (255, 0, 0),
]

PROCS: List[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"windows e2e: {msg}", flush=True)


def winpath(p: Path) -> str:
    """A Linux path as Wine's Z: drive shows it."""
    return "Z:" + str(p).replace("/", "\\")


def wine_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WINEPREFIX", str(ROOT / "target" / "wine-prefix"))
    env["WINEDEBUG"] = "-all"
    env.pop("FRAMEBROKER_SOCKET", None)
    return env


def start(cmd: List[str], log_name: str, **kw) -> subprocess.Popen:
    out = open(WORK / log_name, "wb")
    p = subprocess.Popen(cmd, stdout=kw.pop("stdout", out), stderr=out, **kw)
    PROCS.append(p)
    return p


def wine(exe: str, *args: str) -> List[str]:
    return [WINE, str(WIN_BIN / exe), *args]


def run(cmd: List[str], timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env=env or wine_env())


def stop(p: Optional[subprocess.Popen]) -> None:
    if p is None or p.poll() is not None:
        return
    p.kill()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def wait_for(what: str, cond: Callable[[], bool], timeout: float, step: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def processes_of(exe_path: Path) -> List[int]:
    """Linux pids of the Wine processes running the program at ``exe_path``."""
    needle = exe_path.name.lower()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        # Wine shows a Windows process's command line with its Windows path.
        if cmd.lower().endswith(needle) and (str(WORK).lower().replace("/", "\\") in cmd.lower()
                                             or str(WORK).lower() in cmd.lower()):
            pids.append(int(d.name))
    return pids


class Broker:
    """framebroker.exe under Wine, on the pipe ``pipe``."""

    def __init__(self, pipe: str, prefix: str, config: Path, ffmpeg: Path, tag: str) -> None:
        self.pipe = pipe
        self.proc = start(
            wine("framebroker.exe", "--socket", pipe, "serve", "--config", winpath(config),
                 "--ffmpeg", winpath(ffmpeg), "--shm-prefix", prefix, "--checksum",
                 "--stall-timeout-ms", "2000"),
            f"broker-{tag}.log", env=wine_env(),
        )
        log_file = WORK / f"broker-{tag}.log"

        def ready() -> bool:
            assert self.proc.poll() is None, f"the broker exited; see {log_file}"
            return "framebroker ready" in log_file.read_text(errors="replace")
        wait_for("the broker's pipe", ready, 60)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(wine("framebroker.exe", "--socket", self.pipe, *args), timeout=timeout)

    def stats(self, stream: str) -> dict:
        r = self.cli("streams", "stats", stream, "--json")
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        return json.loads(r.stdout)

    def wait_live(self, stream: str, timeout: float = 60) -> None:
        def live() -> bool:
            assert self.proc.poll() is None, "the broker exited; see target/windows/broker-*.log"
            try:
                r = self.cli("streams", "stats", stream, "--json", timeout=15)
            except subprocess.TimeoutExpired:
                # Seen under load: a Wine process that never gets going (not the
                # broker: it keeps serving). Try again with a new one.
                log("a CLI process hung at start; retrying")
                return False
            return r.returncode == 0 and json.loads(r.stdout)["info"]["state"] == "Live"
        wait_for(f"stream {stream} live", live, timeout, step=0.5)


def readers(pipe: str, stream: str, n: int, count: int) -> List[List[dict]]:
    """``n`` fb-reader.exe processes reading ``count`` frames in order each."""
    procs = [
        subprocess.Popen(
            wine("fb-reader.exe", "--socket", pipe, "--stream", stream, "--count", str(count),
                 "--mode", "next"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=wine_env(),
        )
        for _ in range(n)
    ]
    out = []
    for p in procs:
        PROCS.append(p)
        so, se = p.communicate(timeout=120)
        assert p.returncode == 0, f"fb-reader failed: {se.decode(errors='replace')}"
        out.append([json.loads(line) for line in so.decode().splitlines() if line.strip()])
    return out


def check_identical(stream: str, recs: List[List[dict]], count: int) -> int:
    """Every record's CRC is the broker's slot CRC; frames both readers got are
    byte-identical. Returns how many frames the readers shared."""
    for r in recs:
        assert len(r) == count, f"{stream}: a reader got {len(r)} of {count} frames"
        for rec in r:
            assert rec["slot_crc"] != 0, f"{stream}: the broker stored no CRC (--checksum)"
            assert rec["crc"] == rec["slot_crc"], f"{stream}: frame {rec['number']} differs from the broker's"
    by_frame = [{rec["number"]: rec["crc"] for rec in r} for r in recs]
    shared = set(by_frame[0]).intersection(*by_frame[1:])
    assert shared, f"{stream}: the readers shared no frame"
    for n in shared:
        assert len({b[n] for b in by_frame}) == 1, f"{stream}: frame {n} differs between readers"
    return len(shared)


def windows_python_readers(pipe: str, stream: str, broker: Broker) -> None:
    """The Windows-Python reader (client-py under the embeddable CPython for
    Windows, run by Wine, with numpy): reads frames of the live ``stream`` of the
    running broker through ``framebroker.VideoCapture`` beside ``fb-reader.exe``,
    and checks them against the broker's CRCs and the Rust reader's bytes
    (``tests/windows/python_e2e.py``)."""
    import python_e2e

    log(python_e2e.check_reader(pipe, stream, 30, WIN_BIN / "fb-reader.exe", WORK))


def check_gateway(pipe: str, port: int, stream: str, frame_bytes: int) -> None:
    gw = start(
        wine("framebroker-gateway.exe", "--socket", pipe, "--listen", f"127.0.0.1:{port}"),
        "gateway.log", env=wine_env(),
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert gw.poll() is None, "the gateway exited; see target/windows/gateway.log"
        try:
            with urllib.request.urlopen(f"{base}/api/streams", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for("the gateway", up, 60, step=0.5)
    with urllib.request.urlopen(f"{base}/api/streams", timeout=30) as r:
        listing = r.read().decode()
    assert "fbuser:" not in listing and "s3cretPW" not in listing, listing
    with urllib.request.urlopen(f"{base}/api/streams/{stream}/frame", timeout=30) as r:
        body = r.read()
        number = int(r.headers["X-Frame-Number"])
    assert len(body) == frame_bytes, f"/frame gave {len(body)} bytes, want {frame_bytes}"
    assert number > 0
    with urllib.request.urlopen(f"{base}/api/streams/{stream}/snapshot.jpg", timeout=30) as r:
        jpeg = r.read()
        assert r.headers["Content-Type"] == "image/jpeg"
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9", "snapshot.jpg is no JPEG"

    import asyncio
    import websockets

    async def one_ws_frame(query: str) -> bytes:
        url = f"ws://127.0.0.1:{port}/ws/{stream}{query}"
        async with websockets.connect(url, open_timeout=30, max_size=None) as ws:
            while True:
                msg = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(msg, bytes):
                    return msg
    raw = asyncio.run(one_ws_frame(""))
    assert len(raw) == frame_bytes, f"a raw WebSocket frame of {len(raw)} bytes, want {frame_bytes}"
    framed = asyncio.run(one_ws_frame("?format=jpeg"))
    # FBJ1 header of 40 bytes (web-gateway/README.md), then the JPEG.
    assert framed[:4] == b"FBJ1" and framed[40:42] == b"\xff\xd8", framed[:48]
    log(f"ok gateway: /frame {len(body)} B (frame {number}), snapshot.jpg {len(jpeg)} B, "
        f"WebSocket raw {len(raw)} B and FBJ1 JPEG {len(framed)} B")
    stop(gw)


def follow(pipe: str, stream: str, seconds: int, tag: str) -> subprocess.Popen:
    return start(
        wine("fb-follow.exe", "--socket", pipe, "--stream", stream, "--seconds", str(seconds)),
        f"follow-{tag}.log", stdout=open(WORK / f"follow-{tag}.jsonl", "wb"), env=wine_env(),
    )


def follow_lines(tag: str) -> List[dict]:
    text = (WORK / f"follow-{tag}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def camera(width: int, height: int, fps: int) -> "tuple[subprocess.Popen, str]":
    cam = start(
        ["/usr/bin/python3", str(ROOT / "tests" / "camera" / "rtsp_camera.py"), "--port", "0",
         "--width", str(width), "--height", str(height), "--fps", str(fps)],
        "camera.log", stdout=subprocess.PIPE,
    )
    line = cam.stdout.readline().decode().strip()
    assert line.startswith("READY "), f"camera did not start: {line!r}"
    return cam, line.split(" ", 1)[1]


def write_config(path: Path, streams: Dict[str, str]) -> None:
    path.write_text("".join(
        f'[[streams]]\nid = "{i}"\nurl = "{u}"\n\n' for i, u in streams.items()
    ))


def main_checks(ffmpeg: Path) -> None:
    tag = f"fbw{os.getpid()}"
    pipe = f"{tag}-broker"
    prefix = f"{tag}-"
    cfg = WORK / "broker.toml"
    demo_url = "testsrc://?size=320x240&rate=15"
    write_config(cfg, {"demo": demo_url})
    broker = Broker(pipe, prefix, cfg, ffmpeg, "1")
    broker.wait_live("demo")

    # 1. testsrc, two readers, one ffmpeg.
    recs = readers(pipe, "demo", 2, 30)
    shared = check_identical("demo", recs, 30)
    ffmpegs = processes_of(ffmpeg)
    assert len(ffmpegs) == 1, f"{len(ffmpegs)} ffmpeg processes for one stream: {ffmpegs}"
    log(f"ok testsrc: 2 reader processes, 30 frames each, {shared} shared byte-identical, "
        "CRC = the broker's, one ffmpeg")

    # 2. reload adds the RTSP camera.
    cam, url = camera(320, 240, 15)
    # With credentials (the test camera does not ask for them): they must never
    # show in a log, a listing, stats or an API answer.
    secret = "s3cretPW"
    url = url.replace("rtsp://", f"rtsp://fbuser:{secret}@", 1)
    write_config(cfg, {"demo": demo_url, "cam": url})
    r = broker.cli("reload")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    summary = r.stdout.decode().strip()
    assert "reloaded" in summary, summary
    broker.wait_live("cam")
    recs = readers(pipe, "cam", 2, 20)
    shared = check_identical("cam", recs, 20)
    bars = recs[0][-1]["bars"]
    for got, want in zip(bars, SMPTE_BARS_BGR):
        assert all(abs(g - w) <= 40 for g, w in zip(got, want)), f"bars {bars}"
    ffmpegs = processes_of(ffmpeg)
    assert len(ffmpegs) == 2, f"{len(ffmpegs)} ffmpeg processes for two streams: {ffmpegs}"
    shown = [summary, broker.cli("streams", "ls").stdout.decode(),
             json.dumps(broker.stats("cam")), (WORK / "broker-1.log").read_text()]
    assert not any(secret in t for t in shown), "a credential leaked"
    assert "***" in shown[1], shown[1]
    log(f"ok reload ({summary}); RTSP camera: 2 readers, {shared} shared byte-identical frames, "
        "SMPTE bars, CRC = the broker's, one ffmpeg per camera, credentials redacted")

    # 3. The Windows-Python reader.
    windows_python_readers(pipe, "demo", broker)

    # 4. The gateway.
    check_gateway(pipe, 18000 + os.getpid() % 2000, "demo", 320 * 240 * 3)

    # 5. Hostile pipe clients.
    r = run(wine("fb-hostile.exe", "--socket", pipe), timeout=60)
    lines = [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]
    assert r.returncode == 0 and len(lines) == 5, (r.stdout, r.stderr)
    recs = readers(pipe, "demo", 1, 5)
    check_identical("demo", recs + recs, 5)
    log(f"ok hostile pipe clients refused and dropped ({', '.join(x['case'] for x in lines)}); "
        "the broker still serves frames")

    # 6. Kill the broker: ffmpeg dies with it, a follower notices and re-attaches.
    f = follow(pipe, "demo", 40, "crash")
    wait_for("the follower's first frames",
             lambda: sum("frame" in x for x in follow_lines("crash")) >= 5, 60)
    # Freeze the camera first: its ffmpeg then waits on the network and writes
    # nothing, so only the Job object can end it in time (an ffmpeg that writes
    # would also end on the broken pipe; this one would wait for its I/O timeout).
    # The broker sees the camera's stream stall and kills that ffmpeg itself
    # (TerminateProcess through the kill handle), then starts a new one, which
    # hangs on the frozen camera.
    before = set(processes_of(ffmpeg))
    reconnects = broker.stats("cam")["reconnects"]
    cam.send_signal(signal.SIGSTOP)

    def restarted() -> bool:
        now = set(processes_of(ffmpeg))
        return (len(now) == 2 and now != before
                and broker.stats("cam")["reconnects"] > reconnects)
    wait_for("the stalled camera's ffmpeg to be killed and restarted", restarted, 30, step=0.5)
    log("ok stall: the frozen camera's ffmpeg was killed and a new one started")
    time.sleep(1.0)
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(timeout=10)
    killed_at = time.monotonic()
    wait_for("both ffmpeg to die with the broker (Job object)", lambda: not processes_of(ffmpeg), 3)
    ffmpeg_gone = time.monotonic() - killed_at
    cam.send_signal(signal.SIGCONT)
    wait_for("the follower to notice", lambda: any("ended" in x for x in follow_lines("crash")), 10)
    noticed = time.monotonic() - killed_at
    ended = next(x for x in follow_lines("crash") if "ended" in x)
    assert ended["ms"] < 3000, f"the reader noticed the dead broker only after {ended['ms']} ms"
    broker2 = Broker(pipe, prefix, cfg, ffmpeg, "2")
    broker2.wait_live("demo")

    def reattached() -> bool:
        lines = follow_lines("crash")
        i = max(k for k, x in enumerate(lines) if "ended" in x)
        return sum("frame" in x for x in lines[i:]) >= 5
    wait_for("the follower to re-attach to the new broker", reattached, 60)
    lines = follow_lines("crash")
    after = [x for x in lines[max(k for k, x in enumerate(lines) if "ended" in x):] if "frame" in x]
    assert all(x["crc"] == x["slot_crc"] for x in after), "frames after re-attach differ"
    stop(f)
    log(f"ok broker killed: both ffmpeg (one stalled on a frozen camera) gone after {ffmpeg_gone:.1f} s, the reader noticed after "
        f"{noticed:.1f} s ({ended['ms']} ms after its last frame: {ended['ended'][:80]}), "
        f"re-attached to the new broker and read {len(after)} good frames")

    # 7. Ctrl-C (Wine turns SIGINT into CTRL_C_EVENT for the console handler):
    # a clean shutdown, no ffmpeg and no segment left.
    segments = [f"/{prefix}{s}.{g}" for s in ("demo", "cam") for g in (1, 2)]
    r = run(wine("fb-hostile.exe", "--gone", segments[0]), timeout=60)
    assert r.returncode != 0, "the live broker's segment should still open"
    broker2.proc.send_signal(signal.SIGINT)
    code = broker2.proc.wait(timeout=20)
    text = (WORK / "broker-2.log").read_text()
    assert code == 0 and "Ctrl-C: shutting down" in text and "bye" in text, (code, text[-500:])
    wait_for("no ffmpeg after the shutdown", lambda: not processes_of(ffmpeg), 5)
    r = run(wine("fb-hostile.exe", *sum((["--gone", s] for s in segments), [])), timeout=60)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    log("ok Ctrl-C: clean shutdown (exit 0), no ffmpeg and no segment left")

    # 8. The per-user default pipe, and FRAMEBROKER_SOCKET naming it (this Wine
    # prefix has its own wineserver, so its pipe names are its own).
    default = start(wine("framebroker.exe", "serve", "--ffmpeg", winpath(ffmpeg),
                         "--shm-prefix", f"{tag}d-"), "broker-default.log", env=wine_env())
    wait_for("the default broker", lambda: "framebroker ready" in
             (WORK / "broker-default.log").read_text(errors="replace"), 60)
    line = next(x for x in (WORK / "broker-default.log").read_text().splitlines()
                if "framebroker ready" in x)
    user = getpass.getuser()
    assert f"socket=\\\\.\\pipe\\framebroker-{user} " in line, line
    r = run(wine("framebroker.exe", "streams", "ls"), timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    env = wine_env()
    env["FRAMEBROKER_SOCKET"] = f"framebroker-{user}"
    r = run(wine("framebroker.exe", "streams", "ls"), timeout=60, env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    env["FRAMEBROKER_SOCKET"] = f"{tag}-nobody"
    r = run(wine("framebroker.exe", "streams", "ls"), timeout=60, env=env)
    assert r.returncode != 0 and f"{tag}-nobody" in r.stderr.decode(errors="replace")
    default.send_signal(signal.SIGINT)
    assert default.wait(timeout=20) == 0
    log(f"ok default pipe \\\\.\\pipe\\framebroker-{user}; FRAMEBROKER_SOCKET names a pipe")


def figures(ffmpeg: Path) -> None:
    """Wake latency (publish → reader, 640x480@60, fb-reader --mode next) and read
    cost (fb-follow --measure-copy) under Wine and on Linux, same debug build."""
    rows = []
    for system in ("linux", "wine"):
        tag = f"fbfig{os.getpid()}{system}"
        if system == "wine":
            pipe = f"{tag}-broker"
            b = start(wine("framebroker.exe", "--socket", pipe, "serve", "--ffmpeg", winpath(ffmpeg),
                           "--shm-prefix", f"{tag}-", "--stream",
                           "fig=testsrc://?size=640x480&rate=60"), f"fig-{system}.log", env=wine_env())
            reader = lambda *a: wine("fb-reader.exe", "--socket", pipe, *a)  # noqa: E731
            follower = lambda *a: wine("fb-follow.exe", "--socket", pipe, *a)  # noqa: E731
            env = wine_env()
        else:
            sock = str(WORK / f"{tag}.sock")
            b = start([str(LINUX_BIN / "framebroker"), "--socket", sock, "serve", "--shm-prefix",
                       f"{tag}-", "--stream", "fig=testsrc://?size=640x480&rate=60"],
                      f"fig-{system}.log")
            reader = lambda *a: [str(LINUX_BIN / "fb-reader"), "--socket", sock, *a]  # noqa: E731
            follower = lambda *a: [str(LINUX_BIN / "fb-follow"), "--socket", sock, *a]  # noqa: E731
            env = dict(os.environ)
        cli = (wine("framebroker.exe", "--socket", pipe) if system == "wine"
               else [str(LINUX_BIN / "framebroker"), "--socket", sock])
        try:
            def fig_live() -> bool:
                try:
                    r = run([*cli, "streams", "stats", "fig", "--json"], timeout=15, env=env)
                except subprocess.TimeoutExpired:
                    return False
                return r.returncode == 0 and json.loads(r.stdout)["info"]["state"] == "Live"
            wait_for(f"the {system} broker", fig_live, 60, step=0.5)
            r = run(reader("--stream", "fig", "--count", "300", "--mode", "next"), timeout=120, env=env)
            assert r.returncode == 0, r.stderr
            ages = sorted(json.loads(x)["age_ns"] / 1e3 for x in r.stdout.decode().splitlines()[30:])
            r = run(follower("--stream", "fig", "--measure-copy", "100"), timeout=120, env=env)
            assert r.returncode == 0, r.stderr
            copies = sorted(c / 1e3 for c in json.loads(r.stdout)["copy_ns"])
            rows.append((system, statistics.median(ages), ages[int(len(ages) * 0.99)],
                         statistics.median(copies), copies[int(len(copies) * 0.9)]))
        finally:
            stop(b)
    print("\nfigures (debug build, 640x480 bgr24 @ 60 fps, 270 frames / 100 reads):")
    print(f"{'system':<8} {'wake median µs':>15} {'wake p99 µs':>12} {'read median µs':>15} {'read p90 µs':>12}")
    for s, a50, a99, c50, c90 in rows:
        print(f"{s:<8} {a50:>15.0f} {a99:>12.0f} {c50:>15.0f} {c90:>12.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ffmpeg", type=Path, default=WORK / "ffmpeg.exe")
    ap.add_argument("--figures", action="store_true", help="also measure wake latency and read cost")
    ap.add_argument("--only-figures", action="store_true")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    assert a.ffmpeg.exists(), f"no Windows ffmpeg at {a.ffmpeg} (tests/windows/run.sh fetches it)"
    t = time.monotonic()
    try:
        if not a.only_figures:
            main_checks(a.ffmpeg)
        if a.figures or a.only_figures:
            figures(a.ffmpeg)
    finally:
        for p in reversed(PROCS):
            stop(p)
    log(f"all passed in {time.monotonic() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
