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
import hashlib
import logging
import math
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator

from ..errors import DuplicatePrefix
from ..keys import LOOKUP_PREFIX_LENGTH
from ..records import MAX_ID_LENGTH, MAX_NAME_LENGTH, ApiKey
from .base import DEFAULT_TABLE_NAME

__all__ = ["DEFAULT_TABLE_NAME", "SQLKeyStore", "create_table_sql"]

logger = logging.getLogger("vemetric_auth")

#: The table :class:`SQLKeyStore` uses unless told otherwise.

_DEFAULT_CONNECT_TIMEOUT = 5.0
_DEFAULT_STATEMENT_TIMEOUT = 5.0
# PostgreSQL's identifier limit; SQLite has none, but a name must fit both.
_MAX_IDENTIFIER_LENGTH = 63
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg2cffi"})

_ID_LENGTH = MAX_ID_LENGTH
_NAME_LENGTH = MAX_NAME_LENGTH
_PREFIX_LENGTH = LOOKUP_PREFIX_LENGTH + len("...")


class _UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, microseconds kept, on every database.

    PostgreSQL stores ``timestamp with time zone`` and hands values back in the
    session's time zone; SQLite has no time zones at all and stores the UTC
    wall-clock time as text. Either way, values come back in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("key record datetimes must be timezone-aware")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _identifier(table_name: str, suffix: str) -> str:
    """Return ``<table_name>_<suffix>``, shortened to fit PostgreSQL's limit."""
    name = f"{table_name}_{suffix}"
    if len(name) <= _MAX_IDENTIFIER_LENGTH:
        return name
    digest = hashlib.sha256(table_name.encode()).hexdigest()[:8]
    keep = _MAX_IDENTIFIER_LENGTH - len(suffix) - len(digest) - 2
    return f"{table_name[:keep]}_{digest}_{suffix}"


def _check_table_name(table_name: object) -> str:
    if not isinstance(table_name, str):
        raise TypeError("table_name must be a str")
    if not _TABLE_NAME.fullmatch(table_name):
        raise ValueError(
            "table_name must be a plain SQL identifier: a letter or _ followed by "
            "letters, digits or _"
        )
    if len(table_name) > _MAX_IDENTIFIER_LENGTH:
        raise ValueError(
            f"table_name must be at most {_MAX_IDENTIFIER_LENGTH} characters"
        )
    return table_name


def _key_table(metadata: MetaData, table_name: str) -> Table:
    return Table(
        table_name,
        metadata,
        Column("id", String(_ID_LENGTH), nullable=False),
        Column("project_id", String(_ID_LENGTH), nullable=False),
        Column("name", String(_NAME_LENGTH), nullable=False),
        Column("prefix", String(_PREFIX_LENGTH), nullable=False),
        Column("hash", Text, nullable=False),
        Column("created_at", _UTCDateTime(), nullable=False),
        Column("created_by", String(_ID_LENGTH), nullable=True),
        Column("revoked_at", _UTCDateTime(), nullable=True),
        Column("revoked_by", String(_ID_LENGTH), nullable=True),
        PrimaryKeyConstraint("id", name=_identifier(table_name, "pkey")),
        UniqueConstraint("prefix", name=_identifier(table_name, "prefix_key")),
        # Serves both "keys of a project" and its newest-first order.
        Index(
            _identifier(table_name, "project_created_idx"), "project_id", "created_at"
        ),
    )


def create_table_sql(
    dialect: str = "postgresql", table_name: str = DEFAULT_TABLE_NAME
) -> str:
    """Return the SQL that creates the table of :class:`SQLKeyStore`.

    For applications that manage their schema themselves (migrations, a DBA):
    the statements create the table and its index as the store would on
    first use. They are ``;``-terminated and separated by blank lines.

    :param dialect: A SQLAlchemy dialect name: ``"postgresql"``, ``"sqlite"``,
        ``"mysql"``, ...
    :param table_name: The table name the store will be given.
    :raises ValueError: an unknown dialect or an invalid table name.
    """
    table_name = _check_table_name(table_name)
    try:
        dialect_class = URL.create(dialect).get_dialect()
    except Exception as exc:
        raise ValueError(f"unknown SQL dialect {dialect!r}") from exc
    target = dialect_class()
    table = _key_table(MetaData(), table_name)
    compiled = [str(CreateTable(table).compile(dialect=target))]
    compiled.extend(
        str(CreateIndex(index).compile(dialect=target))
        for index in sorted(table.indexes, key=lambda index: str(index.name))
    )
    statements = [
        "\n".join(
            line.rstrip().replace("\t", "    ") for line in sql.strip().splitlines()
        )
        for sql in compiled
    ]
    return "\n\n".join(statement + ";" for statement in statements) + "\n"


