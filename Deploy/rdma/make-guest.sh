#!/usr/bin/env bash
# Builds the soft-RoCE test guest: Debian bookworm's 6.1 kernel and a busybox-static initramfs
# holding the rdma_rxe and veth modules, rdma-core's userspace (verbs, rxe provider, RDMA CM),
# iproute2, perftest and rping, all extracted from Debian packages (nothing is installed on the
# host but the build tools). Its /init loads the modules, puts rxe0 on a veth, checks the
# environment with ib_read_lat and rping, runs /bin/guest-tests.sh if there is one, powers off.
# Usage: make-guest.sh OUT_DIR [--tests FILE] [BINARY...]   ->  OUT_DIR/vmlinuz, OUT_DIR/initrd.gz
#   --tests FILE  becomes /bin/guest-tests.sh, run with RDMA_DEVICE, RDMA_ADDRESS (rxe0's),
#                 RDMA_PEER_ADDRESS (the veth's other end, no RDMA device) and RDMA_GID_INDEX
#   BINARY        copied into /bin with the shared libraries ldd lists (a script is copied alone)
# Downloaded packages and their unpacked trees are kept in $PAGER_RDMA_CACHE (default
# $XDG_CACHE_HOME/pager-rdma-guest, else /var/cache/pager-rdma-guest): a second run is offline.
set -euo pipefail
shopt -s inherit_errexit
export LC_ALL=C
die() { echo "make-guest: $*" >&2; exit 1; }
usage="usage: make-guest.sh OUT_DIR [--tests FILE] [BINARY...]"
out=${1:?$usage}; shift
tests=
if [ "${1:-}" = --tests ]; then tests=${2:?$usage}; shift 2; [ -f "$tests" ] || die "--tests $tests: no such file"; fi
for b in "$@"; do [ -f "$b" ] || die "binary $b: no such file"; done
cache=${PAGER_RDMA_CACHE:-${XDG_CACHE_HOME:-/var/cache}/pager-rdma-guest}

need=()
for p in qemu-system-x86 busybox-static cpio kmod xz-utils zstd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "make-guest: installing ${need[*]}" >&2
    timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed"
fi
mkdir -p "$cache/debs" "$cache/trees" "$out"
# One build at a time per cache: another one could be unpacking the tree this one reads.
exec 9>"$cache/lock"
flock 9

