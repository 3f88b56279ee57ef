#!/usr/bin/env bash
# The guest test: real soft-RoCE and an older kernel. Builds the guest of Deploy/rdma/make-guest.sh
# (Debian's 6.1 kernel with rdma_rxe, rxe0 on a veth) with BIN_DIR's pager-rdma-check, pagerd and
# pager-workload in it (static Swift runtime), boots it under QEMU (TCG), and reports what
# Deploy/rdma/guest-tests.sh reported there: the RDMA selftest and the checks of a kernel
# without UFFDIO_POISON. Run as root:
#   bash Deploy/rdma-test.sh BIN_DIR
# The last line is one of
#   rdma test: N passed, 0 failed       (exit 0; N > 0)
#   rdma test: skipped: REASON          (exit 2: the guest cannot run on this machine)
#   rdma test: FAILED: WHAT             (exit 1: build, boot, module, rxe0, sanity check, selftest)
# The guest console is printed as it comes. PAGER_RDMA_TIMEOUT bounds the boot and tests (600 s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
limit=${PAGER_RDMA_TIMEOUT:-600}
failed() { echo "rdma test: FAILED: $*"; exit 1; }
skipped() { echo "rdma test: skipped: $*"; exit 2; }
# Whatever else stops this script still ends with a FAILED line.
trap 'echo "rdma test: FAILED: rdma-test.sh line $LINENO: $BASH_COMMAND exited with status $?"' ERR
[ $# -eq 1 ] || failed "usage: rdma-test.sh BIN_DIR"
binaries=()
for b in pager-rdma-check pagerd pager-workload; do
    [ -x "$1/$b" ] || failed "$1/$b is missing or not executable"
    binaries+=("$1/$b")
done
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "rdma test: installing qemu-system-x86"
    { timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq qemu-system-x86; } >/dev/null 2>&1 || true
    command -v qemu-system-x86_64 >/dev/null || skipped "no qemu-system-x86_64, and apt-get install qemu-system-x86 failed"
fi

work=$(mktemp -d /tmp/pager-rdma.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "== rdma: building the soft-RoCE guest (Deploy/rdma/make-guest.sh)"
start=$SECONDS
build=0
timeout 900 bash "$here/rdma/make-guest.sh" "$work/guest" --tests "$here/rdma/guest-tests.sh" "${binaries[@]}" >"$work/build.log" 2>&1 || build=$?
if [ "$build" != 0 ]; then
    tail -20 "$work/build.log"
    [ "$build" != 124 ] || failed "guest build: make-guest.sh still running after 900 s"
    failed "guest build: $(tail -1 "$work/build.log")"
fi
tail -1 "$work/build.log"
echo "== rdma: booting it under QEMU (TCG, 2 CPUs, 2 GiB; at most $limit s), built in $((SECONDS - start)) s"
start=$SECONDS
# tr and sed: the console's carriage returns and SeaBIOS's terminal escapes.
{
    q=0
    timeout "$limit" qemu-system-x86_64 -machine accel=tcg -m 2G -smp 2 -nographic -no-reboot \
        -kernel "$work/guest/vmlinuz" -initrd "$work/guest/initrd.gz" -append "console=ttyS0 quiet panic=-1" </dev/null || q=$?
    echo "$q" > "$work/qemu.status"
} 2>&1 | tr -d '\r' | sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tee "$work/console.log"
qemu=$(cat "$work/qemu.status")
echo "== rdma: QEMU exited with status $qemu after $((SECONDS - start)) s"
log=$work/console.log
last_step=$(grep -o 'guest: .*' "$log" | tail -1 || true)
guest_failure=$(grep -m1 -o 'guest: FAILED: .*' "$log" || true)
[ -z "$guest_failure" ] || failed "in the guest: ${guest_failure#guest: FAILED: }"
[ "$qemu" != 124 ] || failed "timeout: QEMU still running after $limit s (last guest line: ${last_step:-none})"
[ "$qemu" = 0 ] || failed "qemu-system-x86_64 exited with status $qemu (last guest line: ${last_step:-none})"
grep -q 'guest: up' "$log" || failed "the guest did not boot: no 'guest: up' on the console"
grep -q 'guest: running /bin/guest-tests.sh' "$log" || failed "the guest stopped before its tests (last guest line: ${last_step:-none})"
status=$(grep -o 'guest: /bin/guest-tests.sh exited with status [0-9]*' "$log" | grep -o '[0-9]*$' || true)
[ -n "$status" ] || failed "the guest did not finish /bin/guest-tests.sh (last guest line: ${last_step:-none})"
summary=$(grep -oE '^guest tests: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1 || true)
[ -n "$summary" ] || failed "the guest's tests printed no 'guest tests: N passed, M failed' line (exit status $status)"
read -r passed failures < <(echo "$summary" | grep -oE '[0-9]+' | xargs)
[ "$failures" = 0 ] || failed "the guest's tests: $passed passed, $failures failed ($(grep -E '^FAIL ' "$log" | cut -d: -f1 | sed 's/^FAIL //' | xargs))"
[ "$passed" -gt 0 ] || failed "the guest's tests ran no check (0 passed, 0 failed)"
[ "$status" = 0 ] || failed "the guest's tests exited with status $status after '$summary'"
echo "rdma test: $passed passed, 0 failed"
