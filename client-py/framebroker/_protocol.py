"""The control protocol: message types, their bincode encoding, framing, and a
blocking client for the broker's local socket.

Written to ``proto/doc/control-protocol.md`` (the Rust reference is
``proto/src/control.rs``) and tested byte for byte against
``proto/testdata/golden.json``:

- a frame is a ``u32`` little-endian body length (at most :data:`MAX_FRAME`,
  refused before allocating) followed by the body;
- the body is one value in bincode 2 "fixed int, little-endian" form: integers
  fixed width LE, ``bool`` one byte 0/1, strings and sequences a ``u64`` length
  then the items, ``Option`` a ``u8`` tag, enums a ``u32`` variant index then
  the variant's fields, structs their fields in order; no trailing bytes.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from ._errors import (
    BrokerDisconnected,
    BrokerError,
    BrokerNotRunning,
    FrameBrokerError,
    FrameTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from ._layout import PixelFormat, StreamState
from ._platform import WINDOWS

if WINDOWS:
    from . import _win32

log = logging.getLogger("framebroker.protocol")

#: Version of the messages below.
PROTOCOL_VERSION = 3
#: ``b"FBCP"`` as a little-endian u32: the first field of every Hello.
PROTOCOL_MAGIC = int.from_bytes(b"FBCP", "little")
#: Largest frame body either side accepts.
MAX_FRAME = 1 << 20
#: What this client calls itself in Hello.
CLIENT_NAME = "framebroker-py/0.1.0"
#: Environment variable naming the control socket.
SOCKET_ENV = "FRAMEBROKER_SOCKET"


class Transport(enum.IntEnum):
    """RTSP transport ffmpeg uses."""

    TCP = 0
    UDP = 1


class HwAccel(enum.IntEnum):
    """Hardware decoders, named as ffmpeg's ``-hwaccel`` spells them, and the ARM
    boards' decoders named as ffmpeg's decoders (``.value`` is the wire index;
    :meth:`ffmpeg_name` the name)."""

    NONE = 0
    AUTO = 1
    VAAPI = 2
    CUDA = 3
    QSV = 4
    VIDEO_TOOLBOX = 5
    H264_V4L2M2M = 6
    HEVC_V4L2M2M = 7
    H264_RKMPP = 8
    HEVC_RKMPP = 9

    def ffmpeg_name(self) -> str:
        return "videotoolbox" if self is HwAccel.VIDEO_TOOLBOX else self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> "HwAccel":
        for h in cls:
            if h.ffmpeg_name() == name:
                return h
        raise ValueError(f"unknown hwaccel {name!r} (one of {', '.join(h.ffmpeg_name() for h in cls)})")


class ErrorCode(enum.IntEnum):
    """Why a request failed; the message says more."""

    BAD_REQUEST = 0
    UNSUPPORTED_VERSION = 1
    INVALID_ID = 2
    INVALID_URL = 3
    INVALID_GEOMETRY = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    LIMIT_EXCEEDED = 7
    NOT_READY = 8
    NOT_ATTACHED = 9
    INTERNAL = 10


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class HelloRequest:
    """``Request::Hello``: always the first message, variant 0 in every version."""

    magic: int = PROTOCOL_MAGIC
    protocol: int = PROTOCOL_VERSION
    client: str = CLIENT_NAME


@dataclass(frozen=True)
class VariantRequest:
    """One more output of a stream's single decode, listed as its own stream."""

    id: str
    width: Optional[int] = None
    height: Optional[int] = None
    pixel_format: PixelFormat = PixelFormat.BGR24


@dataclass(frozen=True)
class StartRequest:
    """``Request::Start``: start a stream; the same id and URL again get the running
    one, a new id for a URL already decoded becomes an alias or a variant of it."""

    id: str
    url: str
    width: Optional[int] = None
    height: Optional[int] = None
    pixel_format: PixelFormat = PixelFormat.BGR24
    ring_slots: Optional[int] = None
    transport: Transport = Transport.TCP
    allow_duplicate_url: bool = False
    on_demand: bool = False
    hwaccel: Optional[HwAccel] = None
    variants: Tuple[VariantRequest, ...] = ()


@dataclass(frozen=True)
class StopRequest:
    id: str


@dataclass(frozen=True)
class ListRequest:
    pass


@dataclass(frozen=True)
class StatsRequest:
    id: str


@dataclass(frozen=True)
class ReloadRequest:
    """Re-read the broker's config file (what SIGHUP does on Unix, on every system)."""


