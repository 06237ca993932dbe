"""The original Go server's Python client, re-created call by call, against the
real gateway, broker and RTSP camera (no token, as that client sends none).

- the ``video_import`` flow: ``POST /api/streams/start-with-url`` with the
  original's md5 id, then its fetch loop (``requests.Session``, back-to-back
  ``GET /frame`` with no sleep, 2 s timeout, frames of width*height*3 bytes):
  every answer is a frame it had not had, and the loop makes one request per
  frame the stream publishes, not hundreds per second;
- stop semantics: ``DELETE`` answers 409 with ``client_count`` while a
  WebSocket watches, ``/force`` stops it and the WebSocket gets a close frame;
- the original's stats and list fields, ``/health``;
- two ids for one camera URL: one ffmpeg;
- the start routes' sizes: 640x480 when none is given (the original's
  default), the camera's own with ``native_size``.

Needs: cargo build --workspace --bins; pip install numpy requests websockets;
the system python3 with GStreamer's RTSP server (tests/camera/rtsp_camera.py).
Run:   python3 -m pytest -q web-gateway/tests/browser/test_original_clients.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / os.environ.get("PROFILE", "debug")
CAMERA = ROOT / "tests" / "camera" / "rtsp_camera.py"
W, H = 640, 480


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ffmpeg_children(pid: int) -> int:
    """Decoder processes whose parent is `pid`: ffmpeg, or the broker's own
    decoder (`framebroker-decoder`, cut to 15 characters by the kernel)."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and (comm.startswith("ffmpeg") or comm == "framebroker-dec"):
            n += 1
    return n


