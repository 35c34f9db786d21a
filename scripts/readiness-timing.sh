#!/usr/bin/env bash
# Measures how soon a task is answered once it can be: cold starts (container removed before
# each one) through a running release executor, for
#   meca-echo                    flushes its ready line, listens first (reference)
#   meca-test-buffered           ready line left in a stdio buffer (needs the terminal)
#   meca-test-mark-first         ready line 2 s before it listens (the port check waits)
#   meca-test-chatty             64 MiB on one line (a progress bar redrawn with \r) before its ready line
#   meca-test-flask-template     real CPython + Flask, plain print() at import
# For Flask, "after listening" is the time from the log line Flask prints once it has bound
# port 8080 (" * Running on ...", timestamped by Docker) to the executor's answer.
#
# Needs dockerd and the test images (scripts/build-task-images.sh,
# scripts/build-python-task-images.sh). Usage: scripts/readiness-timing.sh [RUNS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-10}"
cd "$ROOT"
cargo build --release --quiet --bin mecanywhere-executor
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meca-readiness.XXXXXX")"
NAME="readiness-timing-$$"
PORT=25910
printf 'name: %s\n' "$NAME" >"$WORK/config.yaml"
target/release/mecanywhere-executor --config "$WORK/config.yaml" --listen "127.0.0.1:$PORT" \
    >"$WORK/executor.log" 2>&1 &
PID=$!
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    docker ps -aq --filter "label=org.mecanywhere.executor=$NAME" | xargs -r docker rm -f >/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

URL="http://127.0.0.1:$PORT"
cold() { # IMAGE -> prints seconds to the answer; fails unless success
    curl -s -X POST "$URL/pause" >/dev/null
    curl -s -X POST "$URL/unpause" >/dev/null
    local out
    out="$(curl -s -w '\n%{time_total}' -X POST "$URL" -H 'Content-Type: application/json' \
        -d "{\"id\": \"$1\", \"input\": \"{\\\"x\\\": 1}\"}")"
    grep -q '"success":true' <<<"$out" || { echo "$1 failed: $out" >&2; exit 1; }
    tail -n 1 <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for image in meca-echo:latest meca-test-buffered:latest meca-test-mark-first:latest \
    meca-test-chatty:latest; do
    for _ in $(seq 1 "$RUNS"); do cold "$image"; done >"$WORK/t"
    printf '%-34s cold start median %6.0f ms (min %.0f, max %.0f) over %s runs\n' "$image" \
        "$(median <"$WORK/t" | awk '{print $1*1000}')" \
        "$(sort -n "$WORK/t" | head -n1 | awk '{print $1*1000}')" \
        "$(sort -n "$WORK/t" | tail -n1 | awk '{print $1*1000}')" "$RUNS"
done

image=meca-test-flask-template:latest
: >"$WORK/gap"; : >"$WORK/t"
for _ in $(seq 1 "$RUNS"); do
    t="$(cold "$image")"
    answered="$(date +%s.%N)"
    echo "$t" >>"$WORK/t"
    # The task container, not the executor's sandbox holders or spares beside it.
    id="$(docker ps -q --filter "label=org.mecanywhere.executor=$NAME" --filter "ancestor=$image")"
    listening="$(docker logs -t "$id" 2>&1 | grep -m1 'Running on' | cut -d' ' -f1)"
    echo "$answered $(date -d "$listening" +%s.%N)" | awk '{print $1-$2}' >>"$WORK/gap"
done
printf '%-34s cold start median %6.0f ms; listening -> answered median %.0f ms (max %.0f)\n' "$image" \
    "$(median <"$WORK/t" | awk '{print $1*1000}')" \
    "$(median <"$WORK/gap" | awk '{print $1*1000}')" \
    "$(sort -n "$WORK/gap" | tail -n1 | awk '{print $1*1000}')"
