"""SQLKeyStore on SQLite and PostgreSQL: the contract, concurrency and faults."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import CountingHasher, run_threads
from werkzeug.test import Client

import vemetric_auth.manager
from vemetric_auth import (
    ApiKeyMiddleware,
    ChangeFeedKeyStore,
    DuplicatePrefix,
    InvalidApiKey,
    KeyManager,
    KeyStore,
    RollingKeyStore,
    SQLKeyStore,
    StoreUnavailable,
    UsageRecordingKeyStore,
    generate_key,
)
from vemetric_auth.stores.sql import DEFAULT_TABLE_NAME, create_table_sql
from vemetric_auth.testing import KeyStoreContract, make_record

WORKERS = str(Path(__file__).with_name("sql_workers.py"))
POSTGRES = pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)
BACKENDS = [pytest.param("sqlite", id="sqlite"), POSTGRES]

MakeStore = Callable[..., SQLKeyStore]


@pytest.fixture
def table_name() -> str:
    # Each test gets a table of its own on the session's PostgreSQL database.
    return "k_" + uuid.uuid4().hex[:12]


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    if backend == "sqlite-memory":
        return "sqlite://"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, request, tmp_path)


@pytest.fixture
def postgres_only_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def make_store(database_url: str, table_name: str) -> Iterator[MakeStore]:
    """Build stores on this test's database and table; closed at teardown."""
    stores: list[SQLKeyStore] = []

    def make(url_or_engine: Any = None, **options: Any) -> SQLKeyStore:
        options.setdefault("table_name", table_name)
        store = SQLKeyStore(
            database_url if url_or_engine is None else url_or_engine, **options
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def sql_store(make_store: MakeStore) -> SQLKeyStore:
    return make_store()


@pytest.fixture
def engine_for(database_url: str) -> Iterator[Callable[..., sa.Engine]]:
    """Plain SQLAlchemy engines on this test's database, disposed at teardown."""
    engines: list[sa.Engine] = []

    def make(**options: Any) -> sa.Engine:
        engine = sa.create_engine(database_url, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


class TestSQLKeyStoreContract(KeyStoreContract):
    @pytest.fixture(
        params=[
            pytest.param("sqlite", id="sqlite"),
            pytest.param("sqlite-memory", id="sqlite-memory"),
            POSTGRES,
        ]
    )
    def store(
        self, request: pytest.FixtureRequest, tmp_path: Path, table_name: str
    ) -> Iterator[KeyStore]:
        store = SQLKeyStore(
            _url(request.param, request, tmp_path), table_name=table_name
        )
        yield store
        store.close()


def _cheap_manager(store: KeyStore, **options: Any) -> KeyManager:
    return KeyManager(store, hasher=CountingHasher(), **options)


def _pooled(engine: sa.Engine) -> int:
    """How many connections wait in the engine's pool."""
    pool = engine.pool
    assert isinstance(pool, sa.pool.QueuePool)
    return pool.checkedin()


def _ok_app(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["vemetric_auth.project_id"].encode()]


def _get(app: ApiKeyMiddleware, key: str) -> Any:
    return Client(app).get("/", headers={"Authorization": f"Bearer {key}"})


# -- schema and records ------------------------------------------------------


def test_datetimes_round_trip_as_utc_with_microseconds(sql_store: SQLKeyStore) -> None:
    created = datetime(
        2026, 3, 1, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )
    revoked = datetime(
        2026, 3, 2, 1, 2, 3, 999999, tzinfo=timezone(timedelta(hours=-7))
    )
    record = dataclasses.replace(make_record(), created_at=created)
    sql_store.add(record, "hash")
    sql_store.revoke(record.id, revoked_at=revoked, revoked_by="bob")
    got = sql_store.get(record.id)
    assert got is not None
    assert got.created_at == created
    assert got.created_at.tzinfo is timezone.utc
    assert got.created_at.microsecond == 123456
    assert got.revoked_at == revoked
    assert got.revoked_at is not None
    assert got.revoked_at.tzinfo is timezone.utc
    assert got.revoked_at.microsecond == 999999


@pytest.mark.postgres
def test_postgresql_session_time_zone_does_not_show(
    postgres_url: str, table_name: str
) -> None:
    engine = sa.create_engine(
        postgres_url, connect_args={"options": "-c timezone=Asia/Tokyo"}
    )
    try:
        store = SQLKeyStore(engine, table_name=table_name)
        record = make_record()
        store.add(record, "hash")
        got = store.get(record.id)
        assert got == record
        assert got is not None
        assert got.created_at.tzinfo is timezone.utc
    finally:
        engine.dispose()


def test_naive_datetimes_are_refused(sql_store: SQLKeyStore) -> None:
    record = dataclasses.replace(make_record(), created_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        sql_store.add(record, "hash")
    assert sql_store.get(record.id) is None


def test_a_naive_revocation_time_is_refused_and_stores_nothing(
    sql_store: SQLKeyStore,
) -> None:
    revoked = dataclasses.replace(make_record(), revoked_at=datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware") as raised:
        sql_store.add(revoked, "hash")
    assert not isinstance(raised.value, sa.exc.SQLAlchemyError)
    assert sql_store.get(revoked.id) is None

    record = make_record()
    sql_store.add(record, "hash")
    with pytest.raises(ValueError, match="timezone-aware") as raised:
        sql_store.revoke(record.id, revoked_at=datetime(2026, 1, 2), revoked_by="bob")
    assert not isinstance(raised.value, sa.exc.SQLAlchemyError)
    assert sql_store.get(record.id) == record


def test_prefix_is_unique_in_the_schema(
    sql_store: SQLKeyStore, engine_for: Callable[..., sa.Engine]
) -> None:
    record = make_record()
    sql_store.add(record, "hash")
    row = {
        "id": uuid.uuid4().hex,
        "project_id": "proj_2",
        "name": "clash",
        "prefix": record.prefix,
        "hash": "hash",
        "created_at": record.created_at,
    }
    with pytest.raises(sa.exc.IntegrityError), engine_for().begin() as connection:
        connection.execute(sql_store.table.insert(), row)
    inspector = sa.inspect(sql_store.engine)
    unique = inspector.get_unique_constraints(sql_store.table.name)
    assert [constraint["column_names"] for constraint in unique] == [["prefix"]]
    indexes = inspector.get_indexes(sql_store.table.name)
    assert ["project_id", "created_at"] in [index["column_names"] for index in indexes]


def test_an_id_clash_is_not_a_duplicate_prefix(sql_store: SQLKeyStore) -> None:
    record = make_record()
    sql_store.add(record, "hash")
    clash = dataclasses.replace(make_record(), id=record.id)
    with pytest.raises(ValueError, match="id") as raised:
        sql_store.add(clash, "hash")
    assert not isinstance(raised.value, DuplicatePrefix)
    assert sql_store.find_by_prefix(clash.prefix) is None


def test_fields_at_their_maximum_lengths_are_held(sql_store: SQLKeyStore) -> None:
    record = dataclasses.replace(
        make_record("p" * 255, name="n" * 100, created_by="c" * 255),
        id="i" * 255,
    )
    sql_store.add(record, "$argon2id$" + "h" * 500)
    revoked = sql_store.revoke(
        record.id, revoked_at=record.created_at, revoked_by="r" * 255
    )
    assert sql_store.get(record.id) == revoked
    assert sql_store.list("p" * 255, include_revoked=True) == [revoked]


def test_creating_the_schema_is_idempotent(make_store: MakeStore) -> None:
    first = make_store()
    first.create_table()
    first.create_table()
    second = make_store()
    second.create_table()
    record = make_record()
    first.add(record, "hash")
    assert second.get(record.id) == record
    indexes = sa.inspect(second.engine).get_indexes(second.table.name)
    assert [index["column_names"] for index in indexes if not index["unique"]] == [
        ["project_id", "created_at"]
    ]
    assert second.change_log.name == f"{second.table.name}_changes"
    assert sa.inspect(second.engine).has_table(second.change_log.name)


def test_threads_creating_the_schema_at_once(make_store: MakeStore) -> None:
    stores = [make_store() for _ in range(8)]
    errors = run_threads(lambda n: stores[n].create_table(), len(stores))
    assert errors == []
    record = make_record()
    stores[0].add(record, "hash")
    assert all(store.get(record.id) == record for store in stores)


def test_creators_not_taking_turns_find_the_table_made_meanwhile(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What happens on databases other than SQLite and PostgreSQL: concurrent
    # creators race, and those that lose carry on with the winner's table.
    stores = [make_store() for _ in range(6)]
    for store in stores:
        monkeypatch.setattr(store, "_dialect_name", "another-database")
    errors = run_threads(lambda n: stores[n].create_table(), len(stores))
    assert errors == []
    record = make_record()
    stores[0].add(record, "hash")
    assert all(store.get(record.id) == record for store in stores)


def test_a_long_table_name_gets_short_enough_index_names(
    make_store: MakeStore,
) -> None:
    store = make_store(table_name="t" * 63)
    record = make_record()
    store.add(record, "hash")
    assert store.find_by_prefix(record.prefix) == (record, "hash")
    # The change log too, and so the PostgreSQL channel named after it.
    assert len(store.change_log.name) <= 63
    cursor = store.changes_since(None).cursor
    store.revoke(record.id, revoked_at=record.created_at, revoked_by=None)
    assert store.changes_since(cursor).key_ids == (record.id,)


def test_errors_do_not_show_the_hash(
    sql_store: SQLKeyStore, engine_for: Callable[..., sa.Engine]
) -> None:
    sql_store.create_table()
    with engine_for().begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {sql_store.table.name}"))
    with pytest.raises(sa.exc.DBAPIError) as raised:
        sql_store.add(make_record(), "$argon2id$v=19$SECRET-HASH")
    assert "SECRET-HASH" not in str(raised.value)
    assert "SECRET-HASH" not in repr(raised.value)


# -- construction ------------------------------------------------------------


def test_repr_shows_no_password() -> None:
    store = SQLKeyStore(
        "postgresql+psycopg://app:s3cr3t@db.internal:5432/keys?password=hunter2"
    )
    assert repr(store) == (
        "<SQLKeyStore postgresql+psycopg://app:***@db.internal:5432/keys"
        " table='vemetric_api_keys'>"
    )
    assert "s3cr3t" not in repr(store)
    assert "hunter2" not in repr(store)


def test_building_a_store_does_not_connect() -> None:
    # The table is made on first use: an application starts while its
    # database is down, and answers 503 until it is back.
    SQLKeyStore("postgresql+psycopg://app@127.0.0.1:1/keys").close()


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        pytest.param({"table_name": ""}, ValueError, id="empty-table"),
        pytest.param({"table_name": "keys; DROP"}, ValueError, id="sql-in-table"),
        pytest.param({"table_name": "t" * 64}, ValueError, id="long-table"),
        pytest.param({"table_name": 3}, TypeError, id="table-not-str"),
        pytest.param({"connect_timeout": 0}, ValueError, id="zero-connect"),
        pytest.param(
            {"statement_timeout": float("inf")}, ValueError, id="infinite-statement"
        ),
        pytest.param({"statement_timeout": "5"}, TypeError, id="str-timeout"),
        pytest.param({"connect_timeout": True}, TypeError, id="bool-timeout"),
        pytest.param({"create_database": "no"}, TypeError, id="str-create-database"),
    ],
)
def test_bad_arguments_are_refused(arguments: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        SQLKeyStore("sqlite://", **arguments)


def test_a_url_or_engine_is_required() -> None:
    with pytest.raises(TypeError, match="URL or a SQLAlchemy Engine"):
        SQLKeyStore(Path("keys.db"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"statement_timeout": 1.0}, id="timeout"),
        pytest.param({"create_database": False}, id="create-database"),
    ],
)
def test_url_options_with_an_engine_are_refused(options: dict[str, Any]) -> None:
    engine = sa.create_engine("sqlite://")
    try:
        with pytest.raises(TypeError, match="configure your Engine"):
            SQLKeyStore(engine, **options)
    finally:
        engine.dispose()


def test_an_engine_passed_in_is_used_and_left_open(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        with SQLKeyStore(engine, table_name="keys") as store:
            assert store.engine is engine
            store.add(make_record(), "hash")
        assert _pooled(engine) == 1  # close() left the pool alone
    finally:
        engine.dispose()


def test_built_engines_hide_parameters(sql_store: SQLKeyStore) -> None:
    assert sql_store.engine.hide_parameters


def test_closing_releases_connections_and_the_store_reconnects(
    sql_store: SQLKeyStore,
) -> None:
    record = make_record()
    sql_store.add(record, "hash")
    assert _pooled(sql_store.engine) >= 1
    sql_store.close()
    assert _pooled(sql_store.engine) == 0
    assert sql_store.get(record.id) == record


def test_sqlite_files_use_wal(tmp_path: Path) -> None:
    with SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}") as store:
        store.create_table()
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_closing_an_in_memory_database_starts_it_afresh() -> None:
    with SQLKeyStore("sqlite://") as store:
        store.add(make_record(), "hash")
        store.close()
        assert store.list("proj_1") == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_use_the_parents_connections(tmp_path: Path) -> None:
    with SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}") as store:
        record = make_record()
        store.add(record, "hash")
        assert _pooled(store.engine) == 1
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process that has threads.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            try:
                fresh_pool = _pooled(store.engine) == 0
                works = store.get(record.id) == record
                os._exit(0 if fresh_pool and works else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get(record.id) == record


def _in_a_forked_child(work: Callable[[], bool], timeout: float = 30.0) -> int | None:
    """Run *work* in a forked child: its exit code, 0 if it returned True.

    ``None`` if the child hung; it is killed then.
    """
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            os._exit(0 if work() else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize(
    ("backend", "lock"),
    [
        pytest.param("sqlite", "_table_lock", id="sqlite-table-lock"),
        pytest.param(
            "postgresql",
            "_table_lock",
            id="postgresql-table-lock",
            marks=pytest.mark.postgres,
        ),
        pytest.param("sqlite-memory", "_table_lock", id="sqlite-memory-table-lock"),
        pytest.param("sqlite-memory", "_turns", id="sqlite-memory-turns"),
    ],
)
def test_a_child_forked_while_a_thread_holds_a_store_lock_works(
    backend: str,
    lock: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    table_name: str,
) -> None:
    # A pre-forking server forks while another thread is inside the store:
    # the child has no such thread, and must not wait for it forever.
    with SQLKeyStore(_url(backend, request, tmp_path), table_name=table_name) as store:
        keys = _cheap_manager(store, cache_ttl=0)
        if lock == "_turns":
            keys.create("proj_1", "before the fork")  # the table is ready
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with getattr(store, lock):
                held.set()
                release.wait(60)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(10)

            def child() -> bool:
                issued = keys.create("proj_1", "in the child")
                return keys.authenticate(issued.key) == issued.record

            exit_code = _in_a_forked_child(child)
        finally:
            release.set()
            holder.join()
        assert exit_code == 0
        # The parent goes on too, once its thread let go.
        assert keys.create("proj_1", "in the parent").record.name == "in the parent"


# -- create_database=False ----------------------------------------------------


def test_a_missing_sqlite_file_is_not_created_without_create_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mistyped.db"
    with SQLKeyStore(f"sqlite:///{path}", create_database=False) as store:
        for use in (store.create_table, lambda: store.get("key_1")):
            with pytest.raises(FileNotFoundError) as raised:
                use()
            assert raised.value.filename == str(path)
            assert str(path) in str(raised.value)
            assert "create_database=False" in str(raised.value)
            assert not path.exists()
        # Through a manager, it is a store failure with this cause.
        with pytest.raises(StoreUnavailable) as failed:
            _cheap_manager(store).list("proj_1")
        assert isinstance(failed.value.__cause__, FileNotFoundError)
        assert not path.exists()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("keys.db", id="plain"),
        pytest.param("with space?mode=rwc#%41.db", id="uri-characters"),
    ],
)
def test_an_existing_sqlite_file_opens_without_create_database(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    sqlite3.connect(path).close()  # an empty database: the table is made
    url = sa.URL.create("sqlite", database=str(path))
    with SQLKeyStore(url, create_database=False) as store:
        keys = _cheap_manager(store)
        issued = keys.create("proj_1", "in an existing file")
        assert keys.authenticate(issued.key) == issued.record
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == [name]
    with SQLKeyStore(url) as store:
        assert store.get(issued.record.id) == issued.record


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("?uri=true", id="no-mode"),
        pytest.param("?cache=private&uri=true", id="other-parameter"),
    ],
)
def test_a_sqlite_uri_is_opened_read_write_without_create_database(
    tmp_path: Path, query: str
) -> None:
    path = tmp_path / "keys.db"
    url = f"sqlite:///file:{path}{query}"
    with SQLKeyStore(url, create_database=False) as store:
        with pytest.raises(sa.exc.OperationalError):
            store.create_table()
        assert not path.exists()
        sqlite3.connect(path).close()
        record = make_record()
        store.add(record, "hash")
        assert store.get(record.id) == record


