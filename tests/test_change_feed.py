"""The change feed of the stores (SPEC section 7): the SQL change log written
with each change, read by primary key, pruned exactly; PostgreSQL's NOTIFY and
the listener that survives losing its connection; the in-memory feed.

The contract tests of the feed (``"changes"`` in vemetric_auth.testing) run
on every store in tests/test_stores.py and tests/test_sql_store.py; these
are the tests of how the shipped stores do it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import vemetric_auth.stores.memory
from vemetric_auth import (
    ChangeFeedKeyStore,
    ChangeListener,
    InMemoryKeyStore,
    KeyChanges,
    SQLKeyStore,
)
from vemetric_auth.testing import make_record

WORKERS = str(Path(__file__).with_name("sql_workers.py"))
POSTGRES = pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)
BACKENDS = [pytest.param("sqlite", id="sqlite"), POSTGRES]
NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)

MakeStore = Callable[..., SQLKeyStore]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
def table_name() -> str:
    return "k_" + uuid.uuid4().hex[:12]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def make_store(database_url: str, table_name: str) -> Iterator[MakeStore]:
    """Stores on this test's database and table, each with an engine of its
    own (as in separate processes); closed at teardown."""
    stores: list[SQLKeyStore] = []

    def make(url: str | None = None, **options: Any) -> SQLKeyStore:
        options.setdefault("table_name", table_name)
        store = SQLKeyStore(url or database_url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def sql_store(make_store: MakeStore) -> SQLKeyStore:
    return make_store()


@pytest.fixture
def pg_store(postgres_url: str, table_name: str) -> Iterator[SQLKeyStore]:
    with SQLKeyStore(postgres_url, table_name=table_name) as store:
        yield store


@pytest.fixture
def pg_other(postgres_url: str, table_name: str) -> Iterator[SQLKeyStore]:
    """Another store on the same table, as another process would have."""
    with SQLKeyStore(postgres_url, table_name=table_name) as store:
        yield store


@pytest.fixture
def listeners() -> Iterator[list[ChangeListener]]:
    """Listeners a test opened, closed at teardown."""
    opened: list[ChangeListener] = []
    yield opened
    for listener in opened:
        listener.close()


def _keys(store: SQLKeyStore | InMemoryKeyStore, count: int) -> list[str]:
    ids = []
    for n in range(count):
        record = make_record(minutes=n)
        store.add(record, "hash")
        ids.append(record.id)
    return ids


def _log(store: SQLKeyStore) -> list[tuple[int, str | None]]:
    """The rows of the store's change log: (id, key_id)."""
    log = store.change_log
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(log.c.id, log.c.key_id).order_by(log.c.id))
        return [(row.id, row.key_id) for row in rows]


def _listen(store: SQLKeyStore, opened: list[ChangeListener]) -> ChangeListener:
    """A listener of *store*, listening and quiet."""
    listener = store.listen()
    assert listener is not None
    opened.append(listener)
    deadline = time.monotonic() + 10
    while listener.wait(0.2):
        assert time.monotonic() < deadline, "the listener is never quiet"
    return listener


def _woken_within(listener: ChangeListener, seconds: float) -> float | None:
    """Seconds until *listener* wakes, or None if it did not within *seconds*."""
    started = time.monotonic()
    if listener.wait(seconds):
        return time.monotonic() - started
    return None


def _listening_backends(engine: sa.Engine, channel: str) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE query = :listen AND pid <> pg_backend_pid()"
                ),
                {"listen": f'LISTEN "{channel}"'},
            ).scalars()
        )


# -- the protocol's types ------------------------------------------------------


