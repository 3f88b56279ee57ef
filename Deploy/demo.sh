#!/usr/bin/env bash
# The main job on its embedded default: builds pagerd (release) and migrates a 1 GiB memory
# region lazily on this machine through userfaultfd, printing what happened. Extra
# arguments go to `pagerd demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source Deploy/setup.sh
swift build -c release --product pagerd
exec .build/release/pagerd demo "$@"