def test_a_mode_in_a_sqlite_uri_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    url = f"sqlite:///file:{path}?mode=rwc&uri=true"
    with SQLKeyStore(url, create_database=False) as store:
        store.create_table()
    assert path.exists()


def test_a_sqlite_file_removed_later_is_not_made_again(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with SQLKeyStore(f"sqlite:///{path}") as store:
        store.create_table()
    with SQLKeyStore(f"sqlite:///{path}", create_database=False) as store:
        assert store.list("proj_1") == []
        store.close()
        path.unlink()
        with pytest.raises(FileNotFoundError):
            store.list("proj_1")
        assert not path.exists()


@pytest.mark.parametrize("backend", ["sqlite-memory", POSTGRES])
def test_create_database_false_leaves_other_databases_alone(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, table_name: str
) -> None:
    url = _url(backend, request, tmp_path)
    with SQLKeyStore(url, table_name=table_name, create_database=False) as store:
        record = make_record()
        store.add(record, "hash")
        assert store.get(record.id) == record


def test_in_memory_sqlite_is_shared_by_threads() -> None:
    with SQLKeyStore("sqlite://") as store:
        keys = _cheap_manager(store)
        errors = run_threads(lambda n: keys.create("proj_1", f"key {n}"), 8)
        assert errors == []
        assert len(store.list("proj_1")) == 8


def test_create_table_sql_documents_the_schema() -> None:
    ddl = create_table_sql("postgresql")
    assert ddl.startswith(f"CREATE TABLE {DEFAULT_TABLE_NAME} (")
    assert "created_at TIMESTAMP WITH TIME ZONE NOT NULL" in ddl
    assert f"CONSTRAINT {DEFAULT_TABLE_NAME}_prefix_key UNIQUE (prefix)" in ddl
    assert f"ON {DEFAULT_TABLE_NAME} (project_id, created_at);" in ddl
    assert "CREATE TABLE api_keys (" in create_table_sql("sqlite", "api_keys")
    assert ddl.endswith(
        f"CREATE TABLE {DEFAULT_TABLE_NAME}_changes (\n"
        "    id BIGINT GENERATED BY DEFAULT AS IDENTITY,\n"
        "    key_id VARCHAR(255),\n"
        "    changed_at TIMESTAMP WITH TIME ZONE NOT NULL,\n"
        f"    CONSTRAINT {DEFAULT_TABLE_NAME}_changes_pkey PRIMARY KEY (id)\n"
        ");\n"
    )
    with pytest.raises(ValueError, match="dialect"):
        create_table_sql("no-such-database")


@pytest.mark.postgres
def test_create_table_sql_is_what_the_store_creates(
    postgres_url: str, table_name: str
) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(create_table_sql("postgresql", table_name))
        with SQLKeyStore(engine, table_name=table_name) as store:
            record = make_record()
            store.add(record, "hash")
            assert store.find_by_prefix(record.prefix) == (record, "hash")
            store.revoke(record.id, revoked_at=record.created_at, revoked_by=None)
            assert store.changes_since(0).key_ids == (record.id,)
    finally:
        engine.dispose()


# -- concurrency -------------------------------------------------------------


def test_threads_create_and_authenticate_through_one_manager(
    sql_store: SQLKeyStore,
) -> None:
    keys = _cheap_manager(sql_store, cache_ttl=0)
    created: list[str] = []

    def work(n: int) -> None:
        for i in range(8):
            issued = keys.create("proj_1", f"key {n}-{i}")
            assert keys.authenticate(issued.key) == issued.record
            created.append(issued.record.id)

    assert run_threads(work, 10) == []
    stored = [record.id for record in sql_store.list("proj_1")]
    assert len(stored) == len(set(stored)) == 80
    assert set(stored) == set(created)


def test_racing_revokers_all_get_the_one_revocation(sql_store: SQLKeyStore) -> None:
    record = make_record()
    sql_store.add(record, "hash")
    results: list[Any] = [None] * 8
    base = datetime(2026, 2, 1, tzinfo=timezone.utc)

    def revoke(n: int) -> None:
        results[n] = sql_store.revoke(
            record.id, revoked_at=base + timedelta(seconds=n), revoked_by=f"admin {n}"
        )

    assert run_threads(revoke, len(results)) == []
    assert results[0] is not None
    assert results[0].revoked_at is not None
    assert results == [results[0]] * len(results)
    assert sql_store.get(record.id) == results[0]


@pytest.mark.slow
def test_processes_create_keys_on_an_empty_database(
    database_url: str, table_name: str, make_store: MakeStore
) -> None:
    start_at = time.time() + 2.0
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                WORKERS,
                "create",
                database_url,
                table_name,
                "proj_1",
                "10",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    created: list[str] = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        created.extend(json.loads(out))
    stored = [record.id for record in make_store().list("proj_1")]
    assert len(stored) == len(set(stored)) == 40
    assert set(stored) == set(created)


def test_a_prefix_collision_at_creation_draws_again(
    sql_store: SQLKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _cheap_manager(sql_store)
    first = keys.create("proj_1", "first")
    # Same display prefix as the stored key, another secret.
    colliding = first.key[:12] + generate_key()[12:]
    draws = iter([colliding])
    monkeypatch.setattr(
        vemetric_auth.manager,
        "generate_key",
        lambda: next(draws, None) or generate_key(),
    )
    second = keys.create("proj_1", "second")
    assert second.key != colliding
    assert second.record.prefix != first.record.prefix
    assert {record.id for record in sql_store.list("proj_1")} == {
        first.record.id,
        second.record.id,
    }
    assert keys.authenticate(first.key) == first.record
    assert keys.authenticate(second.key) == second.record


# -- key lifecycle: expiry, rolling, last use ---------------------------------


@pytest.fixture
def statements(sql_store: SQLKeyStore) -> Iterator[list[str]]:
    """The SQL statements the store sends from now on (after creating its table)."""
    sql_store.create_table()
    seen: list[str] = []

    def before(*args: Any) -> None:
        seen.append(args[2])  # conn, cursor, statement, parameters, ...

    sa.event.listen(sql_store.engine, "before_cursor_execute", before)
    yield seen
    sa.event.remove(sql_store.engine, "before_cursor_execute", before)


def _updates(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("UPDATE")]


def _fill(store: SQLKeyStore, count: int) -> list[str]:
    """Insert *count* records in one go; return their ids."""
    store.create_table()
    records = [make_record(minutes=n) for n in range(count)]
    rows = [
        {
            "id": record.id,
            "project_id": record.project_id,
            "name": record.name,
            "prefix": record.prefix,
            "hash": "hash",
            "created_at": record.created_at,
        }
        for record in records
    ]
    with store.engine.begin() as connection:
        connection.execute(store.table.insert(), rows)
    return [record.id for record in records]


def _stored_stamps(store: SQLKeyStore) -> dict[str, datetime | None]:
    t = store.table
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(t.c.id, t.c.last_used_at)).all()
    return {row.id: row.last_used_at for row in rows}


def test_record_use_of_10000_keys_is_one_statement(
    sql_store: SQLKeyStore, statements: list[str]
) -> None:
    ids = _fill(sql_store, 10_000)
    base = datetime(2026, 5, 1, tzinfo=timezone.utc)
    stamps = {key_id: base + timedelta(microseconds=n) for n, key_id in enumerate(ids)}
    statements.clear()
    sql_store.record_use(stamps)
    (update,) = _updates(statements)
    fast = "unnest" if sql_store.engine.dialect.name == "postgresql" else "VALUES"
    assert fast in update
    assert _stored_stamps(sql_store) == stamps


def test_record_use_writes_one_statement_per_chunk(
    sql_store: SQLKeyStore, statements: list[str]
) -> None:
    ids = _fill(sql_store, 50)
    sql_store._max_stamps_per_statement = 7
    base = datetime(2026, 5, 1, tzinfo=timezone.utc)
    stamps = {key_id: base + timedelta(seconds=n) for n, key_id in enumerate(ids)}
    statements.clear()
    sql_store.record_use(stamps)
    assert len(_updates(statements)) == 8  # ceil(50 / 7)
    assert _stored_stamps(sql_store) == stamps


def test_record_use_on_other_databases_goes_key_by_key(
    sql_store: SQLKeyStore, statements: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_store, "_dialect_name", "another-database")
    _check_key_by_key(sql_store, statements)


def test_record_use_on_sqlite_before_3_33_goes_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}") as store:
        store.create_table()
        # UPDATE ... FROM came in SQLite 3.33.
        monkeypatch.setattr(store.engine.dialect, "server_version_info", (3, 31, 1))
        seen: list[str] = []
        sa.event.listen(
            store.engine, "before_cursor_execute", lambda *a: seen.append(a[2])
        )
        _check_key_by_key(store, seen)


