#!/usr/bin/env bash
# Builds the test images that run real CPython, without any container registry:
#
#   meca-debian-python:<suite>          a Debian root (debootstrap, minbase) with python3-flask,
#                                       imported as an image; built once, then reused
#   meca-test-flask-template:latest     a Flask task written like MECAnywhere's examples
#                                       (tasks/flask-template: plain print, `flask run`)
#   meca-example-python:latest          the README's example task (tasks/python-example)
#
# The Debian packages come from the mirror in DEBIAN_MIRROR (default: the first Debian
# mirror in this machine's apt sources, else deb.debian.org). Needs root (debootstrap).
#
# Usage: scripts/build-python-task-images.sh   (from any directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"
LABEL="org.mecanywhere.test-image=1"
SUITE="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
SUITE="${SUITE:-bookworm}"
BASE="meca-debian-python:$SUITE"

apt_mirror() {
    local uri
    uri="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n 1 | tr -d ' ')"
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
    if ! command -v debootstrap >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    local mirror="${DEBIAN_MIRROR:-$(apt_mirror)}"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/meca-debian-root.XXXXXX")"
    trap cleanup_root EXIT
    echo "debootstrap $SUITE from $mirror (python3-flask) ..." >&2
    if ! as_root debootstrap --variant=minbase --include=python3-flask "$SUITE" "$WORK/root" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1; then
        echo "debootstrap failed; its log:" >&2
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    fi
    as_root rm -rf "$WORK/root"/usr/share/{doc,man,locale,info} "$WORK/root"/var/cache/apt/* \
        "$WORK/root"/var/lib/apt/lists/*
    as_root tar -C "$WORK/root" -c . | docker import \
        --change "LABEL $LABEL" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        - "$BASE" >/dev/null
    echo "imported $BASE" >&2
}

# Unmounts whatever debootstrap left mounted in the root (after a failure), then removes it.
cleanup_root() {
    local mounts
    mounts="$(awk -v r="$WORK/root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r)"
    for m in $mounts; do as_root umount -l "$m" || true; done
    as_root rm -rf "$WORK"
}

command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    build_base
fi

# build TAG DIR
build() {
    local tag="$1" dir="$2" log
    log="$(mktemp "${TMPDIR:-/tmp}/meca-build.XXXXXX")"
    if ! docker build -q -t "$tag" --label "$LABEL" --build-arg "BASE=$BASE" "$dir" >"$log" 2>&1; then
        echo "docker build of $tag failed:" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    echo "built $tag"
}
build meca-test-flask-template:latest "$ROOT/tasks/flask-template"
build meca-example-python:latest "$ROOT/tasks/python-example"
