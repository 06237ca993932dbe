#!/usr/bin/env bash
# client-py's unit tests (everything but the end-to-end ones) on a Windows CPython
# under Wine: the codec and golden vectors, the control client over a real named
# pipe, the ring reader over real named mappings and wake events
# (client-py/tests/test_win32.py and the cross-platform suites).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export WINE="${WINE:-/usr/lib/wine/wine64}"
export WINEPREFIX="${WINEPREFIX:-$ROOT/target/wine-prefix}"
bash tests/windows/python_env.sh run -m pytest -q -p no:cacheprovider client-py/tests -m "not e2e" "$@"
# Let the prefix's wineserver end with its last program, so a later stage may
# recreate the prefix.
"$(dirname "$WINE")/wineserver" -w
