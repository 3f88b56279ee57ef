#!/usr/bin/env bash
# The test command: installs what is missing, builds everything, runs the test suite
# (real userfaultfd, hugetlbfs and processes: run as root), checks that the RDMA trait still
# compiles, and fuzzes the wire decoder and the handoff decoders. Exits non-zero on any failure or fuzz finding.
set -euo pipefail
cd "$(dirname "$0")/.."
source Deploy/setup.sh
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

echo "== build and test"
# The integration tests run release builds of pagerd, pager-workload and pager-bench as separate processes.
swift build -c release
swift build --build-tests
swift test --skip-build 2>&1 | tee "$log/test.txt"
sed 's/\x1b\[[0-9;]*m//g' "$log/test.txt" > "$log/plain.txt"
passed=$(grep -oE "Test run with [0-9]+ tests?" "$log/plain.txt" | grep -oE "[0-9]+" | tail -1)
skipped=$(grep -cE "Test .* skipped" "$log/plain.txt" || true)

echo "== RDMA trait: compiles and probes (no RDMA device on most machines: the probe says why)"
swift build --traits RDMA --build-tests --scratch-path .build-rdma
.build-rdma/debug/pagerPackageTests.xctest --testing-library swift-testing --filter RDMATests

seconds=${PAGER_FUZZ_SECONDS:-30}
echo "== fuzz the wire decoder (libFuzzer + AddressSanitizer, $seconds s)"
if ! swift build -c debug --sanitize fuzzer --sanitize address --product PagerWireFuzz -Xswiftc -DFUZZING \
    --scratch-path .build-fuzz >"$log/fuzz-build.txt" 2>&1; then
    grep -v "Cannot export local symbol" "$log/fuzz-build.txt" | tail -30
    echo "fuzz target failed to build" >&2
    exit 1
fi
mkdir -p "$log/corpus"
cp Protocols/vectors/corpus/* "$log/corpus/"
if ! .build-fuzz/debug/PagerWireFuzz -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$log/" "$log/corpus" >"$log/fuzz.txt" 2>&1; then
    tail -40 "$log/fuzz.txt"
    echo "fuzz: FINDING (input saved under $log, copy it before exit)" >&2
    exit 1
fi
grep -E "^Done|stat::number_of_executed_units" "$log/fuzz.txt"
echo "fuzz: no findings"

echo "== fuzz the handoff decoders (libFuzzer + AddressSanitizer, $seconds s)"
if ! swift build -c debug --sanitize fuzzer --sanitize address --product PagerHandoffFuzz -Xswiftc -DFUZZING \
    --scratch-path .build-fuzz >"$log/handoff-fuzz-build.txt" 2>&1; then
    grep -v "Cannot export local symbol" "$log/handoff-fuzz-build.txt" | tail -30
    echo "handoff fuzz target failed to build" >&2
    exit 1
fi
mkdir -p "$log/handoff-corpus"
cp Protocols/handoff-corpus/* "$log/handoff-corpus/"
if ! .build-fuzz/debug/PagerHandoffFuzz -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$log/" "$log/handoff-corpus" >"$log/handoff-fuzz.txt" 2>&1; then
    tail -40 "$log/handoff-fuzz.txt"
    echo "handoff fuzz: FINDING (input saved under $log, copy it before exit)" >&2
    exit 1
fi
grep -E "^Done|stat::number_of_executed_units" "$log/handoff-fuzz.txt"
echo "handoff fuzz: no findings"

echo "pager: ${passed:-0} passed, 0 failed, ${skipped} skipped"
