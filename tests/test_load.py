"""The Flask example under load on real servers, and PostgreSQL restarted meanwhile.

Each scenario runs ``examples/flask_app.py`` as a subprocess (gunicorn with two
workers of four threads, or werkzeug's threaded server) over a PostgreSQL or
SQLite store prepared here, sends it a few seconds of mixed traffic from
eight client threads, and checks every answer against the HTTP contract: a
valid key gets 200 and its own project, every bad header its exact 401, and
nothing gets a 5xx but the documented 503, and that only while the store is
down. The machinery is the benchmarks' own, ``benchmarks/loadkit.py``; the
longer version with throughput figures is ``benchmarks/bench_load.py``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import loadkit
import pytest
from loadkit import Checker, Dataset, KeyAdmin, KeyInfo, LoadClient, Report
from servers.plugin import require

# The servers' cache TTL here: short, so that cached keys are checked against
# the store again during a run, and revocations by another process show.
CACHE_TTL = 2.0
LOAD_SECONDS = 3.0
CLIENT_THREADS = 8

SERVERS = [
    pytest.param(loadkit.GUNICORN, id="gunicorn"),
    pytest.param(loadkit.WERKZEUG, id="werkzeug"),
]
BACKENDS = [
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("sqlite", id="sqlite"),
]
ALL_KINDS = {
    "valid",
    "valid-variant",
    "wrong-secret",
    "revoked",
    "orphan",
    "unknown",
    loadkit.MISSING,
    loadkit.MALFORMED,
    loadkit.FORMAT,
    loadkit.HEALTH,
}

pytestmark = pytest.mark.slow


def postgres_database(server: Any) -> str:
    """A fresh database on the session's PostgreSQL server."""
    if not server.is_running():
        server.start()
    url: str = server.create_database(f"load_{uuid.uuid4().hex[:12]}")
    return url


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return postgres_database(request.getfixturevalue("postgres_server"))
    return f"sqlite:///{tmp_path / 'load.db'}"


@pytest.fixture
def server_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == loadkit.GUNICORN:
        require(loadkit.gunicorn_available(), "gunicorn is not installed")
    return kind


@pytest.fixture
def server(
    server_kind: str, database_url: str, dataset: Dataset, tmp_path: Path
) -> Iterator[loadkit.ServerProcess]:
    with loadkit.running_server(
        server_kind, database_url, tmp_path / "server", cache_ttl=CACHE_TTL
    ) as running:
        yield running


@pytest.fixture
def dataset(database_url: str) -> Dataset:
    return loadkit.prepare_dataset(database_url)


def sweep_cases(
    dataset: Dataset, also_valid: Sequence[KeyInfo] = ()
) -> list[loadkit.Case]:
    """Each case of the mix once (at most 40 of a kind, every garbage header),
    each valid key once more (likely reaching both gunicorn workers), and the
    keys *also_valid* twice."""
    cases = [case for group, _ in loadkit.mixed_traffic(dataset) for case in group[:40]]
    cases += loadkit.valid_cases(dataset)
    cases += loadkit.valid_cases(dataset, also_valid) * 2
    return cases


def assert_right(
    report: Report, server: loadkit.ServerProcess, dataset: Dataset
) -> None:
    details = f"{report.summary()}\nserver log:\n{server.log_tail(30)}"
    if report.problems:
        pytest.fail(details, pytrace=False)
    assert server.alive(), details
    if server.kind == loadkit.GUNICORN:
        # Two boots, no more: no worker died and was replaced.
        assert len(server.booted_workers()) == 2, details
    assert loadkit.keys_in(server.log(), dataset) == [], "a key in the server log"


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
@pytest.mark.parametrize("server_kind", SERVERS, indirect=True)
def test_mixed_traffic_gets_exactly_the_right_answers(
    server: loadkit.ServerProcess, dataset: Dataset
) -> None:
    checker = Checker(dataset, cache_ttl=CACHE_TTL)
    client = LoadClient(
        server.port,
        loadkit.mixed_traffic(dataset),
        threads=CLIENT_THREADS,
        duration=LOAD_SECONDS,
    )
    results = client.run()
    results += loadkit.send_each(server.port, sweep_cases(dataset))
    report = checker.check(results)

    assert_right(report, server, dataset)
    assert report.kinds() == ALL_KINDS, report.summary()
    assert report.total >= 200, report.summary()
    # Every project was served, each to its own keys only (checked above).
    served = {
        result.case.project_id
        for result in results
        if result.case.kind == "valid" and result.status == 200
    }
    assert served == set(dataset.projects)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("server_kind", SERVERS, indirect=True)
