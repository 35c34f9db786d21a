#!/usr/bin/env bash
# Runs the whole test suite against a real Docker daemon. On a fresh Debian machine it
# installs what is missing (docker.io, runsc, docker-registry, debootstrap), starts dockerd when none
# runs (and stops it again at the end), registers gVisor as Docker runtime `runsc`, builds
# the task images from this repository, checks formatting and lints, runs every test (the
# swarm engine's on a 3-node Swarm it brings up and removes), and fails if any container
# carrying the executor's label is left behind.
#
# Usage: scripts/test.sh      (from any directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"

ensure_docker
trap stop_started_dockerd EXIT
# The micro-VM runtime test runs tasks under gVisor (Debian's runsc), registered as `runsc`.
ensure_gvisor_runtime
# The pull tests serve a registry on 127.0.0.1 (Debian's docker-registry).
ensure_tool docker-registry docker-registry
# The network isolation tests build a test "internet" in a network namespace (iproute2)
# with a listener in it (python3).
ensure_tool ip iproute2
ensure_tool python3 python3

scripts/build-task-images.sh
# Real CPython tasks: a Debian root (debootstrap) imported as an image, built once.
scripts/build-python-task-images.sh
# The whole workspace: the executor and tools/ (bench, soak, replay).
cargo fmt --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --all-targets
# The Debian package: contents, systemd unit, install into a clean Debian root and run.
scripts/test-package.sh
# The package's unit under a real systemd (PID 1 in a Debian container): start, stop,
# restart after SIGKILL, journal, reload.
scripts/test-systemd.sh
# engine: swarm on a real 3-node Docker Swarm of nested dockerds: the engine contract's
# swarm cases and tests/swarm.rs (ignored by the cargo test above), nothing left on a node.
scripts/test-swarm.sh

left="$(docker ps -aq --filter label=org.mecanywhere.executor)"
if [ -n "$left" ]; then
    echo "containers left behind by the tests:" >&2
    docker ps -a --filter label=org.mecanywhere.executor >&2
    exit 1
fi
echo "all tests passed; no task container left"
