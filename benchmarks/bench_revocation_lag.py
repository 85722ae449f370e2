"""Revocation lag across real processes: from a revocation through the command
line until no server process accepts the key any more.

Two layouts, standing in for one machine and for two:

- **SQLite**: one gunicorn with 4 workers on one SQLite file (the change log
  is polled, about twice a second);
- **PostgreSQL**: two gunicorn servers of 2 workers each on one database
  (``LISTEN``/``NOTIFY`` wakes each worker's reader, the change log is the
  backstop).

Each serves the Flask example (``examples/flask_app.py``, through
``benchmarks/loadkit.py``) with ``cache_ttl=3600``, so that only the change
feed can explain a refusal within the hour, and adds an ``X-Worker`` header
(the worker's pid). Client threads keep every worker busy with one key; once
every worker has answered it with 200, another process revokes it with
``python -m vemetric_auth revoke``; the lag is the time from that command's
return until the last worker's first 401 (after which none answers 200). The command
line takes a few hundred milliseconds between its commit and its return
(it closes its manager and the interpreter exits), which the feed often
uses up; so the same is also measured with the revocation made by this
process's own :class:`KeyManager` ("API revoke"), whose return follows the
commit at once. A new key per trial. The figures: p50, p99 and max over the
trials.

The baseline is the same measure with the feed turned off in the servers
(``cache_ttl=60``, as before the change feed): a revocation then shows
within ``cache_ttl``, so a few trials suffice to show it (each takes up to
a minute).

Run: ``.venv/bin/python benchmarks/bench_revocation_lag.py [--trials 50]
[--baseline-trials 3] [--backend sqlite|postgresql|all]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The throwaway PostgreSQL of the test suite (tests/servers/postgres.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import loadkit
from loadkit import Case, Connection, Dataset, KeyAdmin, KeyInfo

if TYPE_CHECKING:
    from flask import Flask

#: Set in a server's environment: its managers read no change feed.
_FEED_OFF_ENV = "BENCH_REVOCATION_FEED_OFF"
WORKER_HEADER = "x-worker"


def server_app() -> Flask:
    """:func:`loadkit.server_app`, answering with its worker's pid in
    ``X-Worker``; without the change feed if ``BENCH_REVOCATION_FEED_OFF``
    is set (the baseline: a manager as before the feed)."""
    app = loadkit.server_app()
    pid = str(os.getpid())

    @app.after_request
    def name_the_worker(response: Any) -> Any:
        response.headers["X-Worker"] = pid
        return response

    if os.environ.get(_FEED_OFF_ENV):
        flask_app = loadkit._flask_app_module()
        keys = flask_app.auth.keys_for(app)
        keys._feed = None  # private: the baseline only
        keys._verifier._feed = None
    return app


@dataclass
class Layout:
    """Servers on one store: each with *workers* gunicorn workers."""

    name: str
    backend: str
    servers: tuple[int, ...]

    @property
    def workers(self) -> int:
        return sum(self.servers)


SQLITE = Layout("SQLite, 1 gunicorn x 4 workers", "sqlite", (4,))
POSTGRESQL = Layout("PostgreSQL, 2 gunicorns x 2 workers", "postgresql", (2, 2))


@contextmanager
def running_server(
    database_url: str,
    workdir: Path,
    *,
    workers: int,
    cache_ttl: float,
    feed: bool = True,
    threads: int = 4,
) -> Iterator[loadkit.ServerProcess]:
    """gunicorn serving :func:`server_app`, as :func:`loadkit.running_server`
    does for the example itself."""
    command = loadkit._gunicorn_command(workers, threads)[:-1]
    command.append("bench_revocation_lag:server_app()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")}
    env.pop(_FEED_OFF_ENV, None)
    env["VEMETRIC_AUTH_DATABASE_URL"] = database_url
    env[loadkit._CACHE_TTL_ENV] = repr(float(cache_ttl))
    env["PYTHONUNBUFFERED"] = "1"
    if not feed:
        env[_FEED_OFF_ENV] = "1"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"gunicorn-{os.urandom(4).hex()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    server = loadkit.ServerProcess(loadkit.GUNICORN, process, log_path, workers)
    try:
        server.port = loadkit._wait_until_ready(server, 60.0)
        yield server
    finally:
        server.stop()


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    worker: str
    key_id: str


@dataclass
class Hammer:
    """Client threads sending ``GET /v1/project`` with the current key to
    every server, as fast as they are answered; records each answer."""

    ports: Sequence[int]
    threads_per_server: int = 6
    key: KeyInfo | None = None
    answers: list[Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Hammer:
        for port in self.ports:
            for _ in range(self.threads_per_server):
                thread = threading.Thread(target=self._run, args=(port,), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, port: int) -> None:
        connection = Connection(port, timeout=30)
        try:
            while not self._stop.is_set():
                key = self.key
                if key is None:
                    time.sleep(0.01)
                    continue
                case = Case(
                    "valid",
                    "/v1/project",
                    (("Authorization", f"Bearer {key.key}"),),
                    key.project_id,
                )
                result = connection.send(case)
                # A new connection per request: gunicorn's workers take turns
                # accepting them, where a kept-alive one stays with one worker.
                connection.close()
                if result.error is not None:
                    time.sleep(0.01)
                    continue
                worker = next(iter(result.header(WORKER_HEADER)), "?")
                with self._lock:
                    self.answers.append(
                        Answer(
                            result.started,
                            result.ended,
                            result.status,
                            f"{port}/{worker}",
                            key.key_id,
                        )
                    )
        finally:
            connection.close()

    def since(self, moment: float, key_id: str) -> list[Answer]:
        with self._lock:
            return [
                a for a in self.answers if a.received >= moment and a.key_id == key_id
            ]

    def forget_before(self, moment: float) -> None:
        with self._lock:
            self.answers = [a for a in self.answers if a.received >= moment]


def revoke_with_the_cli(database_url: str, key_id: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vemetric_auth",
            "--database-url",
            database_url,
            "revoke",
            key_id,
            "--revoked-by",
            "bench",
        ],
        check=True,
        capture_output=True,
        # About half a second of CPU, but on a shared machine its imports
        # alone have taken 20 s of waiting for one: a backstop, not a bound.
        timeout=300,
    )


def one_trial(
    hammer: Hammer,
    admin: KeyAdmin,
    dataset: Dataset,
    workers: int,
    *,
    timeout: float,
    cli: bool = True,
) -> float:
    """Seconds from the return of a revocation until every worker refuses a
    new key they all had accepted. The revocation is made with the command
    line (*cli*), or by this process's :class:`KeyManager`, whose return
    follows the commit by a hair (the command line closes its manager and
    exits after it)."""
    project_id = next(iter(dataset.projects))
    key = admin.create(project_id, "revocation lag")
    started = time.monotonic()
    hammer.key = key
    # Every worker has it cached: answered 200 at least twice.
    while True:
        accepted: dict[str, int] = {}
        for answer in hammer.since(started, key.key_id):
            if answer.status == 200:
                accepted[answer.worker] = accepted.get(answer.worker, 0) + 1
        if len(accepted) >= workers and min(accepted.values()) >= 2:
            break
        if time.monotonic() - started > 30:
            raise RuntimeError(f"not every worker accepted the key: {accepted}")
        time.sleep(0.02)
    if cli:
        revoke_with_the_cli(dataset.database_url, key.key_id)
    else:
        admin.revoke(key)
    revoked = time.monotonic()
    while True:
        answers = hammer.since(revoked, key.key_id)
        first_refusal: dict[str, float] = {}
        for answer in answers:
            if answer.status == 401:
                first_refusal.setdefault(answer.worker, answer.received)
        if len(first_refusal) >= workers:
            # A request sent after its worker refused the key must not pass.
            late = [
                answer.worker
                for answer in answers
                if answer.status == 200
                and answer.sent > first_refusal.get(answer.worker, float("inf"))
            ]
            if late:
                raise RuntimeError(f"accepted again after a refusal: {late}")
            hammer.key = None
            hammer.forget_before(time.monotonic())
            return max(0.0, max(first_refusal.values()) - revoked)
        if time.monotonic() - revoked > timeout:
            raise RuntimeError(f"still accepted after {timeout} s")
        time.sleep(0.01)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


def measure(
    layout: Layout,
    database_url: str,
    workdir: Path,
    *,
    trials: int,
    cache_ttl: float,
    feed: bool,
    cli: bool = True,
    timeout: float | None = None,
) -> list[float]:
    """The lags of *trials* trials on *layout* over *database_url*; a trial
    fails after *timeout* seconds (``None``: *cache_ttl* and half a minute).
    """
    dataset = loadkit.prepare_dataset(database_url, projects=2, revoked=0, orphans=0)
    admin = KeyAdmin(database_url)
    lags: list[float] = []
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                running_server(
                    database_url,
                    workdir / f"server{n}",
                    workers=workers,
                    cache_ttl=cache_ttl,
                    feed=feed,
                )
            )
            for n, workers in enumerate(layout.servers)
        ]
        hammer = stack.enter_context(Hammer([server.port for server in servers]))
        try:
            for _ in range(trials):
                lags.append(
                    one_trial(
                        hammer,
                        admin,
                        dataset,
                        layout.workers,
                        timeout=cache_ttl + 30 if timeout is None else timeout,
                        cli=cli,
                    )
                )
        finally:
            admin.close()
        for server in servers:
            if len(server.booted_workers()) != server.workers:
                raise RuntimeError("a worker died:\n" + server.log_tail())
    return lags


def describe(seconds: Sequence[float]) -> str:
    return (
        f"p50 {statistics.median(seconds) * 1000:6.0f} ms  "
        f"p99 {percentile(seconds, 99) * 1000:6.0f} ms  "
        f"max {max(seconds) * 1000:6.0f} ms"
    )


def row(name: str, label: str, lags: Sequence[float]) -> str:
    return f"{name:36} {label:40} {len(lags):>3} trials  {describe(lags)}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--baseline-trials", type=int, default=3)
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "all"), default="all"
    )
    args = parser.parse_args(argv)
    if not loadkit.gunicorn_available():
        raise SystemExit("gunicorn is not installed: pip install gunicorn")
    layouts = [
        layout
        for layout in (SQLITE, POSTGRESQL)
        if args.backend in ("all", layout.backend)
    ]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        postgres = None
        rows: list[str] = []
        for layout in layouts:
            runs = [
                ("feed, cache_ttl=3600, CLI revoke", 3600.0, True, True, args.trials),
                ("feed, cache_ttl=3600, API revoke", 3600.0, True, False, args.trials),
            ]
            if args.baseline_trials:
                runs.append(
                    (
                        "no feed, cache_ttl=60 (before), CLI",
                        60.0,
                        False,
                        True,
                        args.baseline_trials,
                    )
                )
            for label, ttl, feed, cli, trials in runs:
                if layout.backend == "postgresql":
                    if postgres is None:
                        from servers.postgres import PostgresServer, find_pg_bin

                        if find_pg_bin() is None:
                            raise SystemExit("no PostgreSQL binaries found")
                        postgres = stack.enter_context(PostgresServer())
                    url = postgres.create_database(f"lag_{os.urandom(4).hex()}")
                else:
                    url = f"sqlite:///{workdir / f'lag-{os.urandom(4).hex()}.db'}"
                lags = measure(
                    layout,
                    url,
                    workdir / os.urandom(4).hex(),
                    trials=trials,
                    cache_ttl=ttl,
                    feed=feed,
                    cli=cli,
                )
                rows.append(row(layout.name, label, lags))
                print(rows[-1], flush=True)
    print()
    print("revocation lag: until no worker accepts the key")
    for line in rows:
        print("  " + line)


if __name__ == "__main__":
    main()
