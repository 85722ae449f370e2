"""A flood of wrong secrets for one known prefix, with a valid cached key served
alongside: argon2 concurrency, resident memory and the cached key's latency.

Run: ``.venv/bin/python benchmarks/bench_flood.py [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from argon2 import PasswordHasher

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager, generate_key
from vemetric_auth.hashing import DEFAULT_PARAMETERS


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class WatchedHasher(PasswordHasher):
    """Counts verifications and the most that ever ran at once."""

    def __init__(self) -> None:
        p = DEFAULT_PARAMETERS
        super().__init__(
            p.time_cost, p.memory_cost, p.parallelism, p.hash_len, p.salt_len
        )
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.count = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.running += 1
            self.count += 1
            self.peak = max(self.peak, self.running)
        try:
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def call(guarded: Any, header: str) -> str:
    status: list[str] = []
    guarded(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_AUTHORIZATION": header},
        lambda s, h, e=None: status.append(s),
    )
    return status[0]


def cached_latency_us(guarded: Any, header: str, n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call(guarded, header)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--attackers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 15.0)

    hasher = WatchedHasher()
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher)
    target = keys.create("proj_target", "target").key
    valid = keys.create("proj_valid", "valid").key
    guarded = ApiKeyMiddleware(app, keys)
    valid_header = "Bearer " + valid
    assert call(guarded, valid_header).startswith("200")

    before_us = cached_latency_us(guarded, valid_header, 20_000)
    rss_before = rss_mib()
    stop = time.monotonic() + seconds
    refused = [0] * args.attackers

    def attacker(slot: int) -> None:
        while time.monotonic() < stop:
            wrong = "Bearer " + target[:12] + generate_key()[12:]
            assert call(guarded, wrong).startswith("401")
            refused[slot] += 1

    threads = [
        threading.Thread(target=attacker, args=(i,)) for i in range(args.attackers)
    ]
    for thread in threads:
        thread.start()
    rss_samples = []
    during: list[float] = []
    while time.monotonic() < stop:
        during.append(cached_latency_us(guarded, valid_header, 2_000))
        rss_samples.append(rss_mib())
        time.sleep(0.05)
    for thread in threads:
        thread.join()

    print(
        f"flood: {args.attackers} threads of wrong secrets for one prefix, {seconds:.0f} s"
    )
    print(
        f"  wrong secrets refused       {sum(refused):,} ({sum(refused) / seconds:,.0f}/s)"
    )
    print(f"  argon2 verifications        {hasher.count:,}")
    print(
        f"  argon2 peak concurrency     {hasher.peak} (bound {keys.max_verifications})"
    )
    print(
        f"  RSS before / max during     {rss_before:.1f} / {max(rss_samples):.1f} MiB"
    )
    print(
        f"  RSS first / last sample     {rss_samples[0]:.1f} / {rss_samples[-1]:.1f} MiB"
    )
    print(f"  cached key before flood     {before_us:.2f} us/request (median)")
    print(
        f"  cached key during flood     {statistics.median(during):.2f} us/request (median)"
    )


if __name__ == "__main__":
    main()
