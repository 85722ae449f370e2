"""A table made by vemetric-auth 0.1, opened by this release (SPEC section 11).

The table is made by the exact DDL of 0.1, frozen below, and filled with rows
as 0.1 wrote them: argon2 hashes of real keys, active and revoked. This
release must add its new columns by itself on first use, safely when several
processes start at once, and lose nothing: every key authenticates as
before, every revocation stays, no row is touched.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, profiles
from conftest import run_threads

from vemetric_auth import ApiKey, InvalidApiKey, KeyManager, SQLKeyStore, generate_key
from vemetric_auth.keys import display_prefix
from vemetric_auth.stores.sql import create_table_sql, upgrade_table_sql
from vemetric_auth.testing import make_record

WORKER = str(Path(__file__).with_name("sql_upgrade_worker.py"))
POSTGRES = pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)
BACKENDS = [pytest.param("sqlite", id="sqlite"), POSTGRES]

#: ``create_table_sql(dialect)`` of vemetric-auth 0.1, verbatim: the table an
#: existing installation has. Never regenerate this from the current code.
DDL_0_1 = {
    "postgresql": """\
CREATE TABLE vemetric_api_keys (
    id VARCHAR(255) NOT NULL,
    project_id VARCHAR(255) NOT NULL,
    name VARCHAR(100) NOT NULL,
    prefix VARCHAR(15) NOT NULL,
    hash TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    created_by VARCHAR(255),
    revoked_at TIMESTAMP WITH TIME ZONE,
    revoked_by VARCHAR(255),
    CONSTRAINT vemetric_api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT vemetric_api_keys_prefix_key UNIQUE (prefix)
);

CREATE INDEX vemetric_api_keys_project_created_idx ON vemetric_api_keys (project_id, created_at);
""",
    "sqlite": """\
CREATE TABLE vemetric_api_keys (
    id VARCHAR(255) NOT NULL,
    project_id VARCHAR(255) NOT NULL,
    name VARCHAR(100) NOT NULL,
    prefix VARCHAR(15) NOT NULL,
    hash TEXT NOT NULL,
    created_at DATETIME NOT NULL,
    created_by VARCHAR(255),
    revoked_at DATETIME,
    revoked_by VARCHAR(255),
    CONSTRAINT vemetric_api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT vemetric_api_keys_prefix_key UNIQUE (prefix)
);

