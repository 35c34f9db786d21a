#!/usr/bin/env bash
# Builds the Debian package and checks it: its contents and conffile, its systemd unit
# (systemd-analyze verify), and an install into a clean Debian root (the debootstrap image
# of scripts/build-python-task-images.sh, run as a container with the Docker socket) where
# the installed binary, with the installed config, serves a task and obeys the installed
# `ctl`. Needs dockerd, the test images, and root.
#
# The installed config names the executor `mecanywhere` (the default): at start it removes
# containers an earlier executor of that name left, as an installed executor would.
#
# Usage: scripts/test-package.sh   (from any directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/docker.sh
source "$ROOT/scripts/lib/docker.sh"

DEB="$(scripts/build-deb.sh)"
echo "built $DEB" >&2

# Contents.
contents="$(dpkg-deb -c "$DEB")"
for path in ./usr/bin/mecanywhere-executor ./lib/systemd/system/mecanywhere-executor.service \
    ./etc/mecanywhere/executor.yaml ./usr/share/doc/mecanywhere-executor/README.md; do
    grep -q " $path\$" <<<"$contents" || { echo "package lacks $path" >&2; exit 1; }
done
[ "$(dpkg-deb -I "$DEB" conffiles)" = "/etc/mecanywhere/executor.yaml" ] ||
    { echo "the config is not a conffile" >&2; exit 1; }

# The unit, verified against the package's own files (the host's units for the rest).
if ! command -v systemd-analyze >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meca-package.XXXXXX")"
CONTAINER="meca-package-check-$$"
cleanup() {
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
dpkg-deb -x "$DEB" "$WORK/root"
cp -an /lib/systemd/system/. "$WORK/root/lib/systemd/system/"
# The unit's ExecReload runs /bin/sh, which every Debian has (dash is Essential): the root
# verify checks against gets one too.
install -D -m 0755 "$(readlink -f /bin/sh)" "$WORK/root/bin/sh"
verify="$(systemd-analyze --root="$WORK/root" verify /lib/systemd/system/mecanywhere-executor.service 2>&1)" ||
    { echo "systemd-analyze verify failed: $verify" >&2; exit 1; }
[ -z "$verify" ] || { echo "systemd-analyze verify warned: $verify" >&2; exit 1; }
echo "unit verified" >&2

# Install into a clean Debian root and run what was installed.
SUITE="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")"
BASE="meca-debian-python:${SUITE:-bookworm}"
docker image inspect "$BASE" >/dev/null 2>&1 || scripts/build-python-task-images.sh >/dev/null
cp "$DEB" "$WORK/package.deb"
cp scripts/package-check/check.py "$WORK/check.py"
# The installed executor runs in this container: its sandbox socket directory must be a
# volume, which the holders it starts mount (removed with the container, --rm).
docker run --rm --name "$CONTAINER" --label org.mecanywhere.test-image=1 \
    -v /var/run/docker.sock:/var/run/docker.sock -v /run/mecanywhere-executor \
    -v "$WORK/package.deb:/pkg/package.deb:ro" -v "$WORK/check.py:/pkg/check.py:ro" \
    "$BASE" sh -c 'dpkg -i /pkg/package.deb >/dev/null && python3 /pkg/check.py'
echo "package checks passed"
