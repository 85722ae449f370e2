"""Requests per second with and without auth, on real servers, and mixed-traffic
correctness: the long version of ``tests/test_load.py``.

For gunicorn (2 workers x 4 threads, gthread) and werkzeug's threaded server,
each over PostgreSQL and SQLite, one server process runs the Flask example
(``examples/flask_app.py``) with an exempt twin of ``GET /v1/project`` added
(``benchmarks/loadkit.py``): the same project lookup and the same body, reached
without a key. The figures:

- **with auth**: ``GET /v1/project`` with valid keys of 20 projects (cached
  after the warm-up, as a busy server has them), the project loaded by the
  example's project loader;
- **without auth**: ``GET /unauthenticated/v1/project/<id>`` for the same
  projects on the same server;
- **ratio**: with / without, per round, then the median (target: 0.9 or more).

Rounds interleave the two, alternating which goes first, and each figure is
the median over rounds. Client threads (``http.client`` on persistent
connections) run on the same 2-core machine as the server and PostgreSQL, so
they take CPU from it: the absolute figures are this machine's, the ratio is
what carries over. Finally a mixed run (valid keys, wrong secrets, revoked
keys, unknown keys, garbage headers) counts responses that are not exactly
the contract's; any makes the exit status 1.

PostgreSQL is a throwaway server from ``tests/servers/postgres.py``.

Run: ``.venv/bin/python benchmarks/bench_load.py [--quick]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

# The throwaway PostgreSQL of the test suite (tests/servers/postgres.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import loadkit
from loadkit import Case, Checker, Connection, LoadClient, Report
from servers.postgres import PostgresServer, find_pg_bin

TARGET_RATIO = 0.9


@dataclass
class Settings:
    rounds: int
    seconds: float
    mixed_seconds: float
    threads: int = 8


@dataclass
class Figures:
    server: str
    backend: str
    with_auth: list[float] = field(default_factory=list)
    without_auth: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    report: Report = field(default_factory=Report)

    def median_with(self) -> float:
        return statistics.median(self.with_auth)

    def median_without(self) -> float:
        return statistics.median(self.without_auth)

    def median_ratio(self) -> float:
        return statistics.median(self.ratios)


def requests_per_second(
    connections: list[Connection],
    cases: list[Case],
    checker: Checker,
    seconds: float,
    seed: int,
) -> tuple[float, Report]:
    """Send *cases* over *connections* for *seconds*; return the rate and the
    check of every answer.

    The same connections for every run: gunicorn's workers get a connection
    for good, and an uneven share would otherwise differ from run to run.
    """
    client = LoadClient(
        0,
        [(cases, 1.0)],
        threads=len(connections),
        duration=seconds,
        seed=seed,
        connections=connections,
    )
    results = client.run()
    elapsed = max(result.ended for result in results) - client.started
    return len(results) / elapsed, checker.check(results)


def measure(
    kind: str,
    backend: str,
    database_url: str,
    workdir: Path,
    settings: Settings,
) -> Figures:
    dataset = loadkit.prepare_dataset(database_url)
    checker = Checker(dataset)
    figures = Figures(kind, backend)
    with loadkit.running_server(kind, database_url, workdir) as server:
        authenticated = loadkit.valid_cases(dataset)
        unauthenticated = loadkit.unauthenticated_cases(dataset)
        # Warm-up: every key verified (argon2 and a rehash) in every worker,
        # connection pools filled, code paths warm.
        figures.report.merge(
            checker.check(loadkit.send_each(server.port, authenticated * 4))
        )
        connections = [
            Connection(server.port, timeout=15.0) for _ in range(settings.threads)
        ]
        try:
            for cases in (authenticated, unauthenticated):
                figures.report.merge(
                    requests_per_second(connections, cases, checker, 1.0, seed=0)[1]
                )
            for round_number in range(settings.rounds):
                phases = [("with", authenticated), ("without", unauthenticated)]
                if round_number % 2:
                    phases.reverse()
                rps: dict[str, float] = {}
                for name, cases in phases:
                    rps[name], report = requests_per_second(
                        connections, cases, checker, settings.seconds, round_number
                    )
                    figures.report.merge(report)
                figures.with_auth.append(rps["with"])
                figures.without_auth.append(rps["without"])
                figures.ratios.append(rps["with"] / rps["without"])
        finally:
            for connection in connections:
                connection.close()
        mixed = LoadClient(
            server.port,
            loadkit.mixed_traffic(dataset),
            threads=settings.threads,
            duration=settings.mixed_seconds,
        )
        figures.report.merge(checker.check(mixed.run()))
        if not server.alive():
            raise RuntimeError(f"{kind} died:\n{server.log_tail()}")
        if kind == loadkit.GUNICORN and len(server.booted_workers()) != 2:
            raise RuntimeError(f"a gunicorn worker restarted:\n{server.log_tail()}")
    return figures


def print_figures(figures: Figures) -> None:
    report = figures.report
    print(
        f"{figures.server:<9} {figures.backend:<11}"
        f"{figures.median_with():9.0f}{figures.median_without():10.0f}"
        f"{figures.median_ratio():8.2f}"
        f"   ({min(figures.ratios):.2f}-{max(figures.ratios):.2f})"
        f"{report.total:10d}{len(report.problems):7d}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    settings = (
        Settings(rounds=5, seconds=1.0, mixed_seconds=3.0)
        if args.quick
        else Settings(rounds=15, seconds=2.0, mixed_seconds=10.0)
    )
    servers = [
        kind
        for kind in loadkit.SERVERS
        if kind != loadkit.GUNICORN or loadkit.gunicorn_available()
    ]
    print(
        f"{settings.rounds} interleaved rounds of {settings.seconds:g} s each way, "
        f"{settings.threads} client threads on persistent connections; client, "
        "servers and PostgreSQL share this machine's CPUs "
        f"({_cpus()}). gunicorn: 2 workers x 4 threads. Requests per second, "
        "medians over rounds; ratio = with / without auth per round, median "
        f"(min-max). Target ratio: {TARGET_RATIO}.\n"
    )
    print(
        f"{'server':<9} {'store':<11}{'with':>9}{'without':>10}{'ratio':>8}"
        f"{'':14}{'checked':>10}{'wrong':>7}"
    )
    all_figures: list[Figures] = []
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        postgres: PostgresServer | None = None
        if find_pg_bin() is not None:
            postgres = stack.enter_context(PostgresServer())
        else:
            print("postgresql: skipped, no initdb/pg_ctl found")
        for backend in ("postgresql", "sqlite"):
            for kind in servers:
                name = f"bench_{kind}_{backend}"
                if backend == "sqlite":
                    url = f"sqlite:///{workdir / (name + '.db')}"
                elif postgres is not None:
                    url = postgres.create_database(name)
                else:
                    continue
                figures = measure(kind, backend, url, workdir / name, settings)
                print_figures(figures)
                all_figures.append(figures)
    print(f"\n{time.monotonic() - started:.0f} s in all.")
    below = [f for f in all_figures if f.median_ratio() < TARGET_RATIO]
    for figures in below:
        print(
            f"below target: {figures.server} {figures.backend} "
            f"{figures.median_ratio():.2f} < {TARGET_RATIO}"
        )
    wrong = [f for f in all_figures if f.report.problems]
    for figures in wrong:
        print(f"\nWRONG ANSWERS, {figures.server} {figures.backend}:")
        print(figures.report.summary())
    return 1 if wrong else 0


def _cpus() -> str:
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
