"""Processes the benchmark drives: the RTSP test camera, the broker, groups of
consumer processes; and CPU/memory readings of them (``/proc`` and psutil). Every wait
is bounded; everything started here is stopped by ``close()`` (also on errors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import psutil

REPO = Path(__file__).resolve().parents[1]
#: The binaries measured: the release build, or FRAMEBROKER_BENCH_BINS (the CI
#: smoke run points it at target/debug: it checks that every section runs, and
#: debug timings say nothing anyway).
RELEASE = Path(os.environ.get("FRAMEBROKER_BENCH_BINS") or REPO / "target" / "release").resolve()
SYSTEM_PYTHON = "/usr/bin/python3"


class BenchError(RuntimeError):
    pass


def stop_process(p: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        except ProcessLookupError:
            pass
    for f in (p.stdin, p.stdout, p.stderr):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


class Camera:
    """``tests/camera/rtsp_camera.py`` on a free loopback port."""

    def __init__(self, width: int, height: int, fps: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(REPO / "tests" / "camera" / "rtsp_camera.py"), "--port", "0",
             "--width", str(width), "--height", str(height), "--fps", str(fps), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout, 15.0)
        if not line.startswith("READY "):
            stop_process(self.proc)
            raise BenchError(f"RTSP camera did not start (said {line!r})")
        self.url = line.split()[1]
        self.pid = self.proc.pid

    def close(self) -> None:
        stop_process(self.proc)


def read_line(stream, timeout: float) -> str:
    """One line from a pipe, or "" after ``timeout`` seconds."""
    box: List[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0].strip() if box else ""


class Broker:
    """The release ``framebroker serve`` on a private socket and segment prefix."""

    def __init__(self, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fb-bench-"))
        self.socket = str(self.dir / "broker.sock")
        self.prefix = f"fbbench{os.getpid()}x{int(time.time() * 1000) % 100000}-"
        self.bin = str(RELEASE / "framebroker")
        self.log = open(self.dir / "broker.log", "wb")
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--socket", self.socket, "--shm-prefix", self.prefix, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"})
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BenchError(f"broker did not start; log: {self.dir / 'broker.log'}")
            time.sleep(0.05)

    def cli(self, *args: str, check: bool = True) -> str:
        r = subprocess.run([self.bin, "streams", "--socket", self.socket, *args],
                           capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise BenchError(f"framebroker streams {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def add(self, sid: str, url: str, *extra: str) -> None:
        self.cli("add", sid, url, *extra)

    def stats(self, sid: str) -> Dict:
        return json.loads(self.cli("stats", "--json", sid))

    def wait_live(self, ids: Sequence[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for sid in ids:
            while True:
                s = self.stats(sid)
                if s["info"]["state"] == "Live" and s["frames_written"] >= 2:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"stream {sid} not live within {timeout:.0f} s: {s}")
                time.sleep(0.1)

    def ffmpeg_pids(self) -> List[int]:
        try:
            return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def wait_no_ffmpeg(self, timeout: float = 20.0) -> None:
        """Waits until no ffmpeg runs under the broker (on-demand streams gone)."""
        deadline = time.monotonic() + timeout
        while self.ffmpeg_pids() and time.monotonic() < deadline:
            time.sleep(0.1)

    def segments(self) -> Dict[str, int]:
        """Sizes of this broker's shared-memory segments, bytes."""
        out = {}
        for name in os.listdir("/dev/shm"):
            if name.startswith(self.prefix):
                try:
                    out[name] = os.stat(f"/dev/shm/{name}").st_size
                except OSError:
                    pass
        return out

    def close(self) -> None:
        stop_process(self.proc, grace=10.0)
        self.log.close()
        for name in self.segments():  # normally unlinked by the broker itself
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass


