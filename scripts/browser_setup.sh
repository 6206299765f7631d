#!/usr/bin/env bash
# Install the browser that `make browser` drives: Debian's `chromium` package. (Playwright's own
# browser download is not used; the test launches /usr/bin/chromium.) Does nothing when the
# browser is already there, so it is safe to run before every `make browser`. Needs root, or sudo.
# Elsewhere (e.g. Ubuntu, whose `chromium` package is a snap), install Chrome or Chromium and
# point the test at it: CHROMIUM=/path/to/chrome make browser.
set -euo pipefail

if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "browser_setup.sh: no apt-get here: install Chromium and set CHROMIUM=/path/to/it" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "browser_setup.sh: installing Debian's chromium (apt-get)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version 2>/dev/null  # the Debian wrapper may warn on stderr
