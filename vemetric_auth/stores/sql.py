"""A key store in a SQL database, through SQLAlchemy Core.

SQLite is the embedded default; PostgreSQL is the store to share between many
processes and machines. Any other database SQLAlchemy supports works with an
:class:`~sqlalchemy.engine.Engine` configured by the application.

.. code-block:: python

    from vemetric_auth import KeyManager, SQLKeyStore

    keys = KeyManager(SQLKeyStore("postgresql+psycopg://app@db.internal/app"))

Needs SQLAlchemy 2 (the ``sql`` extra) and, for PostgreSQL, a driver such as
psycopg (the ``postgres`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

from sqlalchemy import (
    BigInteger,
    MetaData,
    String,
    bindparam,
    column,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.schema import Table

from ..errors import DuplicatePrefix
from ..records import ApiKey
from ._sql_engine import open_engine, shares_one_connection
from ._sql_schema import (
    UTCDateTime,
    add_missing_columns,
    change_lock_id,
    change_log_table,
    check_table_name,
    create_missing_table,
    create_table_sql,
    key_table,
    upgrade_table_sql,
)
from .base import DEFAULT_TABLE_NAME, ChangeListener, KeyChanges, _check_cursor

__all__ = [
    "DEFAULT_TABLE_NAME",
    "SQLKeyStore",
    "create_table_sql",
    "upgrade_table_sql",
]

# Last-use stamps written by one statement, at most. SQLite also stays within
# its limit of bound variables (two per stamp); PostgreSQL gets two arrays
# whatever the count, and the bound keeps each statement short.
_STAMPS_PER_STATEMENT = 10_000
# SQLite's limit of bound variables when the build does not tell (before
# Python 3.11): the smallest SQLite ever had.
_SQLITE_SAFE_VARIABLES = 999

# Writes one statement's share of a batch of last-use stamps, sorted by id.
_StampWriter = Callable[[Connection, Sequence[tuple[str, datetime]]], None]

logger = logging.getLogger("vemetric_auth")

# Change log entries older than this are pruned. A reader reads about once a
# second; one an hour behind has its whole cache dropped instead (a pruned
# cursor reads complete=False).
_CHANGE_RETENTION = timedelta(hours=1)
# How often one store prunes, at most: after a write, when this much time has
# passed since its last pruning (so the first write of a process prunes).
_PRUNE_INTERVAL = 600.0
# Change log entries one read returns, at most. A reader further behind (a
# bulk revocation) reads complete=False: dropping its cache is then cheaper
# than forgetting each key.
_MAX_CHANGES_PER_READ = 10_000
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; the key ids are a
# courtesy to whoever listens (the log is what readers read), so a longer list
# is sent as an empty payload.
_MAX_NOTIFY_PAYLOAD = 7_000


class SQLKeyStore:
    """Keeps key records in one table of a SQL database, through SQLAlchemy Core.

    :param url_or_engine: A database URL (``str`` or
        :class:`sqlalchemy.engine.URL`), or an :class:`~sqlalchemy.engine.Engine`
        to use as it is. ``"sqlite:///vemetric_auth.db"`` is a file next to the
        working directory, ``"sqlite://"`` a database in memory, and
        ``"postgresql+psycopg://user:password@host/dbname"`` a PostgreSQL
        database through psycopg 3.
    :param table_name: The table to keep keys in: a plain SQL identifier.
    :param connect_timeout: Seconds to wait for a new database connection or
        a free pooled one; 5 by default. libpq counts whole seconds, at least 2.
    :param statement_timeout: Seconds a statement may run before the database
        cancels it (PostgreSQL ``statement_timeout``), or, on SQLite, may wait
        for another connection's write lock; 5 by default.
    :param engine_options: More :func:`sqlalchemy.create_engine` arguments,
        such as ``{"pool_size": 20}``; they override the store's own.
    :param create_database: Whether a SQLite file that does not exist yet is
        created. With ``False``, the file is opened with SQLite's ``mode=rw``
        (for tools that should only open an existing store): if it is
        missing, the first use raises :exc:`FileNotFoundError` naming the
        path (a ``file:`` URI gets SQLite's own error), and no file is made.
        A ``mode`` given in a ``file:`` URI is kept; other databases are not
        affected.

    The table and its index are created if missing, on first use or by
    :meth:`create_table`, with the change log ``<table_name>_changes``;
    creation is safe when many threads and processes start at once on an
    empty database. The table holds the record fields, ``prefix`` unique,
    and the argon2 ``hash``; see :func:`create_table_sql`. A table made by
    an earlier release is upgraded the same way: the columns it lacks
    (``expires_at``, ``last_used_at``) are added, no row touched, and the
    change log created; see :func:`upgrade_table_sql`. Datetimes are stored
    as UTC and always come back timezone-aware UTC.

    Besides :class:`~vemetric_auth.KeyStore`, implements the optional
    :class:`~vemetric_auth.RollingKeyStore` (a roll is one transaction),
    :class:`~vemetric_auth.UsageRecordingKeyStore` (one statement per batch
    of up to 10,000 stamps on PostgreSQL and SQLite 3.33 or later) and
    :class:`~vemetric_auth.ChangeFeedKeyStore`: every revocation, roll and
    change of expiry adds a row to the change log in its own transaction,
    which :meth:`changes_since` reads by primary key; on PostgreSQL the
    transaction also sends ``NOTIFY``, which :meth:`listen` receives.

    Safe for many threads and processes at once. Connections are pooled:
    ``sqlite:///`` files are opened in WAL mode, one connection per thread at
    a time; an in-memory ``sqlite://`` database lives in one connection the
    threads take turns on, and is seen by this process only. On PostgreSQL,
    pooled connections are checked before use, so the store recovers by itself
    once a restarted or unreachable server is back.

    The timeouts, WAL mode and pool settings apply to engines built from a
    URL. An :class:`~sqlalchemy.engine.Engine` passed in is used with its own
    settings, and :meth:`close` leaves it open; passing the timeouts,
    *engine_options* or ``create_database=False`` with one is a
    :exc:`TypeError`. Give it ``hide_parameters=True``, as built engines
    have, so that hashes stay out of error messages, and bounded timeouts, so
    that a hung database is answered ``503`` quickly.

    .. code-block:: python

        store = SQLKeyStore("sqlite:///vemetric_auth.db")
        keys = KeyManager(store)

    Every method raises SQLAlchemy's exceptions when the database fails or
    can not be reached; :class:`~vemetric_auth.KeyManager` answers those
    ``503``. Security: the store holds argon2 hashes, never keys; its
    ``repr`` shows no password.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        table_name: str = DEFAULT_TABLE_NAME,
        connect_timeout: float | None = None,
        statement_timeout: float | None = None,
        engine_options: Mapping[str, Any] | None = None,
        create_database: bool = True,
    ) -> None:
        table_name = check_table_name(table_name)
        engine, self._owns_engine = open_engine(
            url_or_engine,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            engine_options=engine_options,
            create_database=create_database,
        )
        self._engine = engine
        self._dialect_name = engine.dialect.name
        if self._dialect_name == "postgresql":
            # A read is one statement: it needs no transaction around it, and
            # skipping BEGIN and ROLLBACK saves two round trips per lookup.
            # (pysqlite runs a lone SELECT outside a transaction already.)
            self._reader: Engine = engine.execution_options(
                isolation_level="AUTOCOMMIT"
            )
        else:
            self._reader = engine
        metadata = MetaData()
        self._table = key_table(metadata, table_name)
        self._change_log = change_log_table(metadata, table_name)
        self._table_ready = False
        # How last-use stamps are written, and how many per statement at
        # most: chosen on first use, once the database's version is known.
        self._stamp_writer: tuple[_StampWriter, int] | None = None
        # A bound of our own on the stamps per statement (tests lower it).
        self._max_stamps_per_statement = _STAMPS_PER_STATEMENT
        # The change log's clock, retention and pruning (tests change them).
        self._clock: Callable[[], datetime] = _utc_now
        self._change_retention = _CHANGE_RETENTION
        self._next_prune = 0.0
        self._max_changes_per_read = _MAX_CHANGES_PER_READ
        self._new_locks()
        _ALL_STORES.add(self)

        t = self._table
        record_columns = [column for column in t.c if column.name != "hash"]
        newest_first = (t.c.created_at.desc(), t.c.id.desc())
        self._select_by_id = select(*record_columns).where(
            t.c.id == bindparam("key_id")
        )
        self._select_by_prefix = select(*record_columns, t.c.hash).where(
            t.c.prefix == bindparam("prefix")
        )
        self._select_project = (
            select(*record_columns)
            .where(t.c.project_id == bindparam("project_id"))
            .order_by(*newest_first)
        )
        self._select_active = (
            select(*record_columns)
            .where(t.c.project_id == bindparam("project_id"))
            .where(t.c.revoked_at.is_(None))
            .order_by(*newest_first)
        )
        self._prefix_exists = select(t.c.id).where(t.c.prefix == bindparam("prefix"))
        self._id_exists = select(t.c.id).where(t.c.id == bindparam("key_id"))
        self._insert = t.insert()
        self._revoke = (
            t.update()
            .where(t.c.id == bindparam("key_id"))
            .where(t.c.revoked_at.is_(None))
            .values(revoked_at=bindparam("revoked_at"), revoked_by=bindparam("by"))
        )
        self._set_hash = (
            t.update()
            .where(t.c.id == bindparam("key_id"))
            .values(hash=bindparam("key_hash"))
        )
        self._set_expiry = (
            t.update()
            .where(t.c.id == bindparam("key_id"))
            .where(t.c.revoked_at.is_(None))
            .values(expires_at=bindparam("new_expiry"))
        )
        # Both records of a roll, locked (FOR UPDATE; SQLite locks the whole
        # database instead) in the order of their ids, so that two rolls
        # never wait for each other in a circle.
        self._lock_pair = (
            select(t.c.id, t.c.revoked_at, t.c.expires_at)
            .where(or_(t.c.id == bindparam("first"), t.c.id == bindparam("second")))
            .order_by(t.c.id)
            .with_for_update()
        )
        # Last use, key by key: databases without UPDATE ... FROM.
        self._record_one_use = (
            t.update()
            .where(t.c.id == bindparam("key_id"))
            .where(
                or_(t.c.last_used_at.is_(None), t.c.last_used_at < bindparam("stamp"))
            )
            .values(last_used_at=bindparam("stamp"))
        )
        # Last use on PostgreSQL: the whole batch as two arrays, one statement.
        used = (
            func.unnest(
                bindparam("key_ids", type_=ARRAY(String())),
                bindparam("stamps", type_=ARRAY(UTCDateTime())),
            )
            .table_valued(column("id", String()), column("stamp", UTCDateTime()))
            .render_derived(name="used")
        )
        self._record_uses_from_arrays = (
            t.update()
            .where(t.c.id == used.c.id)
            .where(or_(t.c.last_used_at.is_(None), t.c.last_used_at < used.c.stamp))
            .values(last_used_at=used.c.stamp)
        )

        # The change log.
        log = self._change_log
        self._log_change = log.insert()
        # On PostgreSQL, writers hold this lock from taking an id until they
        # commit, so ids become visible in their order: without it, a
        # transaction could take id 5, another 6 and commit first, and a
        # reader that saw 6 would never look at 5 again.
        self._lock_change_log = select(
            func.pg_advisory_xact_lock(
                bindparam("lock_id", change_lock_id(table_name), type_=BigInteger())
            )
        )
        self._notify = select(
            func.pg_notify(bindparam("channel", log.name), bindparam("payload"))
        )
        # The entry at the cursor too (it shows the log was not pruned past
        # the cursor, nor recreated), then those after it; one more than a
        # read returns tells a reader it is too far behind.
        self._read_changes = (
            select(log.c.id, log.c.key_id)
            .where(log.c.id >= bindparam("cursor"))
            .order_by(log.c.id)
            .limit(bindparam("limit"))
        )
        self._last_change = select(func.max(log.c.id))
        # Pruning: every entry before the last one older than the cutoff,
        # found from the oldest up (the first recent entry) rather than by a
        # scan of the whole log; that last old entry then becomes the marker.
        first_recent = (
            select(log.c.id)
            .where(log.c.changed_at >= bindparam("cutoff"))
            .order_by(log.c.id)
            .limit(1)
            .scalar_subquery()
        )
        self._last_old_change = select(func.max(log.c.id)).where(
            log.c.id
            < func.coalesce(first_recent, self._last_change.scalar_subquery() + 1)
        )
        self._delete_changes_before = log.delete().where(
            log.c.id < bindparam("through")
        )
        self._mark_pruned = (
            log.update()
            .where(log.c.id == bindparam("through"))
            .where(log.c.key_id.is_not(None))
            .values(key_id=None)
        )

    def _new_locks(self) -> None:
        # Made anew in a forked child too: another thread of the parent may
        # have held one at the fork, and would never release the child's copy.
        self._table_lock = threading.Lock()
        # A single shared connection (in-memory SQLite) must not carry two
        # threads' transactions at once: they take turns.
        self._turns: contextlib.AbstractContextManager[Any] = (
            threading.RLock()
            if shares_one_connection(self._engine)
            else contextlib.nullcontext()
        )

    def __repr__(self) -> str:
        # Only what locates the database: no password, no query string (where
        # a driver may take one too).
        url = self._engine.url.set(query={})
        where = url.render_as_string(hide_password=True)
        return f"<SQLKeyStore {where} table={self._table.name!r}>"

    def __enter__(self) -> SQLKeyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine the store uses."""
        return self._engine

    @property
    def table(self) -> Table:
        """The SQLAlchemy :class:`~sqlalchemy.schema.Table` keys are kept in."""
        return self._table

    @property
    def change_log(self) -> Table:
        """The SQLAlchemy :class:`~sqlalchemy.schema.Table` of the change log.

        Its name is ``<table_name>_changes`` (shortened like the index names
        when too long), and so is the PostgreSQL ``NOTIFY`` channel.
        """
        return self._change_log

    def close(self) -> None:
        """Close the pooled connections of the engine this store built.

        The store stays usable: it connects again when next used. An in-memory
        SQLite database is gone once closed. An engine passed to the store is
        left alone; dispose of it yourself.
        """
        if self._owns_engine:
            self._engine.dispose()
            # Check again on next use: an in-memory database went with it.
            self._table_ready = False

    # -- schema --------------------------------------------------------------

    def create_table(self) -> None:
        """Create the table, its index and its change log unless they exist,
        or upgrade the table.

        A table made by an earlier release gets the columns it lacks
        (nullable: no row is touched) and its change log;
        :func:`upgrade_table_sql` gives the statements. Called by the first
        use of the store; call it at start-up to learn of a wrong URL or
        missing privileges early. Idempotent, and safe when many processes
        run it at once: on PostgreSQL they take turns through an advisory
        lock, on SQLite through the database's write lock, and elsewhere one
        that finds the table created (or the columns added) meanwhile
        carries on.
        """
        with self._turns, _connected(self._engine) as connection:
            create_missing_table(connection, self._table, self._dialect_name)
            add_missing_columns(connection, self._table, self._dialect_name)
            # A table made before the change feed: its log comes now.
            create_missing_table(connection, self._change_log, self._dialect_name)
        self._table_ready = True

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if not self._table_ready:
                self.create_table()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        self._ensure_table()
        with self._turns, _connected(self._reader) as connection:
            yield connection

    @contextlib.contextmanager
    def _writing(self, *, exclusive: bool = False) -> Iterator[Connection]:
        # exclusive: for a transaction that reads before it writes. On SQLite
        # it then takes the write lock at once: a transaction that only
        # reads first could not write once another connection has.
        self._ensure_table()
        try:
            with (
                self._turns,
                _connected(self._engine) as connection,
                connection.begin(),
            ):
                if exclusive and self._dialect_name == "sqlite":
                    _begin_immediate(connection)
                yield connection
        except StatementError as error:
            # A value a column type refused (a naive datetime) is bad input,
            # not a database failure; nothing was written.
            if isinstance(error.orig, ValueError) and not isinstance(error, DBAPIError):
                raise ValueError(str(error.orig)) from None
            raise

    # -- the KeyStore protocol ----------------------------------------------

    def add(self, record: ApiKey, key_hash: str) -> None:
        """Store a new *record* with the argon2 hash of its key.

        :raises DuplicatePrefix: a stored record, revoked or not, has the same
            display prefix. Nothing is stored then.
        :raises ValueError: a stored record has the same id, or a datetime of
            *record* is naive. Nothing is stored then.
        """
        try:
            with self._writing() as connection:
                connection.execute(
                    self._insert,
                    {
                        "id": record.id,
                        "project_id": record.project_id,
                        "name": record.name,
                        "prefix": record.prefix,
                        "hash": key_hash,
                        "created_at": record.created_at,
                        "created_by": record.created_by,
                        "revoked_at": record.revoked_at,
                        "revoked_by": record.revoked_by,
                        "expires_at": record.expires_at,
                        "last_used_at": record.last_used_at,
                    },
                )
        except IntegrityError:
            # Which constraint failed is asked of the data, not read from a
            # driver's message. Rows are never deleted, so a clash seen by
            # the INSERT is still there.
            with self._reading() as connection:
                prefix_taken = (
                    connection.execute(
                        self._prefix_exists, {"prefix": record.prefix}
                    ).first()
                    is not None
                )
                id_taken = (
                    connection.execute(self._id_exists, {"key_id": record.id}).first()
                    is not None
                )
            if prefix_taken:
                raise DuplicatePrefix(
                    f"a key with prefix {record.prefix} exists"
                ) from None
            if id_taken:
                raise ValueError(f"a key with id {record.id!r} exists") from None
            raise

    def get(self, key_id: str) -> ApiKey | None:
        """Return the record with id *key_id*, or ``None`` if there is none."""
        with self._reading() as connection:
            row = connection.execute(self._select_by_id, {"key_id": key_id}).first()
        return None if row is None else _record(row)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        """Return the record whose display prefix is *prefix* and its hash.

        Revoked records are returned too. Returns ``None`` if no record has
        this prefix. One lookup through the unique index on ``prefix``.
        """
        with self._reading() as connection:
            row = connection.execute(self._select_by_prefix, {"prefix": prefix}).first()
        if row is None:
            return None
        return _record(row), str(row.hash)

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the records of *project_id*, newest first (by ``created_at``).

        Revoked records are left out unless *include_revoked*. Returns an
        empty list for a project with no keys.
        """
        statement = self._select_project if include_revoked else self._select_active
        with self._reading() as connection:
            rows = connection.execute(statement, {"project_id": project_id}).all()
        return [_record(row) for row in rows]

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        """Mark the record *key_id* revoked, at once and for good.

        A record that is already revoked is left as it is. Returns the record
        as stored afterwards, or ``None`` if there is no record with this id.
        The update only touches an active record and the record is read back
        in the same transaction, so two callers racing to revoke the same key
        both get the one revocation that was stored.

        A revocation is logged in the change log in the same transaction.

        :raises ValueError: *revoked_at* is naive. Nothing is changed then.
        """
        with self._writing() as connection:
            revoked = connection.execute(
                self._revoke,
                {"key_id": key_id, "revoked_at": revoked_at, "by": revoked_by},
            ).rowcount
            row = connection.execute(self._select_by_id, {"key_id": key_id}).first()
            if revoked:
                self._log_changes(connection, [key_id])
        self._prune_changes_when_due()
        return None if row is None else _record(row)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        """Replace the stored hash of *key_id*, after a rehash.

        Does nothing if there is no record with this id.
        """
        with self._writing() as connection:
            connection.execute(self._set_hash, {"key_id": key_id, "key_hash": key_hash})

    # -- the optional protocols ----------------------------------------------

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        """Set the expiry of the unrevoked record *key_id*; ``None``: never.

        A revoked record is left as it is. Returns the record as stored
        afterwards, or ``None`` if there is no record with this id; see
        :meth:`RollingKeyStore.set_expiry
        <vemetric_auth.RollingKeyStore.set_expiry>`.

        A change is logged in the change log in the same transaction.

        :raises ValueError: *expires_at* is naive. Nothing is changed then.
        """
        _aware(expires_at, "expires_at")
        with self._writing() as connection:
            changed = connection.execute(
                self._set_expiry, {"key_id": key_id, "new_expiry": expires_at}
            ).rowcount
            row = connection.execute(self._select_by_id, {"key_id": key_id}).first()
            if changed:
                self._log_changes(connection, [key_id])
        self._prune_changes_when_due()
        return None if row is None else _record(row)

    def roll(
        self,
        old_key_id: str,
        new_key_id: str,
        *,
        new_expires_at: datetime | None,
        old_expires_at: datetime | None,
        revoked_at: datetime | None,
        revoked_by: str | None,
    ) -> ApiKey | None:
        """Activate *new_key_id* and retire *old_key_id*, in one transaction.

        The new record gets *new_expires_at*; the old one is revoked (with
        *revoked_at*) or else expires at the earlier of its own expiry and
        *old_expires_at*. Both records are locked first (``FOR UPDATE``; on
        SQLite the database's write lock), so a concurrent revocation or roll
        either happens before, and is seen, or waits. Both keys (the old
        one only if it changed) are logged in the change log in the same
        transaction. Returns the old record as stored afterwards, ``None``
        (nothing changed) if either id is unknown; see
        :meth:`RollingKeyStore.roll <vemetric_auth.RollingKeyStore.roll>`.

        :raises ValueError: either record is revoked, the ids are the same,
            or a datetime is naive. Nothing is changed then.
        """
        _aware(new_expires_at, "new_expires_at")
        _aware(old_expires_at, "old_expires_at")
        _aware(revoked_at, "revoked_at")
        if old_key_id == new_key_id:
            raise ValueError("a key can not be rolled over to itself")
        with self._writing(exclusive=True) as connection:
            rows = {
                row.id: row
                for row in connection.execute(
                    self._lock_pair, {"first": old_key_id, "second": new_key_id}
                )
            }
            old, new = rows.get(old_key_id), rows.get(new_key_id)
            if old is None or new is None:
                return None
            if old.revoked_at is not None:
                raise ValueError("the key to roll is revoked")
            if new.revoked_at is not None:
                raise ValueError("the new key is revoked")
            connection.execute(
                self._set_expiry, {"key_id": new_key_id, "new_expiry": new_expires_at}
            )
            changed = [new_key_id]
            if revoked_at is not None:
                connection.execute(
                    self._revoke,
                    {"key_id": old_key_id, "revoked_at": revoked_at, "by": revoked_by},
                )
                changed.append(old_key_id)
            elif old_expires_at is not None and (
                old.expires_at is None or old_expires_at < old.expires_at
            ):
                connection.execute(
                    self._set_expiry,
                    {"key_id": old_key_id, "new_expiry": old_expires_at},
                )
                changed.append(old_key_id)
            row = connection.execute(self._select_by_id, {"key_id": old_key_id}).one()
            self._log_changes(connection, changed)
        self._prune_changes_when_due()
        return _record(row)

    def record_use(self, stamps: Mapping[str, datetime]) -> None:
        """Record when keys were last used, never moving a stamp backwards.

        One ``UPDATE`` per 10,000 stamps, all in one transaction: on
        PostgreSQL from two arrays (``unnest``), on SQLite 3.33 or later from
        a ``VALUES`` list; other databases get one ``UPDATE`` per key (one
        ``executemany``). Each row changes only if its stored stamp is older
        (or missing), checked by the ``UPDATE`` itself, so concurrent writers
        from many processes keep the latest stamp. Unknown ids are ignored.
        See :meth:`UsageRecordingKeyStore.record_use
        <vemetric_auth.UsageRecordingKeyStore.record_use>`.

        :raises ValueError: a stamp is naive. Nothing is changed then.
        """
        if not stamps:
            return
        for key_id, stamp in stamps.items():
            if not isinstance(key_id, str):
                raise TypeError("last-use stamps must be keyed by key id (str)")
            if stamp is None:
                raise TypeError("a last-use stamp must be a datetime")
            _aware(stamp, "a last-use stamp")
        # Rows are updated in the order of their ids, whoever writes: two
        # batches sharing keys then never wait for each other in a circle.
        batch = sorted(stamps.items())
        with self._writing() as connection:
            write, size = self._stamp_writer or self._choose_stamp_writer(connection)
            size = min(size, self._max_stamps_per_statement)
            for start in range(0, len(batch), size):
                write(connection, batch[start : start + size])

    # -- the change feed -----------------------------------------------------

    def changes_since(self, cursor: int | None) -> KeyChanges:
        """Return the keys changed after *cursor*, and the cursor to continue from.

        One statement: a range read of the change log's primary key, from
        the entry at *cursor* on, whatever the number of keys. *cursor*
        ``None`` reads the last id in the log (where a new reader starts).
        ``complete`` is ``False`` when entries after *cursor* were pruned
        (older than an hour), when more than 10,000 changes are pending
        (the cursor then jumps to the last one), or when *cursor* is not an
        entry of this log (it was recreated). See
        :meth:`ChangeFeedKeyStore.changes_since
        <vemetric_auth.ChangeFeedKeyStore.changes_since>`.

        On PostgreSQL, writers take their ids under an advisory lock they
        hold until they commit, so ids become visible in order and a reader
        never passes over one that commits late. On SQLite, one writer at a
        time does. On other databases, a change whose transaction commits
        after a later one's may be missed: it is then refused within
        ``cache_ttl``, as without a feed.

        :raises TypeError: *cursor* is not an int or ``None``.
        :raises ValueError: *cursor* is negative.
        """
        cursor = _check_cursor(cursor)
        if cursor is None:
            with self._reading() as connection:
                head = connection.execute(self._last_change).scalar()
            return KeyChanges(int(head or 0), (), True)
        limit = self._max_changes_per_read
        last: int | None = None
        with self._reading() as connection:
            rows = connection.execute(
                self._read_changes, {"cursor": cursor, "limit": limit + 2}
            ).all()
            at_cursor = bool(rows) and rows[0].id == cursor
            newer = rows[1:] if at_cursor else rows
            if len(newer) > limit or (cursor and not rows):
                last = connection.execute(self._last_change).scalar()
        if not rows:
            if cursor == 0:
                return KeyChanges(0, (), True)  # an empty log
            # Nothing at the cursor or after it: the log was recreated, and
            # the cursor is not one of its own.
            return KeyChanges(int(last or 0), (), False)
        if len(newer) > limit:
            # Too far behind to forget key by key: start afresh at the end.
            return KeyChanges(int(last or 0), (), False)
        # The entry at the cursor is gone only if pruned (then the marker
        # follows) or if the log was recreated.
        complete = at_cursor or cursor == 0
        key_ids: dict[str, None] = {}
        for row in newer:
            if row.key_id is None:
                # Pruning stopped here: entries after the cursor are gone.
                complete = False
            else:
                key_ids[row.key_id] = None
        return KeyChanges(int(rows[-1].id), tuple(key_ids), complete)

    def listen(self) -> ChangeListener | None:
        """Return a listener woken by the ``NOTIFY`` of changes, on PostgreSQL
        through psycopg 3; ``None`` on other databases (they are polled).

        The listener keeps one connection of its own, outside the pool,
        taken from the engine (so with its connect arguments) when it first
        waits, in autocommit mode, ``LISTEN`` on the change log's channel.
        A connection lost is made again; meanwhile, and right after, its
        :meth:`~vemetric_auth.ChangeListener.wait` returns ``True`` so that
        its reader reads the change log, which misses nothing. Close it when
        done.
        """
        if self._dialect_name != "postgresql" or self._engine.dialect.driver != (
            "psycopg"
        ):
            return None
        from ._sql_listener import PostgresChangeListener

        return PostgresChangeListener(self._engine, self._change_log.name)

    def _log_changes(self, connection: Connection, key_ids: Sequence[str]) -> None:
        """Log *key_ids* as changed, in the transaction of the change.

        The last statements of a write transaction: on PostgreSQL the lock
        taken here is held until the commit, so it is kept short.
        """
        postgres = self._dialect_name == "postgresql"
        if postgres:
            connection.execute(self._lock_change_log)
        now = self._clock()
        connection.execute(
            self._log_change,
            [{"key_id": key_id, "changed_at": now} for key_id in key_ids],
        )
        if postgres:
            payload = "\n".join(key_ids)
            if len(payload.encode()) > _MAX_NOTIFY_PAYLOAD:
                payload = ""
            connection.execute(self._notify, {"payload": payload})

    def _prune_changes_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL
        try:
            self._prune_changes()
        except SQLAlchemyError as error:
            # Housekeeping: the change itself is committed, and the next
            # pruning will do what this one could not.
            logger.warning(
                "could not prune the change log %s: %s",
                self._change_log.name,
                type(error).__name__,
            )

    def _prune_changes(self) -> None:
        """Delete the change log entries older than the retention.

        The last old entry stays, its key id cleared, as the marker of where
        pruning stopped: a reader whose cursor is before it reads it, and
        learns that entries it had not read are gone.
        """
        cutoff = self._clock() - self._change_retention
        with self._writing(exclusive=True) as connection:
            if self._dialect_name == "postgresql":
                # Taking turns with writers and other pruners.
                connection.execute(self._lock_change_log)
            through = connection.execute(
                self._last_old_change, {"cutoff": cutoff}
            ).scalar()
            if through is None:
                return
            connection.execute(self._delete_changes_before, {"through": through})
            connection.execute(self._mark_pruned, {"through": through})

    def _choose_stamp_writer(self, connection: Connection) -> tuple[_StampWriter, int]:
        """Pick how last-use stamps are written on this database, and how many
        one statement may take."""
        dialect = connection.dialect
        chosen: tuple[_StampWriter, int]
        if self._dialect_name == "postgresql":
            chosen = (self._write_stamps_from_arrays, _STAMPS_PER_STATEMENT)
        elif (
            self._dialect_name == "sqlite"
            and dialect.paramstyle == "qmark"
            and (dialect.server_version_info or (0,)) >= (3, 33)
        ):
            # UPDATE ... FROM came in SQLite 3.33; each stamp binds two variables.
            size = min(_STAMPS_PER_STATEMENT, _sqlite_variable_limit(connection) // 2)
            chosen = (self._write_stamps_from_values, size)
        else:
            # executemany: the driver's batching, whatever the number.
            chosen = (self._write_stamps_one_by_one, _STAMPS_PER_STATEMENT)
        self._stamp_writer = chosen
        return chosen

    def _write_stamps_from_arrays(
        self, connection: Connection, batch: Sequence[tuple[str, datetime]]
    ) -> None:
        connection.execute(
            self._record_uses_from_arrays,
            {
                "key_ids": [key_id for key_id, _ in batch],
                "stamps": [stamp for _, stamp in batch],
            },
        )

    def _write_stamps_from_values(
        self, connection: Connection, batch: Sequence[tuple[str, datetime]]
    ) -> None:
        # Written out rather than built with SQLAlchemy's values(): compiling
        # 10,000 rows of bound parameters takes it most of a second.
        dialect = connection.dialect
        stored = self._table.c.last_used_at.type.bind_processor(dialect)
        assert stored is not None  # a SQLite DATETIME is stored as text
        table = dialect.identifier_preparer.format_table(self._table)
        rows = ", ".join(["(?, ?)"] * len(batch))
        parameters: list[Any] = []
        for key_id, stamp in batch:
            parameters += (key_id, stored(stamp))
        # The statement starts with UPDATE (no WITH) so that pysqlite sees a
        # write and begins the transaction: the chunks are one transaction.
        connection.exec_driver_sql(
            f"UPDATE {table} SET last_used_at = used.column2 "  # noqa: S608 ("?"s)
            f"FROM (VALUES {rows}) AS used "
            f"WHERE {table}.id = used.column1 AND ({table}.last_used_at IS NULL "
            f"OR {table}.last_used_at < used.column2)",
            tuple(parameters),
        )

    def _write_stamps_one_by_one(
        self, connection: Connection, batch: Sequence[tuple[str, datetime]]
    ) -> None:
        connection.execute(
            self._record_one_use,
            [{"key_id": key_id, "stamp": stamp} for key_id, stamp in batch],
        )


def _record(row: Any) -> ApiKey:
    # A Row of the record columns; its generic type differs between
    # SQLAlchemy 2.0 and 2.1, hence Any.
    return ApiKey(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
    )


@contextlib.contextmanager
def _connected(engine: Engine) -> Iterator[Connection]:
    """``engine.connect()``; a connection taken from a pool that
    :meth:`SQLKeyStore.close` disposed meanwhile is closed when given back.

    Disposing of a pool closes the connections in it, not those in use: one
    given back afterwards would stay in the old pool, its session open,
    until the garbage collector finds it (psycopg then warns).
    """
    pool = engine.pool
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        if engine.pool is not pool:
            pool.dispose()


def _begin_immediate(connection: Connection) -> None:
    # pysqlite begins a deferred transaction before the first write only; an
    # application's engine may already have begun one (then it stays
    # deferred: SQLite still refuses a write that would be inconsistent).
    dbapi_connection = connection.connection.dbapi_connection
    if not getattr(dbapi_connection, "in_transaction", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None, what: str) -> None:
    if moment is None:
        return
    if not isinstance(moment, datetime):
        raise TypeError(f"{what} must be a datetime")
    if moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


# Stores of this process, whose locks a forked child makes anew.
_ALL_STORES: weakref.WeakSet[SQLKeyStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_ALL_STORES):
        store._new_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _sqlite_variable_limit(connection: Connection) -> int:
    """How many variables one statement may bind on this SQLite connection."""
    dbapi_connection = connection.connection.dbapi_connection
    # Connection.getlimit and the constant came in Python 3.11.
    getlimit = getattr(dbapi_connection, "getlimit", None)
    category = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)
    if getlimit is None or category is None:
        return _SQLITE_SAFE_VARIABLES
    return int(getlimit(category))
