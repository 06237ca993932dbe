#!/usr/bin/env bash
# Schemathesis against the gateway's OpenAPI document (/api/openapi.json): the
# real broker (a 320x240 test source as stream "demo", at most 8 streams so that
# generated POSTs cannot start ffmpeg without bound) and the real gateway with a
# token, on loopback; `schemathesis run` generates requests for every documented
# operation and checks that none gets a 5xx it should not, and that every answer
# conforms to the document (status, content type, JSON schema). Then both stop.
# GET /api/streams/{id}/mjpeg is left out: on a live stream (schemathesis learns
# "demo" from GET /api/streams) its answer never ends, by design, and a
# request/response fuzzer waits for it forever. tests/e2e.rs and tests/limits.rs
# cover it.
#
#   cargo build --workspace --bins
#   .venv/bin/pip install schemathesis          # once
#   web-gateway/tests/schemathesis/run.sh       # MAX_EXAMPLES=30 by default
#
# Environment: MAX_EXAMPLES (per operation, default 30), CHECKS (default: no
# undocumented 5xx; status, content type and body conform), SCHEMATHESIS (the
# binary, default .venv/bin/schemathesis), PROFILE (debug), SEED, EXTRA_ARGS,
# GATEWAY_LOG_LEVEL (info). Exits with schemathesis' status; the report and the
# gateway's and broker's logs are in $REPORT_DIR (default target/schemathesis).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-debug}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
ST="${SCHEMATHESIS:-$ROOT/.venv/bin/schemathesis}"
MAX_EXAMPLES="${MAX_EXAMPLES:-30}"
CHECKS="${CHECKS:-not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance}"
REPORT_DIR="${REPORT_DIR:-$ROOT/target/schemathesis}"
mkdir -p "$REPORT_DIR"
REPORT_DIR="$(cd "$REPORT_DIR" && pwd)"
TOKEN="st-$RANDOM$RANDOM"

for b in framebroker framebroker-gateway; do
    [ -x "$BIN/$b" ] || { echo "$BIN/$b missing: cargo build --workspace --bins" >&2; exit 2; }
done
[ -x "$ST" ] || { echo "$ST missing: .venv/bin/pip install schemathesis" >&2; exit 2; }

WORK="$(mktemp -d)"
PREFIX="st$$-"
BROKER_PID=""
GATEWAY_PID=""
cleanup() {
    mkdir -p "$REPORT_DIR"
    cp "$WORK/gateway.log" "$WORK/broker.log" "$REPORT_DIR/" 2>/dev/null
    [ -n "$GATEWAY_PID" ] && kill "$GATEWAY_PID" 2>/dev/null && wait "$GATEWAY_PID" 2>/dev/null
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -f /dev/shm/"$PREFIX"* 2>/dev/null
    rm -rf "$WORK"
    true
}
trap cleanup EXIT

"$BIN/framebroker" serve --socket "$WORK/broker.sock" --shm-prefix "$PREFIX" \
    --max-streams 8 --stream 'demo=testsrc://?size=320x240&rate=15' \
    >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 100); do [ -S "$WORK/broker.sock" ] && break; sleep 0.1; done
[ -S "$WORK/broker.sock" ] || { cat "$WORK/broker.log" >&2; exit 1; }

# A free port: the gateway says which one it took.
RUST_LOG="${GATEWAY_LOG_LEVEL:-info}" "$BIN/framebroker-gateway" --socket "$WORK/broker.sock" --listen 127.0.0.1:0 \
    --token "$TOKEN" --idle-ms 1000 >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
ADDR=""
for _ in $(seq 100); do
    ADDR="$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/gateway.log" | grep -o 'addr=[0-9.:]*' | head -1 | cut -d= -f2 || true)"
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/gateway.log" >&2; exit 1; }
BASE="http://$ADDR"
echo "broker pid $BROKER_PID, gateway pid $GATEWAY_PID on $BASE"

start=$(date +%s)
status=0
# From the scratch directory: schemathesis keeps a crash cache (.schemathesis/)
# in the working directory; every run here starts afresh and leaves none behind.
# shellcheck disable=SC2086
(cd "$WORK" && "$ST" run "$BASE/api/openapi.json" \
    --url "$BASE" \
    -H "Authorization: Bearer $TOKEN" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,coverage,fuzzing \
    --request-timeout 10 \
    --exclude-operation-id getMjpeg \
    --workers 1 \
    ${SEED:+--seed "$SEED"} \
    --report junit --report-dir "$REPORT_DIR" \
    ${EXTRA_ARGS:-}) || status=$?
echo "schemathesis: exit $status after $(( $(date +%s) - start )) s (report in $REPORT_DIR)"

# The gateway must have survived it, and never logged a panic.
if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    echo "the gateway died:" >&2; cat "$WORK/gateway.log" >&2; status=1
fi
if grep -q panicked "$WORK/gateway.log"; then
    echo "the gateway panicked:" >&2; grep -A3 panicked "$WORK/gateway.log" >&2; status=1
fi
exit "$status"
