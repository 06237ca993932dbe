"""The exceptions of the package. Each message says which socket, stream, segment
or frame it is about, so a log line is enough to find the problem."""

from __future__ import annotations

from typing import Optional


class FrameBrokerError(Exception):
    """Base class of every error raised by ``framebroker``."""


class ProtocolError(FrameBrokerError):
    """A malformed control message, a frame over the size limit, or an answer
    that does not fit the request."""


class FrameTooLarge(ProtocolError):
    """A control frame longer than the protocol's limit (refused before allocating)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"control frame of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


class BrokerNotRunning(FrameBrokerError):
    """Nothing listens on the control socket."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(
            f"framebroker is not running: cannot connect to its control socket {socket_path} "
            f"({reason}). Start it with `framebroker serve` (or `scripts/run.sh` in the "
            "framebroker repository), or point FRAMEBROKER_SOCKET at the socket it listens on."
        )
        self.socket_path = socket_path


class BrokerDisconnected(FrameBrokerError):
    """The broker closed the session (it stopped or crashed)."""


class BrokerError(FrameBrokerError):
    """The broker answered a request with ``Response::Error``."""

    def __init__(self, code: "object", message: str, request: str = "") -> None:
        name = getattr(code, "name", str(code))
        where = f" to {request}" if request else ""
        super().__init__(f"broker refused the request{where}: {name}: {message}")
        self.code = code
        self.message = message


class UnsupportedVersion(BrokerError):
    """The broker cannot speak this client's protocol version."""


class SegmentError(FrameBrokerError):
    """A shared-memory segment that cannot be used: missing, foreign, corrupt,
    of another layout version, too small, or writable by others."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"shared memory segment {name}: {reason}")
        self.segment = name
        self.reason = reason


class ReadError(FrameBrokerError):
    """A blocking read returned without a frame."""

    def __init__(self, stream: str, message: str) -> None:
        super().__init__(f"stream {stream}: {message}")
        self.stream = stream


class ReadTimeout(ReadError):
    """No new frame within the timeout."""


class StreamEnded(ReadError):
    """The stream was stopped or failed: no more frames will come into this segment."""

    def __init__(self, stream: str, state: "object") -> None:
        name = getattr(state, "name", str(state)).lower()
        super().__init__(stream, f"stream is {name}: no more frames will come")
        self.state = state


class WriterGone(ReadError):
    """The broker stopped refreshing the heartbeat: it died or hangs."""

    def __init__(self, stream: str, silent_for_s: float) -> None:
        super().__init__(
            stream,
            f"the broker has shown no sign of life for {silent_for_s * 1000:.0f} ms (did it die?)",
        )
        self.silent_for_s = silent_for_s


class Contended(ReadError):
    """The writer kept overwriting the frame being read (reader too slow for the ring)."""


class FrameOverwritten(ReadError):
    """A zero-copy view was overwritten by the writer while it was in use: whatever
    was computed from it must be thrown away."""

    def __init__(self, stream: str, frame: int) -> None:
        super().__init__(
            stream,
            f"frame {frame} was overwritten while the zero-copy view was in use; "
            "discard the result (use a larger ring or copy with read())",
        )
        self.frame = frame


class ChecksumMismatch(ReadError):
    """A frame whose CRC-32 does not match the one the broker stored with it."""

    def __init__(self, stream: str, frame: int, stored: int, computed: int) -> None:
        super().__init__(
            stream,
            f"frame {frame}: payload CRC-32 {computed:08x} does not match the stored {stored:08x}",
        )
        self.frame = frame


class OpenCVUnavailable(FrameBrokerError, ImportError):
    """A source that only OpenCV can open (file, webcam, http), but cv2 is not installed."""

    def __init__(self, source: str) -> None:
        super().__init__(
            f"cannot open {source}: only rtsp://, rtsps:// and testsrc:// sources go through "
            "framebroker; other sources need OpenCV (pip install opencv-python-headless)"
        )


class RemoteError(FrameBrokerError):
    """The web gateway (remote mode) refused a request or is unreachable."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
