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

__all__ = ["in_ci", "postgres_server", "postgres_url", "require"]


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
