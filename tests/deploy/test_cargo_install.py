"""`cargo install --path broker` and `--path web-gateway` work, and the installed
binaries print the workspace version."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from .helpers import REPO, run, workspace_version

pytestmark = pytest.mark.usefixtures("binaries")


@pytest.mark.parametrize(
    "crate, binary, extra",
    [
        ("broker", "framebroker", []),
        # The broker's own decoder, as docs/DEPLOY.md installs it.
        ("broker/decoder", "framebroker-decoder", ["--features", "libav"]),
        ("web-gateway", "framebroker-gateway", []),
    ],
)
def test_cargo_install_gives_a_binary_with_the_workspace_version(
    crate: str, binary: str, extra: list, tmp_path: Path
) -> None:
    cargo = shutil.which("cargo")
    assert cargo, "cargo is on PATH wherever this suite runs (it builds the binaries first)"
    # --debug with the workspace's target dir reuses the build scripts/test.sh made.
    env = dict(os.environ, CARGO_TARGET_DIR=str(REPO / "target"))
    r = run(
        [cargo, "install", "--locked", "--debug", "--path", str(REPO / crate), *extra, "--root", str(tmp_path)],
        timeout=1200,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    installed = tmp_path / "bin" / binary
    assert installed.is_file() and os.access(installed, os.X_OK)
    out = run([str(installed), "--version"], timeout=30)
    assert out.returncode == 0, out.stderr
    want = f"{binary} {workspace_version()}"
    if binary == "framebroker-decoder":
        # It adds the libav it runs with: "framebroker-decoder 0.1.0 libav 5.1.9-0+deb12u1".
        assert re.fullmatch(re.escape(want) + r" libav \S+", out.stdout.strip()), out.stdout
    else:
        assert out.stdout.strip() == want
