#!/usr/bin/env bash
# Fuzzes the control protocol (proto/fuzz, cargo-fuzz + libFuzzer) for a bounded
# time: scripts/fuzz.sh [SECONDS]   (default 30 per target; longer by hand).
#       scripts/fuzz.sh --build-only (installs and builds, fuzzes nothing: what
#                                     scripts/test.sh runs ahead, in the background)
#
#   control_decode  arbitrary bytes through the frame decoder: never panics, and
#                   whatever decodes re-encodes to the same bytes and value;
#   session         frames fed to broker sessions on an in-process broker with a
#                   fake source: answers, limits and reader counts stay true.
#
# Installs cargo-fuzz if it is missing (needs the nightly toolchain), seeds each
# target's corpus from proto/testdata/golden.json (proto/fuzz/corpus/<target>/,
# gitignored, grows across runs), and prints one line per target. Exits non-zero
# if a target found a failure; its input is in proto/fuzz/artifacts/<target>/ and
# `cargo +nightly fuzz run --fuzz-dir proto/fuzz <target> <file>` replays it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_ONLY=0
if [ "${1:-}" = --build-only ]; then BUILD_ONLY=1; set -- 30; fi
SECONDS_PER_TARGET="${1:-30}"
case "$SECONDS_PER_TARGET" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
FUZZ_DIR="$ROOT/proto/fuzz"
TARGETS=(control_decode session)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Seeds: every golden vector as a bare body and as a frame, and whole request
# conversations as frame streams (what a session reads).
python3 - "$ROOT/proto/testdata/golden.json" "$FUZZ_DIR/corpus" <<'EOF'
import json, os, struct, sys

golden = json.load(open(sys.argv[1]))
out = sys.argv[2]
frame = lambda b: struct.pack("<I", len(b)) + b
vec = {(v["kind"], v["name"]): bytes.fromhex(v["hex"]) for v in golden["vectors"]}
req = {name: body for (kind, name), body in vec.items() if kind == "request"}

def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

# The same requests for a second id, "cam-2" (as long as "cam-1", so every
# length prefix stays right): with start_defaults' URL it is another id for a
# running camera, an alias on the decode of cam-1.
for n in ("start_defaults", "attach", "detach", "stop", "stats"):
    req[n + "@2"] = req[n].replace(b"cam-1", b"cam-2")

conversations = {
    "golden-order": [n for n in req if "@" not in n],
    "attach-detach": ["start_defaults", "attach", "stats", "detach", "list", "stop"],
    "two-sessions": ["start_defaults", "attach", "hello", "attach", "list",
                     "detach", "hello", "stop", "list"],
    "restart": ["start_full", "attach", "stop", "start_full", "attach", "detach",
                "detach", "list"],
    # A reader of a stopped stream and a reader of its successor (same id).
    "restart-two-sessions": ["start_defaults", "attach", "stop", "start_defaults",
                             "hello", "attach", "list"],
    # Two ids for one camera: the first stopped while the second reads, then back.
    "alias": ["start_defaults", "start_defaults@2", "attach", "attach@2", "stop",
              "attach@2", "stats@2", "start_defaults", "attach", "detach", "stop@2",
              "list", "stop"],
    "alias-two-sessions": ["start_defaults", "start_defaults@2", "attach@2", "hello",
                           "attach", "stop@2", "list", "detach@2", "stop"],
}
for (kind, name), body in vec.items():
    write("control_decode", f"{kind}-{name}-body", body)
    write("control_decode", f"{kind}-{name}-frame", frame(body))
for name, steps in conversations.items():
    data = b"".join(frame(req[s]) for s in steps)
    write("control_decode", "stream-" + name, data)
    write("session", name, data)
for name, body in req.items():
    write("session", "one-" + name, frame(body))
EOF

echo "==> building the fuzz targets (nightly, sanitizer: address)"
cargo +nightly fuzz build --fuzz-dir "$FUZZ_DIR"
[ "$BUILD_ONLY" = 0 ] || exit 0

# The targets fuzz side by side (libFuzzer runs one process each), each into
# its own log; the results are read once both are done.
declare -A pids logs
start=$(date +%s)
for t in "${TARGETS[@]}"; do
    logs[$t]="$(mktemp)"
    echo "==> fuzzing $t for ${SECONDS_PER_TARGET} s"
    extra=()
    # The broker joins stopped streams' threads on detached reaper threads that
    # can outlive an input; LeakSanitizer then reports what they still hold
    # (the segment Arc, the stream id) as leaks. No leak checks for `session`.
    if [ "$t" = session ]; then extra=(-detect_leaks=0); fi
    # -timeout: one input taking this long is a hang (reported as a failure).
    cargo +nightly fuzz run --fuzz-dir "$FUZZ_DIR" "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -print_final_stats=1 \
        "${extra[@]}" >"${logs[$t]}" 2>&1 &
    pids[$t]=$!
done

status=0
summary=()
for t in "${TARGETS[@]}"; do
    log="${logs[$t]}"
    if wait "${pids[$t]}"; then
        result="ok"
    else
        status=1
        artifact="$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | cut -d' ' -f5 || true)"
        result="FAILED${artifact:+ (input: $artifact)}"
        { grep -m1 -A3 'panicked at' "$log" || grep -E 'ERROR: |SUMMARY: ' "$log"; } |
            head -6 | sed 's/^/    /' || true
    fi
    elapsed=$(($(date +%s) - start))
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
    [ -n "$runs" ] || runs="$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1 || true)"
    cp "$log" "$FUZZ_DIR/last-$t.log" 2>/dev/null || true  # gitignored
    rm -f "$log"
    summary+=("$(printf '%-15s %10s runs in %4s s: %s' "$t" "${runs:-?}" "$elapsed" "$result")")
done
# A target that crashed died with its brokers' rings mapped: remove the segments
# of fuzzer processes that are gone (named fbfz<pid>-…, see session.rs).
for f in /dev/shm/fbfz*; do
    [ -e "$f" ] || continue
    pid="${f#/dev/shm/fbfz}"
    pid="${pid%%-*}"
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    kill -0 "$pid" 2>/dev/null || rm -f "$f"
done
echo
printf '%s\n' "${summary[@]}"
exit "$status"
