#!/usr/bin/env bash
# Debian's chromium for the viewer's browser tests (tests/test_viewer_browser.py), driven by the
# PyPI playwright package with executable_path=/usr/bin/chromium: no browser is downloaded by
# playwright (never `playwright install`). Installs only as root (CI, containers); elsewhere it
# says how and exits 0, and the browser tests skip with the same message.
set -euo pipefail
BROWSER=${BROWSER:-/usr/bin/chromium}
if [ -x "$BROWSER" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_browser: $BROWSER is missing and this is not root; the browser tests will be" \
         "skipped. Install it with: sudo apt-get install -y chromium" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser: no apt-get here; install chromium at $BROWSER by hand for the browser tests." >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$BROWSER" --version 2>/dev/null || echo "install_browser: installed $BROWSER"
