#!/usr/bin/env bash
# Idempotent installer for framebroker's dependencies on Debian 12 / Ubuntu.
#   scripts/setup.sh         what building and running needs (scripts/run.sh):
#     - apt: ffmpeg (the decoder), cmake + nasm (the gateway's libjpeg-turbo build),
#       the FFmpeg headers, pkg-config and libclang (the broker's own decoder,
#       framebroker-decoder, built with --features libav)
#     - .venv (python3 on PATH, no system site-packages): numpy and client-py in
#       editable mode (reading frames from Python; OpenCV is optional there)
#   scripts/setup.sh --test  also what the tests need (scripts/test.sh):
#     - apt: GStreamer RTSP server with Python gi (the loopback test camera),
#       chromium (browser tests), systemd (systemd-analyze), wine64 (the
#       Windows stage)
#     - opencv-python-headless, pytest, websockets in .venv, and .venv-cv4 with
#       OpenCV 4.x; schemathesis, build, kubernetes-validate, psutil, matplotlib;
#       the browser tests' npm packages
#     - apt: gcc-mingw-w64-x86-64 and wine64, and the Rust target
#       x86_64-pc-windows-gnu (the Windows stage, tests/windows/run.sh)
#     - nightly miri (best effort)
# Nothing is fetched that the chosen use does not need. Runs apt-get as root, or
# through sudo otherwise. Fast (< 3 s) when all is present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { echo "setup: $*"; }
warn() { echo "setup: WARNING: $*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo for apt-get" >&2; exit 1; }
    SUDO=(sudo)
fi

apt_install() {  # install the given packages that are not installed yet
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

TEST=0
if [ "${1:-}" = "--test" ]; then TEST=1; fi

# 1. System packages.
# ffmpeg: the decoder; cmake + nasm: turbojpeg builds its own libjpeg-turbo
# (Debian's is too old for it).
APT_PKGS=(ffmpeg cmake nasm)
# The broker's own decoder (framebroker-decoder, used unless `--decoder ffmpeg`)
# links the system's FFmpeg libraries through ffmpeg-next, whose bindings
# bindgen (libclang) generates from these headers at build time.
APT_PKGS+=(pkg-config libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libclang-dev)
if [ "$TEST" = 1 ]; then
    # GStreamer + gi: the loopback RTSP test camera (tests/camera).
    APT_PKGS+=(gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
               gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly python3-gi)
    APT_PKGS+=(chromium)  # the browser tests drive the system Chromium (no download)
    APT_PKGS+=(systemd)   # systemd-analyze verifies the units in deploy/systemd
    # The aarch64 stage (scripts/aarch64.sh): cross linker and libc, qemu-user to
    # run the aarch64 binaries; libatomic1 gives the Python reader's fence (the
    # ring tests force the fenced path on x86-64 too).
    APT_PKGS+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user libatomic1)
    # The Windows stage (tests/windows/run.sh): mingw links the Windows build,
    # Wine runs it and a Windows CPython (tests/windows/python_env.sh); its
    # binary is /usr/lib/wine/wine64, not on PATH.
    APT_PKGS+=(gcc-mingw-w64-x86-64 wine64)
fi
apt_install "${APT_PKGS[@]}"
say "system packages ok"

if [ "$TEST" = 1 ]; then
    # arm64 .debs (Debian's arm64 CPython for the Python ring tests under qemu) are
    # fetched with `apt-get download`, which needs the architecture known to apt.
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        say "dpkg --add-architecture arm64"
        "${SUDO[@]}" dpkg --add-architecture arm64
        "${SUDO[@]}" apt-get update -q >/dev/null
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
        say "rustup target add aarch64-unknown-linux-gnu"
        rustup target add aarch64-unknown-linux-gnu >/dev/null
    fi
fi

