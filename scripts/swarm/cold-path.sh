#!/usr/bin/env bash
# Measures the cold path on a Docker Swarm before the swarm engine is built (issue 19: "measure
# it first"): a 3-node Swarm of nested dockerds on this machine (scripts/swarm/cluster.sh),
# then scripts/swarm/cold_path.py in a container on the manager: service create to the task's
# first answer at its task IP against `docker run` on the manager (both on one attachable
# overlay), one at a time and 8 at once. Prints the figures as JSON; removes the cluster.
#
# Usage: scripts/swarm/cold-path.sh [RUNS]   (default 11; needs root and dockerd)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/swarm/cluster.sh
source "$ROOT/scripts/swarm/cluster.sh"

RUNS="${1:-11}"
trap swarm_down EXIT
swarm_up 3
swarm_load_image 1 meca-echo:latest
swarm_load_image 1 "$SWARM_NODE_IMAGE"
for n in 2 3; do swarm_load_image "$n" meca-echo:latest; done
swarm_docker 1 network create -d overlay --attachable meca-tasks >/dev/null
cp scripts/swarm/cold_path.py "$SWARM_DIR/node1/"
swarm_docker 1 run --rm --network meca-tasks -v /run/meca:/run/meca \
    -e DOCKER_HOST=unix:///run/meca/docker.sock "$SWARM_NODE_IMAGE" \
    python3 /run/meca/cold_path.py "$RUNS" meca-tasks meca-echo:latest
