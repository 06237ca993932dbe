"""What handing frames from ffmpeg to the broker costs ffmpeg (issue 17).

Runs ffmpeg against the RTSP test camera with the broker's input options and
several outputs, each piped to a reader that only drains the pipe, and prints
ffmpeg's CPU (user + system, % of one core) per output:

- ``bgr24 + showinfo``: today's sidecar (bgr24 on the pipe, every frame's pts
  from showinfo's log line on stderr);
- ``bgr24``: the same without showinfo;
- ``yuv420p``: the decoder's own format as rawvideo (half the bytes);
- ``yuv420p nut``: the decoder's own format in NUT, each frame's pts in the
  container (``-f nut -c:v rawvideo -enc_time_base -1``);
- ``null``: decoding only (``-f null``), the floor.

Every output is measured in every repetition, in turn, so a change of load on
the machine spreads over all of them; the table gives the median with min-max
and the ratio to ``bgr24 + showinfo`` from the same run. Nothing is asserted.

    .venv/bin/python bench/handover.py                       # like-camera and cheap, 640x480 and 1080p, 30 fps
    .venv/bin/python bench/handover.py --seconds 5 --reps 1 --camera cheap --sizes 640x480   # quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Camera, cpu_seconds, stop_process  # noqa: E402


INPUT = ["-hide_banner", "-nostdin", "-loglevel", "level+info", "-copyts",
         "-rtsp_transport", "tcp", "-timeout", "5000000",
         "-analyzeduration", "500000", "-probesize", "500000",
         "-fflags", "nobuffer", "-flags", "low_delay"]

OUTPUTS: Dict[str, List[str]] = {
    "bgr24 + showinfo": ["-filter_complex", "[0:v:0]showinfo=checksum=0[o0]", "-map", "[o0]",
                         "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"],
    "bgr24": ["-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"],
    "yuv420p": ["-map", "0:v:0", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "yuv420p",
                "pipe:1"],
    "yuv420p nut": ["-map", "0:v:0", "-vf", "format=pix_fmts=yuv420p|yuvj420p|nv12",
                    "-fps_mode", "passthrough", "-enc_time_base", "-1", "-c:v", "rawvideo", "-f", "nut",
                    "pipe:1"],
    "null": ["-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-"],
}
BASELINE = "bgr24 + showinfo"


def drain(stream, counter: List[int]) -> None:
    while True:
        b = stream.read1(1 << 20) if hasattr(stream, "read1") else stream.read(1 << 20)
        if not b:
            return
        counter[0] += len(b)


def measure(url: str, out: List[str], warmup: float, seconds: float) -> Tuple[float, float]:
    """ffmpeg's CPU as % of one core over ``seconds`` after ``warmup``, and MB/s on its stdout."""
    p = subprocess.Popen(["ffmpeg", *INPUT, "-i", url, *out], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = [0]
    err = [0]
    threads = [threading.Thread(target=drain, args=(p.stdout, got), daemon=True),
               threading.Thread(target=drain, args=(p.stderr, err), daemon=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(warmup)
        if p.poll() is not None:
            raise RuntimeError(f"ffmpeg exited early ({p.returncode}) for {out}")
        c0, b0, t0 = cpu_seconds([p.pid]), got[0], time.monotonic()
        time.sleep(seconds)
        c1, b1, t1 = cpu_seconds([p.pid]), got[0], time.monotonic()
        if p.poll() is not None:
            raise RuntimeError(f"ffmpeg exited during the measurement ({p.returncode}) for {out}")
    finally:
        stop_process(p)
        for t in threads:
            t.join(5)
    return 100.0 * (c1 - c0) / (t1 - t0), (b1 - b0) / (t1 - t0) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="640x480,1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--camera", choices=["like-camera", "cheap", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per output and repetition")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(OUTPUTS), help="outputs to measure, comma-separated")
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",")]
    for n in names:
        if n not in OUTPUTS:
            ap.error(f"unknown output {n!r}; known: {', '.join(OUTPUTS)}")
    cameras = ["like-camera", "cheap"] if a.camera == "both" else [a.camera]
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    print(f"ffmpeg: {subprocess.run(['ffmpeg', '-version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    rows = []
    for cam_kind in cameras:
        for size in a.sizes.split(","):
            w, h = (int(x) for x in size.split("x"))
            extra = ["--like-camera"] if cam_kind == "like-camera" else []
            cam = Camera(w, h, a.fps, *extra)
            try:
                res: Dict[str, List[Tuple[float, float]]] = {n: [] for n in names}
                for _ in range(a.reps):
                    for n in names:
                        res[n].append(measure(cam.url, OUTPUTS[n], a.warmup, a.seconds))
            finally:
                cam.close()
            base = statistics.median(c for c, _ in res[BASELINE]) if BASELINE in res else None
            for n in names:
                cpu = [c for c, _ in res[n]]
                med = statistics.median(cpu)
                mbs = statistics.median(m for _, m in res[n])
                ratio = f"{med / base:.2f}" if base else "-"
                rows.append((cam_kind, size, n, med, min(cpu), max(cpu), mbs, ratio))
                print(f"{cam_kind} {size}@{a.fps} {n:18} {med:5.1f} % ({min(cpu):.1f}-{max(cpu):.1f}) "
                      f"{mbs:6.1f} MB/s  x{ratio}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print()
    print(f"| camera | size | ffmpeg output | CPU % of a core (median, min-max of {a.reps}) | pipe MB/s | "
          f"vs {BASELINE} |")
    print("|---|---|---|---:|---:|---:|")
    for cam_kind, size, n, med, lo, hi, mbs, ratio in rows:
        print(f"| {cam_kind} | {size}@{a.fps} | {n} | {med:.1f} ({lo:.1f}-{hi:.1f}) | {mbs:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
