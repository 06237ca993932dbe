"""The control-protocol codec against proto/testdata/golden.json (byte for byte, both
ways), framing limits, malformed input, the socket path rules, and BrokerClient's
handshake and errors against a scripted peer (over a Unix socket, or over a named
pipe on Windows)."""

from __future__ import annotations

import dataclasses
import enum
import io
import itertools
import json
import os
import re
import socket
import struct
import tempfile
import threading
from typing import Any, Callable, Dict, Iterator, List

import pytest

from framebroker import _protocol as P
from framebroker._errors import (
    BrokerDisconnected,
    BrokerError,
    BrokerNotRunning,
    FrameTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from framebroker._layout import PixelFormat, StreamState
from framebroker._platform import WINDOWS
from framebroker._protocol import (
    MAX_FRAME,
    REQUEST_VARIANTS,
    RESPONSE_VARIANTS,
    SCHEMAS,
    AttachRequest,
    BrokerClient,
    ErrorCode,
    HelloRequest,
    HelloResponse,
    ListRequest,
    StartRequest,
    StopRequest,
    Transport,
)

from .paths import TESTDATA

GOLDEN = json.loads((TESTDATA / "golden.json").read_text(encoding="utf-8"))

REQUEST_NAMES = ["Hello", "Start", "Stop", "List", "Stats", "Attach", "Detach", "Reload"]
RESPONSE_NAMES = [
    "Hello", "Started", "Stopped", "List", "Stats", "Attached", "Detached", "Error", "Reloaded",
]


# -- serde JSON <-> dataclasses (serde's externally tagged form, as golden.json has it)


def _serde_name(member: enum.IntEnum) -> str:
    """PixelFormat.YUV420P -> "Yuv420p", ErrorCode.NOT_FOUND -> "NotFound"."""
    return "".join(part.capitalize() for part in member.name.split("_"))


def _from_json(codec: Any, v: Any) -> Any:
    if isinstance(codec, P._Enum):
        matches = [m for m in codec.cls if _serde_name(m) == v]
        assert matches, f"no {codec.cls.__name__} named {v!r}"
        return matches[0]
    if isinstance(codec, P._Opt):
        return None if v is None else _from_json(codec.inner, v)
    if isinstance(codec, P._Vec):
        return tuple(_from_json(codec.inner, x) for x in v)
    if isinstance(codec, P._Struct):
        assert set(v) == {n for n, _ in codec.fields}, f"fields of {codec.cls.__name__}"
        return codec.cls(**{n: _from_json(c, v[n]) for n, c in codec.fields})
    return v


def _to_json(codec: Any, v: Any) -> Any:
    if isinstance(codec, P._Enum):
        return _serde_name(v)
    if isinstance(codec, P._Opt):
        return None if v is None else _to_json(codec.inner, v)
    if isinstance(codec, P._Vec):
        return [_to_json(codec.inner, x) for x in v]
    if isinstance(codec, P._Struct):
        return {n: _to_json(c, getattr(v, n)) for n, c in codec.fields}
    return v


def message_from_json(kind: str, value: Any) -> Any:
    names, variants = (REQUEST_NAMES, REQUEST_VARIANTS) if kind == "request" else (RESPONSE_NAMES, RESPONSE_VARIANTS)
    if isinstance(value, str):  # unit variant
        name, payload = value, {}
    else:
        ((name, payload),) = value.items()
    return _from_json(SCHEMAS[variants[names.index(name)]], payload)


def message_to_json(kind: str, msg: Any) -> Any:
    names, variants = (REQUEST_NAMES, REQUEST_VARIANTS) if kind == "request" else (RESPONSE_NAMES, RESPONSE_VARIANTS)
    name = names[variants.index(type(msg))]
    schema = SCHEMAS[type(msg)]
    if not schema.fields:
        return name
    return {name: _to_json(schema, msg)}


VECTORS = GOLDEN["vectors"]


def test_golden_constants() -> None:
    assert GOLDEN["max_frame"] == MAX_FRAME
    assert GOLDEN["protocol_magic"] == P.PROTOCOL_MAGIC
    assert GOLDEN["protocol_version"] == P.PROTOCOL_VERSION


def test_golden_covers_every_variant() -> None:
    for kind, variants in (("request", REQUEST_VARIANTS), ("response", RESPONSE_VARIANTS)):
        seen = {type(message_from_json(kind, v["value"])) for v in VECTORS if v["kind"] == kind}
        assert seen == set(variants), kind


@pytest.mark.parametrize("vec", VECTORS, ids=[f"{v['kind']}-{v['name']}" for v in VECTORS])
def test_golden_encode(vec: Dict[str, Any]) -> None:
    msg = message_from_json(vec["kind"], vec["value"])
    enc = P.encode_request if vec["kind"] == "request" else P.encode_response
    assert enc(msg).hex() == vec["hex"]


@pytest.mark.parametrize("vec", VECTORS, ids=[f"{v['kind']}-{v['name']}" for v in VECTORS])
def test_golden_decode(vec: Dict[str, Any]) -> None:
    dec = P.decode_request if vec["kind"] == "request" else P.decode_response
    msg = dec(bytes.fromhex(vec["hex"]))
    assert msg == message_from_json(vec["kind"], vec["value"])
    assert message_to_json(vec["kind"], msg) == vec["value"]


def test_documented_example_frame() -> None:
    want = bytes.fromhex("11000000" "02000000" "0500000000000000" "63616d2d31")
    assert P.frame(P.encode_request(StopRequest("cam-1"))) == want


def test_hello_is_variant_zero_with_magic_first() -> None:
    b = P.encode_request(HelloRequest(client="x"))
    assert b[0:4] == bytes(4) and b[4:8] == b"FBCP" and b[8:12] == struct.pack("<I", P.PROTOCOL_VERSION)


def test_every_schema_matches_its_dataclass() -> None:
    for cls, schema in SCHEMAS.items():
        assert [f.name for f in dataclasses.fields(cls)] == [n for n, _ in schema.fields]


# -- malformed bodies ---------------------------------------------------------------


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


@pytest.mark.parametrize(
    "body, message",
    [
        (_u32(99), "unknown Request variant 99"),
        (_u32(2) + _u64(1000), "truncated"),  # string length past the end
        (_u32(2) + _u64(1 << 60), "truncated"),  # huge length: must not allocate
        (_u32(2) + _u64(2) + b"\xff\xfe", "invalid UTF-8"),
        (P.encode_request(ListRequest()) + b"\0", "1 trailing bytes"),
        (b"\x03\x00", "truncated"),
        (b"", "truncated"),
    ],
)
def test_malformed_requests(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        P.decode_request(body)


def test_malformed_fields() -> None:
    good = bytearray(P.encode_request(StartRequest("a", "rtsp://h/x", on_demand=True)))
    bad_bool = bytearray(good)
    bad_bool[-10] = 2  # on_demand, before the hwaccel Option tag and the variants count
    with pytest.raises(ProtocolError, match="invalid bool byte 2"):
        P.decode_request(bytes(bad_bool))
    # width Option tag (after variant, id and url) = 2
    off = 4 + 8 + 1 + 8 + len("rtsp://h/x")
    bad_opt = bytearray(good)
    bad_opt[off] = 2
    with pytest.raises(ProtocolError, match="invalid Option tag 2"):
        P.decode_request(bytes(bad_opt))
    bad_enum = bytearray(good)
    bad_enum[off + 2 : off + 6] = _u32(9)  # pixel_format after two None options
    with pytest.raises(ProtocolError, match="unknown PixelFormat variant 9"):
        P.decode_request(bytes(bad_enum))
    # A Vec claiming more items than there are bytes.
    with pytest.raises(ProtocolError, match="items announced"):
        P.decode_response(_u32(3) + _u64(1 << 40))


@pytest.mark.parametrize(
    "msg, message",
    [
        (StartRequest("a", "u", width=-1), "out of range for u32"),
        (StartRequest("a", "u", width=1 << 32), "out of range for u32"),
        (StartRequest("a", "u", ring_slots=True), "expected u32"),  # type: ignore[arg-type]
        (StartRequest(5, "u"), "expected str"),  # type: ignore[arg-type]
        (StartRequest("a", "u", on_demand=1), "expected bool"),  # type: ignore[arg-type]
        (StartRequest("a", "u", pixel_format=9), "not a PixelFormat"),  # type: ignore[arg-type]
        (StopRequest("\udcff"), "UTF-8"),
    ],
)
def test_unencodable_values(msg: Any, message: str) -> None:
    with pytest.raises(P.EncodeError, match=message):
        P.encode_request(msg)


# -- framing ------------------------------------------------------------------------


class Recorder:
    def __init__(self, data: bytes) -> None:
        self.io = io.BytesIO(data)
        self.asked: List[int] = []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        return self.io.read(min(n, 3))  # short reads, like a socket may do


def test_frames_round_trip_with_short_reads() -> None:
    body = P.encode_request(StartRequest("cam-1", "rtsp://h/x" * 50))
    r = Recorder(P.frame(body) * 2)
    assert P.read_frame(r.recv) == body
    assert P.read_frame(r.recv) == body
    assert P.read_frame(r.recv) is None  # clean end of stream


def test_oversized_length_is_refused_before_reading_the_body() -> None:
    r = Recorder(_u32(MAX_FRAME + 1) + b"\0" * 64)
    with pytest.raises(FrameTooLarge, match="1048577 bytes exceeds the limit of 1048576"):
        P.read_frame(r.recv)
    assert sum(r.asked[:2]) <= 8 and all(n <= 4 for n in r.asked), r.asked
    with pytest.raises(FrameTooLarge):
        P.read_frame(Recorder(_u32(0xFFFFFFFF)).recv)


def test_limit_itself_is_allowed() -> None:
    body = b"\0" * MAX_FRAME
    assert P.read_frame(io.BytesIO(P.frame(body)).read) == body
    with pytest.raises(FrameTooLarge):
        P.frame(body + b"\0")


def test_oversized_messages_are_not_encoded() -> None:
    with pytest.raises(FrameTooLarge):
        P.encode_request(StartRequest("a", "x" * MAX_FRAME))


def test_truncated_frames() -> None:
    with pytest.raises(BrokerDisconnected, match="inside a frame length"):
        P.read_frame(io.BytesIO(b"\x01\x00").read)
    with pytest.raises(BrokerDisconnected, match="inside a frame body"):
        P.read_frame(io.BytesIO(b"\x08\x00\x00\x00\x01").read)


# -- socket path --------------------------------------------------------------------


@pytest.mark.skipif(WINDOWS, reason="Unix socket paths; the pipe names: test_default_pipe_path")
def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMEBROKER_SOCKET", "/x/y.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert P.default_socket_path() == "/x/y.sock"
    monkeypatch.setenv("FRAMEBROKER_SOCKET", "")
    assert P.default_socket_path() == "/run/user/7/framebroker/broker.sock"
    monkeypatch.delenv("FRAMEBROKER_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert P.default_socket_path() == f"/tmp/framebroker-{os.getuid()}/broker.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert P.default_socket_path() == f"/tmp/framebroker-{os.getuid()}/broker.sock"


@pytest.mark.skipif(not WINDOWS, reason="Windows pipe names")
def test_default_pipe_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from framebroker import _win32

    user = _win32.user_name()
    assert user
    monkeypatch.setenv("XDG_RUNTIME_DIR", "C:\\run")  # not consulted on Windows
    monkeypatch.delenv("FRAMEBROKER_SOCKET", raising=False)
    assert P.default_socket_path() == f"\\\\.\\pipe\\framebroker-{user}"
    monkeypatch.setenv("FRAMEBROKER_SOCKET", "")
    assert P.default_socket_path() == f"\\\\.\\pipe\\framebroker-{user}"
    monkeypatch.setenv("FRAMEBROKER_SOCKET", "fb-test")
    assert P.default_socket_path() == "\\\\.\\pipe\\fb-test"
    monkeypatch.setenv("FRAMEBROKER_SOCKET", "\\\\.\\PIPE\\Mine")
    assert P.default_socket_path() == "\\\\.\\PIPE\\Mine"
    # A path given to the client follows the same rule.
    assert BrokerClient("fb-x", connect=False).socket_path == "\\\\.\\pipe\\fb-x"


# -- BrokerClient against a scripted peer --------------------------------------------

_pipes = itertools.count()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """Where the scripted peers listen: a directory for Unix sockets; on Windows a
    unique prefix of pipe names (see :func:`endpoint`)."""
    if WINDOWS:
        yield f"\\\\.\\pipe\\fbpytest-{os.getpid()}-{next(_pipes)}"
        return
    with tempfile.TemporaryDirectory(prefix="fbpy-") as d:
        yield d


def endpoint(sock_dir: str, name: str) -> str:
    """A socket path in ``sock_dir``; on Windows a pipe name (a pipe name holds no
    further backslash)."""
    return f"{sock_dir}-{name}" if WINDOWS else os.path.join(sock_dir, name)


def serve_once(path: str, script: Callable[[Any], None]) -> threading.Thread:
    if WINDOWS:
        from .winpipe import PipeServer

        srv: Any = PipeServer(path)
    else:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)

    def run() -> None:
        conn = srv.accept() if WINDOWS else srv.accept()[0]
        try:
            script(conn)
        finally:
            conn.close()
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def recv_request(conn: socket.socket) -> Any:
    body = P.read_frame(conn.recv)
    assert body is not None
    return P.decode_request(body)


def send(conn: socket.socket, resp: Any) -> None:
    conn.sendall(P.frame(P.encode_response(resp)))


def test_not_running_names_the_socket_and_how_to_start(sock_dir: str) -> None:
    path = endpoint(sock_dir, "broker.sock")
    with pytest.raises(BrokerNotRunning) as e:
        BrokerClient(path)
    msg = str(e.value)
    assert path in msg and "framebroker serve" in msg and "scripts/run.sh" in msg


@pytest.mark.skipif(WINDOWS, reason="a named pipe leaves no file behind: nothing stale to refuse")
def test_stale_socket_file_is_refused(sock_dir: str) -> None:
    path = endpoint(sock_dir, "broker.sock")
    # A stale socket file (nobody listening): connection refused, same clear error.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    with pytest.raises(BrokerNotRunning, match="connection refused"):
        BrokerClient(path)


def test_handshake_and_requests(sock_dir: str) -> None:
    path = endpoint(sock_dir, "b.sock")
    seen: List[Any] = []

    def script(conn: socket.socket) -> None:
        seen.append(recv_request(conn))
        send(conn, HelloResponse(P.PROTOCOL_VERSION, "framebroker 0.1.0"))
        seen.append(recv_request(conn))
        send(conn, P.ErrorResponse(ErrorCode.NOT_READY, "stream cam-1 has no segment yet"))
        seen.append(recv_request(conn))
        send(conn, P.StreamList(()))

    t = serve_once(path, script)
    with BrokerClient(path, client_name="test/1") as c:
        assert c.broker_name == "framebroker 0.1.0"
        with pytest.raises(BrokerError) as e:
            c.attach("cam-1")
        assert e.value.code is ErrorCode.NOT_READY and "no segment yet" in str(e.value)
        assert c.list() == []
    t.join(5)
    assert seen == [HelloRequest(client="test/1"), AttachRequest("cam-1"), ListRequest()]


def test_unsupported_version_is_a_clear_error(sock_dir: str) -> None:
    path = endpoint(sock_dir, "b.sock")

    def script(conn: socket.socket) -> None:
        recv_request(conn)
        send(conn, P.ErrorResponse(ErrorCode.UNSUPPORTED_VERSION, "broker speaks protocol 2"))

    serve_once(path, script)
    with pytest.raises(UnsupportedVersion, match="protocol 2"):
        BrokerClient(path)


def test_peer_sending_an_oversized_frame(sock_dir: str) -> None:
    path = endpoint(sock_dir, "b.sock")

    def script(conn: socket.socket) -> None:
        recv_request(conn)
        conn.sendall(_u32(1 << 30))

    serve_once(path, script)
    with pytest.raises(FrameTooLarge):
        BrokerClient(path)


def test_broker_closing_the_session_mid_request(sock_dir: str) -> None:
    path = endpoint(sock_dir, "b.sock")

    def script(conn: socket.socket) -> None:
        recv_request(conn)
        send(conn, HelloResponse(P.PROTOCOL_VERSION, "b"))
        recv_request(conn)  # then close without answering

    serve_once(path, script)
    c = BrokerClient(path)
    with pytest.raises(BrokerDisconnected, match="closed the session"):
        c.stats("cam-1")
    assert not c.connected


def test_a_silent_peer_times_out(sock_dir: str) -> None:
    path = endpoint(sock_dir, "b.sock")
    done = threading.Event()

    def script(conn: socket.socket) -> None:
        done.wait(5)

    serve_once(path, script)
    with pytest.raises(BrokerDisconnected, match=re.escape("no answer to Hello")):
        BrokerClient(path, timeout=0.3)
    done.set()


def test_start_request_defaults_match_rust() -> None:
    r = StartRequest("cam-1", "testsrc://?size=320x240&rate=15")
    assert (r.pixel_format, r.transport, r.on_demand, r.allow_duplicate_url) == (
        PixelFormat.BGR24, Transport.TCP, False, False,
    )
    assert P.encode_request(r).hex() == next(v["hex"] for v in VECTORS if v["name"] == "start_defaults")
    assert StreamState.LIVE == 1
