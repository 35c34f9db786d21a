#!/usr/bin/env bash
# Builds the executor image `mecanywhere-executor:latest` without any registry:
# a statically linked executor in a `FROM scratch` image (docker/Dockerfile.local)
# with docker/mecanywhere_executor.yaml as /app/mecanywhere_executor.yaml.
#
# The static build goes to target/static so the normal build cache stays valid.
#
# Usage: scripts/build-executor-image.sh   (from any directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="mecanywhere-executor:latest"
LABEL="org.mecanywhere.test-image=1"

command -v cargo >/dev/null || { echo "cargo not found" >&2; exit 1; }
command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }

HOST="$(rustc -vV | sed -n 's/^host: //p')"
[[ -n "$HOST" ]] || { echo "cannot determine the host target triple" >&2; exit 1; }

echo "building the static executor for $HOST ..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR=target/static RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --bin mecanywhere-executor --target "$HOST")
BIN="$ROOT/target/static/$HOST/release/mecanywhere-executor"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/meca-executor-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
CTX="$WORK/ctx"
mkdir "$CTX"
cp "$BIN" "$CTX/mecanywhere-executor"
cp "$ROOT/docker/mecanywhere_executor.yaml" "$CTX/mecanywhere_executor.yaml"

# The image this build replaces: removed once the tag points at the new one, so that
# rebuilds leave no untagged image behind (it stays while a container still uses it).
old="$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)"
# stderr only matters on failure (a CLI without buildx warns on every build).
if ! id="$(docker build -q -t "$TAG" --label "$LABEL" -f "$ROOT/docker/Dockerfile.local" "$CTX" 2>"$WORK/build.log")"; then
    echo "docker build of $TAG failed:" >&2
    cat "$WORK/build.log" >&2
    exit 1
fi
if [[ -n "$old" && "$old" != "$id" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
fi
echo "built $TAG ($id)"
