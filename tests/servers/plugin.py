"""The pytest plugin of the throwaway servers: one session fixture per kind.

Registered by ``tests/conftest.py`` (``pytest_plugins``). A test that needs a
server asks for its fixture; when the server's binaries are missing the test
skips with the reason, except under ``CI=true``, where it fails: CI must run
every test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._process import in_ci
from .postgres import PostgresServer, find_pg_bin
from .redis import RedisServer, find_redis_bin

__all__ = [
    "in_ci",
    "postgres_server",
    "postgres_url",
    "redis_server",
    "redis_url",
    "require",
    "require_redis",
]


def require(available: bool, reason: str) -> None:
    """Skip the test when *available* is false, or fail it under ``CI=true``."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires the tests that need it to run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole test session.

    Tests may stop and restart it; the next test that asks for
    :func:`postgres_url` gets it running again.
    """
    require(
        find_pg_bin() is not None,
        "no PostgreSQL server binary (initdb, pg_ctl) found",
    )
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of the session's PostgreSQL server, started if a test stopped it."""
    if not postgres_server.is_running():
        postgres_server.start()
    return postgres_server.url


def require_redis() -> None:
    """Skip the test when ``redis-server`` is missing, or fail it under ``CI=true``."""
    require(find_redis_bin() is not None, "no Redis server binary (redis-server) found")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis server for the whole test session.

    Tests may kill, freeze and restart it; the next test that asks for
    :func:`redis_url` gets it running, thawed and empty again.
    """
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The ``redis://`` URL of the session's Redis server, running, thawed
    and emptied (``FLUSHALL``) for this test."""
    redis_server.thaw()
    if not redis_server.is_running():
        redis_server.start()
    redis_server.flushall()
    return redis_server.url
