"""Where the contract files live (the repository root is two levels up)."""

from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parents[1]
REPO = CLIENT_DIR.parent
TESTDATA = REPO / "proto" / "testdata"