def test_postgresql_restart_under_load_loses_nothing(
    server: loadkit.ServerProcess,
    dataset: Dataset,
    database_url: str,
    postgres_server: Any,
) -> None:
    """PostgreSQL stops for two seconds while clients run, then comes back.

    Meanwhile: the 503, or a 200 from a worker's cache, or a 401 for what
    never needs the store. Afterwards, with the same server processes: no
    503 any more, every key made before the outage works, and every key
    revoked before it stays refused.
    """
    admin = KeyAdmin(database_url)
    checker = Checker(dataset, cache_ttl=CACHE_TTL)
    client = LoadClient(
        server.port,
        loadkit.mixed_traffic(dataset),
        threads=CLIENT_THREADS,
        duration=30.0,
    ).start()
    try:
        time.sleep(1.0)
        # Keys revoked while the servers have them cached, and keys made
        # and never used before the outage.
        for info in dataset.valid[-2:]:
            before = time.monotonic()
            admin.revoke(info)
            checker.revocations[info.key_id] = (before, time.monotonic())
        project_id = next(iter(dataset.projects))
        fresh = [
            admin.create(project_id, f"made before the outage {n}") for n in (1, 2)
        ]
        time.sleep(1.0)

        down = time.monotonic()
        postgres_server.stop()
        try:
            time.sleep(2.0)
        finally:
            postgres_server.start()
        up = time.monotonic()
        checker.faults.append((down, up))
        # Long enough for the revocations to show everywhere.
        time.sleep(CACHE_TTL + checker.slack + 1.0)
    finally:
        client.stop()
        results = client.wait()
        admin.close()
        if not postgres_server.is_running():
            postgres_server.start()

    report = checker.check(results)
    recovered = [r for r in results if r.started > up + checker.fault_grace]
    # Now the keys revoked during the run are refused like the others.
    settled = dataclasses.replace(
        dataset,
        valid=dataset.valid[:-2],
        revoked=[*dataset.revoked, *dataset.valid[-2:]],
    )
    sweep = loadkit.send_each(server.port, sweep_cases(settled, fresh))
    report.merge(Checker(settled, cache_ttl=CACHE_TTL).check(sweep))

    assert_right(report, server, dataset)
    assert report.count(503) > 0, "the outage went unnoticed:\n" + report.summary()
    assert len(recovered) >= 50, report.summary()
    assert not [r for r in recovered if r.status >= 500], report.summary()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    "server_kind", [pytest.param(loadkit.GUNICORN, id="gunicorn")], indirect=True
)
def test_postgresql_restart_between_requests_goes_unnoticed(
    server: loadkit.ServerProcess, dataset: Dataset, postgres_server: Any
) -> None:
    """A restart no request saw: afterwards, every request is answered right.

    The servers' pooled connections all died with the old server; none may
    surface as an error once PostgreSQL is back.
    """
    checker = Checker(dataset, cache_ttl=CACHE_TTL)
    cases = sweep_cases(dataset)
    report = checker.check(loadkit.send_each(server.port, cases))
    postgres_server.restart()
    report.merge(checker.check(loadkit.send_each(server.port, cases)))
    assert_right(report, server, dataset)
