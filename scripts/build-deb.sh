#!/usr/bin/env bash
# Builds the Debian package from the static release binary, reproducibly:
#
#   scripts/build-deb.sh BINARY [OUT_DIR]      (default OUT_DIR: ./dist)
#
# BINARY is what scripts/build-release.sh made. Same commit + same binary => same .deb:
# every mtime is SOURCE_DATE_EPOCH (the last commit's time, as for the binary), every
# owner root:root, every mode set here (not taken from the umask or the checkout), the
# man page and changelog gzipped with -9n (no name, no timestamp), and dpkg-deb writes
# the members in name order with single-threaded xz (more threads split the stream
# into other blocks). Prints the package's path, size and sha256.
#
# Contents (scripts/check-deb.sh checks them): /usr/sbin/felhom-agent, the unit in
# /lib/systemd/system, /etc/felhom-agent/agent.json (the example config, a conffile,
# 0600), felhom-agent(8), the bash completion, copyright and changelog.Debian.gz, and the
# maintainer scripts from packaging/debian/ (they enable the unit and never start it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/build-deb.sh BINARY [OUT_DIR]" >&2
  exit 2
fi
bin=$1
out=${2:-$root/dist}
for tool in dpkg-deb gzip python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing" >&2; exit 2; }
done

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1767225600)
fi
export SOURCE_DATE_EPOCH
export LC_ALL=C TZ=UTC

pkg=felhom-agent
upstream=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
[ -n "$upstream" ] || { echo "error: no version in Cargo.toml" >&2; exit 2; }
version="$upstream-1"
arch=amd64
maintainer=${FELHOM_DEB_MAINTAINER:-"felhom agent maintainers <agent@felhom.example>"}
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/$pkg
umask 022

# put SRC DEST MODE: copies one file into the tree with an exact mode.
put() {
  mkdir -p "$(dirname "$stage/$2")"
  cp "$1" "$stage/$2"
  chmod "$3" "$stage/$2"
}
# gz SRC DEST: gzip -9n, no name and no timestamp in the header.
gz() {
  mkdir -p "$(dirname "$stage/$2")"
  gzip -9nc "$1" >"$stage/$2"
  chmod 0644 "$stage/$2"
}

put "$bin" usr/sbin/felhom-agent 0755
put "$root/packaging/felhom-agent.service" lib/systemd/system/felhom-agent.service 0644
put "$root/configs/agent.example.json" etc/felhom-agent/agent.json 0600
gz "$root/packaging/felhom-agent.8" usr/share/man/man8/felhom-agent.8.gz
put "$root/packaging/felhom-agent.bash-completion" \
  usr/share/bash-completion/completions/felhom-agent 0644

doc=usr/share/doc/$pkg
mkdir -p "$stage/$doc"
{
  printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$version"
  printf '  * felhom-agent %s, built from commit %s.\n' "$upstream" "$commit"
  printf '    What changed: CHANGELOG.md in the sources.\n\n'
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$work/changelog.Debian"
gz "$work/changelog.Debian" "$doc/changelog.Debian.gz"
python3 "$root/scripts/sbom.py" --copyright >"$work/copyright"
put "$work/copyright" "$doc/copyright" 0644
put "$root/packaging/debian/lintian-overrides" "usr/share/lintian/overrides/$pkg" 0644

mkdir -p "$stage/DEBIAN"
for s in postinst prerm postrm; do
  put "$root/packaging/debian/$s" "DEBIAN/$s" 0755
done
printf '/etc/felhom-agent/agent.json\n' >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print |
  sed 's#^\./##' | sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
installed_kib=$(du -s -k --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kib
Depends: init-system-helpers (>= 1.54~)
Section: admin
Priority: optional
Description: felhom host agent for Proxmox VE
 Runs as root on a Proxmox VE host as one static binary: reports the host to
 the felhom hub, converges the host's LXC guests toward a desired state through
 the Proxmox API, journals every operation, and refuses destructive changes
 unless an operator signed that exact action with an allow-listed SSH key.
 .
 The package enables felhom-agent.service but never starts it: configure
 /etc/felhom-agent/agent.json and the credentials first (felhom-agent(8)).
EOF
for f in control conffiles md5sums; do chmod 0644 "$stage/DEBIAN/$f"; done

find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/${pkg}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz -z9 --threads-max=1 --build "$stage" "$deb" >/dev/null
size=$(stat -c %s "$deb")
sum=$(sha256sum "$deb" | cut -d' ' -f1)
printf 'package %s\nsize    %s bytes (%s KiB)\nsha256  %s\n' "$deb" "$size" "$((size / 1024))" "$sum"
