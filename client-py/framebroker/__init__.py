"""framebroker: camera frames from shared memory, decoded once per camera.

Change one import and OpenCV code keeps working, with one ffmpeg per camera for
all your programs and never a stale frame::

    from framebroker import VideoCapture      # instead of cv2.VideoCapture

    cap = VideoCapture("rtsp://user:pass@10.0.0.5/stream1")
    ok, frame = cap.read()                    # the newest frame, BGR, owned copy

Lower levels: :class:`BrokerClient` (the control protocol) and :class:`Ring`
(one mapped shared-memory ring). The library logs through :mod:`logging`
(logger ``"framebroker"``) and never prints.
"""

from ._errors import (
    BrokerDisconnected,
    BrokerError,
    BrokerNotRunning,
    ChecksumMismatch,
    Contended,
    FrameBrokerError,
    FrameOverwritten,
    FrameTooLarge,
    OpenCVUnavailable,
    ProtocolError,
    ReadError,
    ReadTimeout,
    RemoteError,
    SegmentError,
    StreamEnded,
    UnsupportedVersion,
    WriterGone,
)
from ._layout import PixelFormat, StreamState
from ._naming import redact_url, stream_id_for_url, validate_stream_id
from ._protocol import (
    Attachment,
    BrokerClient,
    ErrorCode,
    HwAccel,
    StreamInfo,
    StreamStats,
    Transport,
    VariantRequest,
    default_socket_path,
)
from ._ring import FrameMeta, Ring, RingInfo
from .capture import (
    CAP_ANY,
    CAP_FFMPEG,
    CAP_PROP_BACKEND,
    CAP_PROP_BUFFERSIZE,
    CAP_PROP_CONVERT_RGB,
    CAP_PROP_FORMAT,
    CAP_PROP_FPS,
    CAP_PROP_FRAME_HEIGHT,
    CAP_PROP_FRAME_WIDTH,
    CAP_PROP_OPEN_TIMEOUT_MSEC,
    CAP_PROP_POS_FRAMES,
    CAP_PROP_POS_MSEC,
    CAP_PROP_READ_TIMEOUT_MSEC,
    CaptureError,
    VideoCapture,
)

__version__ = "0.1.0"

__all__ = [
    "Attachment",
    "BrokerClient",
    "BrokerDisconnected",
    "BrokerError",
    "BrokerNotRunning",
    "CAP_ANY",
    "CAP_FFMPEG",
    "CAP_PROP_BACKEND",
    "CAP_PROP_BUFFERSIZE",
    "CAP_PROP_CONVERT_RGB",
    "CAP_PROP_FORMAT",
    "CAP_PROP_FPS",
    "CAP_PROP_FRAME_HEIGHT",
    "CAP_PROP_FRAME_WIDTH",
    "CAP_PROP_OPEN_TIMEOUT_MSEC",
    "CAP_PROP_POS_FRAMES",
    "CAP_PROP_POS_MSEC",
    "CAP_PROP_READ_TIMEOUT_MSEC",
    "CaptureError",
    "ChecksumMismatch",
    "Contended",
    "ErrorCode",
    "FrameBrokerError",
    "FrameMeta",
    "FrameOverwritten",
    "FrameTooLarge",
    "HwAccel",
    "OpenCVUnavailable",
    "PixelFormat",
    "ProtocolError",
    "ReadError",
    "ReadTimeout",
    "RemoteError",
    "Ring",
    "RingInfo",
    "SegmentError",
    "StreamEnded",
    "StreamInfo",
    "StreamState",
    "StreamStats",
    "Transport",
    "UnsupportedVersion",
    "VariantRequest",
    "VideoCapture",
    "WriterGone",
    "default_socket_path",
    "redact_url",
    "stream_id_for_url",
    "validate_stream_id",
]

import logging as _logging

_logging.getLogger("framebroker").addHandler(_logging.NullHandler())
