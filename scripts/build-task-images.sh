#!/usr/bin/env bash
# Builds the task images used by the executor's tests and benchmarks.
#
# The task binaries (tasks/) are linked statically and packed into
# `FROM scratch` images, so nothing is ever pulled from a registry.
#
# Images (all labelled org.mecanywhere.test-image=1):
#   meca-echo:latest                       POST / echoes the body
#   meca-test-<mode>:latest                misbehave-task with MODE=<mode>
#   meca-test-env:latest                   MODE=env, with TERM and PYTHONUNBUFFERED of its own
#
# Usage: scripts/build-task-images.sh   (from any directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASKS="$ROOT/tasks"
LABEL="org.mecanywhere.test-image=1"
MODES=(crash never-ready exit-at-start slow-start slow-answer binary hang huge oom bad-status garbage sgx routes kernel
    buffered mark-first listen-first limits mark-no-listen no-reuseaddr probe sized-at-start chatty)

command -v cargo >/dev/null || { echo "cargo not found" >&2; exit 1; }
command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }

HOST="$(rustc -vV | sed -n 's/^host: //p')"
[[ -n "$HOST" ]] || { echo "cannot determine the host target triple" >&2; exit 1; }

echo "building static task binaries for $HOST ..." >&2
(cd "$TASKS" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$HOST")
BIN_DIR="$TASKS/target/$HOST/release"

CTX_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/meca-task-images.XXXXXX")"
trap 'rm -rf "$CTX_ROOT"' EXIT

# build_image TAG BINARY DOCKERFILE [docker build args...]
build_image() {
    local tag="$1" binary="$2" dockerfile="$3"
    shift 3
    local ctx
    ctx="$(mktemp -d "$CTX_ROOT/ctx.XXXXXX")"
    cp "$BIN_DIR/$binary" "$ctx/$binary"
    local id
    # stderr only matters on failure (a CLI without buildx warns on every build).
    if ! id="$(docker build -q -f "$dockerfile" -t "$tag" --label "$LABEL" "$@" "$ctx" 2>"$ctx.log")"; then
        echo "docker build of $tag failed:" >&2
        cat "$ctx.log" >&2
        exit 1
    fi
    echo "built $tag ($id)"
}

build_image meca-echo:latest echo-task "$TASKS/echo/Dockerfile"
for mode in "${MODES[@]}"; do
    build_image "meca-test-$mode:latest" misbehave-task "$TASKS/misbehave/Dockerfile" \
        --build-arg "MODE=$mode"
done
build_image meca-test-env:latest misbehave-task "$TASKS/misbehave/Dockerfile.env"
