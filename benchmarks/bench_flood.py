"""Floods against one process: do they fail legitimate keys?

- **Random-key flood**: many client threads send random well-formed keys
  (each a lookup of an unknown prefix) through :class:`ApiKeyMiddleware` to
  a store that takes a few milliseconds a call, while one legitimate client
  uses one key with ``cache_ttl=1``, so its entry goes stale every second.
  Counted: the legitimate answers that are not 200, and their latency.
- **Wrong-secret flood**: 200 and 1,000 threads send wrong secrets for one
  known prefix (each an argon2 run, default parameters); meanwhile five
  other keys are used for the first time, one after the other. Measured:
  their first-verification latency, beside one cold verification alone;
  also the argon2 peak concurrency, resident memory and a cached key's
  latency.

``--before REF`` runs the same measures on the package as of the git commit
*REF* (say, the last one before the change feed), in a child process, and
prints both.

Run: ``.venv/bin/python benchmarks/bench_flood.py [--quick] [--before REF]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager
from vemetric_auth.hashing import DEFAULT_PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def random_key(rng: random.Random) -> str:
    return "vem_" + "".join(rng.choice(_ALPHABET) for _ in range(32))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class SlowStore(InMemoryKeyStore):
    """Every call takes *delay* seconds (outside the lock): a database a
    network away, or one slowed by the flood itself."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def get(self, key_id: str) -> Any:
        time.sleep(self.delay)
        return super().get(key_id)

    def find_by_prefix(self, prefix: str) -> Any:
        time.sleep(self.delay)
        return super().find_by_prefix(prefix)


if hasattr(InMemoryKeyStore, "changes_since"):
    # The change feed is slowed as much (absent from packages before it).
    def _slow_changes_since(self: SlowStore, cursor: int | None) -> Any:
        time.sleep(self.delay)
        return InMemoryKeyStore.changes_since(self, cursor)  # type: ignore[attr-defined]

    SlowStore.changes_since = _slow_changes_since  # type: ignore[attr-defined]


class WatchedHasher(PasswordHasher):
    """The default parameters; counts verifications and the most at once."""

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


def call(guarded: Any, key: str) -> str:
    status: list[str] = []
    guarded(
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_AUTHORIZATION": "Bearer " + key,
        },
        lambda s, h, e=None: status.append(s),
    )
    return status[0][:3]


class Flood:
    """*count* threads calling ``attack(rng)`` until stopped; counts answers."""

    def __init__(self, count: int, attack: Any) -> None:
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._attack = attack
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True)
            for n in range(count)
        ]

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        while not self._stop.is_set():
            answer = self._attack(rng)
            with self._lock:
                self.answers[answer] += 1

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


def random_key_flood(clients: int, seconds: float, delay: float) -> dict[str, Any]:
    store = SlowStore(delay)
    keys = KeyManager(
        store, hasher=PasswordHasher.from_parameters(_cheap()), cache_ttl=1
    )
    guarded = ApiKeyMiddleware(app, keys)
    legit = keys.create("proj_legit", "legit").key
    assert call(guarded, legit) == "200"
    answers: Counter[str] = Counter()
    latencies: list[float] = []
    with Flood(clients, lambda rng: call(guarded, random_key(rng))) as flood:
        time.sleep(1.0)  # the flood fills the store threads and their backlog
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.perf_counter()
            answers[call(guarded, legit)] += 1
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    keys.close()
    return {
        "legit": dict(answers),
        "legit_p50_ms": statistics.median(latencies) * 1000,
        "legit_p99_ms": percentile(latencies, 99) * 1000,
        "flood": dict(flood.answers),
    }


def _cheap() -> Any:
    from argon2 import profiles

    return profiles.CHEAPEST


def wrong_secret_flood(attackers: int, ramp: float) -> dict[str, Any]:
    hasher = WatchedHasher()
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher)
    guarded = ApiKeyMiddleware(app, keys)
    target = keys.create("proj_target", "attacked").key
    cached = keys.create("proj_cached", "cached").key
    assert call(guarded, cached) == "200"
    cold = []
    for n in range(3):
        fresh = keys.create("proj_cold", f"cold {n}").key
        started = time.perf_counter()
        assert call(guarded, fresh) == "200"
        cold.append(time.perf_counter() - started)
    others = [keys.create("proj_other", f"other {n}").key for n in range(5)]
    rss_before = rss_mib()

    def attack(rng: random.Random) -> str:
        return call(guarded, target[:12] + random_key(rng)[12:])

    first_uses: list[float] = []
    statuses: list[str] = []

    with Flood(attackers, attack) as flood:
        time.sleep(ramp)  # the wrong secrets queue up for argon2
        cached_us = []
        for _ in range(2000):
            started = time.perf_counter()
            call(guarded, cached)
            cached_us.append((time.perf_counter() - started) * 1e6)
        for key in others:  # one at a time: each waits behind the flood only
            started = time.perf_counter()
            statuses.append(call(guarded, key))
            first_uses.append(time.perf_counter() - started)
            time.sleep(0.05)
        rss_during = rss_mib()
    keys.close()
    return {
        "cold_ms": statistics.median(cold) * 1000,
        "first_use_p50_ms": statistics.median(first_uses) * 1000,
        "first_use_max_ms": max(first_uses) * 1000,
        "first_use_statuses": dict(Counter(statuses)),
        "argon2_peak": hasher.peak,
        "argon2_bound": keys.max_verifications,
        "rss_before_mib": rss_before,
        "rss_during_mib": rss_during,
        "cached_us_p50": statistics.median(cached_us),
        "flood": dict(flood.answers),
    }


def run_all(quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 10.0
    results: dict[str, Any] = {}
    for clients in (300, 600):
        results[f"random-{clients}"] = random_key_flood(clients, seconds, delay=0.005)
    for attackers in (200, 1000):
        results[f"wrong-{attackers}"] = wrong_secret_flood(attackers, ramp=2.0)
    return results


def before(ref: str, quick: bool) -> dict[str, Any]:
    """:func:`run_all` on the package as of *ref*, in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "vemetric_auth"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tmp)
        command = [sys.executable, __file__, "--child"] + (["--quick"] if quick else [])
        out = subprocess.run(
            command, env=env, check=True, capture_output=True, text=True
        ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def show(label: str, results: dict[str, Any]) -> None:
    print(f"== {label}")
    for name, r in results.items():
        if name.startswith("random"):
            legit = r["legit"]
            bad = sum(n for status, n in legit.items() if status != "200")
            print(
                f"  {name:12} legit answers not 200: {bad} of {sum(legit.values())} "
                f"{legit}; legit p50 {r['legit_p50_ms']:.1f} ms, "
                f"p99 {r['legit_p99_ms']:.1f} ms; flood {r['flood']}"
            )
        else:
            print(
                f"  {name:12} first use of another key: p50 "
                f"{r['first_use_p50_ms']:.0f} ms, max {r['first_use_max_ms']:.0f} ms "
                f"{r['first_use_statuses']} (one cold verification alone: "
                f"{r['cold_ms']:.0f} ms); argon2 peak {r['argon2_peak']} "
                f"(bound {r['argon2_bound']}); RSS {r['rss_before_mib']:.0f} -> "
                f"{r['rss_during_mib']:.0f} MiB; cached key "
                f"{r['cached_us_p50']:.1f} us; flood {r['flood']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", metavar="REF", help="also measure this commit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_all(args.quick)))
        return
    if args.before:
        show(f"before ({args.before})", before(args.before, args.quick))
    show("now", run_all(args.quick))


if __name__ == "__main__":
    main()
