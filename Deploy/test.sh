#!/usr/bin/env bash
# The test command: installs what is missing, builds everything, runs the test suite
# (real userfaultfd, hugetlbfs and processes: run as root), builds the RDMA trait and runs its
# tests against a fake device, fuzzes the wire decoder, the handoff decoders and the operators'
# request and status readers, installs the Debian package on a root without Swift, and runs a
# QEMU guest with Debian's 6.1 kernel: the RDMA selftest on soft-RoCE, pagerd without UFFDIO_POISON. Exits non-zero on any failure or fuzz finding.
set -euo pipefail
cd "$(dirname "$0")/.."
source Deploy/setup.sh
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

echo "== build and test"
# The integration tests run release builds of pagerd, pager-workload and pager-bench as separate processes.
swift build -c release
# The preload library as it ships (plain C, no Swift runtime): the QEMU tests load this one.
bash Deploy/build-preload.sh .build/release/plain/libpager-preload.so
swift build --build-tests
swift test --skip-build 2>&1 | tee "$log/test.txt"
sed 's/\x1b\[[0-9;]*m//g' "$log/test.txt" > "$log/plain.txt"
passed=$(grep -oE "Test run with [0-9]+ tests?" "$log/plain.txt" | grep -oE "[0-9]+" | tail -1)
# A skip is Swift Testing's `Test "NAME" skipped`: the quotes keep a test whose name says
# "skipped" from counting as one.
skipped=$(grep -cE 'Test "[^"]*" skipped' "$log/plain.txt" || true)

echo "== libvirt: two libvirtd hosts, virsh migrate with the pager following (Deploy/libvirt/test.sh)"
bash Deploy/libvirt/test.sh .build/release 2>&1 | tee "$log/libvirt.txt"
libvirt=$(tail -1 "$log/libvirt.txt")

echo "== man pages and completions install (Deploy/install-docs.sh into a scratch prefix)"
bash Deploy/install-docs.sh "$log/prefix"
for page in pagerd pagerd.source pagerd.dest pagerd.qemu-source pagerd.qemu-dest pagerd.status pagerd.keygen pagerd.demo; do
    grep -q '^\.Sh NAME' "$log/prefix/share/man/man1/$page.1" || { echo "man page $page.1 missing or empty" >&2; exit 1; }
done
grep -q -- "Fl -control-socket" "$log/prefix/share/man/man1/pagerd.dest.1" || { echo "pagerd.dest.1 lacks --control-socket" >&2; exit 1; }
for page in pagerd.qemu-source pagerd.qemu-dest; do
    grep -q -- "Fl -follow" "$log/prefix/share/man/man1/$page.1" || { echo "$page.1 lacks --follow" >&2; exit 1; }
done
bash -n "$log/prefix/share/bash-completion/completions/pagerd"
grep -q "status" "$log/prefix/share/bash-completion/completions/pagerd"

echo "== RDMA trait: builds; the device probe, the RDMA logic and the verbs path against a fake device"
swift build --traits RDMA --build-tests --scratch-path .build-rdma
.build-rdma/debug/pagerPackageTests.xctest --testing-library swift-testing --filter "RDMA" 2>&1 | tee "$log/rdma-unit.txt"
rdma_unit=$(sed 's/\x1b\[[0-9;]*m//g' "$log/rdma-unit.txt" | grep -oE "Test run with [0-9]+ tests?" | grep -oE "[0-9]+" | tail -1)


seconds=${PAGER_FUZZ_SECONDS:-30}
# fuzz TARGET CORPUS WHAT: builds TARGET with libFuzzer + AddressSanitizer, runs it $seconds s
# on a copy of CORPUS; a finding is kept in .fuzz-findings/ and printed, and fails the run.
fuzz() {
    local target=$1 corpus=$2 what=$3
    echo "== fuzz the $what (libFuzzer + AddressSanitizer, $seconds s)"
    # SwiftPM passes -sanitize=fuzzer to the executable's link only: without coverage
    # instrumentation of every module (the -sanitize-coverage below) libFuzzer runs blind,
    # mutating at random with no feedback ("cov:" never appears in its log).
    if ! swift build -c debug --sanitize fuzzer --sanitize address --product "$target" -Xswiftc -DFUZZING \
        -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
        --scratch-path .build-fuzz >"$log/$target-build.txt" 2>&1; then
        grep -v "Cannot export local symbol" "$log/$target-build.txt" | tail -30
        echo "$target failed to build" >&2
        exit 1
    fi
    mkdir -p "$log/$target-corpus" "$log/$target-findings"
    cp "$corpus"/* "$log/$target-corpus/"
    if ! ".build-fuzz/debug/$target" -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$log/$target-findings/" "$log/$target-corpus" >"$log/$target.txt" 2>&1; then
        tail -40 "$log/$target.txt"
        mkdir -p .fuzz-findings
        cp "$log/$target-findings"/* .fuzz-findings/ 2>/dev/null || true
        for f in "$log/$target-findings"/*; do [ -f "$f" ] && { echo "finding $(basename "$f"):"; head -c 4096 "$f" | od -An -tx1; }; done
        echo "$target: FINDING (kept in .fuzz-findings/, replay with .build/debug/$target FILE)" >&2
        exit 1
    fi
    grep -E "^Done|stat::number_of_executed_units" "$log/$target.txt"
    if ! grep -q "DONE.*cov: [1-9]" "$log/$target.txt"; then
        tail -5 "$log/$target.txt"
        echo "$target: libFuzzer saw no coverage (the modules are not instrumented): the run proves nothing" >&2
        exit 1
    fi
    grep "DONE" "$log/$target.txt"
    echo "$target: no findings"
}
fuzz PagerWireFuzz Protocols/vectors/corpus "frame parser"
fuzz PagerHandoffFuzz Protocols/handoff-corpus "handoff decoders"
fuzz PagerOperationsFuzz Protocols/operations-corpus "metrics request parser and status reader"

echo "== package: the .deb installs on a fresh Debian 12 root without Swift, and pagerd demo runs there"
deb=$(bash Deploy/package.sh "$log/package" | tail -1)
bash Deploy/package-test.sh "$deb"

echo "== a guest with Debian's 6.1 kernel and soft-RoCE: the RDMA selftest on rxe0, and pagerd on a kernel without UFFDIO_POISON (Deploy/rdma-test.sh)"
# Static Swift runtime (the guest has no Swift): pagerd and pager-rdma-check with the RDMA
# trait (the packaged pagerd has none: it would need libibverbs on every host), pager-workload
# as package.sh built it.
swift build -c release --traits RDMA --product pager-rdma-check --static-swift-stdlib --scratch-path .build-rdma-release
swift build -c release --traits RDMA --product pagerd --static-swift-stdlib --scratch-path .build-rdma-release
mkdir -p "$log/guest-bin"
cp .build-rdma-release/release/pager-rdma-check .build-rdma-release/release/pagerd .build-static/release/pager-workload "$log/guest-bin/"
rdma_status=0
bash Deploy/rdma-test.sh "$log/guest-bin" 2>&1 | tee "$log/rdma.txt" || rdma_status=$?
rdma=$(tail -1 "$log/rdma.txt")
# 2: the guest cannot run on this machine (the last line says why); anything else failed.
if [ "$rdma_status" != 0 ] && [ "$rdma_status" != 2 ]; then echo "$rdma" >&2; exit 1; fi

echo "$libvirt"
echo "$rdma"
echo "rdma (trait build, fake device): ${rdma_unit:-0} passed, 0 failed"
echo "pager: ${passed:-0} passed, 0 failed, ${skipped} skipped"
