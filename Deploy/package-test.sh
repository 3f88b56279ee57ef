#!/usr/bin/env bash
# Installs the Debian package into a fresh Debian 12 root that has no Swift (debootstrap
# --variant=minbase, then `apt-get install ./pager_*.deb` in a chroot, which pulls only its
# Debian dependencies) and runs `pagerd demo` there: the daemons, the workload and the preload
# library must work without the toolchain. Run as root (Deploy/test.sh does):
#   bash Deploy/package-test.sh [DEB]
set -euo pipefail
cd "$(dirname "$0")/.."
# In a mount namespace of its own with private propagation: the root's /proc, /sys and /dev
# mounts never reach the host's mount table, and vanish with this process whatever ends it.
if [ -z "${PAGER_PACKAGE_TEST_NAMESPACE:-}" ]; then
    exec env PAGER_PACKAGE_TEST_NAMESPACE=1 unshare --mount --propagation private bash "$0" "$@"
fi
deb=${1:-$(bash Deploy/package.sh | tail -1)}
command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d /var/tmp/pager-debroot-XXXXXX)
chmod 0755 "$root" # apt's _apt user must reach the root's directories
cleanup() {
    for m in dev/shm dev/pts dev proc sys; do umount -l "$root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$root" "$root.debootstrap.log"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
# The host's own Debian mirror (deb822 URIs: or a sources.list deb line), not a comment's.
mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
            grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } | grep -E '/debian/?$' | head -1 || true)
echo "package-test: debootstrap bookworm (minbase) from ${mirror:-http://deb.debian.org/debian}"
debootstrap --variant=minbase bookworm "$root" "${mirror:-http://deb.debian.org/debian}" >"$root.debootstrap.log" 2>&1 \
    || { tail -20 "$root.debootstrap.log" >&2; exit 1; }
rm -f "$root.debootstrap.log"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t tmpfs tmpfs "$root/dev/shm"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_root apt-get update -qq
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "/tmp/$(basename "$deb")" >/dev/null
if in_root sh -c 'command -v swift || ls /opt/swift /usr/lib/swift' >/dev/null 2>&1; then
    echo "package-test: the root has a Swift toolchain or runtime: the test would prove nothing" >&2
    exit 1
fi
for f in /usr/bin/pagerd /usr/bin/pager-workload /usr/lib/pager/libpager-preload.so /lib/systemd/system/pagerd-dest.service \
         /usr/share/man/man1/pagerd.dest.1.gz /usr/lib/tmpfiles.d/pager.conf /usr/lib/udev/rules.d/60-pager-userfaultfd.rules; do
    in_root test -e "$f" || { echo "package-test: $f is not installed" >&2; exit 1; }
done
if in_root ldd /usr/bin/pagerd /usr/bin/pager-workload | grep -E 'not found|libswift'; then
    echo "package-test: a daemon needs a library the package does not bring" >&2
    exit 1
fi
if in_root ldd /usr/lib/pager/libpager-preload.so | grep -E 'not found|libswift|libstdc\+\+'; then
    echo "package-test: the preload library needs more than libc (QEMU would load a language runtime)" >&2
    exit 1
fi
in_root pagerd --version
in_root pagerd demo --size-mib 64 | tee "$root/demo.txt" | tail -3
grep -q "every page of the workload's memory is correct" "$root/demo.txt"
echo "package-test: $(basename "$deb") installs on Debian 12 without Swift; pagerd demo passed there"
