# shellcheck shell=bash
# A Docker Swarm of nested dockerds on this machine, for the swarm engine's measurements and
# tests (sourced, not run). Each node is a container of image meca-swarm-node:<suite>
# (scripts/swarm/Dockerfile: the Debian root of scripts/build-python-task-images.sh plus
# docker.io) running its own dockerd on a tmpfs, with a cgroup parent of its own, on a
# network of its own; its socket is at $SWARM_DIR/node<N>/docker.sock for this host.
# $SWARM_DIR is also mounted at the same path in every node, so a path under it names the
# same file on this host and on the nodes (as on a manager an executor runs on).
#
#   swarm_up N            builds the node image when missing, starts N nodes, inits the
#                         swarm on node 1 (the manager) and joins the others as workers
#   swarm_docker N ARGS   docker against node N
#   swarm_load_image N I  copies image I from this host's dockerd into node N
#   swarm_down            removes the nodes, their network, cgroups and directory

# shellcheck source=scripts/lib/docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/docker.sh"

SWARM_SUITE="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")"
SWARM_NODE_IMAGE="meca-swarm-node:${SWARM_SUITE:-bookworm}"
SWARM_NAME="${SWARM_NAME:-meca-swarm-$$}"
SWARM_DIR=""
SWARM_NODES=0

swarm_docker() {
    local n="$1"
    shift
    DOCKER_HOST="unix://$SWARM_DIR/node$n/docker.sock" docker "$@"
}

swarm_load_image() {
    docker save "$2" | swarm_docker "$1" load -q >/dev/null
}

swarm_node_ip() {
    docker inspect -f "{{(index .NetworkSettings.Networks \"$SWARM_NAME\").IPAddress}}" "$SWARM_NAME-node$1"
}

swarm_up() {
    local count="$1" n base stamp
    ensure_docker
    base="meca-debian-python:${SWARM_SUITE:-bookworm}"
    docker image inspect "$base" >/dev/null 2>&1 || scripts/build-python-task-images.sh >/dev/null
    docker image inspect meca-echo:latest >/dev/null 2>&1 || scripts/build-task-images.sh >/dev/null
    stamp="$( (cat scripts/swarm/Dockerfile; docker image inspect -f '{{.Id}}' "$base") | sha256sum | cut -c1-16)"
    if [ "$(docker image inspect -f '{{index .Config.Labels "org.mecanywhere.swarm-node"}}' "$SWARM_NODE_IMAGE" 2>/dev/null)" != "$stamp" ]; then
        echo "building $SWARM_NODE_IMAGE ..." >&2
        docker build -q --network host -t "$SWARM_NODE_IMAGE" --label org.mecanywhere.test-image=1 \
            --label "org.mecanywhere.swarm-node=$stamp" --build-arg "BASE=$base" scripts/swarm >/dev/null
    fi
    SWARM_DIR="$(mktemp -d "${TMPDIR:-/tmp}/$SWARM_NAME.XXXXXX")"
    docker network create --label org.mecanywhere.test-image=1 "$SWARM_NAME" >/dev/null
    for n in $(seq 1 "$count"); do
        mkdir -p "$SWARM_DIR/node$n"
        # no-new-privileges for every container: Docker 20.10 ignores the field a service
        # asks for it with (README, "Running on a cluster").
        echo "{\"cgroup-parent\": \"/$SWARM_NAME-node$n\", \"no-new-privileges\": true}" \
            >"$SWARM_DIR/node$n/daemon.json"
        # Docker in Docker as this host allows it: no --privileged (dockerd here lacks
        # CAP_SYS_RESOURCE), cgroups mounted read-write, every device allowed. A node
        # started again (a test's lost node) begins afresh: its state was on the tmpfs,
        # and the pid files of the daemon it lost go.
        docker run -d --name "$SWARM_NAME-node$n" --hostname "node$n" \
            --label org.mecanywhere.test-image=1 --network "$SWARM_NAME" \
            --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
            --security-opt apparmor=unconfined --device-cgroup-rule 'a *:* rwm' \
            -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /var/lib/docker:exec \
            -v "$SWARM_DIR/node$n:/run/meca" -v "$SWARM_DIR:$SWARM_DIR" "$SWARM_NODE_IMAGE" \
            sh -c 'rm -rf /var/run/docker.pid /var/run/docker; exec dockerd --config-file /run/meca/daemon.json -H unix:///run/meca/docker.sock' >/dev/null
        SWARM_NODES="$n"
    done
    for n in $(seq 1 "$count"); do
        for _ in $(seq 1 120); do
            swarm_docker "$n" info >/dev/null 2>&1 && break
            sleep 0.25
        done
        swarm_docker "$n" info >/dev/null || { docker logs "$SWARM_NAME-node$n" >&2; exit 1; }
    done
    swarm_docker 1 swarm init --advertise-addr "$(swarm_node_ip 1)" >/dev/null
    local token
    token="$(swarm_docker 1 swarm join-token -q worker)"
    for n in $(seq 2 "$count"); do
        swarm_docker "$n" swarm join --advertise-addr "$(swarm_node_ip "$n")" --token "$token" \
            "$(swarm_node_ip 1):2377" >/dev/null
    done
    echo "swarm of $count nodes up ($SWARM_NAME)" >&2
}

swarm_down() {
    local n
    for n in $(seq 1 "$SWARM_NODES"); do
        docker rm -f -v "$SWARM_NAME-node$n" >/dev/null 2>&1 || true
        # The cgroups the node's dockerd made under its parent, deepest first.
        find /sys/fs/cgroup -depth -type d -name "$SWARM_NAME-node$n" 2>/dev/null |
            while read -r dir; do find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
    done
    docker network rm "$SWARM_NAME" >/dev/null 2>&1 || true
    [ -z "$SWARM_DIR" ] || rm -rf "$SWARM_DIR"
    stop_started_dockerd
}
