#!/usr/bin/env bash
# The Windows stage, on this Linux machine: cross-builds the workspace for
# x86_64-pc-windows-gnu (mingw), lints it for that target, runs the proto unit
# tests (ring over Windows shared memory, seqlock, wake events, protocol golden
# vectors, naming) and the cross-process end-to-end tests (tests/windows/e2e.py,
# with the Windows-Python reader; tests/windows/python_e2e.py)
# under Wine, with the Windows ffmpeg from the imageio-ffmpeg wheel.
#
#   tests/windows/run.sh [--figures]     (scripts/setup.sh --test installs mingw,
#                                          wine64 and the Rust target)
#
# Nothing is cached between runs: the Wine prefix is made fresh under target/,
# the ffmpeg wheel is downloaded through pip every time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TARGET=x86_64-pc-windows-gnu
WORK="$ROOT/target/windows"
export WINE=/usr/lib/wine/wine64
export WINEPREFIX="$ROOT/target/wine-prefix"
export WINEDEBUG=-all
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$WINE"
say() { printf '\n--> windows: %s\n' "$*"; }
start=$(date +%s)

say "build and clippy for $TARGET"
cargo build --workspace --bins --locked --target "$TARGET"
cargo clippy --workspace --lib --bins --locked --target "$TARGET" -- -D warnings
cargo clippy -p framebroker-proto --all-targets --locked --target "$TARGET" -- -D warnings

say "a fresh Wine prefix"
rm -rf "$WINEPREFIX" "$WORK"
mkdir -p "$WORK"
"$WINE" wineboot --init >/dev/null 2>&1 || true
# Wine 8 lacks bcryptprimitives.dll (Rust's std imports ProcessPrng from it on
# Windows 10+); a stand-in for the test prefix only, see the C file.
x86_64-w64-mingw32-gcc -O2 -shared -Wl,--kill-at -o "$WORK/bcryptprimitives.dll" \
    tests/windows/bcryptprimitives.c -ladvapi32
cp "$WORK/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"

say "the Windows ffmpeg (imageio-ffmpeg wheel for win_amd64)"
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --platform win_amd64 \
    imageio-ffmpeg -d "$WORK/dl"
.venv/bin/python - "$WORK" <<'PY'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheel = next((work / "dl").glob("imageio_ffmpeg-*-win_amd64.whl"))
with zipfile.ZipFile(wheel) as z:
    exe = next(n for n in z.namelist() if n.endswith(".exe") and "ffmpeg-win" in n)
    (work / "ffmpeg.exe").write_bytes(z.read(exe))
print(f"{exe} from {wheel.name}")
PY

say "unit tests under Wine: ring (heap and Windows shared memory), seqlock, wake events, protocol, naming"
cargo test -p framebroker-proto --locked --target "$TARGET" --lib --test golden

say "cross-process end to end under Wine"
# The Linux binaries are needed only for the Linux side of --figures.
if [ "${1:-}" = "--figures" ]; then cargo build --workspace --bins --locked; fi
.venv/bin/python tests/windows/e2e.py "$@"

say "the Windows-Python reader across a broker kill and restart"
.venv/bin/python tests/windows/python_e2e.py --broker-exe "target/$TARGET/debug/framebroker.exe" \
    --fb-reader-exe "target/$TARGET/debug/fb-reader.exe" --ffmpeg "$WORK/ffmpeg.exe"

say "done in $(( $(date +%s) - start )) s"
