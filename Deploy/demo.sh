#!/usr/bin/env bash
# The main job on its embedded default: builds the release binaries, then migrates a 1 GiB
# memory region lazily between processes on this machine (pagerd source, pagerd dest, and a
# workload touching its memory while it arrives), printing what each did. Extra arguments go
# to `pagerd demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source Deploy/setup.sh
swift build -c release
exec .build/release/pagerd demo "$@"
