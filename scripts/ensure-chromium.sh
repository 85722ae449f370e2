#!/usr/bin/env bash
# Make sure a headless Chromium and its ChromeDriver are on this machine: the
# browser tests of the key management pages drive them with Selenium. Installs
# Debian's chromium and chromium-driver packages when either is missing and we
# may (root with apt-get). The browser is never downloaded any other way.
set -euo pipefail

have_chromium() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

if have_chromium; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: installing Debian's chromium and chromium-driver" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver >/dev/null
    have_chromium && exit 0
fi
echo "ensure-chromium: no chromium and chromedriver found; the browser tests" \
     "skip outside CI and fail under CI=true" >&2
exit 0
