# Shared by the scripts under scripts/ (sourced, not run).
#
# ensure_tool COMMAND PACKAGE installs a Debian package when a command is missing.
#
# ensure_docker: installs Docker from Debian's packages when it is missing and starts
# dockerd in the background when no daemon answers. Sets STARTED_DOCKERD=1 when it started
# one, so the caller can stop it again (stop_started_dockerd).

STARTED_DOCKERD=0
DOCKERD_PID=""

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_tool COMMAND PACKAGE: installs Debian package PACKAGE when COMMAND is missing.
ensure_tool() {
    if ! command -v "$1" >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}

ensure_docker() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install a Rust toolchain first (https://rustup.rs)" >&2
        exit 1
    fi
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        echo "installing Docker (Debian package docker.io) ..." >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    fi
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    local log="${TMPDIR:-/tmp}/mecanywhere-dockerd.log"
    echo "starting dockerd (log: $log) ..." >&2
    # Started directly (not through a shell function), so $! is dockerd (or sudo) itself.
    if [ "$(id -u)" -eq 0 ]; then
        dockerd >"$log" 2>&1 &
    else
        sudo dockerd >"$log" 2>&1 &
    fi
    DOCKERD_PID=$!
    STARTED_DOCKERD=1
    for _ in $(seq 1 120); do
        if docker info >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            echo "dockerd exited; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "dockerd did not answer within 60s; its log:" >&2
    cat "$log" >&2
    exit 1
}

stop_started_dockerd() {
    if [ "$STARTED_DOCKERD" = 1 ] && [ -n "$DOCKERD_PID" ]; then
        as_root kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
}

# ensure_gvisor_runtime: installs gVisor (Debian package runsc) and registers it with Docker
# as runtime `runsc` (/etc/docker/daemon.json), then makes the running dockerd reload it.
# `--network=host` lets runsc use the network namespace Docker made for the container.
ensure_gvisor_runtime() {
    if ! command -v runsc >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
    fi
    local conf=/etc/docker/daemon.json
    if ! grep -q '"runsc"' "$conf" 2>/dev/null; then
        if [ -s "$conf" ]; then
            echo "$conf exists without a runsc runtime; add to it:" >&2
            echo '  "runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}' >&2
            exit 1
        fi
        as_root mkdir -p /etc/docker
        echo '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}}' |
            as_root tee "$conf" >/dev/null
    fi
    if docker info >/dev/null 2>&1 && ! docker info --format '{{json .Runtimes}}' | grep -q runsc; then
        as_root kill -HUP "$(cat /var/run/docker.pid)"
        for _ in $(seq 1 40); do
            docker info --format '{{json .Runtimes}}' | grep -q runsc && return 0
            sleep 0.25
        done
        echo "dockerd did not load the runsc runtime" >&2
        exit 1
    fi
}
