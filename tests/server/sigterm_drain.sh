#!/usr/bin/env bash
# SIGTERM with a request in flight: modelpool_server must turn /readyz 503 at once, finish the request (200 with
# its full answer) within the grace, refuse new connections after it, and exit 0.
#   sigterm_drain.sh SERVER_BINARY CACHE_DIR
set -euo pipefail
server=$1 cache=$2
work=$(mktemp -d)
pid= client=
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
    [[ -n $client ]] && kill -9 "$client" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "sigterm_drain: $*" >&2
    echo "--- server log:" >&2
    tail -n 40 "$work/stderr" >&2 || true
    exit 1
}
# Polls (bounded) until the command succeeds.
await() {
    local what=$1 deadline=$((SECONDS + 90))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || fail "timed out waiting for: $what"
        sleep 0.05
    done
}

"$server" --port 0 --cache-dir "$cache" --log-level info >"$work/stdout" 2>"$work/stderr" &
pid=$!
listening() { port=$(sed -n 's|^modelpool_server: listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$work/stdout") && [[ -n $port ]]; }
await "the listening line" listening
await "readiness" curl -sf "http://127.0.0.1:$port/readyz" -o /dev/null

# A slow request: four 2048x2048 paintings (about 3 s in Release, longer under the sanitizers).
curl -sS -o "$work/images.json" -w '%{http_code}' "http://127.0.0.1:$port/v1/images/generations" \
    -d '{"model":"demo-painter","prompt":"a storm over the sea","size":"2048x2048","n":4}' >"$work/status" &
client=$!
in_flight() { curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^modelpool_http_requests_in_flight 2$'; }
await "the image request in flight (the metrics request is the other one)" in_flight

kill -TERM "$pid"
not_ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 503 ]]; }
await "/readyz 503 after SIGTERM" not_ready

wait "$client" || fail "the in-flight request's client failed"
client=
[[ $(cat "$work/status") == 200 ]] || fail "the in-flight request ended with HTTP $(cat "$work/status"), expected 200"
images=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$work/images.json")
[[ $images == 4 ]] || fail "the in-flight request answered $images images, expected 4"

code=0
wait "$pid" || code=$?
pid=
((code == 0)) || fail "the server exited with $code after SIGTERM, expected 0"
if curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; then
    fail "a new connection was accepted after the drain"
fi
echo "sigterm_drain: readiness 503 at once, the request in flight answered 4 images, exit 0, new connections refused"
