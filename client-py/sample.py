#!/usr/bin/env python3
"""Sample framebroker client, like the original Go server's ``sample.py``.

    python3 sample.py                                   # the broker's built-in test source
    python3 sample.py "rtsp://admin:password@192.168.1.100:554/stream1"
    python3 sample.py URL --server http://localhost:8091 # through the web gateway
    python3 sample.py URL --show                        # display (needs OpenCV with GUI)

Needs a running broker (``framebroker serve``) for local mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from video_import import SimpleVideoCapture, VideoCapture

DEFAULT_URL = "testsrc://?size=640x480&rate=30"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"stream URL (default {DEFAULT_URL})")
    p.add_argument("--server", help="read through the gateway at this URL (remote mode)")
    p.add_argument("--frames", type=int, default=100, help="frames to read (0: until Ctrl-C)")
    p.add_argument("--show", action="store_true", help="show the frames and their edges in windows")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cap = SimpleVideoCapture(a.url, server_url=a.server) if a.server else VideoCapture(a.url)
    if not cap.isOpened():
        print(f"could not open the stream: {cap.last_error}", file=sys.stderr)
        return 1
    print(f"opened {cap.stream_id}: {cap.get(3):.0f}x{cap.get(4):.0f} via {cap.getBackendName()}")

    cv2 = None
    if a.show:
        import cv2  # type: ignore[no-redef]

    n, t0 = 0, time.monotonic()
    try:
        while a.frames == 0 or n < a.frames:
            ret, frame = cap.read()
            if not ret:
                print(f"no frame ({cap.last_error}); retrying")
                continue
            n += 1
            if cv2 is not None:
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                edges = cv2.Canny(gray, 50, 150)
                cv2.imshow("Original", frame)
                cv2.imshow("Edges", edges)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
            elif n % 30 == 0:
                meta = cap.frame_meta
                age_ms = (time.time_ns() - meta.wall_ns) / 1e6 if meta and meta.wall_ns else float("nan")
                print(
                    f"frame {n}: #{meta.number if meta else '?'} shape {frame.shape}, "
                    f"mean {frame.mean():.1f}, age {age_ms:.1f} ms, stream fps {cap.get(5):.1f}"
                )
    except KeyboardInterrupt:
        pass
    finally:
        cap.release()
        if cv2 is not None:
            cv2.destroyAllWindows()
    dt = time.monotonic() - t0
    print(f"read {n} frames in {dt:.1f} s ({n / dt if dt else 0:.1f} fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
