"""Constants of the shared-memory ring, mirroring ``proto/src/layout.rs``.

The reference is ``proto/doc/layout.md``; ``tests/test_layout.py`` checks every
number here against ``proto/testdata/layout.json``, which the Rust side exports
from the same constants it asserts at compile time.  All integers in a segment
are little-endian.
"""

from __future__ import annotations

import enum
from typing import Optional

#: ``b"FBRING\\0\\x01"`` read as a little-endian u64; stored last, when the segment is ready.
MAGIC = int.from_bytes(b"FBRING\0\x01", "little")
#: Layout version this client reads.
LAYOUT_VERSION = 1
#: Size of the header page; slot 0 starts here.
HEADER_PAGE = 4096
#: Size of a slot's own header; the payload follows it.
SLOT_HEADER = 64
#: Alignment of every payload and of the slot stride.
PAYLOAD_ALIGN = 64
#: Longest stream id in bytes.
MAX_ID_LEN = 64
MIN_SLOTS = 3
MAX_SLOTS = 64
DEFAULT_SLOTS = 4
#: Largest width or height accepted anywhere.
MAX_DIMENSION = 8192
#: Header flag: every slot carries a CRC-32 (zlib's) of its payload.
FLAG_CHECKSUM = 1
#: ``pts_ns`` of a slot whose frame has no known presentation time (``i64::MIN``).
PTS_UNKNOWN = -(1 << 63)
#: The writer refreshes ``heartbeat_ns`` at least this often.
HEARTBEAT_INTERVAL_MS = 250
#: A heartbeat older than this means the writer (the broker) is gone.
HEARTBEAT_STALE_MS = 800
#: The longest a reader sleeps on the wake word before it looks at the stream's
#: state and heartbeat again.
READER_SLICE_MS = 100

# Header fields (byte offsets from the start of the segment).
MAGIC_OFF = 0
LAYOUT_VERSION_OFF = 8
HEADER_SIZE_OFF = 12
WIDTH_OFF = 16
HEIGHT_OFF = 20
PIXEL_FORMAT_OFF = 24
SLOT_COUNT_OFF = 28
FRAME_BYTES_OFF = 32
SLOT_STRIDE_OFF = 40
SLOTS_OFFSET_OFF = 48
SEGMENT_SIZE_OFF = 56
GENERATION_OFF = 64
WRITER_PID_OFF = 72
FLAGS_OFF = 76
CREATED_WALL_NS_OFF = 80
STREAM_ID_LEN_OFF = 88
STREAM_ID_OFF = 128
LAST_FRAME_OFF = 192
HEARTBEAT_NS_OFF = 200
STATE_OFF = 208
WAKE_OFF = 212
FPS_MILLI_OFF = 216
FRAMES_DROPPED_OFF = 224

# Slot header fields (byte offsets from the start of a slot).
SLOT_SEQ_OFF = 0
SLOT_FRAME_OFF = 8
SLOT_WALL_NS_OFF = 16
SLOT_MONO_NS_OFF = 24
SLOT_LEN_OFF = 32
SLOT_CHECKSUM_OFF = 40
#: i64: presentation time on the stream's clock, ns (valid only when stream_ns != 0).
SLOT_PTS_NS_OFF = 48
#: u64: stream-clock capture time mapped onto the wall clock, ns; 0 = unknown.
SLOT_STREAM_NS_OFF = 56

