#!/usr/bin/env bash
# Opens an HTML page in headless Chromium and writes what it saw to OUT_DIR:
#   dom.html       the page after its scripts ran (--dump-dom),
#   console.txt    every console message the page logged (a clean page logs none),
#   screenshot.png a screenshot of SIZE (default 1280,2400).
# Usage: scripts/browser-check.sh PAGE.html OUT_DIR [WIDTH,HEIGHT]
# No network: the flags keep Chromium from calling home (this machine's network is closed).
set -euo pipefail
page=$(realpath "$1")
out=$2
size=${3:-1280,2400}
browser=${INSCLR_CHROMIUM:-chromium}
command -v "$browser" >/dev/null || { echo "error: $browser not found; run scripts/install-browser.sh" >&2; exit 3; }
mkdir -p "$out"
out=$(realpath "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
  --disable-background-networking --disable-component-update --disable-sync --disable-quic
  --hide-scrollbars --user-data-dir="$profile" --enable-logging=stderr --v=0
  --virtual-time-budget=10000)
timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$page" >"$out/dom.html" 2>"$out/browser.log"
# Console lines look like: [..:INFO:CONSOLE:12] "message", source: file:///... (12)
grep -F ':CONSOLE' "$out/browser.log" >"$out/console.txt" || true
timeout 120 "$browser" "${flags[@]}" --window-size="$size" --screenshot="$out/screenshot.png" "file://$page" \
  >>"$out/browser.log" 2>&1
[ -s "$out/screenshot.png" ] || { echo "error: no screenshot written; see $out/browser.log" >&2; exit 1; }
echo "browser-check: $(wc -l <"$out/console.txt") console message(s), $out/screenshot.png"
