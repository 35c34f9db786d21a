#!/usr/bin/env bash
# Builds the Debian package target/debian/mecanywhere-executor_<version>_<arch>.deb with
# dpkg-deb: the release binary, the systemd unit (debian/mecanywhere-executor.service), the
# default config /etc/mecanywhere/executor.yaml (a conffile: an operator's edits survive
# upgrades) and the README. Prints the package's path.
#
# Usage: scripts/build-deb.sh   (from any directory; needs cargo, dpkg-deb, objdump)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=mecanywhere-executor
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
ARCH="$(dpkg --print-architecture)"

cargo build --release --locked --quiet --bin "$NAME"
BIN="target/release/$NAME"
# The newest glibc symbol version the binary needs is the libc6 it depends on.
GLIBC="$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/meca-deb.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PKG="$WORK/${NAME}_${VERSION}_${ARCH}"
install -D -m 0755 "$BIN" "$PKG/usr/bin/$NAME"
strip --strip-unneeded "$PKG/usr/bin/$NAME"
install -D -m 0644 debian/mecanywhere-executor.service "$PKG/lib/systemd/system/$NAME.service"
install -D -m 0644 debian/executor.yaml "$PKG/etc/mecanywhere/executor.yaml"
install -D -m 0644 README.md "$PKG/usr/share/doc/$NAME/README.md"
install -d "$PKG/DEBIAN"
cat >"$PKG/usr/share/doc/$NAME/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $NAME
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
echo "/etc/mecanywhere/executor.yaml" >"$PKG/DEBIAN/conffiles"
# systemd picks the unit up; the operator enables it (systemctl enable --now).
cat >"$PKG/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$1" = configure ] && systemctl is-active --quiet mecanywhere-executor; then
        systemctl restart mecanywhere-executor || true
    fi
fi
SCRIPT
cat >"$PKG/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop mecanywhere-executor || true
    systemctl disable mecanywhere-executor || true
fi
SCRIPT
cat >"$PKG/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
SCRIPT
chmod 0755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"
cat >"$PKG/DEBIAN/control" <<CONTROL
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: mecanywhere-executor developers <maintainers@mecanywhere-executor.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
Depends: libc6 (>= $GLIBC), libgcc-s1
Recommends: docker.io
Section: admin
Priority: optional
Description: MECAnywhere task executor
 The agent a MECAnywhere host runs to execute offloaded computations: it runs
 each task's container image on the local Docker daemon with exactly the
 requested CPU, memory, GPUs or SGX, keeps warm containers for reuse, and
 accounts the host's resources so tasks never hold more than the owner lent.
CONTROL
(cd "$PKG" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
mkdir -p target/debian
OUT="target/debian/${NAME}_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$OUT" >/dev/null
echo "$OUT"