# deb PKG: the cached .deb of PKG's candidate version (from $version), downloaded first if
# missing. The download goes to a scratch dir so that an interrupted one leaves no bad .deb.
deb() {
    local ver=${version[$1]:-} file dl
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "apt has no candidate for $1 (run apt-get update)"
    file=$(ls "$cache/debs/$1_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$file" ]; then
        dl=$(mktemp -d "$cache/debs/.dl.XXXXXX")
        # Sandbox::User=root: _apt cannot write into a root-owned cache.
        (cd "$dl" && timeout 600 apt-get download -qq -o APT::Sandbox::User=root "$1=$ver") \
            || { rm -rf "$dl"; die "apt-get download $1=$ver failed"; }
        mv "$dl"/*.deb "$cache/debs/" && rm -rf "$dl"
        file=$(ls "$cache/debs/$1_${ver//:/%3a}_"*.deb | head -1)
    fi
    echo "$file"
}
# tree PKG: PKG's .deb unpacked in the cache; the .done marker says the unpacking finished.
tree() {
    local file t
    file=$(deb "$1")
    t="$cache/trees/$(basename "$file" .deb)"
    if [ ! -e "$t.done" ]; then
        rm -rf "$t"
        dpkg-deb -x "$file" "$t" || die "dpkg-deb -x $file failed"
        touch "$t.done"
    fi
    echo "$t"
}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,lib/x86_64-linux-gnu}

# Userspace: package -> the paths taken from it (the libraries they link come with ldd below).
# perftest links libmlx5 and libefa even on rxe; the rxe provider is dlopen'ed through
# /etc/libibverbs.d/rxe.driver, so ldd never lists it.
declare -A take=(
    [libibverbs1]="usr/lib" [librdmacm1]="usr/lib" [libibumad3]="usr/lib" [libnl-3-200]="lib etc" [libnl-route-3-200]="usr/lib"
    [ibverbs-providers]="etc/libibverbs.d/rxe.driver usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so
        usr/lib/x86_64-linux-gnu/libmlx5.so.1* usr/lib/x86_64-linux-gnu/libefa.so.1*"
    [iproute2]="bin/ip usr/bin/rdma"
    [perftest]="usr/bin/ib_read_lat usr/bin/ib_read_bw usr/bin/ib_write_lat usr/bin/ib_write_bw usr/bin/ib_send_lat usr/bin/ib_send_bw"
    [rdmacm-utils]="usr/bin/rping usr/bin/ucmatose" [ibverbs-utils]="usr/bin/ibv_devinfo usr/bin/ibv_devices"
)

# The kernel: the package linux-image-amd64 points at, unpacked (never installed on the host).
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "linux-image-amd64 names no linux-image-6.x package (run apt-get update)"
# Candidate versions of every package, in one apt-cache call (each call takes half a second).
declare -A version
while read -r p v; do version[$p]=$v; done < <(apt-cache policy "$kpkg" "${!take[@]}" |
    awk '/^[^ ].*:$/ {sub(":$", ""); p = $1} /^  Candidate:/ {print p, $2}')
ktree=$(tree "$kpkg")
# Only the current kernel stays in the cache (an unpacked one takes about 400 MB).
find "$cache/trees" "$cache/debs" -maxdepth 1 -name 'linux-image-*' ! -name "$(basename "$ktree")*" -exec rm -rf {} +
kver=${kpkg#linux-image-}
cp "$ktree/boot/vmlinuz-$kver" "$out/vmlinuz"
moddir="$ktree/lib/modules/$kver"
# The package ships no modules.dep (depmod runs at install time): make it in the cache.
[ -s "$moddir/modules.dep" ] || depmod -b "$ktree" "$kver" || die "depmod -b $ktree $kver failed"

# Modules and their dependencies from modules.dep, each after what it needs. crc32_generic
# is named because no symbol links it: rdma_rxe asks the crypto API for "crc32" at run time,
# which would otherwise need modprobe (crc32-pclmul needs a CPU feature TCG may not offer).
wanted="crc32_generic rdma_rxe ib_uverbs rdma_ucm veth"
order=()
add_module() {
    local line dep m
    line=$(grep -E "(^|/)$1\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep") || die "module $1 is not in $moddir/modules.dep"
    for dep in ${line#*:}; do add_module "$(basename "$dep" | sed -E 's/\.ko(\.xz|\.zst|\.gz)?$//')"; done
    m=${line%%:*}
    for dep in "${order[@]}"; do [ "$dep" = "$m" ] && return; done
    order+=("$m")
}
for w in $wanted; do add_module "$w"; done
: > "$root/etc/rdma-modules"
for m in "${order[@]}"; do
    # busybox insmod reads plain .ko only: decompress here.
    dest="/lib/modules/$kver/$m"; dest=${dest%.xz}; dest=${dest%.zst}; dest=${dest%.gz}
    mkdir -p "$root$(dirname "$dest")"
    case $m in *.xz) unpack="xz -dc" ;; *.zst) unpack="zstd -qdc" ;; *.gz) unpack="gzip -dc" ;; *) unpack=cat ;; esac
    $unpack "$moddir/$m" > "$root$dest" || die "$unpack $moddir/$m failed"
    echo "$dest" >> "$root/etc/rdma-modules"
done

for p in "${!take[@]}"; do
    t=$(tree "$p")
    (cd "$t" && cp -a --parents ${take[$p]} "$root/") || die "$p lacks one of: ${take[$p]}"
done
# glibc loads libgcc_s at run time (thread cancellation, unwinding): ldd does not list it.
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$root/lib/x86_64-linux-gnu/"
for b in "$@"; do cp -L "$b" "$root/bin/"; done
[ -z "$tests" ] || install -m 755 "$tests" "$root/bin/guest-tests.sh"

# Shared libraries: for every ELF file in the guest, what ldd lists, searched in the guest's
# own directories first; whatever resolves outside the guest is copied from the host (Debian 12).
libpath="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/libibverbs"
while IFS= read -r f; do
    [ "$(head -c 4 "$f" | tail -c 3)" = ELF ] || continue
    listed=$(LD_LIBRARY_PATH=$libpath ldd "$f" 2>&1 || true)
    if grep -q "not found" <<<"$listed"; then
        die "${f#"$root"} needs $(awk '/not found/ {print $1}' <<<"$listed" | xargs), found neither in the guest's packages nor on the host"
    fi
    for lib in $(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$listed"); do
        case $lib in "$root"/*) continue ;; esac
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
    done
done < <(find "$root" -type f ! -path "$root/lib/modules/*")

# busybox last, so that its links never shadow a package's file (iproute2's /bin/ip).
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list-full); do [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"; done

cat > "$root/init" <<'INIT'
#!/bin/sh
# The guest's /init (busybox sh, PID 1). Debian's busybox runs its own applets before $PATH:
# iproute2's ip and rdma are called by full path.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# One rxe device on va serves both ends of every test: a second one on vb would reach va's
# address through lo, where QP setup fails (DESIGN-NOTES, rdma_rxe).
dev=va addr=10.77.0.1 peer=10.77.0.2
step() { echo "guest: $*"; }
fail() { echo "guest: FAILED: $*"; poweroff -f; exit 1; }
# wait_until WHAT CMD...: runs CMD every 0.2 s until it succeeds, for at most 20 s. Used
# where the shell has no event to wait on (a listening socket, a GID the kernel adds later).
wait_until() {
    what=$1; shift; n=0
    until "$@"; do n=$((n + 1)); [ $n -lt 100 ] || fail "$what: not seen within 20 s"; sleep 0.2; done
}
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail "mount proc, sys and dev"
step "up: kernel $(uname -r)"
while read -r m; do insmod "$m" || fail "insmod $m"; step "module $(basename "$m" .ko) loaded"; done < /etc/rdma-modules

/bin/ip link set lo up || fail "ip link set lo up"
/bin/ip link add va type veth peer name vb || fail "ip link add va type veth peer name vb"
/bin/ip addr add $addr/24 dev va && /bin/ip addr add $peer/24 dev vb || fail "ip addr add $addr (va), $peer (vb)"
/bin/ip link set va up && /bin/ip link set vb up || fail "ip link set va/vb up"
step "veth va $addr <-> vb $peer up"
/usr/bin/rdma link add rxe0 type rxe netdev $dev || fail "rdma link add rxe0 type rxe netdev $dev"
# The device is registered when the netlink call returns; the port turns ACTIVE with the
# veth carrier and the IPv4 GID is added by a kernel worker, both a little later.
[ -d /sys/class/infiniband/rxe0 ] || fail "rdma link add succeeded but /sys/class/infiniband/rxe0 is missing"
port=/sys/class/infiniband/rxe0/ports/1
wait_until "rxe0 port 1 ACTIVE" grep -q ACTIVE $port/state
gid=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' $(echo $addr | tr . ' '))
# has_gid: sets gidx to the index of $gid in rxe0's GID table (rxe has RoCE v2 GIDs only).
has_gid() { for g in $port/gids/*; do [ "$(cat $g 2>/dev/null)" = "$gid" ] && gidx=${g##*/} && return 0; done; return 1; }
wait_until "rxe0 GID $gid (RoCE v2, $addr)" has_gid
step "rxe0 on $dev: port ACTIVE, GID index $gidx = $addr"

