#!/usr/bin/env bash
# Runs every `curl` line of README.md's code blocks against a started modelpool_server, so that the README's
# examples cannot rot:  readme_curl.sh SERVER_BINARY README.md CACHE_DIR
# The server runs on a free port (the lines' localhost:8000 is rewritten to it). Each line must exit 0 (curl
# --fail-with-body: an HTTP error fails it) and print a JSON document, or, for a streamed request, server-sent
# events ending with "data: [DONE]". Then SIGTERM must drain the server and it must exit 0.
set -euo pipefail
server=$1 readme=$2 cache=$3
work=$(mktemp -d)
pid=
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "readme_curl: $*" >&2
    echo "--- server log:" >&2
    tail -n 40 "$work/stderr" >&2 || true
    exit 1
}

mapfile -t lines < <(awk '/^```/ { inblock = !inblock; next } inblock && /^curl / { print }' "$readme")
[[ ${#lines[@]} -ge 3 ]] || fail "README.md has ${#lines[@]} curl lines in its code blocks; expected at least 3"

"$server" --port 0 --cache-dir "$cache" --log-level info >"$work/stdout" 2>"$work/stderr" &
pid=$!
# Wait (bounded) for the listening line, then for readiness: every model's first worker loaded.
deadline=$((SECONDS + 90))
until port=$(sed -n 's|^modelpool_server: listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$work/stdout") && [[ -n $port ]]; do
    kill -0 "$pid" 2>/dev/null || fail "the server exited before listening"
    ((SECONDS < deadline)) || fail "no 'listening on' line within 90 s"
    sleep 0.1
done
until command curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    ((SECONDS < deadline)) || fail "/readyz not 200 within 90 s"
    sleep 0.1
done

curl() { command curl --fail-with-body -sS --max-time 60 "$@"; }
for line in "${lines[@]}"; do
    line=${line//localhost:8000/127.0.0.1:$port}
    echo "\$ $line"
    out=$(eval "$line") || fail "this line failed: $line"$'\n'"$out"
    if [[ $out == data:* ]]; then
        [[ $out == *$'data: [DONE]' ]] || fail "the stream does not end with 'data: [DONE]': $line"$'\n'"$out"
    else
        python3 -c 'import json, sys; json.load(sys.stdin)' <<<"$out" || fail "not JSON: $line"$'\n'"$out"
    fi
    printf '%s\n' "${out:0:300}"
done

kill -TERM "$pid"
code=0
wait "$pid" || code=$?
pid=
((code == 0)) || fail "the server exited with $code after SIGTERM"
grep -q "drained and stopped" "$work/stderr" || fail "no 'drained and stopped' in the server's log"
echo "readme_curl: ${#lines[@]} README lines answered; the server drained and exited 0"
