#!/bin/sh
# The tests Deploy/rdma-test.sh runs in its guest (Debian's 6.1 kernel, soft-RoCE on rxe0),
# after /init's checks, with RDMA_DEVICE and RDMA_ADDRESS set:
#   1. pager-rdma-check selftest: the RDMA transport's parts on the real rxe device;
#   2. a kernel without UFFDIO_POISON (6.1): pagerd demo migrates and verifies every page;
#   3. the same kernel, the source killed, pagerd dest killed, pagerd dest crashing (SIGQUIT)
#      mid-migration: each time the workload is killed (no page can be poisoned there), never
#      left to read zeros, and pagerd dest (or its guardian) says so;
#   4. pagerd source --rdma and pagerd dest --transport rdma on rxe0: a migration with faults
#      read by RDMA READ (without the push, and with the push read by RDMA READ too: PUSH_READ
#      on the push queue pair), and one whose RDMA device is deleted mid-migration (recovered
#      over TCP): every page checked by the workload each time; and the trait build's
#      refusals of RDMA without keys, with encryption, with pre-copy.
# Prints `ok NAME: ...` or `FAIL NAME: ...` per check and last `guest tests: N passed, M failed`.
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok $*"; }
# finish: waits for the workload and pagerd dest (their statuses in workload_status and
# dest_status), then stops the source.
finish() {
    wait $workload
    workload_status=$?
    wait $dest
    dest_status=$?
    kill $source 2> /dev/null
    wait $source 2> /dev/null
}
# wait_socket PATH: until pagerd dest listens there (10 s at most; busybox sh has no inotify).
wait_socket() {
    i=0
    while [ ! -S "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

/bin/pager-rdma-check selftest --device "$RDMA_DEVICE" --address "$RDMA_ADDRESS" > /tmp/selftest.log 2>&1
status=$?
cat /tmp/selftest.log
summary=$(grep -E '^rdma selftest: [0-9]+ passed, [0-9]+ failed$' /tmp/selftest.log | tail -1)
if [ -z "$summary" ]; then
    fail "rdma-selftest: no summary line (exit status $status)"
else
    set -- $(echo "$summary" | tr -cs '0-9' ' ')
    passed=$((passed + $1))
    failed=$((failed + $2))
    [ "$status" = 0 ] || [ "$2" != 0 ] || fail "rdma-selftest: exited with status $status after '$summary'"
fi

mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
cd /tmp || exit 1
kernel=$(cat /proc/sys/kernel/osrelease)

if (cd /bin && ./pagerd demo --size-mib 64) > /tmp/demo.log 2>&1 && grep -q "every page of the workload's memory is correct" /tmp/demo.log; then
    ok "old-kernel-demo: pagerd demo on $kernel: $(grep -o 'pagerd dest: [0-9]* pages.*' /tmp/demo.log | head -1)"
else
    tail -20 /tmp/demo.log
    fail "old-kernel-demo: pagerd demo on $kernel did not verify every page"
fi

# migrate KILL WHAT: a migration that needs far longer than 2 s (every page by demand), with
# signal KILL sent to WHAT (source or dest) 2 s in. Sets workload_status, dest_status.
migrate() {
    rm -f /tmp/u.sock /tmp/*.log
    /bin/pager-workload fill --file /dev/shm/ram --size-mib 64 --seed 42 > /dev/null
    /bin/pagerd source --listen 127.0.0.1:7000 --region /dev/shm/ram --key-file /tmp/keys.psk > /tmp/source.log 2>&1 &
    source=$!
    /bin/pagerd dest --connect 127.0.0.1:7000 --uffd-socket /tmp/u.sock --once --key-file /tmp/keys.psk --no-push --no-prefetch \
        --reconnect-timeout-s 2 > /tmp/dest.log 2>&1 &
    dest=$!
    wait_socket /tmp/u.sock
    /bin/pager-workload run --socket /tmp/u.sock --size-mib 64 --seed 42 --access random --write-every 13 > /tmp/workload.log 2>&1 &
    workload=$!
    sleep 2
    if [ "$2" = source ]; then kill -"$1" $source; else kill -"$1" $dest; fi
    finish
}
# expect NAME PATTERN: the workload was killed (137, never a run to its end) and dest.log says PATTERN.
expect_killed() {
    if [ "$workload_status" = 137 ] && ! grep -q "ok pages=" /tmp/workload.log && grep -q "$2" /tmp/dest.log; then
        ok "$1: the workload was killed (status 137), pagerd dest exited $dest_status: $(grep -o "$2.*" /tmp/dest.log | tail -1 | cut -c1-150)"
    else
        echo "--- workload (exit $workload_status)"; tail -5 /tmp/workload.log
        echo "--- dest (exit $dest_status)"; tail -8 /tmp/dest.log
        fail "$1: expected the workload killed (137) and pagerd dest to say: $2"
    fi
}
/bin/pagerd keygen /tmp/keys.psk > /dev/null
# The source is lost: the resume window passes, and no page can be poisoned on this kernel.
migrate KILL source
expect_killed old-kernel-source-lost "was killed rather than let it read zeros"
# The destination is killed: its guardian stops the workload.
migrate KILL dest
expect_killed old-kernel-dest-killed "cannot poison pages (no UFFDIO_POISON), so the workloads were killed"
# The destination dies of a fatal signal: its handler stops the workload.
migrate QUIT dest
expect_killed old-kernel-dest-crashed "fatal signal: this kernel cannot poison pages"
# rdma_migrate NAME [DEST OPTIONS...]: 64 MiB migrated with faults read by RDMA READ (with
# no_reads=1: none read, every page over TCP), the workload checking every page at the end
# (its writes included). Sets workload_status.
rdma_migrate() {
    name=$1
    shift
    rm -f /tmp/r.sock /tmp/*.log
    mib=${size_mib:-64}
    /bin/pager-workload fill --file /dev/shm/ram --size-mib $mib --seed 7 > /dev/null
    /bin/pagerd source --listen "$RDMA_ADDRESS:7100" --region /dev/shm/ram --key-file /tmp/keys.psk --rdma > /tmp/source.log 2>&1 &
    source=$!
    /bin/pagerd dest --connect "$RDMA_ADDRESS:7100" --uffd-socket /tmp/r.sock --once --key-file /tmp/keys.psk --transport rdma "$@" \
        > /tmp/dest.log 2>&1 &
    dest=$!
    wait_socket /tmp/r.sock
    /bin/pager-workload run --socket /tmp/r.sock --size-mib $mib --seed 7 --access random --write-every 13 > /tmp/workload.log 2>&1 &
    workload=$!
    [ -z "$during" ] || { sleep 1; eval "$during"; }
    finish
    reads=$(grep -o "[0-9]* RDMA READs brought [0-9]* KiB, the push's [0-9]* READs [0-9]* KiB, [0-9]* requests asked again over TCP" /tmp/dest.log | tail -1)
    count=${reads%% *}
    if [ "$workload_status" = 0 ] && [ "$dest_status" = 0 ] && grep -q "ok pages=$((mib * 256)) .*mismatches=0" /tmp/workload.log \
        && [ -n "$count" ] && { { [ -n "$no_reads" ] && [ "$count" = 0 ]; } || { [ -z "$no_reads" ] && [ "$count" -gt 0 ]; }; } \
        && { [ -z "$expect" ] || grep -q "$expect" /tmp/dest.log; }; then
        ok "$name: every page right; $(grep -o 'pagerd dest: [0-9]* pages.*' /tmp/dest.log | head -1 | cut -c14-); $reads; $(grep -oE 'faults +[0-9]+, fault to install: p50 [0-9.]+' /tmp/dest.log | tr -s ' ')"
    else
        echo "--- workload (exit $workload_status)"; tail -3 /tmp/workload.log
        echo "--- dest (exit $dest_status)"; tail -14 /tmp/dest.log
        echo "--- source"; tail -6 /tmp/source.log
        fail "$name: expected every page right with ${no_reads:+no }faults read by RDMA${expect:+ and: $expect}"
    fi
    no_reads= # not for the next call, whatever the shell does with a prefix assignment
}
# refused NAME WANT ARGS...: the trait build refuses an RDMA option at once (exit 64) with WANT.
refused() {
    name=$1
    want=$2
    shift 2
    out=$(/bin/pagerd "$@" 2>&1)
    status=$?
    if [ "$status" = 64 ] && echo "$out" | grep -q "$want"; then
        ok "$name: exit 64, \"$want\""
    else
        echo "$out" | tail -3
        fail "$name: expected exit 64 and \"$want\", got $status"
    fi
}
refused rdma-refuses-no-auth "needs authentication" \
    dest --connect 10.0.0.9:1 --uffd-socket /tmp/x.sock --insecure-no-auth --transport rdma
refused rdma-refuses-encrypt "are not encrypted" \
    qemu-dest --qmp /tmp/x.qmp --ram /tmp/x.ram --connect 10.0.0.9:1 --uffd-socket /tmp/x.sock --incoming tcp:0:1 \
    --key-file /tmp/keys.psk --encrypt --transport rdma
refused rdma-device-needs-rdma "needs --transport rdma" \
    dest --connect 10.0.0.9:1 --uffd-socket /tmp/x.sock --key-file /tmp/keys.psk --rdma-device rxe0
refused rdma-refuses-precopy "pre-copy" \
    qemu-source --qmp /tmp/x.qmp --ram /tmp/x.ram --listen 10.0.0.9:1 --migrate-to tcp:10.0.0.9:2 --track-socket /tmp/x.track \
    --key-file /tmp/keys.psk --rdma
# The same migration over TCP only, in the same guest: the figures to compare with.
/bin/pager-workload fill --file /dev/shm/ram --size-mib 64 --seed 7 > /dev/null
/bin/pagerd source --listen "$RDMA_ADDRESS:7101" --region /dev/shm/ram --key-file /tmp/keys.psk > /tmp/source.log 2>&1 &
source=$!
/bin/pagerd dest --connect "$RDMA_ADDRESS:7101" --uffd-socket /tmp/t.sock --once --key-file /tmp/keys.psk --no-push > /tmp/dest.log 2>&1 &
dest=$!
wait_socket /tmp/t.sock
if /bin/pager-workload run --socket /tmp/t.sock --size-mib 64 --seed 7 --access random --write-every 13 > /tmp/workload.log 2>&1 \
    && wait $dest && grep -q "mismatches=0" /tmp/workload.log; then
    ok "tcp-migration-demand-only (baseline): every page right; $(grep -o 'pagerd dest: [0-9]* pages.*' /tmp/dest.log | head -1 | cut -c14-); $(grep -oE 'faults +[0-9]+, fault to install: p50 [0-9.]+' /tmp/dest.log | tr -s ' ')"
else
    tail -5 /tmp/workload.log /tmp/dest.log
    fail "tcp-migration-demand-only: the baseline migration failed"
fi
kill $source 2> /dev/null
wait $source 2> /dev/null
during= expect= rdma_migrate rdma-migration-demand-only --no-push
# The push by READ (PUSH_READ on the push queue pair): the source sends no page data itself.
during= expect="the push's [1-9][0-9]* READs" rdma_migrate rdma-migration-with-push-by-read --rdma-device rxe0
# --rdma-device names another device: no queue pair (an error line says why), every page over TCP.
no_reads=1 during= expect="through RDMA device rxe0, not nosuch0" rdma_migrate rdma-device-mismatch --no-push --rdma-device nosuch0
# The device goes mid-migration (its queue pairs with it): what was in flight, and every
# fault after, comes over TCP; every page still right.
during='/usr/bin/rdma link delete rxe0 > /tmp/link-delete.log 2>&1 &' expect="on the queue pair: what is in flight is asked for over TCP" \
    rdma_migrate rdma-device-removed-mid-migration --no-push
grep -q "no new demand queue pair yet" /tmp/dest.log && ok "rdma-reconnect-tried: $(grep -o 'no new demand queue pair yet.*' /tmp/dest.log | head -1 | cut -c1-160)" \
    || fail "rdma-reconnect-tried: pagerd dest did not try a new queue pair after its device went"
# (A device that comes back is not tested: soft-RoCE cannot be re-added while a process still
# holds the removed one open, and librdmacm keeps it open: see the README.)

echo "guest tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
