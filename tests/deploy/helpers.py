"""Helpers of the deployment tests (Dockerfile, systemd units, cargo install,
the Python wheel, the Kubernetes manifests). They use the binaries the workspace
build left in ``target/debug`` (``$FRAMEBROKER_BIN`` overrides the broker's path)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, TypeVar

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BROKER_BIN = Path(os.environ.get("FRAMEBROKER_BIN") or REPO / "target" / "debug" / "framebroker")
GATEWAY_BIN = BROKER_BIN.parent / "framebroker-gateway"

T = TypeVar("T")
_counter = itertools.count()


def unique(tag: str) -> str:
    """A name no parallel test or run shares (shm prefixes, temp names)."""
    return f"{tag}{os.getpid()}x{next(_counter)}"


def workspace_version() -> str:
    """``[workspace.package].version`` of the root Cargo.toml."""
    import tomllib

    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment without FRAMEBROKER_* settings of the caller (they would
    override the files under test), without backtraces, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEBROKER_")}
    env["RUST_BACKTRACE"] = "0"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(timeout: float, probe: Callable[[], Optional[T]], step: float = 0.1) -> Optional[T]:
    """``probe()`` until it returns something other than None, for at most ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None or time.monotonic() > end:
            return got
        time.sleep(step)


def run(cmd: List[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def config_check(path: Path) -> Optional[str]:
    """Loads ``path`` with the real broker: None when the broker accepts the file,
    else the broker's error. The broker is pointed at an ffmpeg that does not exist,
    so it stops right after loading and validating the file and its streams (the
    first thing it does) and before it binds a socket or starts any source: the
    example cameras on private addresses are never contacted."""
    r = run(
        [str(BROKER_BIN), "serve", "--config", str(path), "--socket", f"/nonexistent/{unique('s')}.sock",
         "--ffmpeg", "/nonexistent/ffmpeg"],
        timeout=30,
        env=clean_env(),
    )
    first = (r.stderr.strip().splitlines() or [""])[0]
    assert r.returncode != 0, f"the broker ran with {path} and a missing ffmpeg: {r.stderr}"
    if first == "Error: ffmpeg not found at /nonexistent/ffmpeg":
        return None
    return r.stderr.strip()
