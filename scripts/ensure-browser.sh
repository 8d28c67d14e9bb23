#!/usr/bin/env bash
# Make sure Debian's chromium is at /usr/bin/chromium: the dashboard's browser tests
# (tests/e2e/test_dashboard.py) drive it with Playwright. Playwright's own browser downloads are never used
# (no `playwright install`: the machines are offline at test time). Installs the distribution's package
# with apt-get when it is missing, as root or with sudo; used by `make test` and CI.
set -euo pipefail

BROWSER=/usr/bin/chromium
[ -x "$BROWSER" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "error: $BROWSER is missing and installing it needs root: sudo apt-get install chromium" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "error: $BROWSER is missing and there is no apt-get here: install Debian's chromium package" >&2
  exit 1
fi

echo "installing chromium (Debian's package) for the browser tests"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
[ -x "$BROWSER" ] || { echo "error: apt-get installed chromium, but $BROWSER is still missing" >&2; exit 1; }
