"""Per-request cost of the rate limiter, in memory and on a real Redis.

Run: ``.venv/bin/python benchmarks/bench_ratelimit.py [--quick]``

- ``memory://``: ``RateLimiter.hit`` against no limiter at all, and against
  what a naive use of ``limits`` costs (``FixedWindowRateLimiter.hit`` then
  ``get_window_stats`` for the headers), on one cached key.
- ``redis://`` on loopback: Redis round trips per request, counted by the
  server (``INFO commandstats``), and microseconds per request, for the fixed
  window, the naive ``limits`` calls and the other strategies.

Medians over interleaved rounds, so that the machine's noise falls on every
variant alike. Redis is a throwaway server from ``tests/servers/redis.py``
(skipped, with a note, when ``redis-server`` is missing).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from _timing import interleaved_us
from limits import parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from vemetric_auth import ApiKey
from vemetric_auth.ratelimit import RateLimiter

# The throwaway Redis of the test suite (tests/servers/redis.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers.redis import RedisServer, find_redis_bin

# High enough never to refuse: the allowed path is the one every request pays.
LIMIT = "1000000000/minute"

RECORD = ApiKey(
    id="key_bench",
    project_id="proj_bench",
    name="bench",
    prefix="vem_benchben...",
    created_at=datetime.now(timezone.utc),
)


def naive_limits(storage: MemoryStorage | RedisStorage) -> Callable[[], object]:
    """What a direct use of limits costs: hit, then the window's stats."""
    limiter = FixedWindowRateLimiter(storage)
    item = parse(LIMIT)

    def hit() -> object:
        limiter.hit(item, "proj_bench")
        return limiter.get_window_stats(item, "proj_bench")

    return hit


def bench_memory(number: int, repeat: int) -> None:
    print("\n== memory://, one cached key ==")
    fixed = RateLimiter(LIMIT)
    tiers = RateLimiter(lambda record: LIMIT)
    by_key = RateLimiter(LIMIT, by="key")
    storage = MemoryStorage()
    result = interleaved_us(
        {
            "no limiter": lambda: None,
            "RateLimiter.hit": lambda: fixed.hit(RECORD),
            "  tiers callable": lambda: tiers.hit(RECORD),
            "  by key": lambda: by_key.hit(RECORD),
            "MemoryStorage.incr": lambda: storage.incr("k/1", 60),
            "limits hit+stats": naive_limits(storage),
        },
        number=number,
        repeat=repeat,
    )
    for name, us in result.items():
        print(f"  {name:<22} {us:7.3f} us/request (median)")
    added = result["RateLimiter.hit"] - result["no limiter"]
    print(f"  the limiter adds       {added:7.3f} us/request (target <= 3 us)")


def round_trips(server: RedisServer, fn: Callable[[], object], count: int) -> float:
    """Commands the client sent per call of *fn*, as the server saw them.

    Counted with ``MONITOR``, which shows every command a client sends and,
    marked ``[0 lua]``, those a script runs inside the server (the INCRBY
    and EXPIRE of the fixed window's script): only the former are round
    trips.
    """
    fn()  # scripts are loaded once, on first use
    end = f"bench-end-{time.monotonic_ns()}"
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"MONITOR\r\n")
        reader = sock.makefile("rb")
        assert reader.readline() == b"+OK\r\n"
        for _ in range(count):
            fn()
        server.command("ECHO", end)  # the last line this monitor waits for
        sent = 0
        for line in reader:
            if end.encode() in line:
                break
            if b"[0 lua]" not in line:
                sent += 1
    return sent / count


def bench_redis(number: int, repeat: int) -> None:
    print("\n== redis:// on loopback (a throwaway redis-server) ==")
    if find_redis_bin() is None:
        print("  skipped: no redis-server (scripts/ensure-redis.sh installs it)")
        return
    with RedisServer() as server:
        fixed = RateLimiter(LIMIT, storage_uri=server.url)
        moving = RateLimiter(LIMIT, storage_uri=server.url, strategy="moving-window")
        sliding = RateLimiter(
            LIMIT, storage_uri=server.url, strategy="sliding-window-counter"
        )
        naive = naive_limits(RedisStorage(server.url))
        variants: dict[str, Callable[[], object]] = {
            "fixed window": lambda: fixed.hit(RECORD),
            "limits hit+stats": naive,
            "sliding-window-counter": lambda: sliding.hit(RECORD),
        }
        for name, fn in variants.items():
            print(
                f"  {name:<22} {round_trips(server, fn, 200):5.2f} round trips/request"
            )
        # The moving window keeps one entry per request: measured on fewer.
        print(
            f"  {'moving window':<22} "
            f"{round_trips(server, lambda: moving.hit(RECORD), 50):5.2f} "
            "round trips/request"
        )
        server.flushall()
        server.reset_stats()
        result = interleaved_us(variants, number=number, repeat=repeat)
        for name, us in result.items():
            print(f"  {name:<22} {us:7.1f} us/request (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    number, repeat = (5_000, 5) if args.quick else (50_000, 15)
    redis_number = 200 if args.quick else 1_000
    print(
        f"python {sys.version.split()[0]}; memory: batches of {number} calls, "
        f"redis: batches of {redis_number}; {repeat} interleaved rounds"
    )
    bench_memory(number, repeat)
    bench_redis(redis_number, repeat)


if __name__ == "__main__":
    main()
