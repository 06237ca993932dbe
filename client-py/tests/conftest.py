"""Fixtures for the end-to-end tests: the real broker binary, the real RTSP test
camera, the Rust reader. Nothing is built here: the broker is ``$FRAMEBROKER_BIN``
(default ``<repo>/target/debug/framebroker``), the Rust reader ``$FB_READER_BIN``
(default: ``fb-reader`` next to the broker). Tests marked ``e2e`` are skipped, with
the reason, only while the broker binary does not exist."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from framebroker import BrokerClient, BrokerNotRunning

from .paths import REPO

BROKER_BIN = Path(os.environ.get("FRAMEBROKER_BIN") or REPO / "target" / "debug" / "framebroker")
FB_READER_BIN = Path(os.environ.get("FB_READER_BIN") or BROKER_BIN.parent / "fb-reader")
GATEWAY_BIN = Path(os.environ.get("FRAMEBROKER_GATEWAY_BIN") or BROKER_BIN.parent / "framebroker-gateway")
CAMERA_SCRIPT = REPO / "tests" / "camera" / "rtsp_camera.py"
SYSTEM_PYTHON = "/usr/bin/python3"

_counter = itertools.count()
#: On-demand grace of the test brokers, ms.
IDLE_GRACE_MS = 3000


def unique(tag: str) -> str:
    return f"{tag}{os.getpid()}x{next(_counter)}"


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if BROKER_BIN.exists():
        return
    if os.environ.get("FRAMEBROKER_REQUIRE_E2E") == "1":
        # scripts/test.sh builds the broker first: a missing binary there is a
        # failure, never a silent skip.
        raise pytest.UsageError(f"FRAMEBROKER_REQUIRE_E2E=1 but {BROKER_BIN} does not exist")
    skip = pytest.mark.skip(
        reason=f"broker binary {BROKER_BIN} does not exist yet (build it with "
        "`cargo build --workspace --bins`, or set FRAMEBROKER_BIN)"
    )
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


class Broker:
    """``framebroker serve`` on its own socket and segment prefix."""

    def __init__(self, directory: Path, args: List[str], prefix: Optional[str] = None) -> None:
        self.dir = directory
        self.socket = str(directory / "broker.sock")
        self.prefix = prefix or f"{unique('fbpy')}-"
        self.args = args
        self.log_path = directory / f"broker-{next(_counter)}.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self) -> None:
        """Starts (or starts again, same socket and prefix) and waits until it answers."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BROKER_BIN), "serve", "--socket", self.socket, "--shm-prefix", self.prefix, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"},
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                BrokerClient(self.socket, timeout=2).close()
                return
            except BrokerNotRunning:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker did not come up within 10 s:\n{self.log()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> BrokerClient:
        return BrokerClient(self.socket)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: a crashing broker."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def segments(self) -> List[str]:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(self.prefix))

    def ffmpeg_children(self) -> List[int]:
        """The decoder processes of this broker: ffmpeg, or its own decoder
        (``framebroker-decoder``, whose name the kernel cuts to 15 characters)."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if comm in ("ffmpeg", "framebroker-dec") and ppid == self.pid:
                out.append(int(d))
        return out

    def close(self) -> None:
        self.terminate()
        for name in self.segments():  # whatever a killed broker left behind
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except FileNotFoundError:
                pass


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Starts brokers with extra ``serve`` arguments; all stopped at the end."""
    made: List[Broker] = []

    def make(*args: str) -> Broker:
        d = tmp_path / f"b{len(made)}"
        d.mkdir()
        b = Broker(d, list(args))
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker], monkeypatch: pytest.MonkeyPatch) -> Broker:
    """A broker with checksums and a short on-demand grace, whose socket is in
    ``$FRAMEBROKER_SOCKET`` (so ``VideoCapture(url)`` finds it like a user's would).
    (The grace must outlast a camera's start-up: the broker also reaps an on-demand
    stream that has not had its first reader yet.)"""
    b = broker_factory("--checksum", "--idle-grace-ms", str(IDLE_GRACE_MS))
    monkeypatch.setenv("FRAMEBROKER_SOCKET", b.socket)
    monkeypatch.delenv("FRAMEBROKER_SERVER", raising=False)
    return b


class Camera:
    """The GStreamer RTSP test camera (``tests/camera/rtsp_camera.py``)."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args = list(args)
        self.port = port
        self.proc: Optional[subprocess.Popen[str]] = None
        self.url = ""
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(CAMERA_SCRIPT), "--port", str(self.port), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"RTSP test camera did not start ({line!r}); run scripts/setup.sh --test")
        self.url = line.split(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(scope="session")
def camera() -> Iterator[Camera]:
    """One 640x480 30 fps SMPTE-bars camera shared by the session."""
    if not BROKER_BIN.exists():
        pytest.skip(f"broker binary {BROKER_BIN} does not exist yet")
    cam = Camera("--width", "640", "--height", "480", "--fps", "30", "--pattern", "smpte")
    yield cam
    cam.kill()


@pytest.fixture
def camera_factory() -> Iterator[Callable[..., Camera]]:
    """Cameras of their own, for tests that kill or restart them."""
    made: List[Camera] = []

    def make(*args: str) -> Camera:
        c = Camera(*args)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


def closed_port() -> int:
    """A loopback TCP port nobody listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def python_subprocess(code: str, *args: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def repo_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fbpy-e2e-") as d:
        yield Path(d)


class Gateway:
    """``framebroker-gateway`` in front of a test broker, on a free loopback port."""

    def __init__(self, broker: Broker, *args: str) -> None:
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = broker.dir / f"gateway-{next(_counter)}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(GATEWAY_BIN), "--socket", broker.socket, "--listen", f"127.0.0.1:{self.port}", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "NO_COLOR": "1"},
            )
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not come up:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def gateway_factory(broker: Broker) -> Iterator[Callable[..., Gateway]]:
    """Gateways in front of ``broker`` (skipped while the gateway is not built)."""
    if not GATEWAY_BIN.exists():
        pytest.skip(f"gateway binary {GATEWAY_BIN} does not exist yet")
    made: List[Gateway] = []

    def make(*args: str) -> Gateway:
        g = Gateway(broker, *args)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()
