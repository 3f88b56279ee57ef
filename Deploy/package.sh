#!/usr/bin/env bash
# Builds the Debian package that installs the pager on a host without Swift:
#   bash Deploy/package.sh [OUTDIR]        # default .build/package; prints the .deb's path
# - /usr/bin/pagerd and /usr/bin/pager-workload (the demo's and the tests' workload), built with
#   the Swift standard library linked statically (--static-swift-stdlib): they need libc,
#   libcrypto (libssl3) and liburing2 only;
# - /usr/lib/pager/libpager-preload.so, the QEMU preload library, plain C (Deploy/build-preload.sh);
# - systemd units (ExecStart=/usr/bin/pagerd), /etc/default examples, a tmpfiles.d entry for
#   /run/pager (3770 root:kvm), a udev rule giving /dev/userfaultfd to group kvm, man pages and
#   bash/zsh/fish completions.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
out=${1:-.build/package}
version=$(grep -o 'pagerd [0-9][0-9.]*' Sources/pagerd/Pagerd.swift | head -1 | cut -d' ' -f2)
arch=$(dpkg --print-architecture)
static=.build-static
swift build -c release --static-swift-stdlib --product pagerd --scratch-path "$static"
swift build -c release --static-swift-stdlib --product pager-workload --scratch-path "$static"
for binary in pagerd pager-workload; do
    # Into a variable first: `ldd | grep -q` under pipefail fails on grep's early exit.
    libraries=$(ldd "$static/release/$binary")
    if grep -q libswift <<<"$libraries"; then
        ldd "$static/release/$binary" >&2
        echo "package.sh: $binary still links a Swift runtime library" >&2
        exit 1
    fi
done

root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/pager" "$root/lib/systemd/system" "$root/etc/default" \
    "$root/usr/lib/tmpfiles.d" "$root/usr/share/doc/pager"
install -m 0755 "$static/release/pagerd" "$static/release/pager-workload" "$root/usr/bin/"
bash Deploy/build-preload.sh "$root/usr/lib/pager/libpager-preload.so"
chmod 0644 "$root/usr/lib/pager/libpager-preload.so"
for role in source dest; do
    sed 's|/usr/local/bin/pagerd|/usr/bin/pagerd|; s|copy .build/release/pagerd to /usr/local/bin, this file to /etc/systemd/system/,|installed by the pager package;|' \
        "Deploy/systemd/pagerd-$role.service" >"$root/lib/systemd/system/pagerd-$role.service"
done
cat >"$root/etc/default/pagerd-source" <<'CONF'
# Arguments of pagerd source (pagerd-source.service). Make the key with
# `pagerd keygen /etc/pager/keys.psk` and copy it (mode 0600) to the destinations.
PAGERD_SOURCE_ARGS=--listen 0.0.0.0:7070 --region /dev/shm/vm.ram --key-file keys.psk --control-socket /run/pager/source.control
CONF
cat >"$root/etc/default/pagerd-dest" <<'CONF'
# Arguments of pagerd dest (pagerd-dest.service); the key file is the source's.
PAGERD_DEST_ARGS=--connect 198.51.100.7:7070 --uffd-socket /run/pager/uffd.sock --key-file keys.psk --control-socket /run/pager/dest.control
CONF
# /run/pager: the daemons' sockets and QEMU's QMP sockets. Group kvm (QEMU's group on Debian)
# may create files there (QEMU's QMP sockets; setgid: they keep the group) but, sticky, may not
# remove or rename root's: a daemon's socket cannot be swapped for another process's. A link or
# a live socket put where a daemon makes its own makes the daemon refuse to start (UnixSocket.listen).
echo "d /run/pager 3770 root kvm -" >"$root/usr/lib/tmpfiles.d/pager.conf"
# /dev/userfaultfd to group kvm: QEMU run by libvirt as libvirt-qemu (group kvm) can then make
# the userfaultfd the preload library hands over, without vm.unprivileged_userfaultfd=1 (which
# would give it to every user). Members of kvm can then handle faults of their own memory.
install -d "$root/usr/lib/udev/rules.d"
echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' >"$root/usr/lib/udev/rules.d/60-pager-userfaultfd.rules"
bash Deploy/install-docs.sh "$root/usr" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
cp README.md "$root/usr/share/doc/pager/"
cp -r Deploy/libvirt "$root/usr/share/doc/pager/libvirt"
cat >"$root/DEBIAN/control" <<CONTROL
Package: pager
Version: $version
Architecture: $arch
Maintainer: pager developers <pager@localhost>
Depends: libc6 (>= 2.36), libssl3, liburing2, libstdc++6, libgcc-s1
Recommends: systemd
Section: admin
Priority: optional
Description: remote pager for post-copy memory migration
 pagerd serves a VM's or a process's memory from a source host and resolves its
 userfaultfd page faults on a destination host while the rest streams in, with
 authenticated (optionally encrypted) sessions that resume after lost
 connections. Includes the QEMU backend (pagerd qemu-source/qemu-dest and the
 preload library /usr/lib/pager/libpager-preload.so).
CONTROL
printf '/etc/default/pagerd-source\n/etc/default/pagerd-dest\n' >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # kvm is QEMU's group on Debian (made by udev); the socket directory and /dev/userfaultfd
    # are given to it.
    getent group kvm >/dev/null || addgroup --system kvm
    if command -v systemd-tmpfiles >/dev/null 2>&1; then systemd-tmpfiles --create pager.conf || true; fi
    if command -v udevadm >/dev/null 2>&1 && [ -e /dev/userfaultfd ]; then
        udevadm control --reload || true
        udevadm trigger --sysname-match=userfaultfd || true
    fi
fi
POSTINST
chmod 0755 "$root/DEBIAN/postinst"
mkdir -p "$out"
deb="$out/pager_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