#: Every offset under the name ``layout.rs`` exports it with (``offsets::ALL``).
OFFSETS = {
    "MAGIC": MAGIC_OFF,
    "LAYOUT_VERSION": LAYOUT_VERSION_OFF,
    "HEADER_SIZE": HEADER_SIZE_OFF,
    "WIDTH": WIDTH_OFF,
    "HEIGHT": HEIGHT_OFF,
    "PIXEL_FORMAT": PIXEL_FORMAT_OFF,
    "SLOT_COUNT": SLOT_COUNT_OFF,
    "FRAME_BYTES": FRAME_BYTES_OFF,
    "SLOT_STRIDE": SLOT_STRIDE_OFF,
    "SLOTS_OFFSET": SLOTS_OFFSET_OFF,
    "SEGMENT_SIZE": SEGMENT_SIZE_OFF,
    "GENERATION": GENERATION_OFF,
    "WRITER_PID": WRITER_PID_OFF,
    "FLAGS": FLAGS_OFF,
    "CREATED_WALL_NS": CREATED_WALL_NS_OFF,
    "STREAM_ID_LEN": STREAM_ID_LEN_OFF,
    "STREAM_ID": STREAM_ID_OFF,
    "LAST_FRAME": LAST_FRAME_OFF,
    "HEARTBEAT_NS": HEARTBEAT_NS_OFF,
    "STATE": STATE_OFF,
    "WAKE": WAKE_OFF,
    "FPS_MILLI": FPS_MILLI_OFF,
    "FRAMES_DROPPED": FRAMES_DROPPED_OFF,
    "SLOT_SEQ": SLOT_SEQ_OFF,
    "SLOT_FRAME": SLOT_FRAME_OFF,
    "SLOT_WALL_NS": SLOT_WALL_NS_OFF,
    "SLOT_MONO_NS": SLOT_MONO_NS_OFF,
    "SLOT_LEN": SLOT_LEN_OFF,
    "SLOT_CHECKSUM": SLOT_CHECKSUM_OFF,
    "SLOT_PTS_NS": SLOT_PTS_NS_OFF,
    "SLOT_STREAM_NS": SLOT_STREAM_NS_OFF,
}


class PixelFormat(enum.IntEnum):
    """Pixel formats a ring can carry; the numbers are part of the layout (and the
    control protocol's variant indexes)."""

    BGR24 = 0
    RGB24 = 1
    GRAY = 2
    YUV420P = 3
    NV12 = 4

    @property
    def ffmpeg_name(self) -> str:
        """The name ffmpeg (``-pix_fmt``) and the broker's CLI use."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> "PixelFormat":
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(f.ffmpeg_name for f in cls)
            raise ValueError(f"unknown pixel format {name!r} (known: {known})") from None

    def frame_bytes(self, width: int, height: int) -> Optional[int]:
        """Bytes of one frame, or ``None`` for an odd size in a subsampled format."""
        pixels = width * height
        if self in (PixelFormat.BGR24, PixelFormat.RGB24):
            return pixels * 3
        if self is PixelFormat.GRAY:
            return pixels
        if width % 2 or height % 2:
            return None
        return pixels // 2 * 3

    def frame_shape(self, width: int, height: int) -> "tuple[int, ...]":
        """numpy shape of one frame: ``(h, w, 3)``, ``(h, w)``, or ``(h*3/2, w)``
        for the planar 4:2:0 formats (OpenCV's I420/NV12 convention)."""
        if self in (PixelFormat.BGR24, PixelFormat.RGB24):
            return (height, width, 3)
        if self is PixelFormat.GRAY:
            return (height, width)
        return (height * 3 // 2, width)


class StreamState(enum.IntEnum):
    """The state of a stream as the header (and the control protocol) carries it."""

    STARTING = 0
    LIVE = 1
    RECONNECTING = 2
    STOPPED = 3
    FAILED = 4

    @property
    def is_final(self) -> bool:
        """No more frames will ever come into this segment."""
        return self in (StreamState.STOPPED, StreamState.FAILED)


def slot_stride(frame_bytes: int) -> int:
    """Distance between two slots: slot header plus payload, rounded up to 64."""
    raw = SLOT_HEADER + frame_bytes
    return (raw + PAYLOAD_ALIGN - 1) // PAYLOAD_ALIGN * PAYLOAD_ALIGN


def segment_size(frame_bytes: int, slot_count: int) -> int:
    """Total bytes of a segment with ``slot_count`` slots."""
    return HEADER_PAGE + slot_count * slot_stride(frame_bytes)


def validate_geometry(width: int, height: int, pixel_format: PixelFormat) -> int:
    """Checks the size limits like ``Geometry::validate``; returns the frame bytes.

    Raises ``ValueError`` with the reason.
    """
    if width < 1 or height < 1:
        raise ValueError(f"invalid geometry {width}x{height}: width and height must be at least 1")
    if width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise ValueError(
            f"invalid geometry {width}x{height}: width and height must be at most {MAX_DIMENSION}"
        )
    n = pixel_format.frame_bytes(width, height)
    if n is None:
        raise ValueError(
            f"invalid geometry {width}x{height} {pixel_format.ffmpeg_name}: "
            "subsampled formats need an even width and height"
        )
    return n
