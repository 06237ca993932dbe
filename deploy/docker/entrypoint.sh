#!/usr/bin/env bash
# The container's entrypoint (runs under tini as PID 1).
#   all [serve flags…]   the broker and the gateway together (default)
#   broker [serve flags…] the broker alone: framebroker serve …
#   gateway [flags…]      the gateway alone: framebroker-gateway …
#   anything else         run as given (e.g. `framebroker streams ls`)
# Both programs read $FRAMEBROKER_CONFIG (the image sets it).
set -euo pipefail

say() { echo "framebroker-entrypoint: $*" >&2; }

mode="${1:-all}"
[ $# -gt 0 ] && shift
case "$mode" in
    broker) exec framebroker serve "$@" ;;
    gateway) exec framebroker-gateway "$@" ;;
    all) ;;
    *) exec "$mode" "$@" ;;
esac

# A gateway listening beyond loopback needs a token. Unless one is given
# (FRAMEBROKER_TOKEN, or a file mounted at the token_file path), make one and
# keep it in a file readable by this user only; it is never printed.
token_file="${FRAMEBROKER_GATEWAY_TOKEN_FILE:-/run/framebroker/token}"
if [ -z "${FRAMEBROKER_TOKEN:-}" ] && [ ! -s "$token_file" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file")
    say "gateway token written to $token_file (read it with: docker exec CONTAINER cat $token_file)"
fi

broker="" gateway="" asked=0
stop() { kill -TERM $gateway $broker 2>/dev/null || true; }
trap 'asked=1; stop' TERM INT

framebroker serve "$@" &
broker=$!

# The gateway connects to the socket the broker binds; wait for it (at most 10 s).
socket="${FRAMEBROKER_SOCKET:-/run/framebroker/control.sock}"
for _ in $(seq 100); do
    [ -S "$socket" ] && break
    kill -0 "$broker" 2>/dev/null || break
    sleep 0.1
done

framebroker-gateway &
gateway=$!

# Whichever ends first ends the container: a restart policy brings both back.
set +e
wait -n "$broker" "$gateway"
first=$?
[ "$asked" = 1 ] || say "a process exited with status $first; stopping the other"
stop
wait "$gateway"
wait "$broker"
broker_status=$?
if [ "$asked" = 1 ]; then
    exit "$broker_status"   # asked to stop: the broker's own exit status
fi
exit "$first"
