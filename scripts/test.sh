#!/usr/bin/env bash
# Runs every test of the project, from a fresh clone on a fresh Debian/Ubuntu
# machine: installs what is missing (scripts/setup.sh), then
#   1. cargo fmt --check and clippy -D warnings over the workspace,
#   2. the Rust tests (unit, property, golden vectors, cross-process end-to-end
#      with the real broker, its decoder, ffmpeg and RTSP test camera), and the
#      end-to-end suites once more with ffmpeg decoding (`--decoder ffmpeg`),
#   3. the loom models of the seqlock and of the Windows wake-up, miri on the
#      in-process ring, and (run after 6, its targets built in the background
#      during the waiting steps 4-6) a bounded fuzzing run of the control protocol,
#   4. the web page in headless Chromium, then the Python tests (client and
#      gateway clients; real broker, real OpenCV 4.x and 5.x), and the client's
#      unit suites on the Windows CPython under Wine (named pipe, mappings, events),
#   5. the deployment files: Dockerfile and its entrypoint, systemd units
#      (systemd-analyze), cargo install, the Python wheel in a fresh venv, the
#      Kubernetes manifests (schema check),
#   6. every example of the README's "Use it" section, run for real,
#   7. aarch64 under qemu-user (scripts/aarch64.sh): the workspace cross-built,
#      the proto and client-rs tests, the Python ring tests on arm64 CPython, and
#      an aarch64 broker and reader across processes,
#   8. the Windows stage: the workspace cross-built for x86_64-pc-windows-gnu and
#      linted, the proto tests and a cross-process end-to-end test under Wine
#      (tests/windows/run.sh),
#   9. a smoke run of the benchmark suite (every section runs; no timing is
#      asserted: the numbers come from bench/run.py, see docs/BENCHMARKS.md).
# Exits non-zero on the first failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$(date +%s)
# Each step's wall time, printed at the end: the run has to stay within its
# time budget, and this says where the time goes.
step_name="" step_start=$start
timings=()
step() {
    local now
    now=$(date +%s)
    [ -z "$step_name" ] || timings+=("$(printf '%6d s  %s' $((now - step_start)) "${step_name:0:70}")")
    step_name="$*" step_start=$now
    # The time so far on every step's line: a failed run prints no summary.
    printf '\n==> [%5d s] %s\n' $((now - start)) "$*"
}

step "setup"
bash scripts/setup.sh --test

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p framebroker-decoder --all-targets --features libav --locked -- -D warnings

step "build (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked
# The broker's own decoder links libavcodec: a feature of its own, so that the
# workspace and the cross builds need no FFmpeg headers.
cargo build -p framebroker-decoder --features libav --locked

step "Rust tests"
# The gateway soak test runs 60 s by default; 15 s here keeps CI short.
export FRAMEBROKER_SOAK_SECS="${FRAMEBROKER_SOAK_SECS:-15}"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    cargo test --workspace --doc --locked
else
    cargo test --workspace --locked --no-fail-fast
fi

step "the end-to-end, chaos, alias, variant and config suites again with ffmpeg decoding"
# Everywhere else the broker decodes cameras with its own decoder (`--decoder
# auto` finds target/debug/framebroker-decoder); ffmpeg stays the path for test
# patterns, files, hardware decoders and machines without the decoder, so the
# whole suite runs once more with it decoding every camera.
if cargo nextest --version >/dev/null 2>&1; then
    FRAMEBROKER_DECODER=ffmpeg cargo nextest run -p framebroker-tests --locked --no-fail-fast
else
    FRAMEBROKER_DECODER=ffmpeg cargo test -p framebroker-tests --locked --no-fail-fast
fi

step "loom models of the seqlock and of the Windows wake-up"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p framebroker-proto --test loom_seqlock --test loom_wake_events --release --locked

step "miri on the in-process ring"
if cargo +nightly miri --version >/dev/null 2>&1; then
    MIRIFLAGS="-Zmiri-disable-isolation" CARGO_TARGET_DIR=target/miri \
        cargo +nightly miri test -p framebroker-proto --lib -- ring:: seqlock:: layout::
