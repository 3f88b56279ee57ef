#!/usr/bin/env bash
# Builds the QEMU preload library as plain C (no Swift or C++ runtime: a QEMU process loads it):
#   bash Deploy/build-preload.sh OUT.so
# SwiftPM's own libpager-preload.so (the pager-preload product) links libswiftCore and
# libstdc++ because swiftc links it; this one is what Deploy/package.sh ships and what the tests
# load into QEMU when it exists (.build/release/plain/libpager-preload.so).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: build-preload.sh OUT.so}
mkdir -p "$(dirname "$out")"
cc -shared -fPIC -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -Wl,-z,relro,-z,now -Wl,--as-needed \
    -fvisibility=hidden -o "$out" Sources/PagerPreload/*.c -lpthread
libraries=$(ldd "$out") # not `ldd | grep -q`: under pipefail grep's early exit fails the pipe
if grep -Eq 'libswift|libstdc\+\+' <<<"$libraries"; then
    echo "$libraries" >&2
    echo "build-preload.sh: $out links a Swift or C++ runtime" >&2
    exit 1
fi
