"""VideoCapture behaviour that needs no broker: argument checking, the unopened
state, option parsing, the no-OpenCV path, and remote mode against a stand-in
gateway (the real gateway's tests come with it)."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest

import framebroker as fb
from framebroker import capture
from framebroker._protocol import Transport
from framebroker.capture import VideoCapture, transport_from_env

from .conftest import closed_port


def test_wrong_types_to_get_and_set_raise_like_opencv() -> None:
    cap = VideoCapture()
    with pytest.raises(TypeError, match="'propId' is required to be an integer"):
        cap.get("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'propId' is required to be an integer"):
        cap.set(1.5, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'value' can not be treated as a double"):
        cap.set(fb.CAP_PROP_BUFFERSIZE, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        VideoCapture(object())  # type: ignore[arg-type]


def test_unopened_capture_behaves_like_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    mine, ref = VideoCapture(), cv2.VideoCapture()
    assert mine.isOpened() is False
    assert mine.read() == ref.read() == (False, None)
    assert mine.grab() is False
    assert mine.retrieve() == (False, None)
    assert mine.get(fb.CAP_PROP_FRAME_WIDTH) == ref.get(cv2.CAP_PROP_FRAME_WIDTH)
    assert mine.set(fb.CAP_PROP_BUFFERSIZE, 3) is False
    with pytest.raises(cv2.error):
        ref.getBackendName()
    with pytest.raises(cv2.error):
        mine.getBackendName()
    assert mine.getExceptionMode() is False
    mine.release()
    mine.release()  # twice is fine


def test_capture_error_is_a_cv2_error_when_opencv_is_there() -> None:
    cv2 = pytest.importorskip("cv2")
    cap = VideoCapture()
    cap.setExceptionMode(True)
    with pytest.raises(fb.CaptureError) as e:
        cap.read()
    assert isinstance(e.value, cv2.error) and isinstance(e.value, fb.FrameBrokerError)


@pytest.mark.parametrize(
    "value, want",
    [
        (None, Transport.TCP),
        ("rtsp_transport;udp", Transport.UDP),
        ("rtsp_transport;tcp", Transport.TCP),
        ("stimeout;5000000|rtsp_transport;udp", Transport.UDP),
        ("rtsp_transport;udp_multicast", Transport.UDP),
        ("stimeout;5000000", Transport.TCP),
    ],
)
def test_opencv_ffmpeg_capture_options(monkeypatch: pytest.MonkeyPatch, value: Any, want: Transport) -> None:
    if value is None:
        monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    else:
        monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", value)
    assert transport_from_env() == want


def test_params_must_be_pairs() -> None:
    with pytest.raises(ValueError, match="pairs"):
        VideoCapture("testsrc://", fb.CAP_ANY, [fb.CAP_PROP_OPEN_TIMEOUT_MSEC])


def test_without_opencv_other_sources_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "_cv2", lambda: None)
    with pytest.raises(fb.OpenCVUnavailable, match="pip install opencv-python-headless"):
        VideoCapture("/tmp/video.mp4")
    with pytest.raises(ImportError):
        VideoCapture(0)
    cap = VideoCapture()
    cap.setExceptionMode(True)
    with pytest.raises(fb.CaptureError) as e:
        cap.read()
    assert type(e.value) is fb.CaptureError
    assert capture._unsupported() == -1.0


def test_broker_not_running(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = str(tmp_path / "none.sock")
    cap = VideoCapture("rtsp://10.0.0.1/x", socket_path=sock)
    assert not cap.isOpened()
    assert sock in (cap.last_error or "") and "framebroker serve" in (cap.last_error or "")
    cap.setExceptionMode(True)
    with pytest.raises(fb.CaptureError, match="framebroker is not running"):
        cap.open("rtsp://10.0.0.1/x")


def test_credentials_never_reach_errors(tmp_path: Any) -> None:
    cap = VideoCapture("rtsp://admin:hunter2@10.0.0.1/x", socket_path=str(tmp_path / "none.sock"))
    assert "hunter2" not in (cap.last_error or "") and "***@10.0.0.1" in (cap.last_error or "")


def test_video_import_compat() -> None:
    import video_import

    assert video_import.VideoCapture is VideoCapture
    cap = video_import.SimpleVideoCapture(
        "rtsp://10.0.0.1/x", server_url=f"http://127.0.0.1:{closed_port()}"
    )
    assert not cap.isOpened()
    assert "cannot reach the framebroker gateway" in (cap.last_error or "")


# -- remote mode against a stand-in gateway ---------------------------------------------


class FakeGateway(http.server.BaseHTTPRequestHandler):
    posted: List[Dict[str, Any]] = []
    asked: List[Tuple[int, int]] = []
    number = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeGateway.posted.append(body)
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:  # noqa: N802
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.endswith("/stats"):  # the gateway's stats: the declared rate
            body = json.dumps({"declared_fps": 30.0}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if not parts.path.endswith("/frame"):
            self.send_error(404)
            return
        q = urllib.parse.parse_qs(parts.query)
        with FakeGateway.lock:
            # The client says which frame it has (?after=N) and how long it may wait.
            FakeGateway.asked.append((int(q["after"][0]), int(q["wait"][0])))
            FakeGateway.number += 1
            n = FakeGateway.number
        frame = np.full((4, 6, 3), n % 256, np.uint8).tobytes()
        self.send_response(200)
        for k, v in [("X-Frame-Width", "6"), ("X-Frame-Height", "4"), ("X-Pixel-Format", "bgr24"),
                     ("X-Frame-Number", str(n)), ("X-Capture-Time-Ns", str(n * 33_000_000)),
                     ("Content-Type", "application/octet-stream"), ("Content-Length", str(len(frame)))]:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(frame)


@pytest.fixture
def gateway() -> Iterator[str]:
    FakeGateway.posted, FakeGateway.asked, FakeGateway.number = [], [], 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_remote_mode_reads_through_the_gateway(gateway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMEBROKER_SERVER", gateway)
    url = "rtsp://u:p@10.0.0.9/live"
    cap = VideoCapture(url, fb.CAP_ANY, [fb.CAP_PROP_FRAME_WIDTH, 6, fb.CAP_PROP_FRAME_HEIGHT, 4])
    assert cap.isOpened(), cap.last_error
    assert cap.getBackendName() == "FRAMEBROKER_HTTP"
    assert FakeGateway.posted == [{"stream_id": fb.stream_id_for_url(url), "rtsp_url": url, "width": 6, "height": 4}]
    # Right after open, before any measured rate: the rate the stream declares.
    assert cap.get(fb.CAP_PROP_FPS) == 30.0
    seen: List[Tuple[int, int]] = []
    for _ in range(3):
        ok, frame = cap.read()
        assert ok and frame.shape == (4, 6, 3) and frame.flags.writeable
        assert cap.frame_meta is not None
        seen.append((cap.frame_meta.number, int(frame[0, 0, 0])))
    assert all(n % 256 == v for n, v in seen)
    assert [n for n, _ in seen] == sorted({n for n, _ in seen})
    # Each read asked for a frame after the one it had (the open's first at once).
    assert FakeGateway.asked[0] == (0, 0)
    assert [a for a, _ in FakeGateway.asked[1:4]] == [1, 2, 3]
    assert all(0 < w <= 5000 for _, w in FakeGateway.asked[1:])
    buf = np.zeros((4, 6, 3), np.uint8)
    ok, frame = cap.read(buf)
    assert ok and frame is buf
    assert (cap.get(fb.CAP_PROP_FRAME_WIDTH), cap.get(fb.CAP_PROP_FRAME_HEIGHT)) == (6.0, 4.0)
    assert cap.get(fb.CAP_PROP_FPS) == pytest.approx(1e9 / 33_000_000, rel=0.01)
    cap.release()


def test_remote_mode_without_a_size_asks_for_the_camera_size(gateway: str) -> None:
    url = "rtsp://10.0.0.9/live"
    with VideoCapture(url, server_url=gateway) as cap:
        assert cap.isOpened(), cap.last_error
    # No width/height: the gateway would give its 640x480 default.
    assert FakeGateway.posted == [{"stream_id": fb.stream_id_for_url(url), "rtsp_url": url, "native_size": True}]


def test_remote_mode_unreachable_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMEBROKER_SERVER", raising=False)
    server = f"http://127.0.0.1:{closed_port()}"
    cap = VideoCapture("rtsp://10.0.0.1/x", server_url=server)
    assert not cap.isOpened()
    assert server in (cap.last_error or "")
    with pytest.raises(ValueError):
        capture.RemoteStream("ftp://x", "rtsp://h/x")
