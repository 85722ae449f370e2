"""SQLKeyStore.record_use: writing the last-use stamps of 10,000 keys at once.

What a KeyManager's background flusher does once a minute when 10,000
distinct keys were used in that minute in one process. Measures, on SQLite
and PostgreSQL, the time of one ``store.record_use(stamps)`` call for 10,000
distinct keys (every stamp newer than the stored one, so every row is
written), and the statements it sends: one ``UPDATE`` per 10,000 stamps.
For comparison, the same batch written key by key (one ``executemany`` of
single-row UPDATEs: what databases without ``UPDATE ... FROM`` get).

The table holds ``--rows`` keys (100,000 by default), inserted directly
(the hash is a constant string, not argon2). PostgreSQL is a throwaway server
started from ``tests/servers/postgres.py`` and removed at the end.

Run: ``.venv/bin/python benchmarks/bench_last_use.py [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import event

# The throwaway PostgreSQL of the test suite (tests/servers/postgres.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers.postgres import PostgresServer, find_pg_bin

from vemetric_auth import SQLKeyStore
from vemetric_auth.keys import ALPHABET

_HASH = "$argon2id$v=19$m=8,t=1,p=1$YmVuY2hzYWx0$YmVuY2hoYXNoYmVuY2hoYXNo"
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _prefix(n: int) -> str:
    chars = []
    for _ in range(8):
        n, digit = divmod(n, 36)
        chars.append(ALPHABET[digit])
    return "vem_" + "".join(chars) + "..."


def _fill(store: SQLKeyStore, rows: int) -> list[str]:
    """Insert *rows* keys into the store's empty table; return their ids."""
    store.create_table()
    ids = [uuid.uuid4().hex for _ in range(rows)]
    with store.engine.begin() as connection:
        for start in range(0, rows, 10_000):
            connection.execute(
                store.table.insert(),
                [
                    {
                        "id": key_id,
                        "project_id": f"proj_{n % 1000}",
                        "name": "bench key",
                        "prefix": _prefix(n),
                        "hash": _HASH,
                        "created_at": _EPOCH + timedelta(microseconds=n),
                    }
                    for n, key_id in enumerate(ids[start : start + 10_000], start)
                ],
            )
    return ids


class _StatementCounter:
    def __init__(self, store: SQLKeyStore) -> None:
        self.updates = 0
        event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        statement: str = args[2]
        if statement.lstrip().upper().startswith("UPDATE"):
            self.updates += 1


def bench_backend(
    label: str, url: str, rows: int, keys: int, rounds: int
) -> dict[str, float]:
    store = SQLKeyStore(url, table_name="bench_last_use")
    try:
        started = time.perf_counter()
        ids = _fill(store, rows)
        print(
            f"  {label}: {rows:,} rows inserted in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        used = ids[:: max(1, rows // keys)][:keys]
        counter = _StatementCounter(store)
        moment = _EPOCH + timedelta(days=1)

        def flush() -> tuple[float, int]:
            nonlocal moment
            moment += timedelta(minutes=1)  # later than every stored stamp
            stamps = {key_id: moment for key_id in used}
            counter.updates = 0
            started = time.perf_counter()
            store.record_use(stamps)
            return time.perf_counter() - started, counter.updates

        flush()  # warm up: connections, the statement cache
        times, statements = [], []
        for _ in range(rounds):
            seconds, count = flush()
            times.append(seconds)
            statements.append(count)
        check = store.get(used[-1])
        assert check is not None
        assert check.last_used_at == moment

        # The same batch key by key, as databases without UPDATE ... FROM get.
        store._stamp_writer = (store._write_stamps_one_by_one, len(used))
        one_by_one = statistics.median(flush()[0] for _ in range(max(1, rounds // 2)))
        return {
            "median_ms": statistics.median(times) * 1000,
            "best_ms": min(times) * 1000,
            "statements": statistics.median(statements),
            "one_by_one_ms": one_by_one * 1000,
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a table of 10,000 keys, fewer rounds"
    )
    parser.add_argument(
        "--backend",
        choices=("all", "sqlite", "postgresql"),
        default="all",
        help="which database to measure",
    )
    parser.add_argument("--rows", type=int, default=None, help="keys in the table")
    args = parser.parse_args()
    keys = 10_000
    rows = args.rows or (keys if args.quick else 100_000)
    rounds = 3 if args.quick else 7
    print(
        f"python {sys.version.split()[0]}; record_use of {keys:,} distinct keys "
        f"in a table of {rows:,}; {rounds} rounds, medians",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="vemetric-bench-") as tmp:
        if args.backend in ("all", "sqlite"):
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            results["sqlite"] = bench_backend("sqlite", url, rows, keys, rounds)
        if args.backend in ("all", "postgresql"):
            if find_pg_bin() is None:
                print("  postgresql: skipped, no initdb/pg_ctl found")
            else:
                with PostgresServer() as server:
                    results["postgresql"] = bench_backend(
                        "postgresql", server.url, rows, keys, rounds
                    )

    print()
    print(
        f"{'backend':<11} {'flush of 10k':>13} {'best':>9} {'statements':>11} "
        f"{'per key':>9} {'key by key':>11}"
    )
    for label, result in results.items():
        print(
            f"{label:<11} {result['median_ms']:>10.0f} ms {result['best_ms']:>6.0f} ms "
            f"{result['statements']:>11.0f} "
            f"{result['median_ms'] * 1000 / keys:>6.1f} us "
            f"{result['one_by_one_ms']:>8.0f} ms"
        )


if __name__ == "__main__":
    main()