def _positive_seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number of seconds above 0")
    return float(value)


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _engine_arguments(
    url: URL, connect_timeout: float, statement_timeout: float
) -> dict[str, Any]:
    """Return the :func:`~sqlalchemy.create_engine` arguments for *url*."""
    arguments: dict[str, Any] = {
        # Statement parameters hold hashes: keep them out of error messages.
        "hide_parameters": True,
        # Waiting for a free pooled connection is bounded too.
        "pool_timeout": connect_timeout,
    }
    connect_args: dict[str, Any] = {}
    backend = url.get_backend_name()
    driver = url.get_driver_name()
    if backend == "sqlite" and driver == "pysqlite":
        # Pooled connections move between threads; each is used by one
        # thread at a time.
        connect_args["check_same_thread"] = False
        if _is_memory_sqlite(url):
            # One connection, so that every thread sees the one database.
            arguments["poolclass"] = StaticPool
            del arguments["pool_timeout"]
        else:
            # How long a write waits for another connection's lock.
            connect_args["timeout"] = statement_timeout
    elif backend == "postgresql":
        # A restarted server leaves dead connections in the pool: test each
        # one before use, so the service recovers by itself.
        arguments["pool_pre_ping"] = True
        if driver in _LIBPQ_DRIVERS:
            query = url.query
            if "connect_timeout" not in query:
                # libpq counts whole seconds and waits at least 2.
                connect_args["connect_timeout"] = max(1, math.ceil(connect_timeout))
            if "options" not in query:
                milliseconds = max(1, math.ceil(statement_timeout * 1000))
                connect_args["options"] = f"-c statement_timeout={milliseconds}"
            if "keepalives" not in query and "tcp_user_timeout" not in query:
                # A server that vanishes mid-query (crash, network partition)
                # sends no error; TCP keepalives notice it, and
                # tcp_user_timeout bounds how long sent data may go unanswered.
                connect_args["keepalives"] = 1
                connect_args["keepalives_idle"] = max(1, math.ceil(statement_timeout))
                connect_args["keepalives_interval"] = 1
                connect_args["keepalives_count"] = 3
                connect_args["tcp_user_timeout"] = math.ceil(
                    (connect_timeout + statement_timeout) * 1000
                )
    arguments["connect_args"] = connect_args
    return arguments


def _enable_wal(dbapi_connection: Any, connection_record: Any) -> None:
    # Readers and one writer then run at the same time, from any process.
    # It is an optimisation: a database that can not switch still works.
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()
    except sqlite3.Error:
        logger.warning("could not switch the SQLite database to WAL mode")


