#!/usr/bin/env bash
# The libvirt procedure of Deploy/libvirt/README.md, run for real: two libvirt "hosts" (each a
# network, mount and UTS namespace with its own libvirtd, host UUID, hostname, /run, /dev/shm
# and /var/lib/libvirt, joined by a veth pair), Debian's libvirtd started by hand, QEMU run by
# libvirt as libvirt-qemu (group kvm), a guest migrated with `virsh migrate --live --p2p
# --persistent --undefinesource` while pagerd serves its RAM post-copy. The guest checks its
# own memory all along. Checks libvirt's view afterwards and the refusals. Run as root:
#   bash Deploy/libvirt/test.sh [BINARIES]     (default .build/release: pagerd, plain/libpager-preload.so)
# The last line says how many checks passed and failed; the exit status is non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(cd "${1:-.build/release}" && pwd)
for f in "$bin/pagerd" "$bin/plain/libpager-preload.so" /usr/sbin/libvirtd /usr/bin/virsh /usr/bin/qemu-system-x86_64; do
    [ -e "$f" ] || { echo "libvirt test: $f is missing (bash Deploy/setup.sh installs libvirt and QEMU; Deploy/test.sh builds the rest)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "libvirt test: needs root (namespaces, libvirtd)" >&2; exit 1; }
[ -c /dev/userfaultfd ] || { echo "libvirt test: no /dev/userfaultfd (kernel 6.1 or later with CONFIG_USERFAULTFD)" >&2; exit 1; }
getent passwd libvirt-qemu >/dev/null || { echo "libvirt test: no libvirt-qemu user (apt-get install libvirt-daemon-system)" >&2; exit 1; }

work=$(mktemp -d /tmp/pager-libvirt.XXXXXX)
chmod 755 "$work" # QEMU runs as libvirt-qemu and reads the guest and the library from here
src=pls$$ dst=pld$$
src_addr=198.18.7.1 dst_addr=198.18.7.2
passed=0 failed=0
holders=() daemons=() # background processes cleanup ends
uffd_mode=$(stat -c '%g %a' /dev/userfaultfd)

cleanup() {
    for pid in "${daemons[@]}"; do kill "$pid" 2>/dev/null || true; done
    for h in $src $dst; do
        if [ -f "$work/$h.pid" ]; then
            in_host $h sh -c 'virsh destroy guest1; kill $(cat /run/libvirtd.pid)' >/dev/null 2>&1 || true
            kill "$(cat "$work/$h.pid")" 2>/dev/null || true
        fi
        ip netns del $h 2>/dev/null || true
    done
    for pid in "${holders[@]}" "${daemons[@]}"; do wait "$pid" 2>/dev/null || true; done
    chgrp "${uffd_mode% *}" /dev/userfaultfd && chmod "${uffd_mode#* }" /dev/userfaultfd
    rm -rf "$work"
}
trap cleanup EXIT

in_host() { local h=$1; shift; nsenter -t "$(cat "$work/$h.pid")" -m -u -n "$@"; }
check() { # check WHAT COMMAND...: one check, counted
    local what=$1; shift
    if "$@" >"$work/check.out" 2>&1; then
        passed=$((passed + 1)); echo "ok: $what"
    else
        failed=$((failed + 1)); echo "FAILED: $what"; sed 's/^/    /' "$work/check.out" | tail -20
    fi
}
passes() { in_host "$1" sh -c 'tr "\r" "\n" < /var/log/pager/guest1.console' 2>/dev/null | grep -c '^pass .* ok' || true; }
wait_passes() { # wait_passes HOST N SECONDS: until the guest's console has N passes
    local deadline=$((SECONDS + $3))
    while [ "$(passes "$1")" -lt "$2" ]; do
        [ $SECONDS -lt $deadline ] || { echo "the guest on $1 did not reach $2 passes in $3 s"; return 1; }
        sleep 0.5
    done
}
no_mismatch() { ! in_host "$1" grep -a MISMATCH /var/log/pager/guest1.console; }
wait_for_line() { # wait_for_line FILE TEXT SECONDS
    local deadline=$((SECONDS + $3))
    until grep -q "$2" "$1"; do [ $SECONDS -lt $deadline ] || { echo "no '$2' in $1"; cat "$1"; return 1; }; sleep 0.2; done
}

echo "== two libvirt hosts: $src ($src_addr) and $dst ($dst_addr)"
ip netns add $src
ip netns add $dst
ip link add ${src}v type veth peer name ${dst}v
ip link set ${src}v netns $src
ip link set ${dst}v netns $dst
for pair in "$src ${src}v $src_addr" "$dst ${dst}v $dst_addr"; do
    set -- $pair
    ip -n "$1" addr add "$3/24" dev "$2"
    ip -n "$1" link set "$2" up
    ip -n "$1" link set lo up
done
# As the package's udev rule: /dev/userfaultfd for group kvm, QEMU's group (restored at exit).
chgrp kvm /dev/userfaultfd
chmod 0660 /dev/userfaultfd
n=0
for h in $src $dst; do
    n=$((n + 1))
    addr=$([ $h = $src ] && echo $src_addr || echo $dst_addr)
    ip netns exec $h unshare --mount --uts --propagation private --fork sleep infinity &
    holder=$!
    holders+=("$holder")
    for _ in $(seq 50); do child=$(pgrep -P $holder || true); [ -n "$child" ] && break; sleep 0.1; done
    echo "$child" >"$work/$h.pid"
    cp -a /etc/libvirt "$work/$h-etc"
    cat >>"$work/$h-etc/libvirtd.conf" <<EOF
listen_tls = 0
listen_tcp = 1
auth_tcp = "none"
listen_addr = "$addr"
host_uuid = "6c7a1f00-0000-4000-8000-00000000000$n"
EOF
    # QEMU's stdout and stderr into files (no virtlogd here); /dev/userfaultfd in the
    # device list libvirt puts into each QEMU's private /dev (as on a host with the package).
    cat >>"$work/$h-etc/qemu.conf" <<'EOF'
stdio_handler = "file"
cgroup_device_acl = [ "/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm", "/dev/userfaultfd" ]
EOF
    in_host $h hostname $h
    in_host $h sh -ec "
        mount -t tmpfs tmpfs /run
        mkdir -p /run/libvirt /run/pager
        chown root:kvm /run/pager; chmod 3770 /run/pager   # the package's tmpfiles.d entry
        mount -t tmpfs -o mode=1777 tmpfs /dev/shm
        for d in /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /var/log/pager; do mkdir -p \$d; mount -t tmpfs tmpfs \$d; done
        mount --bind $work/$h-etc /etc/libvirt
        libvirtd -d -l -p /run/libvirtd.pid"
done
for h in $src $dst; do
    for _ in $(seq 100); do in_host $h virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
done

echo "== the guest, defined and started on $src from Deploy/libvirt/guest.xml"
bash Deploy/qemu/make-guest.sh "$work/guest" 128 >/dev/null
cp "$bin/plain/libpager-preload.so" "$work/libpager-preload.so"
chmod 755 "$work/guest"
sed -e "s|>1024<|>384<|" -e "s|size=1024M|size=384M|" -e "s|/var/lib/pager/|$work/guest/|g" -e "s|/usr/lib/pager/libpager-preload.so|$work/libpager-preload.so|" \
    Deploy/libvirt/guest.xml >"$work/guest1.xml"
"$bin/pagerd" keygen "$work/keys.psk" >/dev/null
in_host $src virsh define "$work/guest1.xml" >/dev/null
in_host $src virsh start guest1 >/dev/null
check "the guest runs on $src and verifies its memory" wait_passes $src 2 120
check "the source QEMU (as libvirt-qemu) offers the fence" in_host $src grep -q "can be write-tracked and fenced" /var/log/libvirt/qemu/guest1.log

wait_daemon() { local pid=$1 deadline=$((SECONDS + 120)); while kill -0 "$pid" 2>/dev/null; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.2; done; wait "$pid"; }
running_on() { [ "$(in_host "$1" virsh domstate guest1)" = running ]; }
# (The output first, then grep: under pipefail grep -q's early exit would fail the pipe.)
persistent_on() { local info; info=$(in_host "$1" virsh dominfo guest1); grep -Eq '^Persistent: +yes' <<<"$info"; }
gone_from() { local names; names=$(in_host "$1" virsh list --all --name); ! grep -qx guest1 <<<"$names"; }
no_ram_file() { ! in_host "$1" test -e /dev/shm/guest1.ram; }
not_resumed() { ! in_host "$1" virsh resume guest1; }

migrate() { # migrate FROM TO_ADDR: the operator's command
    in_host "$1" virsh migrate --live --p2p --persistent --undefinesource guest1 "qemu+tcp://$2/system" --migrateuri "tcp://$2"
}

echo "== refusal: virsh migrate with no pagerd on $dst"
if migrate $src $dst_addr >"$work/refused.out" 2>&1; then refused=yes; else refused=no; fi
check "virsh migrate fails when no pagerd qemu-dest listens on the destination" test $refused = no
check "its error names the missing pager" grep -q "cannot reach the pager at /run/pager/guest1.uffd" "$work/refused.out"
check "the source guest still runs after the refused migration" running_on $src
before=$(passes $src)
check "and still verifies its memory" wait_passes $src $((before + 2)) 60
check "no guest1 was left on $dst" gone_from $dst

key=$work/keys.psk
hop() { # hop FROM FROM_ADDR TO TO_ADDR: the README's procedure, then every check of the result
    local from=$1 from_addr=$2 to=$3 to_addr=$4 log=$work/hop-$1
    echo "== virsh migrate $from -> $to with the pager following"
    in_host $from "$bin/pagerd" qemu-source --follow --qmp /run/pager/guest1.qmp --ram /dev/shm/guest1.ram --listen $from_addr:7070 \
        --track-socket /run/pager/guest1.track --key-file "$key" >"$log.source" 2>&1 &
    local qsource=$!
    daemons+=("$qsource")
    in_host $to "$bin/pagerd" qemu-dest --follow --qmp /run/pager/guest1.qmp --ram /dev/shm/guest1.ram --connect $from_addr:7070 \
        --uffd-socket /run/pager/guest1.uffd --socket-group kvm --key-file "$key" >"$log.dest" 2>&1 &
    local qdest=$!
    daemons+=("$qdest")
    wait_for_line "$log.source" "waiting for a destination pagerd" 30
    wait_for_line "$log.dest" "waiting for QEMU's handoff" 30
    local started=$SECONDS
    check "virsh migrate --live --p2p --persistent --undefinesource $from -> $to completes" migrate $from $to_addr
    echo "   virsh migrate took $((SECONDS - started)) s"
    check "pagerd qemu-dest --follow exits 0 with every page local" wait_daemon $qdest
    check "pagerd qemu-source --follow exits 0 once the destination holds every page" wait_daemon $qsource
    sed 's/^/   qemu-source: /' "$log.source" | grep -E "stopped|serving the|migrated|fenced|served|removed|FAILED|error" || true
    sed 's/^/   qemu-dest: /' "$log.dest" | grep -E "following|running here|faults|pages|FAILED|error" || true
    # libvirt may destroy the source QEMU before the fence is answered: nothing can run then.
    check "the source's RAM was fenced once the migration completed (or its QEMU was gone first)" \
        grep -qE "source RAM fenced|exited before its RAM was fenced" "$log.source"
    check "no fence failure on the source" sh -c '! grep "the fence failed" "$1"' - "$log.source"
    check "the destination's guest ran on pages from the pager (faults served)" grep -qE "faults +[1-9]" "$log.dest"
    local after
    after=$(passes $to)
    check "the guest on $to completes two more verified passes after all its RAM is local" wait_passes $to $((after + 2)) 120
    check "no MISMATCH on the source console" no_mismatch $from
    check "no MISMATCH on the destination console" no_mismatch $to
    check "virsh list --all on $from no longer has the domain" gone_from $from
    check "the domain on $to is running" running_on $to
    check "the domain on $to is persistent" persistent_on $to
    check "virsh resume of the released source is refused" not_resumed $from
    check "the source's stale copy of guest RAM was removed" no_ram_file $from
    # After a failure, neither daemon may linger into the next step (port, sockets).
    kill $qsource $qdest 2>/dev/null || true
}
hop $src $src_addr $dst $dst_addr
# And back: a guest that arrived with the pager moves on with the same guards (its QEMU
# offers the fence once pagerd qemu-dest has said every page is local).
hop $dst $dst_addr $src $src_addr
here=$src # the persistent definition is checked where the guest is now

echo "== the destination's persistent definition starts cleanly"
in_host $here virsh destroy guest1 >/dev/null
boots() { in_host $here sh -c 'tr "\r" "\n" < /var/log/pager/guest1.console' | grep -c "guest-workload: filled" || true; }
booted=$(boots)
wait_boot() { local deadline=$((SECONDS + 120)); until [ "$(boots)" -gt "$booted" ]; do [ $SECONDS -lt $deadline ] || return 1; sleep 0.5; done; }
check "virsh start of the persistent definition on $here" in_host $here virsh start guest1
check "the restarted guest boots afresh (no pager needed)" wait_boot
after=$(passes $here)
check "and verifies its memory" wait_passes $here $((after + 1)) 60
check "its QEMU runs the preload library as a source (fence offered, nothing handed over)" sh -c \
    "nsenter -t $(cat "$work/$here.pid") -m -u -n tail -5 /var/log/libvirt/qemu/guest1.log | grep -q 'can be write-tracked and fenced'"

echo "libvirt test: $passed passed, $failed failed"
[ $failed = 0 ]
