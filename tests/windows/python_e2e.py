#!/usr/bin/env python3
"""End-to-end under Wine: the Windows broker (framebroker.exe) with the Windows
ffmpeg, a Windows-Python reader with numpy (py_reader.py on the embeddable
CPython of python_env.sh) and, when given, the Rust reader fb-reader.exe:

1. the broker serves a ``testsrc`` stream with per-frame CRCs (``--checksum``);
   the Python reader (and fb-reader) attach over the named pipe and read; every
   frame the Python reader returns must have the CRC the broker stored for it, and
   every frame both readers read must be byte-identical (same CRC per number);
2. the broker is killed: the Python reader must report the stream lost;
3. the broker is started again: the same reader, without restarting, must
   re-attach to the new broker's segment and read CRC-correct frames again.

Run on the Linux host with its python3; needs what tests/windows/run.sh prepares
for the broker (framebroker.exe, the Windows ffmpeg beside it or ``--ffmpeg``, a
Wine prefix in which Rust programs start). Bounded: every wait has a deadline.

    tests/windows/python_e2e.py --broker-exe target/x86_64-pc-windows-gnu/debug/framebroker.exe \\
        [--fb-reader-exe .../fb-reader.exe]

Environment: ``WINE`` (default /usr/lib/wine/wine64) and ``WINEPREFIX`` (default
target/wine-prefix) are shared with python_env.sh: the broker and the readers must run in
one prefix (one wineserver) to see each other's pipes, mappings and events.
Exits 0 when every check holds, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STREAM = "pye2e"
SOURCE = "testsrc://?size=320x240&rate=10"


class Failed(AssertionError):
    """A check that did not hold (an AssertionError, as the broker stage's checks raise)."""


def wine_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WINE", "/usr/lib/wine/wine64")
    env.setdefault("WINEPREFIX", str(ROOT / "target" / "wine-prefix"))
    env["WINEDEBUG"] = env.get("WINEDEBUG", "-all")
    return env


def winpath(p: Path) -> str:
    return "Z:" + str(p.resolve()).replace("/", "\\")


class Proc:
    """A process under Wine whose output lines arrive on a queue (pipes, not files:
    a Windows CPython under Wine 8 cannot start with a regular file as stdout)."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], log: Path) -> None:
        self.name = name
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log = log.open("a")
        self.p = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.log.write(line)
            self.log.flush()
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)

    def line(self, deadline: float, what: str) -> str:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failed(f"{self.name}: no {what} in time (log: {self.log.name})")
        try:
            got = self.lines.get(timeout=left)
        except queue.Empty:
            raise Failed(f"{self.name}: no {what} in time (log: {self.log.name})") from None
        if got is None:
            raise Failed(f"{self.name} exited ({self.p.wait()}) before {what} (log: {self.log.name})")
        return got

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        """Ends this process (the one started here, by its pid) if it still runs."""
        if self.p.poll() is None:
            self.p.kill()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def records(proc: Proc, n: int, deadline: float, out: List[dict]) -> None:
    """Reads JSON lines from a reader until it has given ``n`` frame records."""
    got = 0
    while got < n:
        line = proc.line(deadline, f"frame {got + 1} of {n}")
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("event") == "error":
            raise Failed(f"{proc.name}: {rec['error']}")
        out.append(rec)
        got += "number" in rec


def check_crcs(recs: List[dict], who: str) -> None:
    frames = [r for r in recs if "number" in r]
    bad = [r for r in frames if r["crc"] != r["slot_crc"] or r["slot_crc"] == 0]
    if bad:
        raise Failed(f"{who}: {len(bad)} of {len(frames)} frames differ from the broker's CRC, e.g. {bad[0]}")


def windows_python(env: Dict[str, str]) -> str:
    """python.exe of the Windows CPython (prepared by python_env.sh; a no-op when ready)."""
    winpy = subprocess.run(
        ["bash", str(HERE / "python_env.sh")], env=env, check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    return str(Path(winpy) / "python" / "python.exe")


def start_readers(
    pipe: str, stream: str, count: int, rust_count: int, fb_reader_exe: Optional[Path], logs: Path,
    env: Dict[str, str], procs: List[Proc],
) -> "tuple[Proc, Optional[Proc]]":
    """The Python reader (and the Rust one), both attached, then released together
    so they read the same frames."""
    wine = env["WINE"]
    reader = Proc(
        "py-reader",
        [wine, windows_python(env), winpath(HERE / "py_reader.py"), "--socket", pipe, "--stream", stream,
         "--count", str(count), "--deadline", "240", "--sync-start"],
        env, logs / f"py-reader-{stream}.log",
    )
    procs.append(reader)
    deadline = time.monotonic() + 180
    # The Python reader retries until the broker and its stream are up; fb-reader
    # connects once, so it starts after.
    while reader.line(deadline, '"attached"') != "attached":
        pass
    rust: Optional[Proc] = None
    if fb_reader_exe is not None:
        rust = Proc(
            "fb-reader",
            [wine, str(fb_reader_exe), "--socket", pipe, "--stream", stream, "--count", str(rust_count),
             "--mode", "next", "--sync-start"],
            env, logs / f"fb-reader-{stream}.log",
        )
        procs.append(rust)
        while rust.line(deadline, '"attached"') != "attached":
            pass
        rust.send("")
    reader.send("")
    return reader, rust


def identical_frames(reader: Proc, rust: Optional[Proc], frames: int, out: List[dict]) -> str:
    """Reads ``frames`` records from the Python reader (into ``out``) and, with a
    Rust reader, as many from it: each frame must carry the broker's CRC, and the
    frames both read must have the same CRC. Returns a summary."""
    deadline = time.monotonic() + 180
    records(reader, frames, deadline, out)
    check_crcs(out, "Python reader")
    got = [r for r in out if "number" in r]
    if rust is None:
        return f"{len(got)} frames with the broker's CRC"
    rust_recs: List[dict] = []
    records(rust, frames, deadline, rust_recs)
    check_crcs(rust_recs, "Rust reader")
    by_number = {r["number"]: r["crc"] for r in rust_recs}
    common = 0
    for r in got:
        if r["number"] in by_number:
            common += 1
            if by_number[r["number"]] != r["crc"]:
                raise Failed(f"frame {r['number']}: Python CRC {r['crc']:#x}, Rust {by_number[r['number']]:#x}")
    if common == 0:
        raise Failed("the Python and Rust readers read no frame in common")
    return f"{len(got)} frames with the broker's CRC, {common} byte-identical to the Rust reader's"


def check_reader(
    pipe: str, stream: str, frames: int = 20, fb_reader_exe: Optional[Path] = None,
    logs: Path = ROOT / "target" / "windows",
) -> str:
    """The hook for a stage that runs its own broker (tests/windows/e2e.py): reads
    ``frames`` frames of the live ``stream`` (slots with CRCs) of the broker at
    ``pipe`` with the Windows-Python reader, beside fb-reader.exe when given, and
    checks them as :func:`identical_frames` does. Returns the ``ok`` line; raises
    ``Failed`` (an ``AssertionError``) with the reason otherwise."""
    env = wine_env()
    logs.mkdir(parents=True, exist_ok=True)
    procs: List[Proc] = []
    try:
        reader, rust = start_readers(pipe, stream, frames, frames, fb_reader_exe, logs, env, procs)
        summary = identical_frames(reader, rust, frames, [])
        if reader.p.wait(60) != 0:
            raise Failed(f"py_reader exited with {reader.p.returncode}")
    finally:
        for p in reversed(procs):
            p.stop()
    return f"ok Windows-Python reader (numpy, VideoCapture) on {stream}: {summary}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker-exe", type=Path, required=True)
    ap.add_argument("--fb-reader-exe", type=Path, help="also compare with the Rust reader")
    ap.add_argument("--ffmpeg", type=Path, help="the Windows ffmpeg (default: ffmpeg.exe beside the broker)")
    ap.add_argument("--frames", type=int, default=20, help="frames per phase")
    ap.add_argument("--pipe", default=f"fb-pye2e-{os.getpid()}")
    ap.add_argument("--logs", type=Path, default=ROOT / "target" / "windows-python-e2e")
    a = ap.parse_args()
    if not 1 <= a.frames <= 1000:
        ap.error("--frames must be 1..1000")
    env = wine_env()
    a.logs.mkdir(parents=True, exist_ok=True)
    for f in a.logs.glob("*.log"):
        f.unlink()
    pipe = "\\\\.\\pipe\\" + a.pipe
    ffmpeg = a.ffmpeg or a.broker_exe.parent / "ffmpeg.exe"
    if not ffmpeg.is_file():
        ap.error(f"no Windows ffmpeg at {ffmpeg} (tests/windows/run.sh puts one beside the broker)")
    broker_argv = [
        env["WINE"], str(a.broker_exe), "serve", "--socket", pipe, "--checksum", "--shm-prefix", "fbpy-",
        "--ffmpeg", winpath(ffmpeg), "--stream", f"{STREAM}={SOURCE}",
    ]
    procs: List[Proc] = []
    try:
        broker = Proc("broker", broker_argv, env, a.logs / "broker.log")
        procs.append(broker)
        reader, rust = start_readers(pipe, STREAM, 2 * a.frames, a.frames, a.fb_reader_exe, a.logs, env, procs)

        # 1. Byte-identical frames while the broker runs.
        before: List[dict] = []
        print(f"phase 1: {identical_frames(reader, rust, a.frames, before)}", flush=True)
        frames_before = [r for r in before if "number" in r]

        # 2. The broker dies: the reader notices.
        pid_before = frames_before[-1]["writer_pid"]
        broker.stop()
        t_kill = time.monotonic()
        lost: List[dict] = []
        while not any(r.get("event") == "lost" for r in lost):
            line = reader.line(time.monotonic() + 30, "a lost-stream report after the broker died")
            if line.startswith("{"):
                lost.append(json.loads(line))
        print(f"phase 2: the reader reported the stream lost {time.monotonic() - t_kill:.1f} s after the kill "
              f"({lost[-1]['error']})", flush=True)

        # 3. A new broker: the same reader re-attaches and reads correct frames again.
        broker = Proc("broker-2", broker_argv, env, a.logs / "broker-2.log")
        procs.append(broker)
        after: List[dict] = []
        records(reader, a.frames, time.monotonic() + 180, after)
        check_crcs(after, "Python reader after the restart")
        frames_after = [r for r in after if "number" in r]
        if frames_after[0]["writer_pid"] == pid_before:
            raise Failed("after the restart the reader still reads the dead broker's segment")
        print(f"phase 3: re-attached to the new broker (pid {pid_before} -> {frames_after[0]['writer_pid']}, "
              f"segment {frames_after[0]['segment']}); {len(frames_after)} frames CRC-checked", flush=True)
        if reader.p.wait(30) != 0:
            raise Failed(f"py_reader exited with {reader.p.returncode}")
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            p.stop()
    print("ok: Windows-Python reader under Wine", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