# Engines this module built, to be made fork-safe: a child process must not
# use the connections its parent opened (gunicorn --preload, multiprocessing).
_built_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engine in list(_built_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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

    The table and its index are created if missing, on first use or by
    :meth:`create_table`; creation is safe when many threads and processes
    start at once on an empty database. The table holds the record fields,
    ``prefix`` unique, and the argon2 ``hash``; see :func:`create_table_sql`.
    Datetimes are stored as UTC and always come back timezone-aware UTC.

    Safe for many threads and processes at once. Connections are pooled:
    ``sqlite:///`` files are opened in WAL mode, one connection per thread at
    a time; an in-memory ``sqlite://`` database lives in one connection the
    threads take turns on, and is seen by this process only. On PostgreSQL,
    pooled connections are checked before use, so the store recovers by itself
    once a restarted or unreachable server is back.

    The timeouts, WAL mode and pool settings apply to engines built from a
    URL. An :class:`~sqlalchemy.engine.Engine` passed in is used with its own
    settings, and :meth:`close` leaves it open; passing the timeouts with one
    is a :exc:`TypeError`. Give it ``hide_parameters=True``, as built engines
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
    ) -> None:
        table_name = _check_table_name(table_name)
        if isinstance(url_or_engine, Engine):
            if (
                connect_timeout is not None
                or statement_timeout is not None
                or engine_options is not None
            ):
                raise TypeError(
                    "connect_timeout, statement_timeout and engine_options apply "
                    "to engines built from a URL; configure your Engine instead"
                )
            engine = url_or_engine
            self._owns_engine = False
        elif isinstance(url_or_engine, (str, URL)):
            engine = self._build_engine(
                make_url(url_or_engine),
                _positive_seconds(
                    _DEFAULT_CONNECT_TIMEOUT
                    if connect_timeout is None
                    else connect_timeout,
                    "connect_timeout",
                ),
                _positive_seconds(
                    _DEFAULT_STATEMENT_TIMEOUT
                    if statement_timeout is None
                    else statement_timeout,
                    "statement_timeout",
                ),
                {} if engine_options is None else engine_options,
            )
            self._owns_engine = True
        else:
            raise TypeError(
                "url_or_engine must be a database URL or a SQLAlchemy Engine, "
                f"not {type(url_or_engine).__name__}"
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
        # A single shared connection (in-memory SQLite) must not carry two
        # threads' transactions at once: they take turns.
        self._turns: contextlib.AbstractContextManager[Any] = (
            threading.RLock()
            if isinstance(engine.pool, StaticPool)
            else contextlib.nullcontext()
        )
        self._metadata = MetaData()
        self._table = _key_table(self._metadata, table_name)
        self._table_ready = False
        self._table_lock = threading.Lock()

        t = self._table
        record_columns = (
            t.c.id,
            t.c.project_id,
            t.c.name,
            t.c.prefix,
            t.c.created_at,
            t.c.created_by,
            t.c.revoked_at,
            t.c.revoked_by,
        )
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

    @staticmethod
    def _build_engine(
        url: URL,
        connect_timeout: float,
        statement_timeout: float,
        engine_options: Mapping[str, Any],
    ) -> Engine:
        arguments = _engine_arguments(url, connect_timeout, statement_timeout)
        options = dict(engine_options)
        arguments["connect_args"].update(options.pop("connect_args", {}))
        arguments.update(options)
        engine = create_engine(url, **arguments)
        if engine.dialect.name == "sqlite" and not isinstance(engine.pool, StaticPool):
            event.listen(engine, "connect", _enable_wal)
        if not isinstance(engine.pool, StaticPool):
            # An in-memory database has no connection to share with a child;
            # its copy in the child's memory keeps working there.
            _built_engines.add(engine)
        return engine

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

    #: Another name for :meth:`close`.
    dispose = close

    # -- schema --------------------------------------------------------------

    def create_table(self) -> None:
        """Create the table and its index unless they exist.

        Called by the first use of the store; call it at start-up to learn of
        a wrong URL or missing privileges early. Idempotent, and safe when
        many processes run it at once: on PostgreSQL they take turns through
        an advisory lock, on SQLite through the database's write lock, and
        elsewhere one that finds the table created meanwhile carries on.
        """
        with self._turns, self._engine.connect() as connection:
            if not inspect(connection).has_table(self._table.name):
                # The inspection may have begun a transaction; start afresh.
                connection.rollback()
                try:
                    self._create_table(connection)
                except DBAPIError:
                    # Another process created the table meanwhile: one not
                    # taking turns with us, or on a database without them.
                    connection.rollback()
                    if not inspect(connection).has_table(self._table.name):
                        raise
        self._table_ready = True

    def _create_table(self, connection: Connection) -> None:
        if self._dialect_name == "postgresql":
            with connection.begin():
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:lock_id)"),
                    {"lock_id": self._advisory_lock_id()},
                )
                # DDL is transactional here: table and index appear
                # together, or not at all.
                self._metadata.create_all(connection, checkfirst=True)
        elif self._dialect_name == "sqlite":
            # Taking the write lock first makes concurrent creators wait, then
            # find the table made; SQLite's DDL is transactional too.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                self._metadata.create_all(connection, checkfirst=True)
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
        else:
            with connection.begin():
                self._metadata.create_all(connection, checkfirst=True)

    def _advisory_lock_id(self) -> int:
        digest = hashlib.sha256(f"vemetric_auth:{self._table.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if not self._table_ready:
                self.create_table()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        self._ensure_table()
        with self._turns, self._reader.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        self._ensure_table()
        with self._turns, self._engine.begin() as connection:
            yield connection

    # -- the KeyStore protocol ----------------------------------------------

    def add(self, record: ApiKey, key_hash: str) -> None:
        """Store a new *record* with the argon2 hash of its key.

        :raises DuplicatePrefix: a stored record, revoked or not, has the same
            display prefix. Nothing is stored then.
        :raises ValueError: a stored record has the same id, or a datetime of
            *record* is naive. Nothing is stored then.
        """
        for moment in (record.created_at, record.revoked_at):
            if moment is not None and moment.utcoffset() is None:
                raise ValueError("key record datetimes must be timezone-aware")
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
        """
        with self._writing() as connection:
            connection.execute(
                self._revoke,
                {"key_id": key_id, "revoked_at": revoked_at, "by": revoked_by},
            )
            row = connection.execute(self._select_by_id, {"key_id": key_id}).first()
        return None if row is None else _record(row)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        """Replace the stored hash of *key_id*, after a rehash.

        Does nothing if there is no record with this id.
        """
        with self._writing() as connection:
            connection.execute(self._set_hash, {"key_id": key_id, "key_hash": key_hash})


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
    )
