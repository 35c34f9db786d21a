#!/usr/bin/env bash
# Runs the swarm engine's tests on a real Docker Swarm: three nested dockerds on this machine
# (scripts/swarm/cluster.sh), node 1 the manager, with the test images loaded on every node.
# Runs the engine contract's swarm cases and tests/swarm.rs (both ignored by a plain
# `cargo test`), checks that nothing of an executor is left on any node, and removes the
# swarm, also when a test fails. Part of scripts/test.sh.
#
# Usage: scripts/test-swarm.sh      (needs root and dockerd; about 2 minutes once built)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/swarm/cluster.sh
source "$ROOT/scripts/swarm/cluster.sh"

IMAGES=(meca-echo:latest meca-test-exit-at-start:latest meca-test-never-ready:latest
    meca-test-mark-no-listen:latest meca-test-crash:latest meca-test-oom:latest
    meca-test-limits:latest meca-test-slow-answer:latest meca-test-probe:latest)

# The pull test serves a registry of its own (Debian's docker-registry) on each node.
ensure_tool docker-registry docker-registry
trap swarm_down EXIT
swarm_up 3
for n in 1 2 3; do
    docker save "${IMAGES[@]}" | swarm_docker "$n" load -q >/dev/null
done
export MECA_TEST_SWARM="$SWARM_DIR" MECA_TEST_SWARM_NAME="$SWARM_NAME"
# The contract's cases each label what they make: they run side by side.
cargo test --locked --test engine_contract swarm:: -- --ignored
# One at a time: one of them takes a node away and brings it back.
cargo test --locked --test swarm -- --ignored --test-threads=1

left=""
for n in $(seq 1 "$SWARM_NODES"); do
    left+="$(swarm_docker "$n" ps -aq --filter label=org.mecanywhere.executor)"
done
left+="$(swarm_docker 1 service ls -q --filter label=org.mecanywhere.executor)"
left+="$(swarm_docker 1 network ls -q --filter label=org.mecanywhere.executor)"
if [ -n "$left" ]; then
    echo "left on the swarm by the tests:" >&2
    for n in $(seq 1 "$SWARM_NODES"); do swarm_docker "$n" ps -a --filter label=org.mecanywhere.executor >&2; done
    swarm_docker 1 service ls --filter label=org.mecanywhere.executor >&2
    swarm_docker 1 network ls --filter label=org.mecanywhere.executor >&2
    exit 1
fi
echo "swarm tests passed; nothing left on the swarm"
