#!/usr/bin/env bash
# Installs Debian's chromium for the web console's browser tests
# (benchmarks/console), where it is missing. As root, with apt-get; anywhere
# else it says what to do and leaves the tests to skip (they fail instead
# under QUIVER_BROWSER=require, as in CI).
set -euo pipefail
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then
    echo "browser for the console tests: $(command -v "$b")"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium: install it (Debian/Ubuntu: apt-get install chromium) for the console's browser tests" >&2
  exit 1
fi
echo "installing chromium for the console's browser tests..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "browser for the console tests: $(command -v chromium)"