class Fleet:
    """N consumer processes that print one line per frame; counts their lines.
    ``ready_word``: the line each prints once it is ready (None: the first line)."""

    def __init__(self, cmds: Sequence[Sequence[str]], ready_word: Optional[str], sync_start: bool) -> None:
        self.procs: List[subprocess.Popen] = []
        self.counts = [0] * len(cmds)
        self.ready = [threading.Event() for _ in cmds]
        self.extra: List[List[str]] = [[] for _ in cmds]
        self.sync_start = sync_start
        self.threads = []
        self.stderr_logs = [tempfile.TemporaryFile() for _ in cmds]
        try:
            for i, cmd in enumerate(cmds):
                p = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr_logs[i], text=True, bufsize=1)
                self.procs.append(p)
                t = threading.Thread(target=self._drain, args=(i, p, ready_word), daemon=True)
                t.start()
                self.threads.append(t)
        except BaseException:
            self.close()
            raise

    def _drain(self, i: int, p: subprocess.Popen, ready_word: Optional[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            if not self.ready[i].is_set():
                self.ready[i].set()
                if ready_word is not None and line.strip() == ready_word:
                    continue
            if line.startswith("result "):
                self.extra[i].append(line[7:])
            else:
                self.counts[i] += 1

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.ready):
            while not ev.wait(0.1):
                if self.procs[i].poll() is not None:
                    raise BenchError(f"consumer {i} exited ({self.procs[i].returncode}) before its first frame: "
                                     f"{self.stderr(i)[-500:]}")
                if time.monotonic() > deadline:
                    late = [k for k, e in enumerate(self.ready) if not e.is_set()]
                    said = "; ".join(f"consumer {k} ({' '.join(map(str, self.procs[k].args[1:4]))}): "
                                     f"{self.stderr(k)[-300:].strip() or 'nothing on stderr'}" for k in late)
                    raise BenchError(f"only {len(self.ready) - len(late)} of {len(self.ready)} "
                                     f"consumers ready within {timeout:.0f} s; {said}")
        if self.sync_start:
            for p in self.procs:
                assert p.stdin is not None
                p.stdin.write("\n")
                p.stdin.flush()

    def stderr(self, i: int) -> str:
        f = self.stderr_logs[i]
        f.seek(0)
        return f.read().decode(errors="replace")

    def wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for i, p in enumerate(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"consumer {i} still running after {timeout:.0f} s") from None
            if p.returncode != 0:
                raise BenchError(f"consumer {i} failed ({p.returncode}): {self.stderr(i)[-500:]}")
        for t in self.threads:
            t.join(5)

    def close(self) -> None:
        for p in self.procs:
            try:
                if p.stdin is not None:
                    p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            stop_process(p, grace=3.0)
        for f in self.stderr_logs:
            f.close()


class CpuTime:
    """What some processes have spent on a CPU so far; subtract two samples for
    the seconds in between (``later - earlier``).

    The kernel's per-process total (``utime + stime`` in ``/proc/<pid>/stat``)
    is exact but reported in clock ticks: each of the two is cut to 10 ms, so a
    difference is off by up to 20 ms, which is ±20 % of a process at 1 % of a
    core over a 10 s window, the size of what the hand-over benchmarks look
    for. So the difference is counted per thread in nanoseconds, from the
    scheduler's own clock (``/proc/<pid>/task/<tid>/schedstat``). A thread that
    ends takes its count with it: when a thread of the earlier sample is gone,
    or the ticks grew by more than their rounding beyond the per-thread count
    (a thread started and ended in between), the ticks are the answer."""

    #: What the tick totals can be off by, per process: utime and stime cut.
    ROUNDING_S = 0.02

    def __init__(self, pids: Iterable[int]) -> None:
        self.threads: Dict[tuple, int] = {}
        self.ticks = 0.0
        self.processes = 0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                tids = os.listdir(f"/proc/{pid}/task")
            except (psutil.Error, OSError):
                continue  # gone: counts nothing from here on
            self.ticks += t.user + t.system
            self.processes += 1
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        self.threads[(pid, tid)] = int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    pass  # the thread ended while the list was read

    def __sub__(self, earlier: "CpuTime") -> float:
        ticks = self.ticks - earlier.ticks
        if not all(k in self.threads for k in earlier.threads):
            return ticks
        exact = sum(ns - earlier.threads.get(k, 0) for k, ns in self.threads.items()) / 1e9
        if ticks - exact > self.ROUNDING_S * max(self.processes, 1):
            return ticks
        return exact


def cpu_seconds(pids: Iterable[int]) -> CpuTime:
    """CPU time of these processes (all threads); gone ones count nothing.
    Only differences mean something: ``cpu_seconds(p) - c0`` is seconds."""
    return CpuTime(pids)


def rss_kib(pid: int) -> Dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of a process, KiB (from /proc)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def machine() -> Dict[str, object]:
    """What the report says about the machine."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def first_line(cmd: List[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    import cv2
    import numpy

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": os.uname().release,
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "ffmpeg": first_line(["ffmpeg", "-hide_banner", "-version"]),
        "opencv": cv2.__version__,
        "numpy": numpy.__version__,
        "python": first_line([os.sys.executable, "--version"]),
        "gstreamer": first_line([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('Gst', '1.0'); "
                                 "from gi.repository import Gst; Gst.init(None); print(Gst.version_string())"]),
        "rustc": first_line(["rustc", "--version"]),
    }


def loadavg() -> List[float]:
    return list(os.getloadavg())
