"""SQLKeyStore on SQLite and PostgreSQL: lookup time against table size, and
authentication throughput.

Measures, on each backend:

- one ``find_by_prefix`` lookup with 1,000 and with 1,000,000 stored keys
  (median in microseconds, and the ratio 1M/1k; the target is under 2);
- ``KeyManager.authenticate`` per second for random unknown well-formed keys
  (one store lookup each, no argon2) and for a cached valid key.

The big table is filled with synthetic rows (COPY on PostgreSQL, executemany
on SQLite; the hash is a constant string), not through argon2. PostgreSQL is a
throwaway server started from ``tests/servers/postgres.py`` and removed at the end.

Run: ``.venv/bin/python benchmarks/bench_sql_store.py [--quick]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher, profiles

# The throwaway PostgreSQL of the test suite (tests/servers/postgres.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers.postgres import PostgresServer, find_pg_bin

from vemetric_auth import InvalidApiKey, KeyManager, SQLKeyStore
from vemetric_auth.keys import ALPHABET

_HASH = "$argon2id$v=19$m=8,t=1,p=1$YmVuY2hzYWx0$YmVuY2hoYXNoYmVuY2hoYXNo"
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Odd and not a multiple of 3: a bijection of range(36**8), so every row gets
# its own scattered display prefix.
_SCATTER = 2_654_435_761
_SPACE = 36**8


def _prefix(n: int) -> str:
    value = (n * _SCATTER + 12_345) % _SPACE
    chars = []
    for _ in range(8):
        value, digit = divmod(value, 36)
        chars.append(ALPHABET[digit])
    return "vem_" + "".join(chars) + "..."


def _rows(count: int) -> Iterator[tuple[Any, ...]]:
    for n in range(count):
        yield (
            f"{n:032x}",
            f"proj_{n % 1000}",
            "bench key",
            _prefix(n),
            _HASH,
            _EPOCH + timedelta(microseconds=n),
        )


_COLUMNS = ("id", "project_id", "name", "prefix", "hash", "created_at")


def _fill(store: SQLKeyStore, count: int) -> float:
    """Insert *count* synthetic rows into the store's empty table; return seconds."""
    store.create_table()
    table = store.table.name
    started = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        if store.engine.dialect.name == "postgresql":
            cursor = raw.cursor()
            # The store's 5 s statement timeout is for requests, not bulk loads.
            cursor.execute("SET LOCAL statement_timeout = 0")
            columns = ", ".join(_COLUMNS)
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in _rows(count):
                    copy.write_row(row)
            raw.commit()
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute(f"ANALYZE {table}")
            raw.commit()
        else:
            # The text SQLAlchemy's SQLite DATETIME stores: UTC, microseconds.
            fmt = "%Y-%m-%d %H:%M:%S.%f"
            marks = ", ".join("?" * len(_COLUMNS))
            cursor = raw.cursor()
            cursor.executemany(
                f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES ({marks})",
                ((*row[:5], row[5].strftime(fmt)) for row in _rows(count)),
            )
            raw.commit()
            cursor.execute(f"ANALYZE {table}")
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def _lookup_samples(
    store: SQLKeyStore, prefixes: list[str], lookups: int
) -> list[float]:
    """Time *lookups* single lookups of known prefixes; microseconds each."""
    samples = []
    clock = time.perf_counter_ns
    for prefix in random.choices(prefixes, k=lookups):
        started = clock()
        found = store.find_by_prefix(prefix)
        samples.append((clock() - started) / 1000)
        assert found is not None
    return samples


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of *fn* per second over about *seconds*."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            fn()
        calls += 50
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def _unknown_keys() -> Iterator[str]:
    # Random well-formed keys: one in about three million shares a display
    # prefix with one of a million rows, and is then refused by argon2.
    rng = random.Random(7)
    while True:
        yield "vem_" + "".join(rng.choice(ALPHABET) for _ in range(32))