def test_the_feed_names_are_exported() -> None:
    import vemetric_auth
    import vemetric_auth.stores

    for name in ("ChangeFeedKeyStore", "ChangeListener", "KeyChanges"):
        assert name in vemetric_auth.__all__
        assert name in vemetric_auth.stores.__all__
        assert getattr(vemetric_auth, name).__doc__


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"cursor": "1", "key_ids": (), "complete": True}, id="cursor"),
        pytest.param({"cursor": True, "key_ids": (), "complete": True}, id="bool"),
        pytest.param({"cursor": 1, "key_ids": ["a"], "complete": True}, id="list"),
        pytest.param({"cursor": 1, "key_ids": (1,), "complete": True}, id="id"),
        pytest.param({"cursor": 1, "key_ids": (), "complete": 1}, id="complete"),
    ],
)
def test_key_changes_refuses_fields_of_the_wrong_type(fields: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="KeyChanges"):
        KeyChanges(**fields)


def test_the_sql_store_has_the_feed(sql_store: SQLKeyStore) -> None:
    assert isinstance(sql_store, ChangeFeedKeyStore)


# -- the in-memory feed ---------------------------------------------------------


def test_the_memory_feed_keeps_its_last_changes_and_knows_what_it_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vemetric_auth.stores.memory, "_MAX_CHANGES", 10)
    store = InMemoryKeyStore()
    ids = _keys(store, 11)
    cursors = [store.changes_since(None).cursor]
    for key_id in ids:
        store.revoke(key_id, revoked_at=NOW, revoked_by=None)
        cursors.append(store.changes_since(None).cursor)
    # 11 changes, 10 kept at most: the oldest 6 went, 5 are left.
    for n, cursor in enumerate(cursors):
        changes = store.changes_since(cursor)
        if n < 6:
            assert not changes.complete, n
            assert changes.cursor == cursors[-1]
        else:
            assert changes == KeyChanges(cursors[-1], tuple(ids[n:]), True)


def test_the_memory_store_has_no_listener() -> None:
    assert InMemoryKeyStore().listen() is None


# -- the SQL change log ------------------------------------------------------------


def test_each_change_is_one_row_of_the_change_log(sql_store: SQLKeyStore) -> None:
    old, new, pending, unknown = [*_keys(sql_store, 3), uuid.uuid4().hex]
    sql_store.set_expiry(pending, None)
    sql_store.roll(
        old,
        new,
        new_expires_at=None,
        old_expires_at=None,
        revoked_at=NOW,
        revoked_by="carol",
    )
    # Nothing changes: nothing logged.
    sql_store.revoke(old, revoked_at=NOW, revoked_by="again")
    sql_store.revoke(unknown, revoked_at=NOW, revoked_by=None)
    sql_store.set_expiry(old, None)  # revoked: left as it is
    sql_store.set_hash(new, "hash-2")
    sql_store.record_use({new: NOW})
    assert [key_id for _, key_id in _log(sql_store)] == [pending, new, old]
    ids = [row_id for row_id, _ in _log(sql_store)]
    assert ids == sorted(ids)


