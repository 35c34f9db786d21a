#!/usr/bin/env bash
# The swarm engine's bench rows (BENCHMARKS.md, S1-S3): brings up a 3-node Swarm of nested
# dockerds on this machine (scripts/swarm/cluster.sh), loads the echo image on every node,
# builds the executor (release) and runs scripts/swarm/bench.py against it; removes the
# swarm at the end.
#
# Usage: scripts/swarm/bench.sh [RUNS]   (default 3; needs root and dockerd)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/swarm/cluster.sh
source "$ROOT/scripts/swarm/cluster.sh"

RUNS="${1:-3}"
cargo build --release --locked --bin mecanywhere-executor
trap swarm_down EXIT
swarm_up 3
for n in 1 2 3; do swarm_load_image "$n" meca-echo:latest; done
python3 scripts/swarm/bench.py "$SWARM_DIR" "$ROOT/target/release/mecanywhere-executor" "$RUNS"