@dataclass(frozen=True)
class AttachRequest:
    id: str


@dataclass(frozen=True)
class DetachRequest:
    id: str


@dataclass(frozen=True)
class StreamInfo:
    """A stream as listed. ``url`` has its credentials redacted; ``width`` and
    ``height`` are 0 until the first segment exists."""

    id: str
    url: str
    state: StreamState
    width: int
    height: int
    pixel_format: PixelFormat
    generation: int
    readers: int
    on_demand: bool
    #: For a variant: the main stream whose decode feeds it.
    parent: Optional[str] = None
    #: The frame rate the source declares (ffmpeg's stream information), 0.0 while
    #: not known yet; :attr:`StreamStats.fps` is the measured rate.
    declared_fps: float = 0.0


@dataclass(frozen=True)
class StreamStats:
    info: StreamInfo
    fps: float
    frames_written: int
    frames_dropped: int
    reconnects: int
    last_error: Optional[str]
    uptime_ms: int
    bytes_per_frame: int
    ffmpeg_pid: int
    #: ``software``, a hardware decoder's name, or ``software (vaapi unavailable: ...)``.
    decoder: str = "software"


@dataclass(frozen=True)
class Attachment:
    """``Response::Attached``: everything needed to map a stream's ring."""

    id: str
    segment: str
    generation: int
    width: int
    height: int
    pixel_format: PixelFormat
    frame_bytes: int
    slot_count: int
    segment_size: int


@dataclass(frozen=True)
class HelloResponse:
    protocol: int
    broker: str


@dataclass(frozen=True)
class Started:
    """``created`` is false when the requested id was already running."""

    stream: StreamInfo
    created: bool


@dataclass(frozen=True)
class Stopped:
    id: str


@dataclass(frozen=True)
class StreamList:
    streams: Tuple[StreamInfo, ...]


@dataclass(frozen=True)
class StatsResponse:
    stats: StreamStats


@dataclass(frozen=True)
class Detached:
    id: str


@dataclass(frozen=True)
class ErrorResponse:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class Reloaded:
    summary: str


Request = Union[
    HelloRequest,
    StartRequest,
    StopRequest,
    ListRequest,
    StatsRequest,
    AttachRequest,
    DetachRequest,
    ReloadRequest,
]
Response = Union[
    HelloResponse,
    Started,
    Stopped,
    StreamList,
    StatsResponse,
    Attachment,
    Detached,
    ErrorResponse,
    Reloaded,
]

#: Variant order of ``Request`` (the index is the wire tag).
REQUEST_VARIANTS: Tuple[type, ...] = (
    HelloRequest,
    StartRequest,
    StopRequest,
    ListRequest,
    StatsRequest,
    AttachRequest,
    DetachRequest,
    ReloadRequest,
)
#: Variant order of ``Response`` (the index is the wire tag).
RESPONSE_VARIANTS: Tuple[type, ...] = (
    HelloResponse,
    Started,
    Stopped,
    StreamList,
    StatsResponse,
    Attachment,
    Detached,
    ErrorResponse,
    Reloaded,
)

# --------------------------------------------------------------------------- codec