def test_changes_since_is_one_statement_whatever_the_number_of_keys(
    sql_store: SQLKeyStore,
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    for more in (10, 490):
        _keys(sql_store, more)
        cursor = sql_store.changes_since(None).cursor
        sa.event.listen(sql_store.engine, "before_cursor_execute", count)
        try:
            statements.clear()
            sql_store.changes_since(cursor)
            assert len(statements) == 1
            assert sql_store.change_log.name in statements[0]
            assert sql_store.table.name not in statements[0].replace(
                sql_store.change_log.name, ""
            )
        finally:
            sa.event.remove(sql_store.engine, "before_cursor_execute", count)


def _operations(
    store: SQLKeyStore,
) -> dict[str, tuple[Callable[[list[str]], object], int]]:
    """The writes that log changes: each takes fresh key ids (how many: the
    number beside it)."""

    def roll(ids: list[str], revoke: bool) -> object:
        return store.roll(
            ids[0],
            ids[1],
            new_expires_at=None,
            old_expires_at=None if revoke else NOW,
            revoked_at=NOW if revoke else None,
            revoked_by="carol" if revoke else None,
        )

    return {
        "revoke": (lambda ids: store.revoke(ids[0], revoked_at=NOW, revoked_by="b"), 1),
        "set_expiry": (lambda ids: store.set_expiry(ids[0], NOW), 1),
        "roll-revoke": (lambda ids: roll(ids, True), 2),
        "roll-overlap": (lambda ids: roll(ids, False), 2),
    }


@pytest.mark.parametrize(
    "operation", ["revoke", "set_expiry", "roll-revoke", "roll-overlap"]
)
def test_a_change_and_its_log_entry_commit_together_or_not_at_all(
    sql_store: SQLKeyStore, operation: str
) -> None:
    """A failure at any statement of the write, or at its commit, leaves both
    the keys and the log as they were."""
    call, needs = _operations(sql_store)[operation]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    # How many statements the write sends, measured on keys of its own (the
    # first write of a store also prunes, in a transaction of its own).
    sql_store._next_prune = float("inf")
    trial = _keys(sql_store, needs)
    sa.event.listen(sql_store.engine, "before_cursor_execute", count)
    call(trial)
    sa.event.remove(sql_store.engine, "before_cursor_execute", count)
    total = len(statements)
    assert any(sql_store.change_log.name in s for s in statements)

    for failing in [*range(1, total + 1), "commit"]:
        ids = _keys(sql_store, needs)
        before_keys = [sql_store.get(key_id) for key_id in ids]
        before_log = _log(sql_store)
        seen = 0

        def fail(*args: Any, failing: object = failing) -> None:
            nonlocal seen
            seen += 1
            if seen == failing:
                raise OSError("the database went away")

        def fail_commit(*args: Any) -> None:
            raise OSError("the database went away")

        if failing == "commit":
            sa.event.listen(sql_store.engine, "commit", fail_commit)
        else:
            sa.event.listen(sql_store.engine, "before_cursor_execute", fail)
        try:
            with pytest.raises(OSError, match="went away"):
                call(ids)
        finally:
            if failing == "commit":
                sa.event.remove(sql_store.engine, "commit", fail_commit)
            else:
                sa.event.remove(sql_store.engine, "before_cursor_execute", fail)
        assert [sql_store.get(key_id) for key_id in ids] == before_keys, failing
        assert _log(sql_store) == before_log, failing

    # And the same write, not failing, changes both.
    ids = _keys(sql_store, needs)
    before_keys = [sql_store.get(key_id) for key_id in ids]
    cursor = sql_store.changes_since(None).cursor
    call(ids)
    assert [sql_store.get(key_id) for key_id in ids] != before_keys
    assert set(sql_store.changes_since(cursor).key_ids) == set(ids)


def test_a_revocation_in_another_process_is_read_from_the_feed(
    sql_store: SQLKeyStore, database_url: str, table_name: str
) -> None:
    (key_id,) = _keys(sql_store, 1)
    cursor = sql_store.changes_since(None).cursor
    done = subprocess.run(
        [sys.executable, WORKERS, "revoke", database_url, table_name, key_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revoked_by"] == "worker"
    changes = sql_store.changes_since(cursor)
    assert changes.complete
    assert changes.key_ids == (key_id,)


def test_a_reader_too_far_behind_starts_afresh(sql_store: SQLKeyStore) -> None:
    sql_store._max_changes_per_read = 3
    ids = _keys(sql_store, 5)
    cursor = sql_store.changes_since(None).cursor
    for key_id in ids[:3]:
        sql_store.revoke(key_id, revoked_at=NOW, revoked_by=None)
    changes = sql_store.changes_since(cursor)
    assert changes == KeyChanges(changes.cursor, tuple(ids[:3]), True)
    for key_id in ids[3:]:
        sql_store.revoke(key_id, revoked_at=NOW, revoked_by=None)
    sql_store.set_expiry(ids[0], None)  # revoked: no change
    (late,) = _keys(sql_store, 1)
    sql_store.set_expiry(late, NOW)
    sql_store.set_expiry(late, None)
    # Four changes pending, three read at most: drop everything, go on at the end.
    behind = sql_store.changes_since(changes.cursor)
    assert behind == KeyChanges(sql_store.changes_since(None).cursor, (), False)
    assert sql_store.changes_since(behind.cursor) == KeyChanges(behind.cursor, (), True)


def test_a_recreated_change_log_is_not_read_as_complete(
    sql_store: SQLKeyStore,
) -> None:
    ids = _keys(sql_store, 3)
    for key_id in ids:
        sql_store.revoke(key_id, revoked_at=NOW, revoked_by=None)
    cursor = sql_store.changes_since(None).cursor
    assert cursor > 0
    # An operator drops the log; the next store to start makes it again.
    sql_store.change_log.drop(sql_store.engine)
    sql_store.create_table()
    assert sql_store.changes_since(cursor) == KeyChanges(0, (), False)
    (key_id,) = _keys(sql_store, 1)
    sql_store.revoke(key_id, revoked_at=NOW, revoked_by=None)
    assert sql_store.changes_since(cursor) == KeyChanges(1, (), False)
    assert sql_store.changes_since(0) == KeyChanges(1, (key_id,), True)
    assert sql_store.changes_since(1) == KeyChanges(1, (), True)


# -- pruning -------------------------------------------------------------------------


class _Clock:
    """A clock a test sets; the store's change log reads it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_pruning_drops_old_entries_and_old_cursors_read_incomplete(
    sql_store: SQLKeyStore,
) -> None:
    clock = _Clock(NOW)
    sql_store._clock = clock
    ids = _keys(sql_store, 6)
    cursors = [sql_store.changes_since(None).cursor]
    for n, key_id in enumerate(ids):
        clock.now = NOW + timedelta(minutes=n)
        sql_store.revoke(key_id, revoked_at=NOW, revoked_by=None)
        cursors.append(sql_store.changes_since(None).cursor)
    assert [key_id for _, key_id in _log(sql_store)] == ids

    # An hour after the third change: the first three are old.
    clock.now = NOW + timedelta(hours=1, minutes=2, seconds=1)
    sql_store._next_prune = 0
    (late,) = _keys(sql_store, 1)
    sql_store.revoke(late, revoked_at=NOW, revoked_by=None)
    cursors.append(sql_store.changes_since(None).cursor)
    (marker, *kept) = _log(sql_store)
    # The third entry stays, its key id gone: the mark of how far pruning went.
    assert marker == (cursors[3], None)
    assert (
        kept == [(cursors[n + 1], key_id) for n, key_id in enumerate([*ids, late])][3:]
    )

    for n, cursor in enumerate(cursors):
        changes = sql_store.changes_since(cursor)
        assert changes.cursor == cursors[-1]
        if n < 3:
            # Entries after this cursor were pruned: read incomplete.
            assert not changes.complete, n
        else:
            # Exact: from the third change on, nothing read is missing.
            assert changes.complete, n
            assert changes.key_ids == tuple([*ids, late][n:])
    assert sql_store.changes_since(None) == KeyChanges(cursors[-1], (), True)


def test_pruning_twice_moves_the_mark_and_keeps_what_is_recent(
    sql_store: SQLKeyStore,
) -> None:
    clock = _Clock(NOW)
    sql_store._clock = clock
    ids = _keys(sql_store, 4)
    for n, key_id in enumerate(ids):
        clock.now = NOW + timedelta(hours=n)
        sql_store.set_expiry(key_id, NOW)
    clock.now = NOW + timedelta(hours=2, minutes=30)
    sql_store._prune_changes()
    assert [key_id for _, key_id in _log(sql_store)] == [None, ids[2], ids[3]]
    sql_store._prune_changes()  # nothing more is old: nothing changes
    assert [key_id for _, key_id in _log(sql_store)] == [None, ids[2], ids[3]]
    clock.now = NOW + timedelta(hours=10)
    sql_store._prune_changes()
    assert [key_id for _, key_id in _log(sql_store)] == [None]
    head = sql_store.changes_since(None)
    assert head.cursor == _log(sql_store)[0][0]
    assert sql_store.changes_since(head.cursor) == head
    assert not sql_store.changes_since(0).complete


def test_a_store_prunes_after_a_write_at_most_every_ten_minutes(
    sql_store: SQLKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pruned: list[float] = []
    monkeypatch.setattr(sql_store, "_prune_changes", lambda: pruned.append(1))
    ids = _keys(sql_store, 3)
    assert pruned == []  # creating keys is not a change
    for key_id in ids:
        sql_store.revoke(key_id, revoked_at=NOW, revoked_by=None)
    assert pruned == [1]  # the first write of this store, not the others
    sql_store._next_prune = time.monotonic() - 1
    sql_store.set_expiry(_keys(sql_store, 1)[0], None)
    assert pruned == [1, 1]
    assert sql_store._next_prune >= time.monotonic() + 590


def test_a_failing_pruning_does_not_fail_the_change(
    sql_store: SQLKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    earlier, key_id = _keys(sql_store, 2)
    sql_store.revoke(earlier, revoked_at=NOW, revoked_by=None)
    cursor = sql_store.changes_since(None).cursor

    def fail_on_delete(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("DELETE"):
            raise sa.exc.OperationalError("DELETE", {}, OSError("gone"))

    sa.event.listen(sql_store.engine, "before_cursor_execute", fail_on_delete)
    # Two hours later, the first change is old: this write prunes it.
    sql_store._clock = _Clock(_now() + timedelta(hours=2))
    sql_store._next_prune = 0
    try:
        with caplog.at_level(logging.WARNING, logger="vemetric_auth"):
            revoked = sql_store.revoke(key_id, revoked_at=NOW, revoked_by="bob")
    finally:
        sa.event.remove(sql_store.engine, "before_cursor_execute", fail_on_delete)
    assert revoked is not None
    assert revoked.revoked_by == "bob"
    assert sql_store.changes_since(cursor).key_ids == (key_id,)
    assert "could not prune the change log" in caplog.text
    assert [key_id for _, key_id in _log(sql_store)] == [earlier, key_id]


# -- PostgreSQL: ordering, NOTIFY and the listener ------------------------------------


@pytest.mark.postgres
def test_without_the_lock_log_ids_would_commit_out_of_order(
    pg_store: SQLKeyStore,
) -> None:
    """Why writers take a lock: two plain inserts into the log commit in the
    reverse order of their ids, and a reader that saw the second would never
    read the first."""
    pg_store.create_table()
    log = pg_store.change_log
    insert = log.insert().values(changed_at=NOW)
    with pg_store.engine.connect() as first, pg_store.engine.connect() as second:
        first.execute(insert.values(key_id="first"))  # takes id n, not committed
        second.execute(insert.values(key_id="second"))  # takes id n + 1
        second.commit()
        seen = pg_store.changes_since(0)
        assert seen.key_ids == ("second",)
        first.commit()
    assert pg_store.changes_since(seen.cursor).key_ids == ()  # "first" missed
    assert pg_store.changes_since(0).key_ids == ("first", "second")


@pytest.mark.postgres
def test_a_change_committing_late_is_never_passed_over(
    pg_store: SQLKeyStore, pg_other: SQLKeyStore
) -> None:
    """Two revocations, the first to take its place in the log held back
    before its commit while the second tries to commit: a reader reading
    meanwhile, and on from where it was, reads both."""
    first, second = _keys(pg_store, 2)
    reader = pg_store.changes_since(None)
    held, release = threading.Event(), threading.Event()
    holder: list[threading.Thread] = []

    def hold_before_commit(*args: Any) -> None:
        # The last statement of the write: the entry has its id, uncommitted.
        if "pg_notify" in args[2] and threading.current_thread() in holder:
            held.set()
            release.wait(20)

    sa.event.listen(pg_store.engine, "before_cursor_execute", hold_before_commit)
    outcomes: list[object] = []

    def revoke(store: SQLKeyStore, key_id: str) -> None:
        try:
            outcomes.append(store.revoke(key_id, revoked_at=NOW, revoked_by=None))
        except BaseException as exc:  # checked below
            outcomes.append(exc)

    late = threading.Thread(target=revoke, args=(pg_store, first))
    holder.append(late)
    early = threading.Thread(target=revoke, args=(pg_other, second))
    try:
        late.start()
        assert held.wait(10)
        early.start()
        early.join(1.0)
        # The second may not commit before the first: its entry would get the
        # later id and be seen first.
        assert early.is_alive(), "a later entry committed before an earlier one"
        meanwhile = pg_store.changes_since(reader.cursor)
    finally:
        release.set()
        late.join(20)
        early.join(20)
        sa.event.remove(pg_store.engine, "before_cursor_execute", hold_before_commit)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert meanwhile.complete
    after = pg_store.changes_since(meanwhile.cursor)
    assert after.complete
    assert {*meanwhile.key_ids, *after.key_ids} == {first, second}
    # The held-back write took its id first; the other one's came after it.
    assert [key_id for _, key_id in _log(pg_store)] == [first, second]


@pytest.mark.postgres
def test_the_listener_wakes_within_a_second_of_a_change_elsewhere(
    pg_store: SQLKeyStore, pg_other: SQLKeyStore, listeners: list[ChangeListener]
) -> None:
    key_ids = _keys(pg_other, 3)
    listener = _listen(pg_store, listeners)
    assert listener.wait(0.3) is False  # nothing changed
    for key_id in key_ids:
        cursor = pg_store.changes_since(None).cursor
        threading.Timer(
            0.2,
            pg_other.revoke,
            args=(key_id,),
            kwargs={"revoked_at": NOW, "revoked_by": None},
        ).start()
        waited = _woken_within(listener, 5)
        assert waited is not None, "no notification"
        assert waited < 1.0
        # The notification comes at the commit: the change is there to read.
        assert pg_store.changes_since(cursor).key_ids == (key_id,)
        while listener.wait(0):
            pass


@pytest.mark.postgres
def test_the_notification_carries_the_key_ids(
    pg_store: SQLKeyStore, postgres_url: str
) -> None:
    old, new = _keys(pg_store, 2)
    url = sa.make_url(postgres_url)
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        dbname=url.database,
        autocommit=True,
    ) as listening:
        listening.execute(
            psycopg.sql.SQL("LISTEN {}").format(
                psycopg.sql.Identifier(pg_store.change_log.name)
            )
        )
        pg_store.roll(
            old,
            new,
            new_expires_at=None,
            old_expires_at=None,
            revoked_at=NOW,
            revoked_by=None,
        )
        # A payload that would be too long is sent empty: the log has the ids.
        with pg_store.engine.begin() as connection:
            pg_store._log_changes(connection, ["x" * 255] * 40)
        payloads = [n.payload for n in listening.notifies(timeout=5, stop_after=2)]
    assert payloads == [f"{new}\n{old}", ""]


@pytest.mark.postgres
def test_a_listener_killed_reconnects_and_misses_nothing(
    pg_store: SQLKeyStore,
    pg_other: SQLKeyStore,
    listeners: list[ChangeListener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, third = _keys(pg_other, 3)
    listener = _listen(pg_store, listeners)
    channel = pg_store.change_log.name
    (backend,) = _listening_backends(pg_other.engine, channel)
    cursor = pg_store.changes_since(None).cursor

    with caplog.at_level(logging.INFO, logger="vemetric_auth"):
        # The listener's connection dies, and a key is revoked before the
        # listener notices: its notification goes nowhere.
        with pg_other.engine.connect() as connection:
            connection.execute(
                sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}
            )
        pg_other.revoke(first, revoked_at=NOW, revoked_by=None)
        # The listener says "read now", and the log has the revocation.
        assert _woken_within(listener, 5) is not None
        changes = pg_store.changes_since(cursor)
        assert changes.complete
        assert first in changes.key_ids
        # Listening again on a connection of its own.
        deadline = time.monotonic() + 10
        while listener.wait(0.2) or not _listening_backends(pg_other.engine, channel):
            assert time.monotonic() < deadline, "the listener did not listen again"
        (again,) = _listening_backends(pg_other.engine, channel)
        assert again != backend
        # And woken by the next change as before.
        pg_other.revoke(second, revoked_at=NOW, revoked_by=None)
        waited = _woken_within(listener, 5)
        assert waited is not None
        assert waited < 1.0
        changes = pg_store.changes_since(changes.cursor)
        assert changes.key_ids == (second,)
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "not listening" in warnings_logged[0].getMessage()
    assert "listens again" in caplog.text
    assert third


@pytest.mark.postgres
def test_a_listener_that_can_not_connect_says_read_about_once_a_second(
    caplog: pytest.LogCaptureFixture, listeners: list[ChangeListener]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # Nothing listens on that port: every connection is refused.
    store = SQLKeyStore(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere", connect_timeout=1
    )
    try:
        listener = store.listen()
        assert listener is not None
        listeners.append(listener)
        with caplog.at_level(logging.WARNING, logger="vemetric_auth"):
            started = time.monotonic()
            results = [listener.wait(10) for _ in range(3)]
            took = time.monotonic() - started
        assert results == [True, True, True]
        assert 1.5 < took < 6
        assert len(caplog.records) == 1
        assert "not listening" in caplog.records[0].getMessage()
        assert "OperationalError" in caplog.records[0].getMessage()
        # A short wait returns when its time is up, saying the same.
        started = time.monotonic()
        assert listener.wait(0.1) is True
        assert time.monotonic() - started < 0.6
    finally:
        store.close()


@pytest.mark.postgres
def test_closing_a_listener_ends_a_wait_in_another_thread(
    pg_store: SQLKeyStore, listeners: list[ChangeListener]
) -> None:
    listener = _listen(pg_store, listeners)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(listener.wait(30)))
    waiter.start()
    time.sleep(0.2)
    with pytest.raises(RuntimeError, match="another thread"):
        listener.wait(0.1)
    started = time.monotonic()
    listener.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 1.0
    assert results == [False]
    assert listener.wait(0.1) is False
    listener.close()
    assert not _listening_backends(pg_store.engine, pg_store.change_log.name)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        pytest.param("1", TypeError, id="str"),
        pytest.param(None, TypeError, id="none"),
        pytest.param(-1, ValueError, id="negative"),
        pytest.param(float("nan"), ValueError, id="nan"),
        pytest.param(float("inf"), ValueError, id="inf"),
    ],
)
def test_a_listener_refuses_bad_timeouts(
    pg_store: SQLKeyStore, timeout: Any, error: type[Exception]
) -> None:
    listener = pg_store.listen()
    assert listener is not None
    try:
        with pytest.raises(error):
            listener.wait(timeout)
    finally:
        listener.close()


@pytest.mark.postgres
def test_the_listener_takes_no_pooled_connection(
    pg_store: SQLKeyStore, listeners: list[ChangeListener]
) -> None:
    pg_store.create_table()
    pool = pg_store.engine.pool
    assert isinstance(pool, sa.pool.QueuePool)
    pooled = pool.checkedin() + pool.checkedout()
    _listen(pg_store, listeners)
    assert pool.checkedout() == 0
    assert pool.checkedin() + pool.checkedout() <= max(pooled, 1)


@pytest.mark.postgres
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_listens_on_its_own_connection(
    pg_store: SQLKeyStore, pg_other: SQLKeyStore, listeners: list[ChangeListener]
) -> None:
    first, second = _keys(pg_other, 2)
    listener = _listen(pg_store, listeners)
    channel = pg_store.change_log.name
    (parents,) = _listening_backends(pg_other.engine, channel)
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            ok = listener.wait(5)  # connects anew: "read now"
            ok = ok and not listener.wait(0.3)
            pg_store.revoke(first, revoked_at=NOW, revoked_by=None)
            ok = ok and listener.wait(5)
            listener.close()
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's listener still listens, on its own connection.
    assert parents in _listening_backends(pg_other.engine, channel)
    assert listener.wait(5)  # the child's revocation
    while listener.wait(0.2):
        pass
    pg_other.revoke(second, revoked_at=NOW, revoked_by=None)
    assert listener.wait(5)


def test_sqlite_has_no_listener(tmp_path: Path) -> None:
    with SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}") as store:
        assert store.listen() is None