else
    echo "MIRI NOT RUN: no nightly miri on this machine and scripts/setup.sh could not install it" >&2
    [ "${FRAMEBROKER_REQUIRE_MIRI:-0}" = 1 ] && exit 1
fi

step "fuzz targets: built in the background (nice 19) while the next steps mostly wait"
# The nightly sanitizer build of the fuzz targets is the longest compile of the
# run (about 190 s on 2 cores), and the browser, Python, deployment and README
# steps below spend most of their time waiting on real cameras and sockets: the
# build takes their idle CPU at the lowest priority, and is waited for (its
# failure fails the run) just before the fuzzing.
fuzz_log="$ROOT/target/fuzz-build.log"
mkdir -p "$ROOT/target"
nice -n 19 bash scripts/fuzz.sh --build-only >"$fuzz_log" 2>&1 &
fuzz_build=$!
trap '[ -z "${fuzz_build:-}" ] || { pkill -P "$fuzz_build" 2>/dev/null; kill "$fuzz_build" 2>/dev/null; } || true' EXIT

step "gateway API against its OpenAPI document (schemathesis)"
bash web-gateway/tests/schemathesis/run.sh

step "web page in headless Chromium (gateway, JS client, React component)"
(cd web-gateway/tests/browser && node page.test.mjs)

for venv in .venv-cv4 .venv; do  # the oldest supported OpenCV first
    step "Python tests ($venv: OpenCV $($venv/bin/python -c 'import cv2; print(cv2.__version__)')): client, gateway clients"
    # FRAMEBROKER_TEST_COMPILED: here the compiled read path must have been built.
    FRAMEBROKER_BIN="$ROOT/target/debug/framebroker" FRAMEBROKER_REQUIRE_E2E=1 FRAMEBROKER_TEST_COMPILED=required \
        $venv/bin/python -m pytest -q -p no:cacheprovider client-py/tests \
        web-gateway/tests/browser/test_python_clients.py \
        web-gateway/tests/browser/test_original_clients.py
done

step "Python client on Windows: its unit suites on the embeddable CPython 3.13 under Wine"
# The Windows-Python reader against the Windows broker runs in the Windows stage
# (tests/windows/python_e2e.py), which builds the broker for Windows.
bash tests/windows/python_unit.sh

step "deployment: Dockerfile, systemd units, cargo install, wheel, Kubernetes manifests"
FRAMEBROKER_BIN="$ROOT/target/debug/framebroker" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -rs tests/deploy

step "README examples: every block of \"## Use it\" run against a real broker, gateway and camera"
FRAMEBROKER_BIN="$ROOT/target/debug/framebroker" \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/readme

step "fuzzing the control protocol (bounded; longer by hand: scripts/fuzz.sh 600)"
if ! wait "$fuzz_build"; then
    cat "$fuzz_log"
    echo "building the fuzz targets failed (log above, and in $fuzz_log)" >&2
    exit 1
fi
fuzz_build=""
tail -n 3 "$fuzz_log"
bash scripts/fuzz.sh "${FRAMEBROKER_FUZZ_SECS:-20}"

step "aarch64 under qemu-user: cross-build, proto/client-rs tests, Python ring tests, cross-process run"
bash scripts/aarch64.sh

step "Windows under Wine: cross-build, clippy, unit tests, cross-process end to end"
bash tests/windows/run.sh

step "benchmarks: every section runs (a smoke run on the debug build; numbers: bench/run.py)"
FRAMEBROKER_BENCH_BINS="$ROOT/target/debug" \
    .venv/bin/python bench/run.py --quick --no-build --no-report --out "$ROOT/target/bench-smoke.json"
FRAMEBROKER_BENCH_BINS="$ROOT/target/debug" .venv/bin/python bench/reader_cost.py --reps 1 --seconds 1

step "all tests passed in $(( $(date +%s) - start )) s"
printf 'time per step:\n'
printf '%s\n' "${timings[@]}"