def bench_backend(
    label: str, url: str, sizes: tuple[int, int], lookups: int, rounds: int
) -> dict[str, float]:
    small_size, big_size = sizes
    stores = {
        size: SQLKeyStore(url, table_name=f"bench_{size}")
        for size in (small_size, big_size)
    }
    try:
        for size, store in stores.items():
            seconds = _fill(store, size)
            print(
                f"  {label}: {size:>9,} rows inserted in {seconds:6.1f} s", flush=True
            )
        prefixes = {size: [_prefix(n) for n in range(size)] for size in stores}
        for size, store in stores.items():  # warm caches and connections
            _lookup_samples(store, prefixes[size], 200)

        medians: dict[int, list[float]] = {size: [] for size in stores}
        for _ in range(rounds):
            # Interleaved, so that the machine's noise falls on both alike.
            for size, store in stores.items():
                samples = _lookup_samples(store, prefixes[size], lookups)
                medians[size].append(statistics.median(samples))
        small = statistics.median(medians[small_size])
        big = statistics.median(medians[big_size])

        store = stores[big_size]
        keys = KeyManager(
            store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
        )
        issued = keys.create("proj_bench", "cached key")
        keys.authenticate(issued.key)
        unknown = _unknown_keys()

        def authenticate_unknown() -> None:
            try:
                keys.authenticate(next(unknown))
            except InvalidApiKey:
                pass
            else:
                raise AssertionError("an unknown key was let through")

        def authenticate_cached() -> None:
            keys.authenticate(issued.key)

        unknown_rates = []
        cached_rates = []
        for _ in range(rounds):
            unknown_rates.append(_rate(authenticate_unknown, 0.5))
            cached_rates.append(_rate(authenticate_cached, 0.25))
        return {
            "lookup_small_us": small,
            "lookup_big_us": big,
            "ratio": big / small,
            "unknown_per_s": statistics.median(unknown_rates),
            "cached_per_s": statistics.median(cached_rates),
        }
    finally:
        for store in stores.values():
            store.close()


def _size_label(size: int) -> str:
    if size >= 1_000_000:
        return f"{size // 1_000_000}M"
    return f"{size // 1_000}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1,000 and 20,000 keys, fewer rounds"
    )
    parser.add_argument(
        "--backend",
        choices=("all", "sqlite", "postgresql"),
        default="all",
        help="which database to measure",
    )
    args = parser.parse_args()
    sizes = (1_000, 20_000) if args.quick else (1_000, 1_000_000)
    lookups, rounds = (500, 3) if args.quick else (2_000, 7)
    random.seed(1)

    print(
        f"python {sys.version.split()[0]}; {lookups} lookups x {rounds} rounds, "
        f"medians; sizes {sizes[0]:,} and {sizes[1]:,}",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vemetric-bench-") as tmp:
        if args.backend in ("all", "sqlite"):
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            results["sqlite"] = bench_backend("sqlite", url, sizes, lookups, rounds)
        if args.backend in ("all", "postgresql"):
            if find_pg_bin() is None:
                print("  postgresql: skipped, no initdb/pg_ctl found")
            else:
                with PostgresServer() as server:
                    results["postgresql"] = bench_backend(
                        "postgresql", server.url, sizes, lookups, rounds
                    )

    small, big = (_size_label(size) for size in sizes)
    print()
    print(
        f"{'backend':<11} {'lookup ' + small:>12} {'lookup ' + big:>14} "
        f"{'ratio':>6} {'unknown keys/s':>15} {'cached key/s':>13}"
    )
    for label, result in results.items():
        print(
            f"{label:<11} {result['lookup_small_us']:>10.1f}us "
            f"{result['lookup_big_us']:>12.1f}us {result['ratio']:>6.2f} "
            f"{result['unknown_per_s']:>15,.0f} {result['cached_per_s']:>13,.0f}"
        )


if __name__ == "__main__":
    main()
