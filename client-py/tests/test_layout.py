"""The Python layout constants against proto/testdata/layout.json (exported by the
Rust side from the constants it asserts at compile time)."""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from framebroker import _layout as L
from framebroker._layout import PixelFormat, StreamState

from .paths import TESTDATA


@pytest.fixture(scope="module")
def rust() -> Dict[str, Any]:
    return json.loads((TESTDATA / "layout.json").read_text(encoding="utf-8"))


def test_every_offset_matches_and_none_is_missing(rust: Dict[str, Any]) -> None:
    assert L.OFFSETS == rust["offsets"]


def test_named_offsets_agree_with_the_table() -> None:
    for name, off in L.OFFSETS.items():
        assert getattr(L, f"{name}_OFF") == off, name


def test_scalars(rust: Dict[str, Any]) -> None:
    assert L.MAGIC == rust["magic"]
    assert L.MAGIC.to_bytes(8, "little") == b"FBRING\0\x01"
    assert L.LAYOUT_VERSION == rust["layout_version"]
    assert L.HEADER_PAGE == rust["header_page"]
    assert L.SLOT_HEADER == rust["slot_header"]
    assert L.PAYLOAD_ALIGN == rust["payload_align"]
    assert (L.MIN_SLOTS, L.MAX_SLOTS) == (rust["min_slots"], rust["max_slots"])
    assert L.MAX_DIMENSION == rust["max_dimension"]
    assert L.FLAG_CHECKSUM == rust["flag_checksum"]
    assert L.HEARTBEAT_INTERVAL_MS == rust["heartbeat_interval_ms"]
    assert L.HEARTBEAT_STALE_MS == rust["heartbeat_stale_ms"]
    assert L.READER_SLICE_MS == rust["reader_slice_ms"]
    assert L.slot_stride(640 * 480 * 3) == rust["slot_stride_640x480_bgr24"]


def test_pixel_formats(rust: Dict[str, Any]) -> None:
    assert {f.ffmpeg_name for f in PixelFormat} == set(rust["pixel_formats"])
    for name, v in rust["pixel_formats"].items():
        f = PixelFormat.from_name(name)
        assert int(f) == v["code"], name
        assert f.frame_bytes(640, 480) == v["bytes_640x480"], name
        shape = f.frame_shape(640, 480)
        n = 1
        for d in shape:
            n *= d
        assert n == v["bytes_640x480"], f"numpy shape {shape} of {name} does not hold one frame"


def test_states(rust: Dict[str, Any]) -> None:
    assert {s.name.lower(): int(s) for s in StreamState} == rust["states"]
    assert [s for s in StreamState if s.is_final] == [StreamState.STOPPED, StreamState.FAILED]


def test_geometry_rules() -> None:
    assert L.validate_geometry(8192, 8192, PixelFormat.BGR24) == 8192 * 8192 * 3
    assert PixelFormat.YUV420P.frame_bytes(641, 480) is None
    for w, h, f, why in [
        (0, 480, PixelFormat.BGR24, "at least 1"),
        (8193, 480, PixelFormat.BGR24, "at most 8192"),
        (641, 480, PixelFormat.NV12, "even"),
    ]:
        with pytest.raises(ValueError, match=why):
            L.validate_geometry(w, h, f)
    for b in [0, 1, 63, 64, 65, 640 * 480 * 3, 1920 * 1080 * 3]:
        s = L.slot_stride(b)
        assert s % 64 == 0 and 64 + b <= s < 64 + b + 64
    # 640x480 bgr24, 4 slots. (The golden "attached" vector says 3690496 = 4096 + 4 * 921600,
    # which leaves out the slot headers: an example value, not a real segment size.)
    assert L.segment_size(921600, 4) == 4096 + 4 * 921664 == 3690752