def _check_key_by_key(store: SQLKeyStore, statements: list[str]) -> None:
    ids = _fill(store, 30)
    base = datetime(2026, 5, 1, tzinfo=timezone.utc)
    store.record_use({ids[0]: base + timedelta(hours=1)})
    stamps = {key_id: base + timedelta(seconds=n) for n, key_id in enumerate(ids)}
    unknown = {uuid.uuid4().hex: base}
    statements.clear()
    store.record_use({**stamps, **unknown})
    updates = _updates(statements)
    assert updates
    assert all("unnest" not in s and "VALUES" not in s for s in updates)
    assert _stored_stamps(store) == {**stamps, ids[0]: base + timedelta(hours=1)}


def test_record_use_is_all_or_nothing(sql_store: SQLKeyStore) -> None:
    ids = _fill(sql_store, 20)
    sql_store._max_stamps_per_statement = 5
    base = datetime(2026, 5, 1, tzinfo=timezone.utc)
    stamps: dict[str, Any] = {key_id: base for key_id in ids}
    stamps[ids[-1]] = datetime(2026, 5, 1)  # naive: refused before any write
    with pytest.raises(ValueError, match="timezone-aware") as raised:
        sql_store.record_use(stamps)
    assert not isinstance(raised.value, sa.exc.SQLAlchemyError)
    assert set(_stored_stamps(sql_store).values()) == {None}

    calls = 0

    def fail_on_third_statement(*args: Any) -> None:
        nonlocal calls
        if "last_used_at" in args[2]:
            calls += 1
            if calls == 3:
                raise OSError("the database went away")

    sa.event.listen(sql_store.engine, "before_cursor_execute", fail_on_third_statement)
    try:
        with pytest.raises(OSError, match="went away"):
            sql_store.record_use(dict.fromkeys(ids, base))
    finally:
        sa.event.remove(
            sql_store.engine, "before_cursor_execute", fail_on_third_statement
        )
    assert set(_stored_stamps(sql_store).values()) == {None}


