"""Variants of one camera and stream-clock timestamps through the Python client: the
real broker binary, real ffmpeg and the real RTSP test camera on loopback."""

from __future__ import annotations

import json
import time
from typing import Callable

import pytest

from framebroker import CAP_PROP_BUFFERSIZE, CAP_PROP_CONVERT_RGB, CAP_PROP_POS_MSEC, VideoCapture
from framebroker import _layout as L
from framebroker._layout import PixelFormat
from framebroker._protocol import HwAccel, StartRequest, VariantRequest, decode_request, encode_request

from .conftest import Broker, Camera
from .paths import TESTDATA

pytestmark = pytest.mark.e2e


def test_slot_clock_constants_match_rust() -> None:
    rust = json.loads((TESTDATA / "layout.json").read_text(encoding="utf-8"))
    assert L.PTS_UNKNOWN == rust["pts_unknown"]
    assert (L.SLOT_PTS_NS_OFF, L.SLOT_STREAM_NS_OFF) == (
        rust["offsets"]["SLOT_PTS_NS"],
        rust["offsets"]["SLOT_STREAM_NS"],
    )


def test_hwaccel_names_are_ffmpegs() -> None:
    # By wire index, as the Rust enum has them (proto/testdata/golden.json).
    rust = json.loads((TESTDATA / "golden.json").read_text())["hwaccels"]
    assert [h.ffmpeg_name() for h in HwAccel] == rust
    assert rust[6:] == ["h264_v4l2m2m", "hevc_v4l2m2m", "h264_rkmpp", "hevc_rkmpp"]
    assert HwAccel.from_name("videotoolbox") is HwAccel.VIDEO_TOOLBOX
    with pytest.raises(ValueError, match="unknown hwaccel"):
        HwAccel.from_name("opencl")
    req = StartRequest("a", "rtsp://h/x", hwaccel=HwAccel.QSV, variants=(VariantRequest("b", 8, 6),))
    assert decode_request(encode_request(req)) == req


def wait_until(what: str, seconds: float, pred: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_variant_reads_like_any_stream_with_stream_clock_times(broker: Broker, camera: Camera) -> None:
    client = broker.client()
    started = client.start(
        "pycam", camera.url, allow_duplicate_url=True,
        hwaccel=HwAccel.VAAPI,
        variants=[VariantRequest("pycam-gray", 320, 240, PixelFormat.GRAY)],
    )
    assert started.created
    wait_until("the variant to go live", 20, lambda: client.stats("pycam-gray").info.state.name == "LIVE")
    info = {s.id: s for s in client.list()}
    assert info["pycam-gray"].parent == "pycam" and info["pycam"].parent is None
    stats = client.stats("pycam")
    assert stats.decoder == "software" or stats.decoder.startswith("software (vaapi unavailable")

    with VideoCapture("framebroker://pycam-gray", params=[CAP_PROP_BUFFERSIZE, 4]) as cap:
        assert cap.isOpened(), cap.last_error
        cap.set(CAP_PROP_CONVERT_RGB, 0)  # the gray plane as it is
        metas = []
        positions = []
        for _ in range(30):
            ok, frame = cap.read()
            assert ok and frame is not None
            assert frame.shape[:2] == (240, 320)
            metas.append(cap.frame_meta)
            positions.append(cap.get(CAP_PROP_POS_MSEC))
        assert cap.stream_time_ns is not None
    consecutive = 0
    for a, b, pa, pb in zip(metas, metas[1:], positions, positions[1:]):
        assert a is not None and b is not None
        assert b.pts_ns is not None and b.stream_ns is not None and b.wall_ns > 0
        if b.number == a.number + 1:
            # 30 fps camera on a 90 kHz RTP clock: 33.33 ms per frame, from pts.
            assert abs((pb - pa) - 1000 / 30) < 1.0, (pa, pb)
            assert b.stream_ns - a.stream_ns == b.pts_ns - a.pts_ns
            consecutive += 1
    assert consecutive >= 20
    client.stop("pycam")
    wait_until("the variant to go with its parent", 5, lambda: client.list() == [])