# 2. Python venvs: .venv with numpy and the client; with --test also the newest
#    OpenCV and the test tools (pytest, websockets) in it, and .venv-cv4 with
#    OpenCV 4.x, so the client is tested against both major versions.
make_venv() {  # make_venv DIR OPENCV_REQUIREMENT
    local venv="$1" opencv="$2" py="$1/bin/python"
    if ! "$py" -c 'import sys' >/dev/null 2>&1; then
        command -v python3 >/dev/null || apt_install python3
        say "creating $(basename "$venv") with $(command -v python3) ($(python3 --version 2>&1))"
        rm -rf "$venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            # Debian's own python3 needs python3-venv for ensurepip.
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv"
        fi
        "$py" -m pip install -q --upgrade pip
    fi
    # requests: the original server's video_import.py talks HTTP with it (its
    # fetch loop is re-created in web-gateway/tests/browser/test_original_clients.py).
    local pkgs=(numpy) mods=numpy
    if [ "$TEST" = 1 ]; then
        pkgs+=("$opencv" pytest websockets requests)
        mods+=,cv2,pytest,websockets,requests
    fi
    if ! "$py" -c "import $mods" >/dev/null 2>&1; then
        say "pip install ${pkgs[*]} into $(basename "$venv")"
        "$py" -m pip install -q "${pkgs[@]}"
    fi
    if [ -f client-py/pyproject.toml ]; then
        local stamp="$venv/.client-py.installed"
        # Again when the compiled read path's source changed: the editable install
        # builds framebroker/_fastring*.so next to it and only then.
        if [ ! -f "$stamp" ] || [ client-py/pyproject.toml -nt "$stamp" ] \
            || [ client-py/framebroker/_fastring.c -nt "$stamp" ]; then
            say "pip install -e client-py into $(basename "$venv")"
            "$py" -m pip install -q -e client-py 2>&1 | grep -v -i -e warning -e '^ *$' -e '!!' -e '\*\*\*' || true
            touch "$stamp"
        fi
    fi
    say "python venv ok ($py, OpenCV $("$py" -c 'import cv2; print(cv2.__version__)' 2>/dev/null || echo 'not installed'))"
}
make_venv "$ROOT/.venv" opencv-python-headless
if [ "$TEST" = 1 ]; then
    make_venv "$ROOT/.venv-cv4" 'opencv-python-headless<5'
    # The gateway's API is checked against its OpenAPI document with schemathesis.
    if ! "$ROOT/.venv/bin/schemathesis" --version >/dev/null 2>&1; then
        say "pip install schemathesis into .venv"
        "$ROOT/.venv/bin/python" -m pip install -q schemathesis
    fi
    # Deployment tests (tests/deploy): the wheel is built with `build`, the
    # Kubernetes manifests are checked against the official schemas that
    # kubernetes-validate bundles (Debian has no kubeconform).
    if ! "$ROOT/.venv/bin/python" -c 'import build, kubernetes_validate' >/dev/null 2>&1; then
        say "pip install build kubernetes-validate into .venv"
        "$ROOT/.venv/bin/python" -m pip install -q build kubernetes-validate
    fi
    # Benchmarks (bench/run.py; its smoke run is part of the tests): CPU and memory
    # of processes with psutil, the report's plots with matplotlib.
    if ! "$ROOT/.venv/bin/python" -c 'import psutil, matplotlib' >/dev/null 2>&1; then
        say "pip install psutil matplotlib into .venv"
        "$ROOT/.venv/bin/python" -m pip install -q psutil matplotlib
    fi
    # Browser tests: playwright-core (driving /usr/bin/chromium) and Vite 7 for the
    # React component, pinned by package-lock.json.
    B=web-gateway/tests/browser
    if [ -f "$B/package-lock.json" ] && { [ ! -d "$B/node_modules" ] || [ "$B/package-lock.json" -nt "$B/node_modules" ]; }; then
        say "npm ci in $B"
        (cd "$B" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules)
    fi
fi

# 3. The Rust target of the Windows stage (tests only).
if [ "$TEST" = 1 ]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu; then
        say "rustup target add x86_64-pc-windows-gnu"
        rustup target add x86_64-pc-windows-gnu >/dev/null
    fi
    say "windows target ok"
fi

# 4. Miri on nightly (tests only; optional).
if [ "$TEST" = 1 ]; then
    if cargo +nightly miri --version >/dev/null 2>&1; then
        say "miri ok"
    else
        say "installing nightly miri"
        if rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 ||
           rustup toolchain install nightly --profile minimal -c miri -c rust-src >/dev/null 2>&1; then
            say "miri ok"
        else
            warn "could not install miri on nightly; miri tests will be skipped"
        fi
    fi
fi
say "done"
