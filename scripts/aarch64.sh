#!/usr/bin/env bash
# The aarch64 (ARM64 Linux) stage of scripts/test.sh, under qemu-user on an x86-64
# host (packages and Rust target: scripts/setup.sh --test):
#   1. cross-builds the workspace's libraries and programs for
#      aarch64-unknown-linux-gnu (its own target dir, target/aarch64);
#   2. runs the proto and client-rs tests there under qemu-aarch64 (cargo's runner);
#   3. runs the Python ring tests on Debian's arm64 CPython with numpy under qemu
#      (a sysroot of .debs and aarch64 wheels in target/aarch64/python, made once),
#      on the pure-Python paths and on the client's compiled read path;
#   4. one cross-process run: the aarch64 broker with the host's ffmpeg on testsrc,
#      an aarch64 and an x86-64 Rust reader, byte-identical frames
#      (tests/aarch64/cross_process.py).
# qemu-user on x86-64 gives the guest x86's strong memory order: it runs the
# aarch64 code, but cannot show a reordering. That the fences sit where the
# protocol needs them rests on proto/doc/decisions.md and the loom model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
export CARGO_TARGET_DIR="$ROOT/target/aarch64"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
PYROOT="$CARGO_TARGET_DIR/python"
t0=$(date +%s)
part() { printf -- '--> aarch64: %s (%s s so far)\n' "$*" "$(( $(date +%s) - t0 ))"; }

part "cross-build of the workspace"
# Every library and program; of the tests, those run below (the proto and
# client-rs suites): the others are built and run on x86-64, and building
# their binaries here took CI a minute for nothing run.
cargo build --workspace --bins --locked --target "$TARGET"

part "proto and client-rs tests under qemu-aarch64"
cargo test --locked --target "$TARGET" -p framebroker-proto -p framebroker-client

# Debian 12's arm64 CPython (the interpreter users get from apt on a board) and
# its shared libraries, unpacked into a sysroot; numpy and pytest as aarch64 wheels.
PY_DEBS=(libc6 libgcc-s1 libstdc++6 libatomic1 libffi8 zlib1g libexpat1 libssl3
         libbz2-1.0 liblzma5 libcrypt1 libuuid1 python3.11-minimal libpython3.11-minimal
         libpython3.11-stdlib libpython3.11-dev)
make_pyroot() {
    local stamp="$PYROOT/.made" want="${PY_DEBS[*]} numpy pytest"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
    rm -rf "$PYROOT" && mkdir -p "$PYROOT/debs" "$PYROOT/root" "$PYROOT/wheels" "$PYROOT/site"
    if ! (cd "$PYROOT/debs" && apt-get download -q "${PY_DEBS[@]/%/:arm64}") > "$PYROOT/apt.log" 2>&1; then
        cat "$PYROOT/apt.log" >&2
        echo "aarch64: apt-get download of arm64 packages failed (scripts/setup.sh --test adds the arm64 architecture)" >&2
        exit 1
    fi
    for deb in "$PYROOT"/debs/*.deb; do dpkg-deb -x "$deb" "$PYROOT/root"; done
    .venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 -d "$PYROOT/wheels" numpy pytest
    for whl in "$PYROOT"/wheels/*.whl; do .venv/bin/python -m zipfile -e "$whl" "$PYROOT/site"; done
    # `python3` for subprocesses too: a tiny host script that runs the guest
    # interpreter under qemu (-0 makes it its own sys.executable).
    printf '#!/bin/sh\nexec qemu-aarch64 -L "%s" -0 "%s" "%s" "$@"\n' \
        "$PYROOT/root" "$PYROOT/python3" "$PYROOT/root/usr/bin/python3.11" > "$PYROOT/python3"
    chmod +x "$PYROOT/python3"
    echo "$want" > "$stamp"
}
part "Python ring tests on arm64 CPython under qemu-aarch64"
make_pyroot
PYTHONPATH="$PYROOT/site" "$PYROOT/python3" -c 'import platform, numpy; assert platform.machine() == "aarch64"; print("python", platform.python_version(), platform.machine(), "numpy", numpy.__version__)'
# The client's compiled read path for that interpreter, cross-compiled as a
# native `pip install` on a board would build it (its headers from
# libpython3.11-dev), next to the package (ignored by git), so the ring tests
# run it too (FRAMEBROKER_TEST_COMPILED: its tests fail rather than skip).
aarch64-linux-gnu-gcc -O2 -std=c11 -Wall -Wextra -Werror -shared -fPIC \
    -I"$PYROOT/root/usr/include/python3.11" -I"$PYROOT/root/usr/include" \
    client-py/framebroker/_fastring.c -o client-py/framebroker/_fastring.cpython-311-aarch64-linux-gnu.so
PYTHONPATH="$ROOT/client-py:$PYROOT/site" FRAMEBROKER_TEST_COMPILED=required "$PYROOT/python3" -m pytest -q -p no:cacheprovider \
    client-py/tests/test_ring.py client-py/tests/test_layout.py

part "cross-process: aarch64 broker, aarch64 and x86-64 readers"
[ -x target/debug/fb-reader ] || cargo build --locked -p framebroker-tests --bin fb-reader
.venv/bin/python tests/aarch64/cross_process.py "$CARGO_TARGET_DIR/$TARGET/debug" target/debug/fb-reader \
    --sysroot "$SYSROOT"
part "done"
