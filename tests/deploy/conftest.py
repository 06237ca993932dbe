"""Fixtures of the deployment tests."""

from __future__ import annotations

import pytest

from .helpers import BROKER_BIN, GATEWAY_BIN


@pytest.fixture(scope="session")
def binaries() -> None:
    """The built broker and gateway; scripts/test.sh builds them before this suite."""
    missing = [str(p) for p in (BROKER_BIN, GATEWAY_BIN) if not p.exists()]
    if missing:
        pytest.fail(f"build the binaries first (cargo build --workspace --bins): missing {missing}")
