#!/usr/bin/env bash
# Installs Debian's Chromium for the report page's browser test (tests/report.rs) and for
# scripts/browser-check.sh. Idempotent: an installed chromium is left alone.
set -euo pipefail
if command -v chromium >/dev/null; then
  echo "browser: $(chromium --version 2>/dev/null | head -n 1)"
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium >/dev/null
echo "browser: installed $(chromium --version 2>/dev/null | head -n 1)"
