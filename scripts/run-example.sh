#!/usr/bin/env bash
# Runs the executor on 127.0.0.1:2591 with the sample echo task image ready to call:
# installs Docker when missing, starts dockerd when none runs, builds the task images
# from this repository (nothing is pulled), builds the executor and runs it in the
# foreground. Ctrl-C (or `curl -X POST 127.0.0.1:2591/stop`) removes its containers.
#
# Usage: scripts/run-example.sh [extra executor arguments, e.g. --config FILE]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"

ensure_docker
trap stop_started_dockerd EXIT

scripts/build-task-images.sh >/dev/null
cargo build --release --locked --bin mecanywhere-executor
cat <<'HELP'

mecanywhere-executor is starting on 127.0.0.1:2591. In another terminal:

  curl http://127.0.0.1:2591 -X POST -H "Content-Type: application/json" \
       -d '{"id": "meca-echo:latest", "input": "{\"name\": \"sbip\"}"}'
  curl http://127.0.0.1:2591/stats

HELP
# Listens on 127.0.0.1:2591 (the default) unless a config or --listen says otherwise.
target/release/mecanywhere-executor "$@"