def test_a_roll_that_fails_half_way_changes_nothing(sql_store: SQLKeyStore) -> None:
    old = make_record()
    new = dataclasses.replace(make_record(minutes=1), expires_at=old.created_at)
    sql_store.add(old, "hash")
    sql_store.add(new, "hash")

    def fail_on_revoke(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().startswith("UPDATE") and "revoked_by" in statement:
            raise OSError("the database went away")

    sa.event.listen(sql_store.engine, "before_cursor_execute", fail_on_revoke)
    try:
        with pytest.raises(OSError, match="went away"):
            sql_store.roll(
                old.id,
                new.id,
                new_expires_at=None,
                old_expires_at=None,
                revoked_at=datetime(2026, 2, 1, tzinfo=timezone.utc),
                revoked_by="carol",
            )
    finally:
        sa.event.remove(sql_store.engine, "before_cursor_execute", fail_on_revoke)
    # The new key was activated first, then the revocation failed: both undone.
    assert sql_store.get(new.id) == new
    assert sql_store.get(old.id) == old


def test_a_roll_waits_for_a_revocation_in_progress_and_sees_it(
    sql_store: SQLKeyStore, engine_for: Callable[..., sa.Engine]
) -> None:
    old = make_record()
    new = dataclasses.replace(make_record(minutes=1), expires_at=old.created_at)
    sql_store.add(old, "hash")
    sql_store.add(new, "hash")
    t = sql_store.table
    outcome: list[object] = []

    def roll() -> None:
        try:
            outcome.append(
                sql_store.roll(
                    old.id,
                    new.id,
                    new_expires_at=None,
                    old_expires_at=datetime(2026, 3, 1, tzinfo=timezone.utc),
                    revoked_at=None,
                    revoked_by=None,
                )
            )
        except BaseException as exc:  # inspected below
            outcome.append(exc)

    with engine_for().begin() as connection:
        # Another process's revocation, not committed yet.
        connection.execute(
            t.update()
            .where(t.c.id == old.id)
            .values(revoked_at=datetime(2026, 2, 1, tzinfo=timezone.utc))
        )
        thread = threading.Thread(target=roll)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the roll did not wait for the revocation"
    thread.join(timeout=10)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ValueError), outcome
    assert sql_store.get(new.id) == new  # still inactive


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda s, a, b: s.set_expiry(a, datetime(2027, 1, 1)), id="expiry"
        ),
        pytest.param(
            lambda s, a, b: s.roll(
                a,
                b,
                new_expires_at=datetime(2027, 1, 1),
                old_expires_at=None,
                revoked_at=None,
                revoked_by=None,
            ),
            id="roll-new",
        ),
        pytest.param(
            lambda s, a, b: s.roll(
                a,
                b,
                new_expires_at=None,
                old_expires_at=datetime(2027, 1, 1),
                revoked_at=None,
                revoked_by=None,
            ),
            id="roll-old",
        ),
        pytest.param(
            lambda s, a, b: s.roll(
                a,
                b,
                new_expires_at=None,
                old_expires_at=None,
                revoked_at=datetime(2027, 1, 1),
                revoked_by="x",
            ),
            id="roll-revoked",
        ),
        pytest.param(lambda s, a, b: s.record_use({a: datetime(2027, 1, 1)}), id="use"),
    ],
)
def test_naive_datetimes_are_refused_by_the_lifecycle_methods(
    sql_store: SQLKeyStore, call: Callable[[SQLKeyStore, str, str], object]
) -> None:
    old = make_record()
    new = dataclasses.replace(make_record(minutes=1), expires_at=old.created_at)
    sql_store.add(old, "hash")
    sql_store.add(new, "hash")
    with pytest.raises(ValueError, match="timezone-aware") as raised:
        call(sql_store, old.id, new.id)
    assert not isinstance(raised.value, sa.exc.SQLAlchemyError)
    assert sql_store.get(old.id) == old
    assert sql_store.get(new.id) == new


