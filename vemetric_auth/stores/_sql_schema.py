"""The tables of :class:`~vemetric_auth.SQLKeyStore`: their columns, names and
DDL, and creating them, or upgrading a table made by an earlier release, while
other threads and processes may be doing the same.

Keys live in one table; their changes (revocations, rolls, new expiries) are
logged in a second one, ``<table>_changes``, read by the change feed.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import URL, Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator

from ..keys import LOOKUP_PREFIX_LENGTH
from ..records import MAX_ID_LENGTH, MAX_NAME_LENGTH
from .base import DEFAULT_TABLE_NAME

__all__ = [
    "UTCDateTime",
    "add_missing_columns",
    "change_lock_id",
    "change_log_table",
    "check_table_name",
    "create_missing_table",
    "create_table_sql",
    "key_table",
    "upgrade_table_sql",
]

# PostgreSQL's identifier limit; SQLite has none, but a name must fit both.
_MAX_IDENTIFIER_LENGTH = 63
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A display prefix: the lookup prefix of the key, then "...".
_PREFIX_LENGTH = LOOKUP_PREFIX_LENGTH + len("...")
# The columns added since the first release (0.1), in the order they came. All
# are nullable: adding one to a table made earlier touches no row.
_ADDED_COLUMNS = ("expires_at", "last_used_at")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, microseconds kept, on every database.

    PostgreSQL stores ``timestamp with time zone`` and hands values back in the
    session's time zone; SQLite has no time zones at all and stores the UTC
    wall-clock time as text. Either way, values come back in UTC.

    A naive datetime is refused with :exc:`ValueError`: which time zone it
    meant can not be known. This is the one place that checks, since every
    datetime the store writes passes here.
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


def check_table_name(table_name: object) -> str:
    """Return *table_name* if it is a plain SQL identifier that fits every database.

    :raises TypeError: not a ``str``.
    :raises ValueError: not a plain identifier, or too long.
    """
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


def key_table(metadata: MetaData, table_name: str) -> Table:
    """Define the key table *table_name* in *metadata* and return it."""
    return Table(
        table_name,
        metadata,
        Column("id", String(MAX_ID_LENGTH), nullable=False),
        Column("project_id", String(MAX_ID_LENGTH), nullable=False),
        Column("name", String(MAX_NAME_LENGTH), nullable=False),
        Column("prefix", String(_PREFIX_LENGTH), nullable=False),
        Column("hash", Text, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("created_by", String(MAX_ID_LENGTH), nullable=True),
        Column("revoked_at", UTCDateTime(), nullable=True),
        Column("revoked_by", String(MAX_ID_LENGTH), nullable=True),
        # Added in 0.2; a table made by 0.1 gets them on first use.
        Column("expires_at", UTCDateTime(), nullable=True),
        Column("last_used_at", UTCDateTime(), nullable=True),
        PrimaryKeyConstraint("id", name=_identifier(table_name, "pkey")),
        UniqueConstraint("prefix", name=_identifier(table_name, "prefix_key")),
        # Serves both "keys of a project" and its newest-first order.
        Index(
            _identifier(table_name, "project_created_idx"), "project_id", "created_at"
        ),
    )


def change_log_table(metadata: MetaData, table_name: str) -> Table:
    """Define the change log of the key table *table_name* in *metadata*.

    One row per change of a key: ``id`` ascending in the order the changes
    were made (SQLite ``AUTOINCREMENT`` and identity columns never reuse an
    id), the changed key's ``key_id``, and ``changed_at``, by which old rows
    are pruned. A row whose ``key_id`` is ``NULL`` marks where pruning
    stopped: every entry up to its id may be gone. Its name,
    ``<table_name>_changes``, is also the PostgreSQL ``NOTIFY`` channel.
    """
    return Table(
        _identifier(table_name, "changes"),
        metadata,
        Column(
            "id",
            # SQLite's rowid alias must be spelt INTEGER; it holds 64 bits.
            BigInteger().with_variant(Integer(), "sqlite"),
            Identity(),
            nullable=False,
        ),
        Column("key_id", String(MAX_ID_LENGTH), nullable=True),
        Column("changed_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("id", name=_identifier(table_name, "changes_pkey")),
        sqlite_autoincrement=True,
    )


def change_lock_id(table_name: str) -> int:
    """The PostgreSQL advisory lock writers of the change log of *table_name*
    hold from taking an id until they commit."""
    return _advisory_lock_id(f"{table_name}:changes")


def create_table_sql(
    dialect: str = "postgresql", table_name: str = DEFAULT_TABLE_NAME
) -> str:
    """Return the SQL that creates the table of :class:`~vemetric_auth.SQLKeyStore`.

    For applications that manage their schema themselves (migrations, a DBA):
    the statements create the table and its index, then its change log
    (``<table_name>_changes``), as the store would on first use. They are
    ``;``-terminated and separated by blank lines.

    :param dialect: A SQLAlchemy dialect name: ``"postgresql"``, ``"sqlite"``,
        ``"mysql"``, ...
    :param table_name: The table name the store will be given.
    :raises ValueError: an unknown dialect or an invalid table name.
    """
    table_name = check_table_name(table_name)
    target = _dialect(dialect)
    metadata = MetaData()
    table = key_table(metadata, table_name)
    compiled = [str(CreateTable(table).compile(dialect=target))]
    compiled.extend(
        str(CreateIndex(index).compile(dialect=target))
        for index in sorted(table.indexes, key=lambda index: str(index.name))
    )
    changes = change_log_table(metadata, table_name)
    compiled.append(str(CreateTable(changes).compile(dialect=target)))
    return _script(compiled)


def upgrade_table_sql(
    dialect: str = "postgresql", table_name: str = DEFAULT_TABLE_NAME
) -> str:
    """Return the SQL that upgrades a table made by vemetric-auth 0.1 to this release.

    For applications that manage their schema themselves: the ``ALTER TABLE``
    statements add the columns the store has gained since (``expires_at``
    and ``last_used_at``, both nullable, so no row is rewritten), and the
    ``CREATE TABLE`` its change log, as the store would on first use. Each
    statement adds one thing: on a table that has some of them already (made
    by a development version), run the others. Run them once, before the
    new release serves; a table made by :func:`create_table_sql` of this
    release needs none. They are ``;``-terminated and separated by blank
    lines.

    :param dialect: A SQLAlchemy dialect name: ``"postgresql"``, ``"sqlite"``,
        ``"mysql"``, ...
    :param table_name: The table name the store is given.
    :raises ValueError: an unknown dialect or an invalid table name.
    """
    table_name = check_table_name(table_name)
    target = _dialect(dialect)
    metadata = MetaData()
    table = key_table(metadata, table_name)
    compiled = [
        _add_column_sql(table, table.c[name], target) for name in _ADDED_COLUMNS
    ]
    changes = change_log_table(metadata, table_name)
    compiled.append(str(CreateTable(changes).compile(dialect=target)))
    return _script(compiled)


def _dialect(name: str) -> Dialect:
    try:
        dialect_class = URL.create(name).get_dialect()
    except Exception as exc:
        raise ValueError(f"unknown SQL dialect {name!r}") from exc
    dialect: Dialect = dialect_class()
    return dialect


def _script(compiled: list[str]) -> str:
    statements = [
        "\n".join(
            line.rstrip().replace("\t", "    ") for line in sql.strip().splitlines()
        )
        for sql in compiled
    ]
    return "\n\n".join(statement + ";" for statement in statements) + "\n"


def _add_column_sql(table: Table, column: Column[Any], dialect: Dialect) -> str:
    spec = str(CreateColumn(column).compile(dialect=dialect)).strip()
    name = dialect.identifier_preparer.format_table(table)
    return f"ALTER TABLE {name} ADD COLUMN {spec}"


def create_missing_table(connection: Connection, table: Table, dialect: str) -> None:
    """Create *table* and its index through *connection* unless they exist.

    The other tables of its metadata missing too are created with it, in the
    same transaction where DDL is transactional: on a new database, the key
    table and its change log appear together. Creators on a *dialect* of
    ``"postgresql"`` take turns through an advisory lock, on ``"sqlite"``
    through the database's write lock; on others, one that finds the table
    created meanwhile carries on.
    """
    if inspect(connection).has_table(table.name):
        return
    # The inspection may have begun a transaction; start afresh.
    connection.rollback()
    try:
        _create_table(connection, table, dialect)
    except DBAPIError:
        # Another process created the table meanwhile: one not taking turns
        # with us, or on a database without them.
        connection.rollback()
        if not inspect(connection).has_table(table.name):
            raise


def _create_table(connection: Connection, table: Table, dialect: str) -> None:
    metadata = table.metadata
    if dialect == "postgresql":
        with connection.begin():
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:lock_id)"),
                {"lock_id": _advisory_lock_id(table.name)},
            )
            # DDL is transactional here: table and index appear together, or
            # not at all.
            metadata.create_all(connection, checkfirst=True)
    elif dialect == "sqlite":
        # Taking the write lock first makes concurrent creators wait, then
        # find the table made; SQLite's DDL is transactional too.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            metadata.create_all(connection, checkfirst=True)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
    else:
        with connection.begin():
            metadata.create_all(connection, checkfirst=True)


def _advisory_lock_id(table_name: str) -> int:
    digest = hashlib.sha256(f"vemetric_auth:{table_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def add_missing_columns(connection: Connection, table: Table, dialect: str) -> None:
    """Add to the existing *table* the nullable columns it lacks, through *connection*.

    A table made by an earlier release lacks the columns added since; adding
    them changes the schema only, not one row. Upgraders (and creators) on a
    *dialect* of ``"postgresql"`` take turns through the same advisory lock
    as creation, on ``"sqlite"`` through the database's write lock; on
    others, one that finds the columns added meanwhile carries on.
    """
    missing = _missing_columns(connection, table)
    # The inspection may have begun a transaction; end it either way.
    connection.rollback()
    while missing:
        try:
            _add_columns(connection, table, dialect)
            return
        except DBAPIError:
            # Another process added a column meanwhile: one not taking turns
            # with us, or on a database without turns (where each ALTER may
            # commit by itself). Carry on with what is still missing, unless
            # nobody added anything: then the failure is ours.
            connection.rollback()
            still_missing = _missing_columns(connection, table)
            connection.rollback()
            if len(still_missing) >= len(missing):
                raise
            missing = still_missing


def _missing_columns(connection: Connection, table: Table) -> list[Column[Any]]:
    present = {column["name"] for column in inspect(connection).get_columns(table.name)}
    return [
        column
        for column in table.columns
        if column.nullable and column.name not in present
    ]


def _add_columns(connection: Connection, table: Table, dialect: str) -> None:
    def add() -> None:
        # Asked again: another process may have added them while we waited.
        for column in _missing_columns(connection, table):
            connection.exec_driver_sql(
                _add_column_sql(table, column, connection.dialect)
            )

    if dialect == "postgresql":
        with connection.begin():
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:lock_id)"),
                {"lock_id": _advisory_lock_id(table.name)},
            )
            # Transactional: the columns all appear at once, or none does.
            add()
    elif dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            add()
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
    else:
        with connection.begin():
            add()
