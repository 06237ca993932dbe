#!/usr/bin/env python3
"""Benchmarks of the Python client against the real broker (issue 3, "Performance").

1. ``read()`` time per frame at 640x480 and 1920x1080, next to ``numpy.copyto`` of
   the same size in the same run (goal: read() <= 1.3x copyto). Each read is timed
   when a new frame is already published, so it measures the read, not the wait.
2. The memory fence of the read path on CPUs that may reorder loads (aarch64):
   the same read of the same frame by a reader on this machine's own path and
   by one forced onto the fenced path (``FRAMEBROKER_RING_FENCE=always``),
   interleaved, with warm caches, so the difference is the fences' cost.
3. CPU of N Python readers through framebroker vs N plain ``cv2.VideoCapture`` on the
   same RTSP camera (N = 1, 4, 8), over the same wall time.

Run from client-py/ with the venv:  ../.venv/bin/python bench/bench_read.py
(needs target/debug/framebroker, or FRAMEBROKER_BIN; a release build is fairer).
``--only read`` runs part 1 alone, ``--only fence`` part 2; ``--reps`` repeats them (each figure in the JSON
is then the median of the per-repetition medians, with min and max); ``--json
PATH`` writes the figures there. ``bench/run.py`` at the repository root drives it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framebroker import VideoCapture  # noqa: E402
from framebroker import _ring  # noqa: E402
from tests.conftest import Broker, Camera  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def pct(xs: List[float], q: float) -> float:
    return sorted(xs)[min(int(len(xs) * q), len(xs) - 1)]


def bench_read(broker: Broker, w: int, h: int, n: int) -> Dict[str, List[float]]:
    """Times read() when a new frame is already published (after sleeping while it
    was produced, as a real reader does), and numpy.copyto of the same size both hot
    (back to back, everything in cache) and under the same conditions as read()
    (after a sleep, from a source that is not in this core's cache)."""
    rate = 15
    cap = VideoCapture(f"testsrc://?size={w}x{h}&rate={rate}", socket_path=broker.socket)
    assert cap.isOpened(), cap.last_error
    local = cap._local
    assert local is not None
    buf = np.empty((h, w, 3), np.uint8)
    times: Dict[str, List[float]] = {"read(buf)": [], "read()": [], "copyto hot": [], "copyto after sleep": []}
    srcs = [np.random.randint(0, 255, (h, w, 3), np.uint8) for _ in range(8)]  # > last-level cache
    dst = np.empty_like(srcs[0])
    for i in range(n + 5):
        for key in ("read(buf)", "read()"):
            while local.ring is None or not local.ring.has_new_frame():
                time.sleep(0.002)
            t = time.perf_counter()
            ok, _ = cap.read(buf) if key == "read(buf)" else cap.read()
            dt = time.perf_counter() - t
            assert ok
            if i >= 5:
                times[key].append(dt * 1e6)
        time.sleep(0.5 / rate)
        t = time.perf_counter()
        np.copyto(dst, srcs[i % len(srcs)])
        cold = time.perf_counter() - t
        t = time.perf_counter()
        np.copyto(dst, srcs[i % len(srcs)])
        hot = time.perf_counter() - t
        if i >= 5:
            times["copyto after sleep"].append(cold * 1e6)
            times["copyto hot"].append(hot * 1e6)
    cap.release()
    return times


def bench_fence(broker: Broker, w: int, h: int, n: int) -> Dict[str, List[float]]:
    """Per-read time (µs) of the own and the fenced read path over the same ring,
    re-reading its newest frame (cursor set back), alternating the two paths."""
    cap = VideoCapture(f"testsrc://?size={w}x{h}&rate=5", socket_path=broker.socket)
    assert cap.isOpened(), cap.last_error
    assert cap.read()[0]
    segment = cap._local.ring.name  # type: ignore[union-attr]
    rings = {}
    saved = os.environ.get(_ring.FENCE_ENV)
    try:
        for key, mode in (("own path", "auto"), ("fenced path", "always")):
            os.environ[_ring.FENCE_ENV] = mode
            rings[key] = _ring.Ring(segment)
    finally:
        if saved is None:
            os.environ.pop(_ring.FENCE_ENV, None)
        else:
            os.environ[_ring.FENCE_ENV] = saved
    assert rings["fenced path"]._fence is not None
    times: Dict[str, List[float]] = {k: [] for k in rings}
    bufs = {k: r.new_array() for k, r in rings.items()}
    for i in range(n + 50):
        for key, r in rings.items():
            r.cursor = r.last_frame() - 1
            t = time.perf_counter()
            got = r.read_into(bufs[key])
            dt = time.perf_counter() - t
            assert got is not None
            if i >= 50:
                times[key].append(dt * 1e6)
    for r in rings.values():
        r.close()
    cap.release()
    return times


READER_FB = """
import os, sys, time
from framebroker import VideoCapture
cap = VideoCapture(sys.argv[1], socket_path=sys.argv[2])
assert cap.isOpened(), cap.last_error
cap.read(); print("ready", flush=True); sys.stdin.readline()
t0 = os.times(); n = 0; end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    n += cap.read()[0]
t1 = os.times()
print(n, (t1.user - t0.user) + (t1.system - t0.system), flush=True)
"""

READER_CV = """
import os, sys, time
import cv2
cap = cv2.VideoCapture(sys.argv[1], cv2.CAP_FFMPEG)
assert cap.isOpened()
cap.read(); print("ready", flush=True); sys.stdin.readline()
t0 = os.times(); n = 0; end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    n += cap.read()[0]
t1 = os.times()
print(n, (t1.user - t0.user) + (t1.system - t0.system), flush=True)
"""


def bench_cpu(broker: Broker, cam: Camera, n: int, seconds: float, code: str) -> Tuple[float, float, float]:
    """Returns (reader CPU %, broker+ffmpeg CPU %, frames per reader per second)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", code, cam.url, broker.socket, str(seconds)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    helpers = [broker.pid] + broker.ffmpeg_children()
    before = sum(proc_cpu_s(pid) for pid in helpers)
    t0 = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        frames, cpu = out.split()
        results.append((int(frames), float(cpu)))
    wall = time.monotonic() - t0
    after = sum(proc_cpu_s(pid) for pid in helpers)
    reader_cpu = sum(c for _, c in results) / seconds * 100
    fps = statistics.mean(f for f, _ in results) / seconds
    return reader_cpu, (after - before) / wall * 100, fps


def summary(xs: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        w, _, h = part.strip().partition("x")
        if not (w.isdigit() and h.isdigit()) or not (16 <= int(w) <= 8192 and 16 <= int(h) <= 8192):
            raise argparse.ArgumentTypeError(f"bad size {part!r}: expected WxH, e.g. 640x480")
        sizes.append((int(w), int(h)))
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100, help="timed reads per size and repetition")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--readers", default="1,4,8")
    ap.add_argument("--only", choices=["read", "fence", "cpu"], help="run one part only")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of parts 1 and 2 (read cost, fences)")
    ap.add_argument("--sizes", type=parse_sizes, default=[(640, 480), (1920, 1080)], help="e.g. 640x480,1920x1080")
    ap.add_argument("--json", type=Path, help="write the part-1 figures (µs) to this file")
    a = ap.parse_args()
    if not (1 <= a.frames <= 100000 and 1 <= a.reps <= 50):
        ap.error("--frames must be 1..100000 and --reps 1..50")
    with tempfile.TemporaryDirectory(prefix="fbbench-") as d:
        b = Broker(Path(d), ["--idle-grace-ms", "2000"])
        try:
            results = []
            if a.only in (None, "read"):
                print("## read() per frame vs numpy.copyto of the same size (µs; median / p90)")
            for w, h in a.sizes if a.only in (None, "read") else []:
                per_rep: Dict[str, List[float]] = {}
                for rep in range(a.reps):
                    times = bench_read(b, w, h, a.frames)
                    base = statistics.median(times["copyto after sleep"])
                    for k, v in times.items():
                        med = statistics.median(v)
                        per_rep.setdefault(k, []).append(med)
                        per_rep.setdefault(k + " p90", []).append(pct(v, 0.9))
                        print(f"{w}x{h:<5} {k:19} {med:7.1f} / {pct(v, 0.9):7.1f}   {med / base:.2f}x"
                              + (f"   (rep {rep + 1}/{a.reps})" if a.reps > 1 else ""))
                    per_rep.setdefault("read() / copyto after sleep", []).append(
                        statistics.median(times["read()"]) / base)
                    per_rep.setdefault("read(buf) / copyto after sleep", []).append(
                        statistics.median(times["read(buf)"]) / base)
                    per_rep.setdefault("read(buf) / copyto hot", []).append(
                        statistics.median(times["read(buf)"]) / statistics.median(times["copyto hot"]))
                results.append({"width": w, "height": h, "bytes": w * h * 3, "frames": a.frames,
                                "reps": a.reps, "us": {k: summary(v) for k, v in per_rep.items()}})
            fences = []
            if a.only in (None, "fence"):
                print("\n## the read path's fences (aarch64's path, forced here) vs this machine's own path"
                      " (µs per read of a warm frame; median / p90)")
            for w, h in [(160, 120)] + a.sizes if a.only in (None, "fence") else []:
                reps: Dict[str, List[float]] = {}
                for rep in range(a.reps):
                    times = bench_fence(b, w, h, 20 * a.frames)
                    own, fenced = (statistics.median(times[k]) for k in ("own path", "fenced path"))
                    for k, v in times.items():
                        print(f"{w}x{h:<5} {k:12} {statistics.median(v):7.2f} / {pct(v, 0.9):7.2f}   "
                              f"{statistics.median(v) / own:.2f}x"
                              + (f"   (rep {rep + 1}/{a.reps})" if a.reps > 1 else ""))
                        reps.setdefault(k, []).append(statistics.median(v))
                    print(f"{w}x{h:<5} fences cost {fenced - own:+.2f} µs per read")
                    reps.setdefault("fence cost", []).append(fenced - own)
                    reps.setdefault("fenced / own", []).append(fenced / own)
                fences.append({"width": w, "height": h, "bytes": w * h * 3, "reads": 20 * a.frames,
                               "reps": a.reps, "us": {k: summary(v) for k, v in reps.items()}})
            if a.json is not None:
                a.json.write_text(json.dumps({"read": results, "fence": fences}, indent=1) + "\n")
            if a.only in ("read", "fence"):
                return 0
            cam = Camera("--width", "640", "--height", "480", "--fps", "30")
            try:
                print(f"\n## CPU, {a.seconds:.0f} s, RTSP 640x480 30 fps (% of one core; fps per reader)")
                print("N  framebroker: readers + broker/ffmpeg = total (fps) | cv2.VideoCapture: total (fps)")
                for n in (int(x) for x in a.readers.split(",")):
                    time.sleep(2.5)  # let the previous on-demand stream go
                    r, h, f1 = bench_cpu(b, cam, n, a.seconds, READER_FB)
                    c, _, f2 = bench_cpu(b, cam, n, a.seconds, READER_CV)
                    print(f"{n}  {r:6.1f} + {h:5.1f} = {r + h:6.1f} ({f1:4.1f})      | {c:6.1f} ({f2:4.1f})")
            finally:
                cam.kill()
        finally:
            b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