def test_the_sql_store_has_every_capability(sql_store: SQLKeyStore) -> None:
    assert isinstance(sql_store, RollingKeyStore)
    assert isinstance(sql_store, UsageRecordingKeyStore)
    assert isinstance(sql_store, ChangeFeedKeyStore)


# -- revocation across managers and processes --------------------------------


def test_revocation_is_seen_by_another_manager_within_cache_ttl(
    make_store: MakeStore,
) -> None:
    here = _cheap_manager(make_store(), cache_ttl=0.2)
    there = _cheap_manager(make_store(), cache_ttl=0.2)
    issued = here.create("proj_1", "shared")
    assert there.authenticate(issued.key) == issued.record
    here.revoke(issued.record.id, revoked_by="alice")
    with pytest.raises(InvalidApiKey):
        here.authenticate(issued.key)
    time.sleep(0.25)
    with pytest.raises(InvalidApiKey):
        there.authenticate(issued.key)


@pytest.mark.slow
def test_revocation_in_another_process_is_seen_within_cache_ttl(
    database_url: str, table_name: str, make_store: MakeStore
) -> None:
    keys = _cheap_manager(make_store(), cache_ttl=0.2)
    issued = keys.create("proj_1", "shared")
    assert keys.authenticate(issued.key) == issued.record
    done = subprocess.run(
        [sys.executable, WORKERS, "revoke", database_url, table_name, issued.record.id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revoked_by"] == "worker"
    time.sleep(0.25)
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


# -- faults ------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_postgresql_down_is_503_and_recovers_by_itself(
    postgres_server: Any, postgres_url: str, table_name: str
) -> None:
    store = SQLKeyStore(postgres_url, table_name=table_name, connect_timeout=2)
    try:
        keys = _cheap_manager(store, cache_ttl=60)
        app = ApiKeyMiddleware(_ok_app, keys)
        cached = keys.create("proj_1", "used before the outage")
        assert keys.authenticate(cached.key) == cached.record
        fresh = keys.create("proj_1", "first used during the outage")

        postgres_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                keys.authenticate(fresh.key)
            response = _get(app, fresh.key)
            assert time.monotonic() - started < 10
            assert response.status_code == 503
            assert response.headers["Retry-After"]
            assert response.json == {
                "error": {
                    "code": "SERVICE_UNAVAILABLE",
                    "message": "Authentication is temporarily unavailable",
                }
            }
            # A key this process verified recently is still served.
            assert keys.authenticate(cached.key) == cached.record
            assert _get(app, cached.key).status_code == 200
        finally:
            postgres_server.start()

        # The same store and manager recover without being rebuilt.
        assert keys.authenticate(fresh.key) == fresh.record
        assert _get(app, fresh.key).status_code == 200
    finally:
        store.close()


@pytest.mark.postgres
def test_a_locked_table_is_503_within_the_statement_timeout(
    postgres_url: str, table_name: str
) -> None:
    store = SQLKeyStore(postgres_url, table_name=table_name, statement_timeout=0.5)
    locker = sa.create_engine(postgres_url)
    try:
        keys = _cheap_manager(store)
        app = ApiKeyMiddleware(_ok_app, keys)
        issued = keys.create("proj_1", "locked out")
        with locker.connect() as connection, connection.begin():
            connection.exec_driver_sql(
                f"LOCK TABLE {table_name} IN ACCESS EXCLUSIVE MODE"
            )
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                keys.authenticate(issued.key)
            assert 0.4 < time.monotonic() - started < 3
            started = time.monotonic()
            assert _get(app, issued.key).status_code == 503
            assert time.monotonic() - started < 3
        assert _get(app, issued.key).status_code == 200
    finally:
        locker.dispose()
        store.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_server_that_never_answers_is_503_within_the_connect_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts TCP connections, never says a word
        port = silent.getsockname()[1]
        url = f"postgresql+psycopg://app@127.0.0.1:{port}/keys"
        with SQLKeyStore(url, connect_timeout=1) as store:
            keys = _cheap_manager(store)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                keys.authenticate(generate_key())
            assert time.monotonic() - started < 5


def test_a_sqlite_write_lock_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    with SQLKeyStore(f"sqlite:///{path}", statement_timeout=0.3) as store:
        keys = _cheap_manager(store)
        issued = keys.create("proj_1", "before the lock")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                keys.create("proj_1", "during the lock")
            assert 0.25 < time.monotonic() - started < 3
            # WAL: readers are not held up by the writer.
            assert keys.authenticate(issued.key) == issued.record
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert keys.create("proj_1", "after the lock").record.name == "after the lock"
