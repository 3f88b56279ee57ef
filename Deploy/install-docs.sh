#!/usr/bin/env bash
# Installs pagerd's man pages and shell completions (one command, after `swift build -c release`):
#   bash Deploy/install-docs.sh [PREFIX]      # PREFIX defaults to /usr/local
# Man pages (man 1 pagerd, man 1 pagerd.dest, ...) are generated from the command's own help by
# swift-argument-parser's generate-manual plugin; completions by `pagerd --generate-completion-script`.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
pagerd=.build/release/pagerd
[ -x "$pagerd" ] || swift build -c release --product pagerd
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
swift package --allow-writing-to-package-directory generate-manual --multi-page --output-directory "$out" >"$out/log" 2>&1 \
    || { cat "$out/log" >&2; exit 1; }
man1="$prefix/share/man/man1"
install -d "$man1"
for page in "$out"/pagerd.1 "$out"/pagerd.*.1; do
    case "$(basename "$page")" in pagerd.guardian.1|pagerd.help.1) continue ;; esac # internal, and help's own page
    install -m 0644 "$page" "$man1/"
done
install -d "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions" "$prefix/share/fish/vendor_completions.d"
"$pagerd" --generate-completion-script bash >"$prefix/share/bash-completion/completions/pagerd"
"$pagerd" --generate-completion-script zsh >"$prefix/share/zsh/site-functions/_pagerd"
"$pagerd" --generate-completion-script fish >"$prefix/share/fish/vendor_completions.d/pagerd.fish"
echo "installed $(ls "$man1"/pagerd*.1 | wc -l) man pages in $man1 and bash, zsh and fish completions under $prefix/share"