class Stack:
    """The RTSP camera, the broker (no streams) and the gateway on loopback, without a token."""

    def __init__(self) -> None:
        for b in ("framebroker", "framebroker-gateway"):
            if not (TARGET / b).exists():
                raise RuntimeError(f"{TARGET / b} missing: run cargo build --workspace --bins")
        self.procs: list[subprocess.Popen] = []
        self.dir = tempfile.mkdtemp(prefix="fbgw-orig-")
        self.camera = subprocess.Popen(
            ["/usr/bin/python3", str(CAMERA), "--port", "0", "--width", str(W), "--height", str(H), "--fps", "30"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(self.camera)
        line = self.camera.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the RTSP camera did not start: {line!r}")
        self.rtsp_url = line.split(" ", 1)[1]
        self.socket = os.path.join(self.dir, "broker.sock")
        self.prefix = f"fbgwo{os.getpid()}-"
        self.broker = subprocess.Popen(
            [str(TARGET / "framebroker"), "serve", "--socket", self.socket, "--shm-prefix", self.prefix],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.broker)
        wait(lambda: os.path.exists(self.socket), "the broker socket")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.gateway = subprocess.Popen(
            [str(TARGET / "framebroker-gateway"), "--socket", self.socket, "--listen", f"127.0.0.1:{self.port}",
             "--idle-ms", "1000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.gateway)
        wait(self._healthy, "the gateway")

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.base}/health", timeout=1).json()["status"] == "healthy"
        except (requests.RequestException, ValueError):
            return False

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in os.listdir("/dev/shm"):
            if f.startswith(getattr(self, "prefix", "\0")):
                try:
                    os.unlink(f"/dev/shm/{f}")
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


class OriginalClients(unittest.TestCase):
    stack: Stack

    @classmethod
    def setUpClass(cls) -> None:
        cls.stack = Stack()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.stack.stop()

    def url(self, path: str) -> str:
        return self.stack.base + path

    def stats(self, sid: str) -> dict:
        r = requests.get(self.url(f"/api/streams/{sid}/stats"), timeout=5)
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()

    def test_video_import_fetch_loop(self) -> None:
        s = self.stack
        session = requests.Session()
        # SimpleVideoCapture.__init__ / _start_stream: the id it would compute,
        # then start-with-url, whose answer's id it keeps.
        payload = {"rtsp_url": s.rtsp_url, "width": W, "height": H}
        r = session.post(self.url("/api/streams/start-with-url"), json=payload, timeout=(2, 5))
        self.assertEqual(r.status_code, 200, r.text)
        answer = r.json()
        want = ("stream_" + hashlib.md5(s.rtsp_url.encode()).hexdigest())[:16]
        self.assertEqual(answer["stream_id"], want)
        self.assertEqual(answer["message"], "Stream started successfully")
        self.assertEqual((answer["width"], answer["height"]), (W, H))
        sid = answer["stream_id"]
        # Again: already running, same id.
        again = session.post(self.url("/api/streams/start-with-url"), json=payload, timeout=(2, 5)).json()
        self.assertEqual((again["stream_id"], again["message"]), (sid, "Stream already running"))
        wait(lambda: self.stats(sid)["is_running"], "the stream to run")
        # _fetch_frames: back-to-back GETs, no sleep; a 200 of the right size is a frame.
        numbers: list[int] = []
        frames = []
        statuses: dict[int, int] = {}
        before = self.stats(sid)["frame_count"]
        t0 = time.monotonic()
        requests_made = 0
        while time.monotonic() - t0 < 3.0 and requests_made < 1000:
            resp = session.get(self.url(f"/api/streams/{sid}/frame"), timeout=2)
            requests_made += 1
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 200 and len(resp.content) == W * H * 3:
                frames.append(np.frombuffer(resp.content, np.uint8).reshape(H, W, 3))
                numbers.append(int(resp.headers["X-Frame-Number"]))
                ts = int(resp.headers["X-Frame-Timestamp"])
                self.assertLess(abs(ts / 1e9 - time.time()), 10, "X-Frame-Timestamp is capture time in ns")
        elapsed = time.monotonic() - t0
        after = self.stats(sid)["frame_count"]
        self.assertEqual(statuses.get(200, 0), requests_made, statuses)
        self.assertEqual(len(frames), requests_made, "every answer a whole 640x480 BGR24 frame")
        # Never the same frame twice: the loop is paced by the stream...
        self.assertEqual(numbers, sorted(set(numbers)), "a frame was handed out twice")
        # ...so it makes at most one request per frame the broker wrote meanwhile
        # (the original's own pacing; before, this loop spun at ~690 requests/s).
        self.assertLessEqual(requests_made, after - before + 2, (requests_made, before, after))
        self.assertGreater(len(frames), 10)
        print(f"\nvideo_import fetch loop: {requests_made} requests in {elapsed:.2f} s "
              f"({requests_made / elapsed:.1f}/s), broker wrote {after - before} frames")
        # Frames are pictures of the camera, and they move on.
        self.assertGreater(frames[-1].mean(), 10)
        # The original's stats fields.
        st = self.stats(sid)
        for k in ("stream_id", "rtsp_url", "is_running", "frame_count", "last_frame_time", "client_count",
                  "buffer_size"):
            self.assertIn(k, st)
        self.assertTrue(st["is_running"])
        self.assertGreater(st["frame_count"], 0)
        self.assertGreater(st["buffer_size"], 0)
        self.assertRegex(st["last_frame_time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        # The poller counts as a client for a few seconds.
        self.assertGreaterEqual(st["client_count"], 1)
        listed = {x["stream_id"]: x for x in requests.get(self.url("/api/streams"), timeout=5).json()["streams"]}
        for k in ("stream_id", "rtsp_url", "is_running", "client_count", "frame_count"):
            self.assertIn(k, listed[sid])
        # after=N: the newest at once when it is newer; wait=0: the newest at once.
        r = session.get(self.url(f"/api/streams/{sid}/frame?after=0"), timeout=5)
        self.assertEqual(r.status_code, 200)
        n = int(r.headers["X-Frame-Number"])
        r2 = session.get(self.url(f"/api/streams/{sid}/frame?after={n}"), timeout=7)
        self.assertEqual(r2.status_code, 200)
        self.assertGreater(int(r2.headers["X-Frame-Number"]), n)
        r3 = session.get(self.url(f"/api/streams/{sid}/frame?wait=0"), timeout=5)
        self.assertEqual(r3.status_code, 200)
        session.close()

    def test_stop_is_refused_while_a_websocket_watches_then_forced(self) -> None:
        s = self.stack
        sid = "orig_stop"
        r = requests.post(self.url("/api/streams"), json={"stream_id": sid, "rtsp_url": "testsrc://?size=320x240&rate=30",
                                                          "width": 320, "height": 240}, timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["stream_id"], sid)
        with ws_connect(f"ws://127.0.0.1:{s.port}/ws/{sid}", max_size=None) as ws:
            self.assertEqual(len(ws.recv(timeout=20)), 320 * 240 * 3)
            r = requests.delete(self.url(f"/api/streams/{sid}"), timeout=5)
            self.assertEqual(r.status_code, 409, r.text)
            body = r.json()
            self.assertEqual(body["client_count"], 1)
            self.assertIn("still watching", body["error"])
            # The refused DELETE changed nothing: frames keep coming.
            self.assertEqual(len(ws.recv(timeout=5)), 320 * 240 * 3)
            r = requests.delete(self.url(f"/api/streams/{sid}/force"), timeout=5)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(r.json()["message"], "Stream force-stopped successfully")
            # The socket ends with a close frame (1000, the stream stopped).
            deadline = time.monotonic() + 10
            with self.assertRaises(ConnectionClosed) as closed:
                while time.monotonic() < deadline:
                    ws.recv(timeout=10)
            self.assertEqual(closed.exception.rcvd.code, 1000)
        self.assertEqual(requests.get(self.url(f"/api/streams/{sid}/stats"), timeout=5).status_code, 404)
        self.assertEqual(requests.delete(self.url(f"/api/streams/{sid}/force"), timeout=5).status_code, 404)
        self.assertEqual(requests.delete(self.url(f"/api/streams/{sid}"), timeout=5).status_code, 404)

    def test_stop_without_watchers_and_health(self) -> None:
        sid = "orig_idle"
        r = requests.post(self.url("/api/streams"), json={"stream_id": sid, "rtsp_url": "testsrc://?size=160x120&rate=10",
                                                          "width": 160, "height": 120}, timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        r = requests.delete(self.url(f"/api/streams/{sid}"), timeout=5)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json(), {"message": "Stream stopped successfully", "stream_id": sid, "stopped": True})
        h = requests.get(self.url("/health"), timeout=5).json()
        self.assertEqual(h["status"], "healthy")
        self.assertLess(abs(h["timestamp"] - time.time()), 5)

    # Another id for a running URL is a stream of its own on the same decode: both
    # ids answer, and the camera is still pulled and decoded once.
    def test_two_ids_for_one_camera_share_one_ffmpeg(self) -> None:
        url = self.stack.rtsp_url
        for sid in ("cam_one", "cam_two"):
            # Whatever happens, the other tests find neither id running.
            self.addCleanup(lambda sid=sid: requests.delete(self.url(f"/api/streams/{sid}/force"), timeout=5))
        for sid in ("cam_one", "cam_two"):
            r = requests.post(self.url("/api/streams"), json={"stream_id": sid, "rtsp_url": url,
                                                              "width": 320, "height": 240}, timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(r.json()["stream_id"], sid, "the id asked for is the stream's id")
        for sid in ("cam_one", "cam_two"):
            wait(lambda sid=sid: self.stats(sid)["is_running"], f"{sid} to run")
            r = requests.get(self.url(f"/api/streams/{sid}/frame"), timeout=7)
            self.assertEqual(r.status_code, 200)
            self.assertEqual(len(r.content), 320 * 240 * 3)
        # One ffmpeg per source URL, however many ids read it.
        wait(lambda: ffmpeg_children(self.stack.broker.pid) == self._running_urls(), "one ffmpeg per URL")
        self.assertEqual(self._running_urls(), len({self.stats(sid)["rtsp_url"] for sid in ("cam_one", "cam_two")})
                         + self._running_urls(exclude=url))
        for sid in ("cam_two", "cam_one"):
            self.assertEqual(requests.delete(self.url(f"/api/streams/{sid}/force"), timeout=5).status_code, 200)

    # The original's start routes gave 640x480 when asked for no size (its
    # documented default, each of width and height on its own); native_size asks
    # for the camera's own. The sources are 320x240, so each size shows.
    def test_start_routes_default_to_640x480_and_native_size_is_the_camera_size(self) -> None:
        def src(rate: int) -> str:
            return f"testsrc://?size=320x240&rate={rate}"

        made: list[str] = []

        def forget(sid: str) -> None:
            requests.delete(self.url(f"/api/streams/{sid}/force"), timeout=5)

        def start(path: str, body: dict, size: tuple[int, int]) -> str:
            r = requests.post(self.url(path), json=body, timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            sid = r.json()["stream_id"]
            made.append(sid)
            self.addCleanup(forget, sid)
            if size != (0, 0):  # the size asked for is echoed while the stream starts
                self.assertEqual((r.json()["width"], r.json()["height"]), size, r.text)
            return sid

        cases = [
            ("/api/streams", {"stream_id": "size_default", "rtsp_url": src(21)}, (640, 480)),
            ("/api/streams", {"stream_id": "size_zero", "rtsp_url": src(22), "width": 0, "height": 0}, (640, 480)),
            ("/api/streams", {"stream_id": "size_w_only", "rtsp_url": src(23), "width": 320}, (320, 480)),
            ("/api/streams", {"stream_id": "size_native", "rtsp_url": src(24), "native_size": True}, (0, 0)),
            ("/api/streams/start-with-url", {"rtsp_url": src(25)}, (640, 480)),
            ("/api/streams/start-with-url", {"rtsp_url": src(26), "native_size": True, "width": 0}, (0, 0)),
        ]
        want = {}
        for path, body, size in cases:
            want[start(path, body, size)] = size if size != (0, 0) else (320, 240)
        for sid, (w, h) in want.items():
            wait(lambda sid=sid: self.stats(sid)["is_running"], f"{sid} to run")
            r = requests.get(self.url(f"/api/streams/{sid}/frame?after=0"), timeout=(2, 10))
            self.assertEqual(r.status_code, 200, f"{sid}: {r.status_code} {r.text[:200]}")
            self.assertEqual((int(r.headers["X-Frame-Width"]), int(r.headers["X-Frame-Height"])), (w, h), sid)
            self.assertEqual(len(r.content), w * h * 3, sid)
            st = self.stats(sid)
            self.assertEqual((st["width"], st["height"]), (w, h), sid)
        # The camera's own size and a size together contradict each other: 400,
        # and nothing starts.
        before = {x["stream_id"] for x in requests.get(self.url("/api/streams"), timeout=5).json()["streams"]}
        for path, body, needle in [
            ("/api/streams", {"stream_id": "size_both", "rtsp_url": src(27), "native_size": True, "width": 320,
                              "height": 240}, "native_size"),
            ("/api/streams/start-with-url", {"rtsp_url": src(27), "native_size": True, "height": 240}, "native_size"),
            ("/api/streams", {"stream_id": "size_bad", "rtsp_url": src(27), "native_size": "yes"}, "invalid type"),
        ]:
            r = requests.post(self.url(path), json=body, timeout=10)
            self.assertEqual(r.status_code, 400, r.text)
            self.assertIn(needle, r.json()["error"])
        after = {x["stream_id"] for x in requests.get(self.url("/api/streams"), timeout=5).json()["streams"]}
        self.assertEqual(after, before)
        for sid in made:
            self.assertEqual(requests.delete(self.url(f"/api/streams/{sid}/force"), timeout=5).status_code, 200, sid)

    def _running_urls(self, exclude: str | None = None) -> int:
        """Distinct source URLs of the broker's streams (each decoded by one ffmpeg)."""
        streams = requests.get(self.url("/api/streams"), timeout=5).json()["streams"]
        return len({x["rtsp_url"] for x in streams if x["rtsp_url"] != exclude})


if __name__ == "__main__":
    unittest.main()
