#!/usr/bin/env bash
# Installs what building and testing the pager needs on Debian 12 / Ubuntu, as root.
# Idempotent: installs only what is missing. Sourced by Deploy/demo.sh and Deploy/test.sh.
set -euo pipefail

# Swift is not a Debian package: it must already be installed (swift.org toolchain, 6.1 or
# later). These machines keep it in /opt/swift.
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
if ! command -v swift >/dev/null 2>&1; then
    echo "error: swift not found on PATH; install a Swift 6.1+ toolchain from swift.org first" >&2
    exit 1
fi

# liburing-dev: io_uring transport. libssl-dev: libcrypto (authentication and encryption). libibverbs-dev/librdmacm-dev: lets the RDMA trait build be
# checked (the default build does not need them). pkg-config: finds liburing. iproute2: network
# namespaces and tc for the two-host tests and benchmarks; nftables: the resume tests blackhole a
# connection with it. iperf3: pager-bench's second
# raw-throughput baseline (pager-bench says so and goes on without it).
# qemu-system-x86, busybox-static, cpio: the QEMU test guest (Deploy/qemu/make-guest.sh
# fetches Debian's kernel itself). tshark, tcpdump: the capture tests run the Wireshark
# dissector (Deploy/wireshark/pager.lua) on captured migrations (tshark's postinst question
# about non-root capture takes its default under DEBIAN_FRONTEND=noninteractive). prometheus:
# its promtool checks the daemons' /metrics in the operations tests; curl scrapes them.
# debootstrap: the package test installs the .deb into a fresh Debian root without Swift.
# libvirt-daemon-system, libvirt-daemon-driver-qemu: Deploy/libvirt/test.sh runs two libvirtd
# "hosts" and virsh migrate (Debian's libvirt: QEMU as libvirt-qemu, group kvm).
packages=(liburing-dev libssl-dev pkg-config libibverbs-dev librdmacm-dev iproute2 nftables iperf3 qemu-system-x86 busybox-static cpio tshark tcpdump prometheus curl debootstrap
          libvirt-daemon-system libvirt-daemon-driver-qemu)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$(id -u)" -ne 0 ] && [ "$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo 0)" != 1 ]; then
    echo "note: not root and vm.unprivileged_userfaultfd=0: tests that need userfaultfd will be skipped" >&2
fi