class EncodeError(ProtocolError, ValueError):
    """A value that cannot be encoded (wrong type, out of range)."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.remaining():
            raise ProtocolError(
                f"truncated message: {what} needs {n} bytes at offset {self.pos}, "
                f"only {self.remaining()} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


class _Codec(abc.ABC):
    """Encodes and decodes one type."""

    desc = "?"

    @abc.abstractmethod
    def encode(self, value: Any, out: bytearray, path: str) -> None: ...

    @abc.abstractmethod
    def decode(self, r: _Reader, path: str) -> Any: ...


class _UInt(_Codec):
    def __init__(self, bits: int, fmt: str) -> None:
        self.bits = bits
        self.size = bits // 8
        self.struct = struct.Struct(fmt)
        self.desc = f"u{bits}"

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"{path}: expected {self.desc}, got {type(value).__name__}")
        if not 0 <= value < (1 << self.bits):
            raise EncodeError(f"{path}: {value} out of range for {self.desc}")
        out += self.struct.pack(value)

    def decode(self, r: _Reader, path: str) -> int:
        return int(self.struct.unpack(r.take(self.size, path))[0])


class _Bool(_Codec):
    desc = "bool"

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if not isinstance(value, bool):
            raise EncodeError(f"{path}: expected bool, got {type(value).__name__}")
        out.append(1 if value else 0)

    def decode(self, r: _Reader, path: str) -> bool:
        b = r.take(1, path)[0]
        if b > 1:
            raise ProtocolError(f"{path}: invalid bool byte {b} (must be 0 or 1)")
        return b == 1


class _F64(_Codec):
    desc = "f64"
    _s = struct.Struct("<d")

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EncodeError(f"{path}: expected f64, got {type(value).__name__}")
        out += self._s.pack(float(value))

    def decode(self, r: _Reader, path: str) -> float:
        return float(self._s.unpack(r.take(8, path))[0])


U8 = _UInt(8, "<B")
U32 = _UInt(32, "<I")
U64 = _UInt(64, "<Q")
BOOL = _Bool()
F64 = _F64()


class _Str(_Codec):
    desc = "String"

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if not isinstance(value, str):
            raise EncodeError(f"{path}: expected str, got {type(value).__name__}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EncodeError(f"{path}: not encodable as UTF-8 ({e.reason})") from None
        U64.encode(len(raw), out, path)
        out += raw

    def decode(self, r: _Reader, path: str) -> str:
        n = U64.decode(r, path + " length")
        # Checked against what is there before slicing: a huge length never allocates.
        raw = r.take(n, path)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{path}: invalid UTF-8 ({e.reason})") from None


STR = _Str()


class _Opt(_Codec):
    def __init__(self, inner: _Codec) -> None:
        self.inner = inner
        self.desc = f"Option<{inner.desc}>"

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.encode(value, out, path)

    def decode(self, r: _Reader, path: str) -> Any:
        tag = r.take(1, path)[0]
        if tag == 0:
            return None
        if tag == 1:
            return self.inner.decode(r, path)
        raise ProtocolError(f"{path}: invalid Option tag {tag} (must be 0 or 1)")


class _Vec(_Codec):
    def __init__(self, inner: _Codec) -> None:
        self.inner = inner
        self.desc = f"Vec<{inner.desc}>"

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise EncodeError(f"{path}: expected a sequence, got {type(value).__name__}")
        U64.encode(len(value), out, path)
        for i, item in enumerate(value):
            self.inner.encode(item, out, f"{path}[{i}]")

    def decode(self, r: _Reader, path: str) -> Tuple[Any, ...]:
        n = U64.decode(r, path + " count")
        # Every item takes at least one byte: a count beyond what is left is a lie.
        if n > r.remaining():
            raise ProtocolError(f"{path}: {n} items announced, only {r.remaining()} bytes left")
        return tuple(self.inner.decode(r, f"{path}[{i}]") for i in range(n))


class _Enum(_Codec):
    """A field-less Rust enum: the ``u32`` variant index."""

    def __init__(self, cls: Type[enum.IntEnum]) -> None:
        self.cls = cls
        self.desc = cls.__name__

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        try:
            member = self.cls(value)
        except ValueError:
            raise EncodeError(f"{path}: {value!r} is not a {self.desc}") from None
        if isinstance(value, bool):
            raise EncodeError(f"{path}: expected {self.desc}, got bool")
        U32.encode(int(member), out, path)

    def decode(self, r: _Reader, path: str) -> enum.IntEnum:
        v = U32.decode(r, path)
        try:
            return self.cls(v)
        except ValueError:
            raise ProtocolError(f"{path}: unknown {self.desc} variant {v}") from None


class _Struct(_Codec):
    def __init__(self, cls: type, fields: Sequence[_Codec]) -> None:
        names = [f.name for f in dataclasses.fields(cls)]
        if len(names) != len(fields):
            raise AssertionError(f"schema of {cls.__name__} has {len(fields)} codecs for {names}")
        self.cls = cls
        self.fields = list(zip(names, fields))
        self.desc = cls.__name__

    def encode(self, value: Any, out: bytearray, path: str) -> None:
        if type(value) is not self.cls:
            raise EncodeError(f"{path}: expected {self.desc}, got {type(value).__name__}")
        for name, codec in self.fields:
            codec.encode(getattr(value, name), out, f"{path}.{name}")

    def decode(self, r: _Reader, path: str) -> Any:
        kw = {name: codec.decode(r, f"{path}.{name}") for name, codec in self.fields}
        return self.cls(**kw)


_STREAM_INFO = _Struct(
    StreamInfo,
    [STR, STR, _Enum(StreamState), U32, U32, _Enum(PixelFormat), U64, U32, BOOL, _Opt(STR), F64],
)

_STREAM_STATS = _Struct(
    StreamStats, [_STREAM_INFO, F64, U64, U64, U64, _Opt(STR), U64, U64, U32, STR]
)

_VARIANT = _Struct(VariantRequest, [STR, _Opt(U32), _Opt(U32), _Enum(PixelFormat)])

#: The wire schema of every message type, in field order.
SCHEMAS: Dict[type, _Struct] = {
    HelloRequest: _Struct(HelloRequest, [U32, U32, STR]),
    StartRequest: _Struct(
        StartRequest,
        [
            STR, STR, _Opt(U32), _Opt(U32), _Enum(PixelFormat), _Opt(U32), _Enum(Transport), BOOL,
            BOOL, _Opt(_Enum(HwAccel)), _Vec(_VARIANT),
        ],
    ),
    StopRequest: _Struct(StopRequest, [STR]),
    ListRequest: _Struct(ListRequest, []),
    StatsRequest: _Struct(StatsRequest, [STR]),
    AttachRequest: _Struct(AttachRequest, [STR]),
    DetachRequest: _Struct(DetachRequest, [STR]),
    ReloadRequest: _Struct(ReloadRequest, []),
    StreamInfo: _STREAM_INFO,
    StreamStats: _STREAM_STATS,
    VariantRequest: _VARIANT,
    Attachment: _Struct(
        Attachment, [STR, STR, U64, U32, U32, _Enum(PixelFormat), U64, U32, U64]
    ),
    HelloResponse: _Struct(HelloResponse, [U32, STR]),
    Started: _Struct(Started, [_STREAM_INFO, BOOL]),
    Stopped: _Struct(Stopped, [STR]),
    StreamList: _Struct(StreamList, [_Vec(_STREAM_INFO)]),
    StatsResponse: _Struct(StatsResponse, [_STREAM_STATS]),
    Detached: _Struct(Detached, [STR]),
    ErrorResponse: _Struct(ErrorResponse, [_Enum(ErrorCode), STR]),
    Reloaded: _Struct(Reloaded, [STR]),
}


def _encode_variant(value: Any, variants: Tuple[type, ...], kind: str) -> bytes:
    try:
        index = variants.index(type(value))
    except ValueError:
        raise EncodeError(f"{type(value).__name__} is not a {kind}") from None
    out = bytearray()
    U32.encode(index, out, kind)
    SCHEMAS[type(value)].encode(value, out, type(value).__name__)
    if len(out) > MAX_FRAME:
        raise FrameTooLarge(len(out), MAX_FRAME)
    return bytes(out)


def _decode_variant(body: bytes, variants: Tuple[type, ...], kind: str) -> Any:
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(len(body), MAX_FRAME)
    r = _Reader(body)
    index = U32.decode(r, f"{kind} variant")
    if index >= len(variants):
        raise ProtocolError(f"unknown {kind} variant {index}")
    cls = variants[index]
    value = SCHEMAS[cls].decode(r, cls.__name__)
    if r.remaining():
        raise ProtocolError(f"{r.remaining()} trailing bytes after the {cls.__name__} message")
    return value


def encode_request(req: Request) -> bytes:
    """The frame body of a request."""
    return _encode_variant(req, REQUEST_VARIANTS, "Request")


def decode_request(body: bytes) -> Request:
    """Parses a request body (what the broker does; used by tests)."""
    return _decode_variant(body, REQUEST_VARIANTS, "Request")  # type: ignore[no-any-return]


def encode_response(resp: Response) -> bytes:
    """The frame body of a response (what the broker does; used by tests)."""
    return _encode_variant(resp, RESPONSE_VARIANTS, "Response")


def decode_response(body: bytes) -> Response:
    """Parses a response body."""
    return _decode_variant(body, RESPONSE_VARIANTS, "Response")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- framing

_LEN = struct.Struct("<I")


def frame(body: bytes) -> bytes:
    """Length prefix plus body; refuses bodies over :data:`MAX_FRAME`."""
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(len(body), MAX_FRAME)
    return _LEN.pack(len(body)) + body


def _read_exact(recv: Callable[[int], bytes], n: int, what: str) -> bytes:
    parts: List[bytes] = []
    got = 0
    while got < n:
        chunk = recv(min(n - got, 1 << 16))
        if not chunk:
            raise BrokerDisconnected(f"connection closed inside {what} ({got} of {n} bytes read)")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(recv: Callable[[int], bytes]) -> Optional[bytes]:
    """Reads one frame body with ``recv(n)`` (returns up to ``n`` bytes, ``b""`` at
    the end). ``None`` on a clean end before the length; a length over
    :data:`MAX_FRAME` is refused before anything is allocated for the body."""
    first = recv(4)
    if not first:
        return None
    head = first if len(first) == 4 else first + _read_exact(recv, 4 - len(first), "a frame length")
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise FrameTooLarge(n, MAX_FRAME)
    return _read_exact(recv, n, "a frame body")


def default_socket_path() -> str:
    """Where the broker listens unless told otherwise: ``$FRAMEBROKER_SOCKET``, else
    ``$XDG_RUNTIME_DIR/framebroker/broker.sock``, else
    ``/tmp/framebroker-<uid>/broker.sock`` (empty variables count as unset).

    On Windows a named pipe: ``$FRAMEBROKER_SOCKET`` (``X`` means ``\\\\.\\pipe\\X``
    unless it is a pipe path already), else ``\\\\.\\pipe\\framebroker-<user>``."""
    env = os.environ.get(SOCKET_ENV)
    if WINDOWS:
        return _win32.pipe_path(env) if env else _win32.default_pipe_path()
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "framebroker", "broker.sock")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return f"/tmp/framebroker-{uid}/broker.sock"


# --------------------------------------------------------------------------- client

R = TypeVar("R")


class BrokerClient:
    """One session with the broker over its control socket.

    Blocking and thread-safe (one request at a time). Streams attached through a
    session are detached by the broker when the session closes, so keep the
    client open for as long as you read a stream::

        with BrokerClient() as broker:
            att = broker.attach("cam-1")

    Errors: :class:`BrokerNotRunning` when nothing listens on the socket,
    :class:`BrokerError` when the broker refuses a request (``.code`` says why),
    :class:`BrokerDisconnected` when the session drops, :class:`ProtocolError`
    for anything malformed.
    """

    def __init__(
        self,
        socket_path: "Optional[Union[str, os.PathLike[str]]]" = None,
        *,
        timeout: float = 10.0,
        client_name: str = CLIENT_NAME,
        connect: bool = True,
    ) -> None:
        self.socket_path = os.fspath(socket_path) if socket_path else default_socket_path()
        if WINDOWS:
            self.socket_path = _win32.pipe_path(self.socket_path)
        self.timeout = timeout
        self.client_name = client_name
        self.broker_name: Optional[str] = None
        self.protocol: Optional[int] = None
        self._sock: "Optional[Union[socket.socket, _win32.PipeStream]]" = None
        self._lock = threading.Lock()
        if connect:
            self.connect()

    # -- session

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> HelloResponse:
        """Connects (closing any previous session) and performs the Hello handshake."""
        with self._lock:
            self._close_locked()
            self._sock = self._connect_pipe() if WINDOWS else self._connect_unix()
            try:
                hello = HelloRequest(client=self.client_name)
                resp = self._roundtrip_locked(hello, "Hello")
            except BaseException:
                self._close_locked()
                raise
            if isinstance(resp, ErrorResponse):
                self._close_locked()
                cls = UnsupportedVersion if resp.code == ErrorCode.UNSUPPORTED_VERSION else BrokerError
                raise cls(resp.code, resp.message, "Hello")
            if not isinstance(resp, HelloResponse):
                self._close_locked()
                raise ProtocolError(f"expected Hello from {self.socket_path}, got {type(resp).__name__}")
            if resp.protocol != PROTOCOL_VERSION:
                self._close_locked()
                raise UnsupportedVersion(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"broker speaks protocol {resp.protocol}, this client {PROTOCOL_VERSION}: "
                    "upgrade the older side",
                    "Hello",
                )
            self.broker_name = resp.broker
            self.protocol = resp.protocol
            log.debug("connected to %s (%s)", self.socket_path, resp.broker)
            return resp

    def _connect_unix(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
        except FileNotFoundError:
            s.close()
            raise BrokerNotRunning(self.socket_path, "no such socket") from None
        except ConnectionRefusedError:
            s.close()
            raise BrokerNotRunning(self.socket_path, "connection refused: a stale socket file") from None
        except PermissionError:
            s.close()
            raise FrameBrokerError(
                f"permission denied on the control socket {self.socket_path}: it is owner-only; "
                "run as the broker's user"
            ) from None
        except socket.timeout:
            s.close()
            raise BrokerNotRunning(self.socket_path, f"connect timed out after {self.timeout} s") from None
        except OSError as e:
            s.close()
            raise BrokerNotRunning(self.socket_path, e.strerror or str(e)) from None
        return s

    def _connect_pipe(self) -> "_win32.PipeStream":
        try:
            return _win32.PipeStream(self.socket_path, self.timeout)
        except FileNotFoundError:
            raise BrokerNotRunning(self.socket_path, "no such pipe") from None
        except PermissionError:
            raise FrameBrokerError(
                f"permission denied on the control pipe {self.socket_path}: it is owner-only; "
                "run as the broker's user"
            ) from None
        except TimeoutError:
            raise BrokerNotRunning(self.socket_path, f"connect timed out after {self.timeout} s") from None
        except OSError as e:
            raise BrokerNotRunning(self.socket_path, e.strerror or str(e)) from None

    def close(self) -> None:
        """Ends the session (the broker detaches everything it attached)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> "BrokerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- requests

    def _roundtrip_locked(self, req: Request, what: str) -> Response:
        s = self._sock
        if s is None:
            raise BrokerDisconnected(f"not connected to the broker at {self.socket_path}")
        data = frame(encode_request(req))
        try:
            s.sendall(data)
            body = read_frame(s.recv)
        except socket.timeout:
            self._close_locked()
            raise BrokerDisconnected(
                f"no answer to {what} from {self.socket_path} within {self.timeout} s"
            ) from None
        except BrokerDisconnected as e:
            self._close_locked()
            raise BrokerDisconnected(f"broker at {self.socket_path}: {e}") from None
        except ProtocolError:
            self._close_locked()
            raise
        except OSError as e:
            self._close_locked()
            raise BrokerDisconnected(
                f"lost the broker at {self.socket_path} during {what}: {e.strerror or e}"
            ) from None
        if body is None:
            self._close_locked()
            raise BrokerDisconnected(
                f"the broker at {self.socket_path} closed the session (stopped or crashed) during {what}"
            )
        try:
            return decode_response(body)
        except ProtocolError:
            self._close_locked()
            raise

    def request(self, req: Request) -> Response:
        """Sends one request and returns its response (``ErrorResponse`` included)."""
        with self._lock:
            return self._roundtrip_locked(req, type(req).__name__)

    def _expect(self, req: Request, cls: Type[R], what: str) -> R:
        resp = self.request(req)
        if isinstance(resp, ErrorResponse):
            raise BrokerError(resp.code, resp.message, what)
        if not isinstance(resp, cls):
            with self._lock:
                self._close_locked()
            raise ProtocolError(f"{what}: expected {cls.__name__}, got {type(resp).__name__}")
        return resp

    def start(
        self,
        id: str,
        url: str,
        *,
        width: Optional[int] = None,
        height: Optional[int] = None,
        pixel_format: PixelFormat = PixelFormat.BGR24,
        ring_slots: Optional[int] = None,
        transport: Transport = Transport.TCP,
        allow_duplicate_url: bool = False,
        on_demand: bool = False,
        hwaccel: Optional[HwAccel] = None,
        variants: Sequence[VariantRequest] = (),
    ) -> Started:
        """Starts a stream. The same id and URL again return the running one
        (``Started.created`` false); a new id for a URL already decoded is a stream
        of its own on that decode (an alias or a variant, ``stream.parent`` set).
        ``variants`` are further outputs of the same decode, each its own stream."""
        req = StartRequest(
            id, url, width, height, PixelFormat(pixel_format), ring_slots, Transport(transport),
            allow_duplicate_url, on_demand, None if hwaccel is None else HwAccel(hwaccel),
            tuple(variants),
        )
        return self._expect(req, Started, f"start stream {id}")

    def stop(self, id: str) -> None:
        self._expect(StopRequest(id), Stopped, f"stop stream {id}")

    def list(self) -> List[StreamInfo]:
        return list(self._expect(ListRequest(), StreamList, "list streams").streams)

    def stats(self, id: str) -> StreamStats:
        return self._expect(StatsRequest(id), StatsResponse, f"stats of stream {id}").stats

    def attach(self, id: str) -> Attachment:
        """Becomes a reader of ``id``; ``BrokerError`` with ``NOT_READY`` while the
        stream has no segment yet."""
        return self._expect(AttachRequest(id), Attachment, f"attach stream {id}")

    def detach(self, id: str) -> None:
        self._expect(DetachRequest(id), Detached, f"detach stream {id}")

    def reload(self) -> str:
        """Makes the broker re-read its config file and apply its streams (SIGHUP's
        job, on every system); returns what changed. ``BrokerError`` when the broker
        runs without a config file or the file is invalid (nothing changes then)."""
        return self._expect(ReloadRequest(), Reloaded, "reload the config").summary
