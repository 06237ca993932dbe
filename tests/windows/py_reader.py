"""The Windows-Python reader of the cross-process tests: run on the Windows
CPython (tests/windows/python_env.sh run tests/windows/py_reader.py ...), it reads
a stream of the Windows broker through ``framebroker.VideoCapture`` exactly as a
user's OpenCV script would (named pipe, read-only mapping, event wake-ups, numpy
frames) and prints one JSON line per frame, with the fields of the Rust reader's
``ReadRecord`` (tests/src/lib.rs), so a driver can compare every reader's CRCs
per frame number:

    {"number": 17, "missed": 0, "crc": 3735928559, "slot_crc": 3735928559,
     "age_ns": 1234567, "bars": [[255, 255, 255], ...], "reader": "py",
     "writer_pid": 288, "segment": "/fb-cam.1"}

``crc`` is the CRC-32 of the frame as read, ``slot_crc`` the broker's CRC of it
(0 unless the broker runs with --checksum). While the broker is away, reads fail
and the capture re-attaches by itself; the reader then prints
``{"event": "lost", "error": ...}`` once per outage and keeps reading until it has
``--count`` frames or ``--deadline`` seconds have passed (then it exits 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib

import numpy as np

import framebroker
from framebroker import VideoCapture


def sample_bars(frame: np.ndarray) -> list:
    """BGR at the centre of each of the 7 top bars, row h/4 (``sample_bars`` in Rust)."""
    h, w = frame.shape[:2]
    y = h // 4
    return [[int(c) for c in frame[y, (w * (2 * i + 1)) // 14]] for i in range(7)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", help="the broker's pipe (default: its per-user pipe)")
    p.add_argument("--stream", required=True, help="a stream id, or a URL to start")
    p.add_argument("--count", type=int, default=30, help="frames to read")
    p.add_argument("--deadline", type=float, default=60.0, help="give up after this many seconds")
    p.add_argument("--sync-start", action="store_true", help='print "attached", wait for a line on stdin')
    a = p.parse_args()

    source = a.stream if "://" in a.stream else f"framebroker://{a.stream}"
    end = time.monotonic() + a.deadline
    # No verify_checksum: a mismatch must reach the driver as a record, not as a failed read.
    cap = VideoCapture(source, socket_path=a.socket)
    while not cap.isOpened():
        if time.monotonic() > end:
            print(json.dumps({"event": "error", "error": f"could not open: {cap.last_error}"}), flush=True)
            return 1
        time.sleep(0.2)
        cap.open(source)
    if a.sync_start:
        print("attached", flush=True)
        sys.stdin.readline()
    print(json.dumps({"event": "info", "numpy": np.__version__, "framebroker": framebroker.__version__}), flush=True)
    got = 0
    lost = False
    while got < a.count:
        if time.monotonic() > end:
            print(json.dumps({"event": "error", "error": f"deadline: {got} of {a.count} frames"}), flush=True)
            return 1
        ok, frame = cap.read()
        if not ok:
            if not lost:
                print(json.dumps({"event": "lost", "error": cap.last_error}), flush=True)
            lost = True
            continue
        lost = False
        meta = cap.frame_meta
        assert meta is not None and frame is not None
        info = cap._local.info if cap._local is not None else None
        rec = {
            "number": meta.number,
            "missed": meta.missed,
            "crc": zlib.crc32(frame) & 0xFFFFFFFF,
            "slot_crc": meta.checksum,
            "age_ns": max(framebroker._ring.monotonic_ns() - meta.mono_ns, 0),
            "bars": sample_bars(frame) if frame.ndim == 3 and frame.shape[2] == 3 else [],
            "reader": "py",
            # Which broker and segment the frame came from (shows the re-attach).
            "writer_pid": info.writer_pid if info else 0,
            "segment": info.segment if info else "",
        }
        print(json.dumps(rec), flush=True)
        got += 1
    cap.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
