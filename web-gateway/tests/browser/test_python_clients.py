"""Stock OpenCV and a Python WebSocket client against the real gateway and broker.

- cv2.VideoCapture on the MJPEG URL (OpenCV's own FFmpeg backend) returns frames
  of the right size that change, with and without the token;
- WS /ws/{id}: raw BGR24 messages and FBJ1-framed JPEG messages, parsed with
  `struct` and decoded with cv2.imdecode;
- GET /frame raw bytes reshape into the image the JPEG snapshot shows.

Needs: cargo build --workspace --bins; pip install opencv-python-headless numpy websockets.
Run:   python3 web-gateway/tests/browser/test_python_clients.py -v
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / os.environ.get("PROFILE", "debug")
TOKEN = "py-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The broker (with a 640x480 test source) and the gateway (with a token)."""

    def __init__(self) -> None:
        for b in ("framebroker", "framebroker-gateway"):
            if not (TARGET / b).exists():
                raise RuntimeError(f"{TARGET / b} missing: run cargo build --workspace --bins")
        self.dir = tempfile.mkdtemp(prefix="fbgw-py-")
        self.socket = os.path.join(self.dir, "broker.sock")
        self.prefix = f"fbgwpy{os.getpid()}-"
        self.broker = subprocess.Popen(
            [str(TARGET / "framebroker"), "serve", "--socket", self.socket, "--shm-prefix", self.prefix,
             "--stream", "demo=testsrc://?size=640x480&rate=30"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(lambda: os.path.exists(self.socket), "broker socket")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.gateway = subprocess.Popen(
            [str(TARGET / "framebroker-gateway"), "--socket", self.socket, "--listen", f"127.0.0.1:{self.port}",
             "--token", TOKEN],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait(self._healthy, "gateway")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as r:
                return json.load(r)["broker_reachable"]
        except OSError:
            return False

    @staticmethod
    def _wait(pred, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for the {what}")
            time.sleep(0.05)

    def get(self, path: str, token: bool = True):
        req = urllib.request.Request(self.base + path)
        if token:
            req.add_header("Authorization", f"Bearer {TOKEN}")
        return urllib.request.urlopen(req, timeout=10)

    def stop(self) -> None:
        for p in (self.gateway, self.broker):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in os.listdir("/dev/shm"):
            if f.startswith(self.prefix):
                try:
                    os.unlink(f"/dev/shm/{f}")
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


class PythonClients(unittest.TestCase):
    stack: Stack

    @classmethod
    def setUpClass(cls) -> None:
        cls.stack = Stack()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.stack.stop()

    def test_opencv_reads_the_mjpeg_url(self) -> None:
        url = f"{self.stack.base}/api/streams/demo/mjpeg?token={TOKEN}"
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        try:
            self.assertTrue(cap.isOpened(), "OpenCV could not open the MJPEG URL")
            frames = []
            deadline = time.monotonic() + 15
            while len(frames) < 15 and time.monotonic() < deadline:
                ok, frame = cap.read()
                if ok:
                    frames.append(frame)
            self.assertEqual(len(frames), 15, "OpenCV read fewer than 15 frames in 15 s")
            for f in frames:
                self.assertEqual(f.shape, (480, 640, 3))
                self.assertEqual(f.dtype, np.uint8)
            # The picture moves (testsrc draws a counter and a moving gradient).
            self.assertGreater(np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean(), 0.1)
        finally:
            cap.release()

    def test_opencv_mjpeg_without_token_is_refused(self) -> None:
        with self.assertRaises(urllib.error.HTTPError) as e:
            self.stack.get("/api/streams/demo/mjpeg", token=False)
        self.assertEqual(e.exception.code, 401)
        cap = cv2.VideoCapture(f"{self.stack.base}/api/streams/demo/mjpeg", cv2.CAP_FFMPEG)
        ok, _ = cap.read() if cap.isOpened() else (False, None)
        cap.release()
        self.assertFalse(ok)

    def test_websocket_raw_messages(self) -> None:
        with ws_connect(f"ws://127.0.0.1:{self.stack.port}/ws/demo?token={TOKEN}", max_size=None) as ws:
            msgs = [ws.recv(timeout=10) for _ in range(5)]
        for m in msgs:
            self.assertIsInstance(m, bytes)
            self.assertEqual(len(m), 640 * 480 * 3)
            img = np.frombuffer(m, np.uint8).reshape(480, 640, 3)
            self.assertGreater(img.mean(), 10)
        self.assertGreater(len({hash(m) for m in msgs}), 3, "frames differ")

    def test_websocket_jpeg_messages(self) -> None:
        header = struct.Struct("<4sIQQIIII")
        self.assertEqual(header.size, 40)
        last = 0
        with ws_connect(f"ws://127.0.0.1:{self.stack.port}/ws/demo?format=jpeg&quality=70&token={TOKEN}") as ws:
            for _ in range(10):
                m = ws.recv(timeout=10)
                magic, hlen, number, wall_ns, w, h, fmt, plen = header.unpack_from(m)
                self.assertEqual(magic, b"FBJ1")
                self.assertEqual((hlen, w, h, fmt), (40, 640, 480, 1))
                self.assertEqual(plen, len(m) - hlen)
                self.assertGreater(number, last)
                last = number
                self.assertLess(abs(wall_ns / 1e9 - time.time()), 10)
                img = cv2.imdecode(np.frombuffer(m[hlen:], np.uint8), cv2.IMREAD_COLOR)
                self.assertEqual(img.shape, (480, 640, 3))

    def test_raw_frame_matches_its_jpeg(self) -> None:
        with self.stack.get("/api/streams/demo/frame") as r:
            self.assertEqual(r.headers["Content-Type"], "application/octet-stream")
            w, h = int(r.headers["X-Frame-Width"]), int(r.headers["X-Frame-Height"])
            self.assertEqual(r.headers["X-Pixel-Format"], "bgr24")
            number = int(r.headers["X-Frame-Number"])
            raw = np.frombuffer(r.read(), np.uint8).reshape(h, w, 3)
        with self.stack.get("/api/streams/demo/snapshot.jpg") as r:
            later = int(r.headers["X-Frame-Number"])
            jpeg = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
        self.assertGreaterEqual(later, number)
        self.assertEqual(jpeg.shape, raw.shape)
        # Same scene, same channel order (a BGR/RGB swap would differ by ~100).
        # Frames may differ by the moving parts between the two requests.
        self.assertLess(np.abs(jpeg.astype(int) - raw.astype(int)).mean(), 25)


if __name__ == "__main__":
    unittest.main()
