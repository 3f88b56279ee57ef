#!/usr/bin/env bash
# Builds the test guest: Debian's kernel and a busybox-static initramfs whose /init runs the
# static guest workload (Deploy/qemu/guest-workload.c) on MIB MiB. Installs what it needs.
# Usage: make-guest.sh OUT_DIR [MIB]   ->  OUT_DIR/vmlinuz, OUT_DIR/initrd.gz
set -euo pipefail
out=${1:?usage: make-guest.sh OUT_DIR [MIB]}
mib=${2:-128}
here=$(cd "$(dirname "$0")" && pwd)
need=()
for p in qemu-system-x86 busybox-static gcc libc6-dev cpio; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "make-guest: installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
mkdir -p "$out"
# Debian's kernel: the one in /boot if there is one, else extracted from the linux-image
# package without installing it (no initramfs, no bootloader hooks on the host).
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$kernel" ]; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    dl=$(mktemp -d)
    (cd "$dl" && apt-get download -qq "$pkg" 2>/dev/null && dpkg-deb -x ./*.deb x)
    kernel=$(ls "$dl"/x/boot/vmlinuz-* | head -1)
    cp "$kernel" "$out/vmlinuz"
    rm -rf "$dl"
else
    cp "$kernel" "$out/vmlinuz"
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev}
cp /bin/busybox "$root/bin/busybox"
for tool in sh mount echo; do ln -s busybox "$root/bin/$tool"; done
gcc -O2 -static -o "$root/bin/guest-workload" "$here/guest-workload.c"
cat > "$root/init" <<INIT
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "guest: up"
exec /bin/guest-workload $mib
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.gz"
echo "make-guest: $out/vmlinuz and $out/initrd.gz (workload on $mib MiB)"
