"""The change feed of SQLKeyStore: what reading it costs, with 10 and with
100,000 stored keys, on SQLite and PostgreSQL.

Every process reads the feed about once a second (SPEC section 7); the read
must cost the same whatever the number of keys. Measures, on each backend and
for each table size:

- ``changes_since`` when nothing changed (the idle poll of every process,
  every second) and when one change is pending, median microseconds, with the
  change log holding an hour's worth of 1,000 entries;
- the statements one read sends (one: a range read of the log's primary key);
- a revocation (the key row, its log entry, and on PostgreSQL the advisory
  lock and ``NOTIFY``, in one transaction), median milliseconds;
- on PostgreSQL, the time from a revocation's return in one store until the
  listener of another store wakes (median and p99 over the trials).

The big table is filled with synthetic rows (COPY on PostgreSQL, executemany
on SQLite), as ``bench_sql_store.py`` does. PostgreSQL is a throwaway server
started from ``tests/servers/postgres.py`` and removed at the end.

Run: ``.venv/bin/python benchmarks/bench_change_feed.py [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from _timing import interleaved_us
from bench_sql_store import _fill

# The throwaway PostgreSQL of the test suite (tests/servers/postgres.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers.postgres import PostgresServer, find_pg_bin

from vemetric_auth import SQLKeyStore

_SIZES = (10, 100_000)
_LOG_ENTRIES = 1_000
_NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _fill_log(store: SQLKeyStore, entries: int) -> None:
    """An hour of changes: *entries* rows in the change log."""
    log = store.change_log
    started = datetime.now(timezone.utc) - timedelta(hours=1)
    rows = [
        {
            "key_id": f"{n:032x}",
            "changed_at": started + timedelta(seconds=3600 * n / entries),
        }
        for n in range(entries)
    ]
    with store.engine.begin() as connection:
        connection.execute(log.insert(), rows)


def _statements_per_read(store: SQLKeyStore, cursor: int) -> int:
    seen: list[str] = []

    def count(*args: object) -> None:
        seen.append(str(args[2]))

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        store.changes_since(cursor)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    return len(seen)


def _revoke_ms(store: SQLKeyStore, key_ids: list[str]) -> float:
    samples = []
    for key_id in key_ids:
        started = time.perf_counter()
        store.revoke(key_id, revoked_at=_NOW, revoked_by="bench")
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _wake_ms(url: str, table: str, key_ids: list[str]) -> tuple[float, float]:
    """Median and p99 of the time from a revocation's return in one store to
    the wake of another store's listener, in milliseconds."""
    writer = SQLKeyStore(url, table_name=table)
    reader = SQLKeyStore(url, table_name=table)
    listener = reader.listen()
    assert listener is not None
    try:
        while listener.wait(0.2):  # connected, and quiet
            pass
        samples = []
        woken_at: list[float] = []

        def wait() -> None:
            if listener.wait(5):
                woken_at.append(time.perf_counter())

        for key_id in key_ids:
            woken_at.clear()
            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.01)
            writer.revoke(key_id, revoked_at=_NOW, revoked_by="bench")
            returned = time.perf_counter()
            waiter.join(10)
            assert woken_at, "the listener was not woken"
            samples.append(max(0.0, woken_at[0] - returned) * 1000)
        samples.sort()
        p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
        return statistics.median(samples), p99
    finally:
        listener.close()
        reader.close()
        writer.close()


def bench_backend(
    label: str, url: str, *, number: int, repeat: int, trials: int
) -> dict[int, dict[str, float]]:
    stores = {size: SQLKeyStore(url, table_name=f"feed_{size}") for size in _SIZES}
    try:
        for size, store in stores.items():
            seconds = _fill(store, size)
            _fill_log(store, _LOG_ENTRIES)
            print(f"  {label}: {size:>7,} keys in {seconds:5.1f} s", flush=True)
        heads = {
            size: store.changes_since(None).cursor for size, store in stores.items()
        }
        reads = {}
        for size, store in stores.items():
            head = heads[size]
            reads[f"idle {size}"] = lambda s=store, c=head: s.changes_since(c)
            reads[f"one {size}"] = lambda s=store, c=head - 1: s.changes_since(c)
        for read in reads.values():  # warm connections and caches
            read()
        timings = interleaved_us(reads, number=number, repeat=repeat)
        results: dict[int, dict[str, float]] = {}
        for size, store in stores.items():
            key_ids = [f"{n:032x}" for n in range(min(size, trials))]
            results[size] = {
                "idle_us": timings[f"idle {size}"],
                "one_us": timings[f"one {size}"],
                "statements": _statements_per_read(store, heads[size]),
                "revoke_ms": _revoke_ms(store, key_ids),
            }
        if stores[_SIZES[-1]].listen() is not None:
            big = _SIZES[-1]
            key_ids = [f"{n:032x}" for n in range(trials, 2 * trials)]
            median, p99 = _wake_ms(url, f"feed_{big}", key_ids)
            results[big]["wake_ms"] = median
            results[big]["wake_p99_ms"] = p99
        return results
    finally:
        for store in stores.values():
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--backend",
        choices=("all", "sqlite", "postgresql"),
        default="all",
        help="which database to measure",
    )
    args = parser.parse_args()
    number, repeat, trials = (200, 3, 10) if args.quick else (1_000, 7, 50)
    print(
        f"python {sys.version.split()[0]}; {number} reads x {repeat} rounds, "
        f"medians; change log of {_LOG_ENTRIES:,} entries; {trials} revocations",
        flush=True,
    )
    results: dict[str, dict[int, dict[str, float]]] = {}
    options = {"number": number, "repeat": repeat, "trials": trials}
    with tempfile.TemporaryDirectory(prefix="vemetric-bench-") as tmp:
        if args.backend in ("all", "sqlite"):
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            results["sqlite"] = bench_backend("sqlite", url, **options)
        if args.backend in ("all", "postgresql"):
            if find_pg_bin() is None:
                print("  postgresql: skipped, no initdb/pg_ctl found")
            else:
                with PostgresServer() as server:
                    results["postgresql"] = bench_backend(
                        "postgresql", server.url, **options
                    )

    print()
    print(
        f"{'backend':<11} {'keys':>8} {'idle read':>10} {'one change':>11} "
        f"{'statements':>11} {'revoke':>8} {'NOTIFY wake p50/p99':>20}"
    )
    for label, by_size in results.items():
        for size, result in by_size.items():
            wake = (
                f"{result['wake_ms']:.2f}/{result['wake_p99_ms']:.2f} ms"
                if "wake_ms" in result
                else "-"
            )
            print(
                f"{label:<11} {size:>8,} {result['idle_us']:>8.0f}us "
                f"{result['one_us']:>9.0f}us {result['statements']:>11.0f} "
                f"{result['revoke_ms']:>6.2f}ms {wake:>20}"
            )
    print()
    print(
        "Each process reads once a second: one statement per second per "
        "process, whatever the number of keys."
    )


if __name__ == "__main__":
    main()