CREATE INDEX vemetric_api_keys_project_created_idx ON vemetric_api_keys (project_id, created_at);
""",
}
COLUMNS_0_1 = [
    "id",
    "project_id",
    "name",
    "prefix",
    "hash",
    "created_at",
    "created_by",
    "revoked_at",
    "revoked_by",
]
NEW_COLUMNS = ["expires_at", "last_used_at"]
# How 0.1 stored a datetime in SQLite (SQLAlchemy's DATETIME text, in UTC).
SQLITE_DATETIME_0_1 = "%Y-%m-%d %H:%M:%S.%f"


@dataclasses.dataclass(frozen=True)
class OldKey:
    key: str = dataclasses.field(repr=False)
    record: ApiKey


@dataclasses.dataclass(frozen=True)
class OldTable:
    url: str
    name: str
    dialect: str
    keys: list[OldKey]

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url)


def _ddl_0_1(dialect: str, table_name: str) -> list[str]:
    ddl = DDL_0_1[dialect].replace("vemetric_api_keys", table_name)
    return [statement.strip() for statement in ddl.split(";") if statement.strip()]


def _old_keys() -> list[OldKey]:
    """Keys as 0.1 made them: active and revoked, in three projects."""
    base = datetime(2025, 6, 1, 8, 30, 15, 123456, tzinfo=timezone.utc)
    keys = []
    for n in range(12):
        key = generate_key()
        revoked = n % 3 == 2
        keys.append(
            OldKey(
                key,
                ApiKey(
                    id=uuid.uuid4().hex,
                    project_id=f"proj_{n % 3}",
                    name=f"old key {n}",
                    prefix=display_prefix(key),
                    created_at=base + timedelta(days=n, microseconds=n),
                    created_by="alice" if n % 2 else None,
                    revoked_at=base + timedelta(days=n + 1) if revoked else None,
                    revoked_by="bob" if revoked and n % 2 else None,
                ),
            )
        )
    return keys


def _stored(dialect: str, moment: datetime | None) -> Any:
    if moment is None or dialect != "sqlite":
        return moment
    return moment.astimezone(timezone.utc).strftime(SQLITE_DATETIME_0_1)


def make_old_table(url: str, table_name: str) -> OldTable:
    """Create a table with the DDL of 0.1 and fill it as 0.1 did."""
    engine = sa.create_engine(url)
    dialect = engine.dialect.name
    keys = _old_keys()
    hasher = PasswordHasher.from_parameters(profiles.CHEAPEST)
    columns = ", ".join(COLUMNS_0_1)
    marks = ", ".join(f":{name}" for name in COLUMNS_0_1)
    try:
        with engine.begin() as connection:
            for statement in _ddl_0_1(dialect, table_name):
                connection.exec_driver_sql(statement)
            for item in keys:
                r = item.record
                connection.execute(
                    sa.text(f"INSERT INTO {table_name} ({columns}) VALUES ({marks})"),
                    {
                        "id": r.id,
                        "project_id": r.project_id,
                        "name": r.name,
                        "prefix": r.prefix,
                        "hash": hasher.hash(item.key),
                        "created_at": _stored(dialect, r.created_at),
                        "created_by": r.created_by,
                        "revoked_at": _stored(dialect, r.revoked_at),
                        "revoked_by": r.revoked_by,
                    },
                )
    finally:
        engine.dispose()
    return OldTable(url, table_name, dialect, keys)


@pytest.fixture(params=BACKENDS)
def old_table(request: pytest.FixtureRequest, tmp_path: Path) -> OldTable:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    return make_old_table(url, "k_" + uuid.uuid4().hex[:12])


@pytest.fixture
def store_on(old_table: OldTable) -> Iterator[Any]:
    stores: list[SQLKeyStore] = []

    def make(**options: Any) -> SQLKeyStore:
        store = SQLKeyStore(old_table.url, table_name=old_table.name, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _columns(table: OldTable) -> list[dict[str, Any]]:
    engine = table.engine()
    try:
        return sa.inspect(engine).get_columns(table.name)
    finally:
        engine.dispose()


def _raw_rows(table: OldTable, *extra: str) -> list[tuple[Any, ...]]:
    """Every row as the driver gives it back, the columns of 0.1 (and *extra*)."""
    engine = table.engine()
    try:
        with engine.connect() as connection:
            columns = ", ".join([*COLUMNS_0_1, *extra])
            return [
                tuple(row)
                for row in connection.exec_driver_sql(
                    f"SELECT {columns} FROM {table.name} ORDER BY id"
                )
            ]
    finally:
        engine.dispose()


def _without_last_use(data: dict[str, Any]) -> dict[str, Any]:
    # The manager may record last use, and another process may already have.
    return {name: value for name, value in data.items() if name != "last_used_at"}


# -- the DDL of 0.1 and of this release -----------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_this_release_adds_two_nullable_columns_to_the_table_of_0_1(
    dialect: str,
) -> None:
    # The DDL of this release is that of 0.1 with the new columns after the
    # old ones: nothing else changed, so adding them is the whole upgrade.
    kind = "TIMESTAMP WITH TIME ZONE" if dialect == "postgresql" else "DATETIME"
    added = "".join(f"    {name} {kind},\n" for name in NEW_COLUMNS)
    expected = DDL_0_1[dialect].replace(
        "    revoked_by VARCHAR(255),\n", "    revoked_by VARCHAR(255),\n" + added
    )
    assert create_table_sql(dialect) == expected


def test_upgrade_table_sql_gives_the_alter_statements() -> None:
    assert upgrade_table_sql() == (
        "ALTER TABLE vemetric_api_keys ADD COLUMN expires_at "
        "TIMESTAMP WITH TIME ZONE;\n"
        "\n"
        "ALTER TABLE vemetric_api_keys ADD COLUMN last_used_at "
        "TIMESTAMP WITH TIME ZONE;\n"
    )
    assert upgrade_table_sql("sqlite", "api_keys") == (
        "ALTER TABLE api_keys ADD COLUMN expires_at DATETIME;\n"
        "\n"
        "ALTER TABLE api_keys ADD COLUMN last_used_at DATETIME;\n"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(("no-such-database",), "dialect", id="dialect"),
        pytest.param(("sqlite", "keys; DROP TABLE x"), "identifier", id="table"),
    ],
)
def test_upgrade_table_sql_refuses_bad_arguments(
    arguments: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        upgrade_table_sql(*arguments)


# -- upgrading on first use -----------------------------------------------------


@pytest.mark.slow
def test_four_processes_open_the_old_table_at_once(old_table: OldTable) -> None:
    before = _raw_rows(old_table)
    keys = [item.key for item in old_table.keys]
    start_at = time.time() + 3.0
    workers = [
        subprocess.Popen(
            [sys.executable, WORKER, old_table.url, old_table.name, str(start_at)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [worker.communicate(json.dumps(keys), timeout=120) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert stderr == ""
        results = json.loads(stdout)
        for item, result in zip(old_table.keys, results, strict=True):
            if item.record.revoked:
                assert result is None, "a revoked key authenticated"
            else:
                assert result is not None, "a key of 0.1 was refused"
                assert _without_last_use(result) == _without_last_use(
                    item.record.to_dict()
                )

    # Every row of 0.1 as it was, the columns present once each.
    assert _raw_rows(old_table) == before
    assert [column["name"] for column in _columns(old_table)] == [
        *COLUMNS_0_1,
        *NEW_COLUMNS,
    ]
    with SQLKeyStore(old_table.url, table_name=old_table.name) as store:
        for item in old_table.keys:
            got = store.get(item.record.id)
            assert got is not None
            assert dataclasses.replace(got, last_used_at=None) == item.record


def test_the_upgrade_touches_no_row(old_table: OldTable, store_on: Any) -> None:
    postgres = old_table.dialect == "postgresql"
    extra = ("xmin::text", "ctid::text") if postgres else ("rowid",)
    before = _raw_rows(old_table, *extra)
    store_on().create_table()
    # On PostgreSQL, a row version (xmin) and its place (ctid) change with
    # any write to the row; on SQLite the row's contents are compared.
    assert _raw_rows(old_table, *extra) == before
    assert _raw_rows(old_table, *NEW_COLUMNS) == [
        (*row[: len(COLUMNS_0_1)], None, None) for row in before
    ]


def test_the_old_table_works_fully_after_the_upgrade(
    old_table: OldTable, store_on: Any
) -> None:
    store = store_on()
    keys = KeyManager(store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST))
    active = [item for item in old_table.keys if not item.record.revoked]
    revoked = [item for item in old_table.keys if item.record.revoked]
    for item in active:
        assert keys.authenticate(item.key) == item.record
    for item in revoked:
        with pytest.raises(InvalidApiKey):
            keys.authenticate(item.key)
    assert keys.list("proj_0") == sorted(
        (i.record for i in active if i.record.project_id == "proj_0"),
        key=lambda record: record.created_at,
        reverse=True,
    )
    # The new columns take values, and old and new keys live side by side.
    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    store.record_use({active[0].record.id: when})
    assert store.set_expiry(active[1].record.id, when) is not None
    assert store.get(active[0].record.id) == dataclasses.replace(
        active[0].record, last_used_at=when
    )
    assert store.get(active[1].record.id) == dataclasses.replace(
        active[1].record, expires_at=when
    )
    new = make_record("proj_0", expires_at=when)
    store.add(new, "hash")
    assert store.get(new.id) == new


def test_threads_upgrading_at_once(old_table: OldTable, store_on: Any) -> None:
    stores = [store_on() for _ in range(8)]
    assert run_threads(lambda n: stores[n].create_table(), len(stores)) == []
    assert [column["name"] for column in _columns(old_table)] == [
        *COLUMNS_0_1,
        *NEW_COLUMNS,
    ]


def test_upgraders_not_taking_turns_find_the_columns_added_meanwhile(
    old_table: OldTable, store_on: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On databases other than SQLite and PostgreSQL, upgraders race: those
    # whose ALTER fails carry on once they see the columns there.
    stores = [store_on() for _ in range(6)]
    for store in stores:
        monkeypatch.setattr(store, "_dialect_name", "another-database")
    assert run_threads(lambda n: stores[n].create_table(), len(stores)) == []
    assert [column["name"] for column in _columns(old_table)] == [
        *COLUMNS_0_1,
        *NEW_COLUMNS,
    ]
    item = old_table.keys[0]
    assert stores[-1].get(item.record.id) == item.record


def test_the_statements_for_operators_make_the_table_of_this_release(
    old_table: OldTable, store_on: Any
) -> None:
    engine = old_table.engine()
    try:
        with engine.begin() as connection:
            script = upgrade_table_sql(old_table.dialect, old_table.name)
            for statement in script.split(";"):
                if statement.strip():
                    connection.exec_driver_sql(statement)
        fresh = "k_" + uuid.uuid4().hex[:12]
        with engine.begin() as connection:
            for statement in create_table_sql(old_table.dialect, fresh).split(";"):
                if statement.strip():
                    connection.exec_driver_sql(statement)
        inspector = sa.inspect(engine)

        def shape(table_name: str) -> list[tuple[str, str, bool]]:
            return [
                (column["name"], str(column["type"]), column["nullable"])
                for column in inspector.get_columns(table_name)
            ]

        assert shape(old_table.name) == shape(fresh)
    finally:
        engine.dispose()

    # A store then finds nothing to add.
    store = store_on()
    seen: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    store.create_table()
    assert not [s for s in seen if "ALTER" in s.upper()]
    item = old_table.keys[0]
    assert store.get(item.record.id) == item.record


@pytest.mark.parametrize("turns", [True, False], ids=["sqlite", "without-turns"])
def test_an_upgrade_the_database_refuses_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, turns: bool
) -> None:
    path = tmp_path / "keys.db"
    table = make_old_table(f"sqlite:///{path}", "old_keys")
    before = _raw_rows(table)
    # A database the store may read but not change: the ALTER fails, and
    # the store fails rather than run on a table it can not use.
    store = SQLKeyStore(
        f"sqlite:///file:{path}?mode=ro&uri=true", table_name="old_keys"
    )
    if not turns:
        monkeypatch.setattr(store, "_dialect_name", "another-database")
    try:
        with pytest.raises(sa.exc.OperationalError, match="readonly"):
            store.create_table()
        with pytest.raises(sa.exc.OperationalError):
            store.get(table.keys[0].record.id)
    finally:
        store.close()
    assert _raw_rows(table) == before
    assert [column["name"] for column in _columns(table)] == COLUMNS_0_1
