#!/usr/bin/env bash
# The main job: install what is missing, build, and run the broker with its
# built-in test camera (and the web gateway, when built), so everything works
# with no camera at hand. Ctrl-C stops it all.
#
#   scripts/run.sh                       # test camera "demo" (640x480@30)
#   scripts/run.sh --stream door=rtsp://user:pass@10.0.0.5:554/s1   # add your own
#
# Extra arguments go to `framebroker serve`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# What running needs only: ffmpeg and the FFmpeg headers (the broker's own
# decoder), the gateway's build tools, numpy and the Python client; the test
# tools (camera, browser, miri) come with --test.
bash scripts/setup.sh
echo "run: building (release)"
cargo build --release --workspace --bins --locked -q
# The broker's own decoder (frames through shared memory): the broker picks it
# up from next to itself (`--decoder auto`).
cargo build --release -p framebroker-decoder --features libav --locked -q

export FRAMEBROKER_SOCKET="${FRAMEBROKER_SOCKET:-$(./target/release/framebroker doctor | sed -n 's/^info  control socket: //p')}"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

./target/release/framebroker serve --stream 'demo=testsrc://?size=640x480&rate=30' "$@" &
pids+=($!)
for _ in $(seq 100); do
    ./target/release/framebroker streams ls >/dev/null 2>&1 && break
    sleep 0.1
done

if [ -x ./target/release/framebroker-gateway ]; then
    ./target/release/framebroker-gateway &
    pids+=($!)
    GATEWAY="http://127.0.0.1:${PORT:-8091}/"
fi

cat <<MSG

framebroker is running.
  control socket : $FRAMEBROKER_SOCKET
  streams        : ./target/release/framebroker streams ls
  read in Python : .venv/bin/python -c 'import framebroker as fb; c = fb.VideoCapture("testsrc://?size=640x480&rate=30"); print(c.read()[1].shape)'
${GATEWAY:+  web page       : $GATEWAY}
Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
