"""One consumer process of the benchmark: reads a camera either with plain
``cv2.VideoCapture(url)`` (``--api cv2``) or through the broker with
``framebroker.VideoCapture`` (``--api fb``).

Protocol with ``bench/run.py``:

- it prints ``ready`` once the first frame is read, then waits for one line on
  stdin before its loop starts (so that all consumers start together);
- ``--mode count``: prints ``f`` for every frame read until stdin closes or
  ``--duration`` ends (the runner counts the lines);
- ``--mode age``: reads for ``--duration`` seconds, sleeping ``--work-ms`` after
  every frame (a consumer slower than the camera), decodes the capture wall
  clock stamped into each picture (``rtsp_camera.py --stamp``) and prints one
  JSON line ``result {...}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stamp  # noqa: E402


#: How long cv2 may take to open the camera, and then to read one frame, before
#: the consumer gives that session up and opens another (OpenCV's own default
#: is 30 s each, half of the runner's whole wait for "ready").
CV2_TIMEOUT_MS = 12000
#: How long a consumer tries for its first frame (the runner waits 60 s).
FIRST_FRAME_S = 55.0


def open_capture(a: argparse.Namespace) -> Any:
    if a.api == "cv2":
        import cv2

        return cv2.VideoCapture(a.url, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, CV2_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, CV2_TIMEOUT_MS,
        ])
    from framebroker import VideoCapture

    return VideoCapture(a.url, socket_path=a.socket)


def first_frame(a: argparse.Namespace, seconds: float) -> Any:
    """An open capture that has read one frame, or ``None`` after ``seconds``.

    A cv2 session that opens but never delivers (seen once in a loaded CI run:
    OpenCV gave up after its 30 s) is released and opened again, as a script
    would: that is the cv2 baseline's start, not what is measured after it."""
    deadline = time.monotonic() + seconds
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        cap = open_capture(a)
        if cap.isOpened():
            while time.monotonic() < deadline:
                ok, _ = cap.read()
                if ok:
                    return cap
                if a.api == "cv2":
                    break  # its read waited CV2_TIMEOUT_MS: a new session
        print(f"{a.api}: no frame from {a.url} (attempt {attempt}): "
              f"{getattr(cap, 'last_error', '') or 'open or read failed'}", file=sys.stderr, flush=True)
        cap.release()
        if a.api != "cv2":
            return None
        time.sleep(0.5)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", choices=["cv2", "fb"], required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--socket", help="broker control socket (--api fb)")
    ap.add_argument("--mode", choices=["count", "age"], default="count")
    ap.add_argument("--duration", type=float, default=600.0, help="upper bound of the loop, s")
    ap.add_argument("--work-ms", type=float, default=0.0, help="sleep after each frame, ms")
    a = ap.parse_args()
    if not (0 < a.duration <= 86400 and 0 <= a.work_ms <= 10000):
        ap.error("--duration must be in (0, 86400] and --work-ms in [0, 10000]")

    cap = first_frame(a, FIRST_FRAME_S)
    if cap is None:
        print(f"no first frame from {a.url} with {a.api} within {FIRST_FRAME_S:.0f} s", file=sys.stderr)
        return 2
    print("ready", flush=True)
    if not sys.stdin.readline():
        return 0

    stop = threading.Event()
    if a.mode == "count":
        # stdin closing (or the runner dying) ends the loop.
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    end = time.monotonic() + a.duration
    t0 = time.monotonic()
    rows: List[List[float]] = []
    failures = unreadable = 0
    while not stop.is_set() and time.monotonic() < end:
        ok, frame = cap.read()
        if not ok:
            failures += 1
            if failures > 1000:
                print("too many failed reads", file=sys.stderr)
                return 3
            time.sleep(0.01)
            continue
        if a.mode == "count":
            sys.stdout.write("f\n")
            sys.stdout.flush()
            continue
        now_ns = time.time_ns()
        s = stamp.decode_ms(frame)
        if s is None:
            unreadable += 1
        else:
            row = [time.monotonic() - t0, float(stamp.age_ms(s, now_ns // 1_000_000))]
            meta = getattr(cap, "frame_meta", None)
            if meta is not None:  # framebroker: age since the broker published it
                row.append((now_ns - meta.wall_ns) / 1e6)
            rows.append(row)
        if a.work_ms > 0:
            time.sleep(a.work_ms / 1000.0)
    cap.release()
    if a.mode == "age":
        out: Dict[str, Any] = {"api": a.api, "work_ms": a.work_ms, "rows": rows,
                               "unreadable": unreadable, "failed_reads": failures}
        print("result " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
