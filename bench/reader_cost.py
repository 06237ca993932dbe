#!/usr/bin/env python3
"""Where one Python reader's CPU goes, per frame, at the camera's rate.

    .venv/bin/python bench/reader_cost.py [--size 640x480] [--seconds 10] [--reps 3]

One RTSP test camera (``--like-camera``) and one release broker (``--decoder``,
``libav`` by default). A reader process runs one way of reading at a time,
each for ``--seconds`` per repetition, the ways taking turns:

- ``wake``: sleeps until each new frame is published and takes nothing from
  it (``Ring.wait_for_change`` and ``has_new_frame``): what being woken for a
  frame costs a Python process;
- ``wake+copy``: the same, copying each frame into one preallocated array
  (``Ring.read_wait``): the hand-over at its cheapest;
- ``read(buf)`` / ``read()``: ``framebroker.VideoCapture.read``, into a
  preallocated array / a new array per frame, as a program calls it;
- ``cv2``: ``cv2.VideoCapture(url).read()`` on the same camera, decoding it
  itself: the whole cost a program pays without framebroker.

``--against REV`` adds the way ``read() REV``: ``read()`` with the Python
client as it was at git revision ``REV``, taking turns with today's, so a
change to the read path is judged in the same windows (``--ways`` picks the
ways to run, e.g. ``--ways "read()" --against HEAD~1 --reps 6``).

Printed per way: the reader's CPU (% of one core, median [min-max] over the
repetitions) and per frame (us), and what the broker and its decoder cost in
the same windows. The differences between the rows say what each step costs:
``wake+copy - wake`` is the copy, ``read() - wake+copy`` the Python layers and
the new array. Nothing is asserted: it is a measuring tool.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import RELEASE, REPO, Broker, Camera, cpu_seconds, read_line  # noqa: E402

WAYS = ["wake", "wake+copy", "read(buf)", "read()", "cv2"]

#: The reader process: reads ``--way`` until stdin closes; prints "ready" first.
READER = r"""
import sys, threading
way, url, sock = sys.argv[1:4]
stop = threading.Event()
if way == "cv2":
    import cv2
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    step = lambda: cap.read()
else:
    import framebroker as fb
    cap = fb.VideoCapture(url, socket_path=sock)
    ok, frame = cap.read()
    if way in ("wake", "wake+copy"):
        with fb.BrokerClient(sock) as c:
            seg = c.attach(cap.stream_id).segment
        ring = fb.Ring(seg)
        buf = ring.new_array()
        def wake():
            while not ring.has_new_frame():
                ring.wait_for_change(0.1)
            ring.cursor = ring.last_frame()
        step = wake if way == "wake" else (lambda: ring.read_wait(buf, False, 1.0))
    elif way == "read(buf)":
        buf = frame.copy()
        step = lambda: cap.read(buf)
    else:
        step = lambda: cap.read()
for _ in range(30):
    step()
print("ready", flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    step()
"""


def client_at(rev: str, into: Path) -> Path:
    """The Python client as it was at ``rev``, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "client-py/framebroker"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--against {rev}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "client-py"


def measure(way: str, cam: Camera, broker: Broker, seconds: float, cwd: Path) -> Dict[str, float]:
    p = subprocess.Popen([sys.executable, "-c", READER, way.split(" ")[0], cam.url, broker.socket],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd)
    try:
        assert p.stdout is not None and p.stdin is not None
        line = read_line(p.stdout, 60.0)
        if line != "ready":
            raise RuntimeError(f"reader {way} did not start (said {line!r})")
        time.sleep(1.0)
        groups = {"reader": [p.pid], "broker": [broker.pid], "decoder": broker.ffmpeg_pids()}
        c0 = {k: cpu_seconds(v) for k, v in groups.items()}
        frames0 = broker.stats("cam")["frames_written"]
        t0 = time.monotonic()
        time.sleep(seconds)
        el = time.monotonic() - t0
        frames = broker.stats("cam")["frames_written"] - frames0
        out = {k: 100 * (cpu_seconds(v) - c0[k]) / el for k, v in groups.items()}
        out["us_per_frame"] = 1e6 * (out["reader"] / 100 * el) / max(frames, 1)
        return out
    finally:
        p.kill()
        p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decoder", choices=["libav", "ffmpeg"], default="libav")
    ap.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of: {', '.join(WAYS)}")
    ap.add_argument("--against", metavar="REV", help="also read() with the client at this git revision")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    if not (1 <= a.reps <= 20 and 1 <= a.seconds <= 120):
        ap.error("--reps must be in 1..20 and --seconds in 1..120")
    ways = [x for x in a.ways.split(",") if x]
    if not ways or any(x not in WAYS for x in ways):
        ap.error(f"--ways takes some of: {', '.join(WAYS)}")
    tmp = tempfile.TemporaryDirectory(prefix="fb-reader-cost-")
    trees = {way: REPO / "client-py" for way in ways}
    if a.against:
        trees[f"read() {a.against}"] = client_at(a.against, Path(tmp.name))
    cam = Camera(w, h, 30, "--like-camera")
    broker = Broker("--decoder", a.decoder, "--decoder-path", str(RELEASE / "framebroker-decoder"))
    rows: Dict[str, List[Dict[str, float]]] = {way: [] for way in trees}
    try:
        broker.add("cam", cam.url)
        broker.wait_live(["cam"])
        for _ in range(a.reps):
            for way, tree in trees.items():
                rows[way].append(measure(way, cam, broker, a.seconds, tree))
    finally:
        broker.close()
        tmp.cleanup()
        cam.close()

    def cell(way: str, key: str, prec: int = 2) -> str:
        xs = [r[key] for r in rows[way]]
        return f"{statistics.median(xs):.{prec}f} [{min(xs):.{prec}f}-{max(xs):.{prec}f}]"

    print(f"one Python reader at {a.size}@30, decoder {a.decoder}; % of one core, median [min-max] of {a.reps}")
    width = max(11, *(len(way) + 1 for way in rows))
    print(f"{'way':<{width}} {'reader %':<20} {'us/frame':<20} {'broker %':<20} {'decoder %':<20}")
    for way in rows:
        print(f"{way:<{width}} {cell(way, 'reader'):<20} {cell(way, 'us_per_frame', 0):<20} "
              f"{cell(way, 'broker'):<20} {cell(way, 'decoder'):<20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
