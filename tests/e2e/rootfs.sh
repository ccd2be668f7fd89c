#!/usr/bin/env bash
# Prints the path of a Debian rootfs tarball for systemd-nspawn, building it when it is not
# cached: debootstrap (minbase + systemd) from the mirror apt on this machine already uses.
#
#   tests/e2e/rootfs.sh [SUITE]        # bookworm (systemd 252) by default
set -euo pipefail
suite=${1:-bookworm}
# rpm: the .rpm's scriptlets are run for real too (Debian's rpm, with its own database).
include=systemd,systemd-sysv,dbus,polkitd,libpam-systemd,procps,adduser,curl,iproute2,ca-certificates,socat,util-linux,rpm
cache=${VLLAMA_E2E_CACHE:-${VLLAMA_CACHE_ROOT:-/var/cache/vllama}/e2e}
# The package list is part of the name: changing it builds a new rootfs.
tar=$cache/rootfs-$suite-$(echo "$include" | sha256sum | cut -c1-8).tar.zst
if [ -f "$tar" ]; then
  echo "$tar"
  exit 0
fi
mirror() {  # the Debian mirror apt already uses: no host name is written here
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } |
    grep -v security | head -1
}
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/rootfs-$suite.XXXX")
trap 'rm -rf "$tmp"' EXIT
echo "== debootstrap $suite into $tmp (about a minute)" >&2
debootstrap --variant=minbase --include="$include" \
  "$suite" "$tmp/root" "$(mirror)" > "$cache/debootstrap-$suite.log" 2>&1 ||
  { tail -20 "$cache/debootstrap-$suite.log" >&2; exit 2; }
echo "e2e-$suite" > "$tmp/root/etc/hostname"
chroot "$tmp/root" passwd -d root >/dev/null
chroot "$tmp/root" apt-get clean
tar -C "$tmp/root" --zstd -cf "$tar.tmp" .
mv "$tar.tmp" "$tar"
for old in "$cache/rootfs-$suite"*.tar.zst; do [ "$old" = "$tar" ] || rm -f "$old"; done
echo "$tar"
