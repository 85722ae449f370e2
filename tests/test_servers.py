"""The throwaway servers' pytest plugin (tests/servers/plugin.py)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
import sqlalchemy as sa
from servers.postgres import PostgresServer


@pytest.mark.parametrize(
    ("ci", "outcome", "reason"),
    [
        pytest.param(
            "true", {"errors": 1}, "CI=true requires the tests", id="ci-fails"
        ),
        pytest.param("", {"skipped": 1}, "no PostgreSQL server binary", id="skips"),
    ],
)
def test_a_missing_postgresql_skips_the_test_but_fails_it_in_ci(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ci: str,
    outcome: dict[str, int],
    reason: str,
) -> None:
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    monkeypatch.setenv("VEMETRIC_AUTH_PG_BIN", str(empty))
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile("def test_needs_postgres(postgres_url):\n    pass\n")
    result = pytester.runpytest("-rs", "-p", "servers.plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)
    assert reason in result.stdout.str()


@pytest.mark.postgres
def test_the_session_server_answers_and_runs_as_postgres_when_we_are_root(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """CI runs as root, which PostgreSQL refuses: the cluster then belongs to,
    and runs as, the ``postgres`` system user."""
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
    owner = os.stat(postgres_server.data_dir).st_uid
    if os.geteuid() == 0:
        assert owner == pwd.getpwnam("postgres").pw_uid
    else:
        assert owner == os.geteuid()
