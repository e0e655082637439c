#!/usr/bin/env bash
# Checks a package made by scripts/build-deb.sh; CI runs it on the release package:
#
#   scripts/check-deb.sh DEB [BINARY]
#
#   contents     exactly the expected paths, each with its mode and owner root/root
#   conffiles    /etc/felhom-agent/agent.json and nothing else; it is the example config
#   binary       /usr/sbin/felhom-agent is BINARY, byte for byte (when given)
#   files        the unit, completion, man page (gzip -n) are the ones in packaging/
#   scripts      postinst, prerm and postrm are packaging/debian's, and none starts the
#                daemon (tests/package_scripts.rs runs them against recording stubs)
#   control      name, version, architecture, section and dependency
#   md5sums      every shipped file outside /etc is listed in DEBIAN/md5sums and matches
#   lintian      no error or warning (when lintian is installed; otherwise said so)
#
# Prints one line per check; exits non-zero on the first failure, naming it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/check-deb.sh DEB [BINARY]" >&2
  exit 2
fi
deb=$1
bin=${2:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# --- contents: mode, owner and path of every entry, against the list below.
dpkg-deb --contents "$deb" | awk '{ sub(/ -> .*/, ""); print $1, $2, $6 }' | sort -k3 >"$work/got"
sort -k3 >"$work/want" <<'EOF'
drwxr-xr-x root/root ./
drwxr-xr-x root/root ./etc/
drwxr-xr-x root/root ./etc/felhom-agent/
-rw------- root/root ./etc/felhom-agent/agent.json
drwxr-xr-x root/root ./lib/
drwxr-xr-x root/root ./lib/systemd/
drwxr-xr-x root/root ./lib/systemd/system/
-rw-r--r-- root/root ./lib/systemd/system/felhom-agent.service
drwxr-xr-x root/root ./usr/
drwxr-xr-x root/root ./usr/sbin/
-rwxr-xr-x root/root ./usr/sbin/felhom-agent
drwxr-xr-x root/root ./usr/share/
drwxr-xr-x root/root ./usr/share/bash-completion/
drwxr-xr-x root/root ./usr/share/bash-completion/completions/
-rw-r--r-- root/root ./usr/share/bash-completion/completions/felhom-agent
drwxr-xr-x root/root ./usr/share/doc/
drwxr-xr-x root/root ./usr/share/doc/felhom-agent/
-rw-r--r-- root/root ./usr/share/doc/felhom-agent/changelog.Debian.gz
-rw-r--r-- root/root ./usr/share/doc/felhom-agent/copyright
drwxr-xr-x root/root ./usr/share/man/
drwxr-xr-x root/root ./usr/share/man/man8/
-rw-r--r-- root/root ./usr/share/man/man8/felhom-agent.8.gz
EOF
if [ -f "$root/packaging/debian/lintian-overrides" ]; then
  printf '%s\n' 'drwxr-xr-x root/root ./usr/share/lintian/' \
    'drwxr-xr-x root/root ./usr/share/lintian/overrides/' \
    '-rw-r--r-- root/root ./usr/share/lintian/overrides/felhom-agent' >>"$work/want"
  sort -k3 -o "$work/want" "$work/want"
fi
diff -u "$work/want" "$work/got" >&2 || fail "contents differ from the expected list (- expected, + got)"
echo "contents   $(wc -l <"$work/got") entries, modes and owners as expected"

# --- unpack the data and control parts.
dpkg-deb --raw-extract "$deb" "$work/x"
ctl=$work/x/DEBIAN

[ "$(cat "$ctl/conffiles")" = /etc/felhom-agent/agent.json ] || fail "conffiles: $(tr '\n' ' ' <"$ctl/conffiles")"
cmp -s "$work/x/etc/felhom-agent/agent.json" "$root/configs/agent.example.json" ||
  fail "conffiles: agent.json is not configs/agent.example.json"
echo "conffiles  /etc/felhom-agent/agent.json (the example config, 0600)"

if [ -n "$bin" ]; then
  cmp -s "$work/x/usr/sbin/felhom-agent" "$bin" || fail "binary: /usr/sbin/felhom-agent is not $bin"
  echo "binary     /usr/sbin/felhom-agent is $(basename "$bin")"
fi

cmp -s "$work/x/lib/systemd/system/felhom-agent.service" "$root/packaging/felhom-agent.service" ||
  fail "files: the unit is not packaging/felhom-agent.service"
cmp -s "$work/x/usr/share/bash-completion/completions/felhom-agent" \
  "$root/packaging/felhom-agent.bash-completion" || fail "files: the completion differs"
man=$work/x/usr/share/man/man8/felhom-agent.8.gz
gzip -dc "$man" | cmp -s - "$root/packaging/felhom-agent.8" || fail "files: the man page differs"
# Bytes 4-7 of a gzip header are its mtime; byte 3 bit 3 says a file name follows.
header=$(od -An -tx1 -N10 "$man" | tr -d ' \n')
[ "${header:8:8}" = 00000000 ] || fail "files: the man page's gzip header has a timestamp"
[ $((0x${header:6:2} & 8)) -eq 0 ] || fail "files: the man page's gzip header has a file name"
echo "files      unit, completion and man page (gzip -n) are packaging/'s"

for s in postinst prerm postrm; do
  cmp -s "$ctl/$s" "$root/packaging/debian/$s" || fail "scripts: $s is not packaging/debian/$s"
  [ "$(stat -c %a "$ctl/$s")" = 755 ] || fail "scripts: $s is not 0755"
  sh -n "$ctl/$s" || fail "scripts: $s does not parse"
  # A start in any form: systemctl start/restart/enable --now, or invoke-rc.d ... start.
  if grep -En '(systemctl|deb-systemd-invoke|invoke-rc\.d|service)[^#]*[[:space:]](start|restart|reload-or-restart)([[:space:]]|$)|--now' "$ctl/$s" >&2; then
    fail "scripts: $s may start the daemon"
  fi
done
echo "scripts    postinst, prerm, postrm are packaging/debian's; none starts the daemon"

field() { dpkg-deb --field "$deb" "$1"; }
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
[ "$(field Package)" = felhom-agent ] || fail "control: Package is $(field Package)"
[ "$(field Version)" = "$version-1" ] || fail "control: Version is $(field Version), Cargo.toml says $version"
[ "$(field Architecture)" = amd64 ] || fail "control: Architecture is $(field Architecture)"
[ "$(field Section)" = admin ] || fail "control: Section is $(field Section)"
field Depends | grep -q '^init-system-helpers' || fail "control: no dependency on init-system-helpers"
echo "control    felhom-agent $(field Version) $(field Architecture), section admin"

(cd "$work/x" && md5sum --quiet -c DEBIAN/md5sums) || fail "md5sums: a file does not match DEBIAN/md5sums"
# Every shipped file but the conffile (dpkg tracks that one itself) has its line.
awk '$1 ~ /^-/ && $3 !~ /^\.\/etc\// {print substr($3, 3)}' "$work/got" | sort >"$work/files"
awk '{print $2}' "$ctl/md5sums" | sort | diff -u "$work/files" - >&2 ||
  fail "md5sums: the list is not every shipped file outside /etc"
echo "md5sums    $(wc -l <"$ctl/md5sums") files listed and matching"

if command -v lintian >/dev/null 2>&1; then
  # --fail-on: any error or warning fails; info and pedantic tags are printed only.
  lintian --fail-on error,warning --display-info "$deb" >"$work/lintian" 2>&1 || {
    cat "$work/lintian" >&2
    fail "lintian"
  }
  echo "lintian    clean ($(grep -c '^[IP]:' "$work/lintian" || true) info tags)"
else
  echo "lintian    SKIPPED: lintian is not installed (apt-get install lintian)"
fi
echo "ok: $(basename "$deb")"
