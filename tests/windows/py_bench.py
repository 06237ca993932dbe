"""Read cost and wake latency of the Python client against a running broker, the
same script on Linux (venv Python, Linux broker) and on Windows (Windows CPython
and the Windows broker under Wine), so the two sets of figures come from the same
code. Figures only, nothing asserted (Wine is an emulation layer: the point is
that it works and does not poll).

Per frame size, with a ``testsrc://`` stream the broker starts:

- ``read(buf)``: ``VideoCapture.read(buf)`` when a new frame is already published
  (as client-py/bench/bench_read.py times it), beside ``numpy.copyto`` of the same
  size after the same sleep and back to back (``hot``), in the same run;
- ``age at wake``: a blocking ``read()`` started before the frame exists returns
  this long after the broker received it (``now - mono_ns``: the broker's copy, the
  publish, the wake-up and the read);
- ``CPU while waiting``: the reader's CPU time over the blocking reads, per second
  of wall time (a poll would show here).

    python tests/windows/py_bench.py --socket PATH_OR_PIPE [--sizes 640x480,1920x1080]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List

import numpy as np

from framebroker import VideoCapture
from framebroker._ring import monotonic_ns


def pct(xs: List[float], q: float) -> float:
    return sorted(xs)[min(int(len(xs) * q), len(xs) - 1)]


def bench(socket: str, w: int, h: int, frames: int, rate: int) -> Dict[str, object]:
    cap = VideoCapture(f"testsrc://?size={w}x{h}&rate={rate}", socket_path=socket)
    assert cap.isOpened(), cap.last_error
    local = cap._local
    assert local is not None
    buf = np.empty((h, w, 3), np.uint8)
    srcs = [np.random.randint(0, 255, (h, w, 3), np.uint8) for _ in range(8)]
    dst = np.empty_like(srcs[0])
    us: Dict[str, List[float]] = {"read(buf)": [], "copyto after sleep": [], "copyto hot": [], "age at wake": []}
    warm = 5
    for i in range(frames + warm):
        while local.ring is None or not local.ring.has_new_frame():
            time.sleep(0.002)
        t = time.perf_counter()
        ok, _ = cap.read(buf)
        dt = time.perf_counter() - t
        assert ok, cap.last_error
        time.sleep(0.5 / rate)
        t = time.perf_counter()
        np.copyto(dst, srcs[i % len(srcs)])
        cold = time.perf_counter() - t
        t = time.perf_counter()
        np.copyto(dst, srcs[i % len(srcs)])
        hot = time.perf_counter() - t
        if i >= warm:
            us["read(buf)"].append(dt * 1e6)
            us["copyto after sleep"].append(cold * 1e6)
            us["copyto hot"].append(hot * 1e6)
    # Blocking reads: each starts with nothing new, sleeps until the next frame.
    cap.read(buf)
    cpu0, wall0 = time.process_time(), time.monotonic()
    for _ in range(frames):
        ok, _ = cap.read(buf)
        now = monotonic_ns()
        assert ok, cap.last_error
        meta = cap.frame_meta
        assert meta is not None
        us["age at wake"].append((now - meta.mono_ns) / 1e3)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    cap.release()
    out: Dict[str, object] = {"size": f"{w}x{h}", "frames": frames}
    for k, v in us.items():
        out[k] = {"median_us": round(statistics.median(v), 1), "p90_us": round(pct(v, 0.9), 1)}
    base = statistics.median(us["copyto after sleep"])
    out["read(buf) / copyto after sleep"] = round(statistics.median(us["read(buf)"]) / base, 2)
    out["cpu while waiting %"] = round(cpu * 100, 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--sizes", default="640x480,1920x1080")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rate", type=int, default=15)
    a = ap.parse_args()
    if not 1 <= a.frames <= 10000:
        ap.error("--frames must be 1..10000")
    for size in a.sizes.split(","):
        w, h = (int(x) for x in size.split("x"))
        print(json.dumps(bench(a.socket, w, h, a.frames, a.rate)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