lat="/usr/bin/ib_read_lat -d rxe0 -x $gidx -s 4096 -n 20 -F"
$lat > /tmp/lat-server.txt 2>&1 &
server=$!
# perftest exchanges QP numbers over TCP port 18515 (0x4853) before any RDMA.
lat_listening() { awk '$2 ~ /:4853$/ && $4 == "0A" {found = 1} END {exit !found}' /proc/net/tcp; }
wait_until "ib_read_lat server listening on TCP 18515" lat_listening
timeout 60 $lat $addr > /tmp/lat.txt 2>&1 || { cat /tmp/lat.txt /tmp/lat-server.txt; fail "ib_read_lat 4 KiB client on rxe0"; }
wait $server || { cat /tmp/lat-server.txt; fail "ib_read_lat 4 KiB server on rxe0"; }
step "sanity: ib_read_lat 4 KiB on rxe0 ok:"
grep -E '#bytes|^ *4096 ' /tmp/lat.txt

/usr/bin/rping -s -a $addr -C 3 > /tmp/rping-server.txt 2>&1 &
server=$!
cm_listening() { /usr/bin/rdma resource show cm_id 2>/dev/null | grep -q LISTEN; }
wait_until "rping server listening (RDMA CM)" cm_listening
timeout 60 /usr/bin/rping -c -a $addr -C 3 -v > /tmp/rping.txt 2>&1 || { cat /tmp/rping.txt /tmp/rping-server.txt; fail "rping client to $addr"; }
wait $server || { cat /tmp/rping-server.txt; fail "rping server on $addr"; }
step "sanity: rping over RDMA CM ok ($(grep -c "ping data" /tmp/rping.txt) ping-pongs)"

export RDMA_DEVICE=rxe0 RDMA_ADDRESS=$addr RDMA_PEER_ADDRESS=$peer RDMA_GID_INDEX=$gidx
if [ -x /bin/guest-tests.sh ]; then
    step "running /bin/guest-tests.sh (RDMA_DEVICE=rxe0 RDMA_ADDRESS=$addr RDMA_PEER_ADDRESS=$peer RDMA_GID_INDEX=$gidx)"
    /bin/guest-tests.sh
    step "/bin/guest-tests.sh exited with status $?"
else
    step "no /bin/guest-tests.sh"
fi
step "powering off"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.gz"
echo "make-guest: $out/vmlinuz ($kpkg) and $out/initrd.gz ($(du -h "$out/initrd.gz" | cut -f1), modules: ${wanted})"
