#!/usr/bin/env bash
# Make sure a Redis server binary (redis-server) is on this machine: the test
# suite starts a throwaway server of its own from it (the rate limit tests).
# Installs Debian's redis-server package when none is found and we may (root
# with apt-get).
set -euo pipefail

have_redis() {
    command -v redis-server >/dev/null 2>&1
}

if have_redis; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis: installing Debian's redis-server package" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    have_redis && exit 0
fi
echo "ensure-redis: no redis-server binary found; the Redis tests" \
     "skip outside CI and fail under CI=true" >&2
exit 0
