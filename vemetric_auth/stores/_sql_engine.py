"""The SQLAlchemy engines :class:`~vemetric_auth.SQLKeyStore` builds from a URL.

Driver arguments for bounded timeouts, WAL mode for SQLite files, SQLite files
that must exist already, and fresh connection pools in forked children.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import sqlite3
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

__all__ = ["open_engine", "shares_one_connection"]

logger = logging.getLogger("vemetric_auth")

_DEFAULT_CONNECT_TIMEOUT = 5.0
_DEFAULT_STATEMENT_TIMEOUT = 5.0
_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg2cffi"})


def open_engine(
    url_or_engine: object,
    *,
    connect_timeout: float | None,
    statement_timeout: float | None,
    engine_options: Mapping[str, Any] | None,
    create_database: bool,
) -> tuple[Engine, bool]:
    """Return the engine for a store's *url_or_engine*, and whether it built it.

    An :class:`~sqlalchemy.engine.Engine` is used as it is. A URL gets an
    engine with bounded timeouts (``None`` for the defaults), made safe to
    fork; without *create_database*, a SQLite file it names is opened only
    if it exists.

    :raises TypeError: neither a URL nor an Engine; options with an Engine;
        arguments of the wrong type.
    :raises ValueError: a timeout is not a finite number of seconds above 0.
    """
    if not isinstance(create_database, bool):
        raise TypeError("create_database must be True or False")
    if isinstance(url_or_engine, Engine):
        if (
            connect_timeout is not None
            or statement_timeout is not None
            or engine_options is not None
            or not create_database
        ):
            raise TypeError(
                "connect_timeout, statement_timeout, engine_options and "
                "create_database apply to engines built from a URL; "
                "configure your Engine instead"
            )
        return url_or_engine, False
    if not isinstance(url_or_engine, (str, URL)):
        raise TypeError(
            "url_or_engine must be a database URL or a SQLAlchemy Engine, "
            f"not {type(url_or_engine).__name__}"
        )
    engine = _build_engine(
        make_url(url_or_engine),
        connect_timeout,
        statement_timeout,
        engine_options,
        create_database,
    )
    return engine, True


def _build_engine(
    url: URL,
    connect_timeout: float | None,
    statement_timeout: float | None,
    engine_options: Mapping[str, Any] | None,
    create_database: bool,
) -> Engine:
    arguments = _engine_arguments(
        url,
        _seconds(connect_timeout, _DEFAULT_CONNECT_TIMEOUT, "connect_timeout"),
        _seconds(statement_timeout, _DEFAULT_STATEMENT_TIMEOUT, "statement_timeout"),
    )
    options = dict(engine_options or {})
    arguments["connect_args"].update(options.pop("connect_args", {}))
    arguments.update(options)
    engine = create_engine(url, **arguments)
    if engine.dialect.name == "sqlite":
        if not (create_database or _is_memory_sqlite(url)):
            event.listen(engine, "do_connect", _open_existing_file_only)
        if not shares_one_connection(engine):
            event.listen(engine, "connect", _enable_wal)
    if not shares_one_connection(engine):
        # An in-memory database has no connection to share with a child;
        # its copy in the child's memory keeps working there.
        _built_engines.add(engine)
    return engine


def shares_one_connection(engine: Engine) -> bool:
    """Whether all threads use the one connection of *engine* (in-memory SQLite)."""
    return isinstance(engine.pool, StaticPool)


def _seconds(value: object, default: float, what: str) -> float:
    if value is None:
        return default
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
        # 5 kept, up to 25 under load: a KeyManager calls the store on up to
        # 17 threads at once (8 lookups of unknown keys, 8 other calls, the
        # change feed), and none should wait for another's connection.
        "max_overflow": 20,
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
            del arguments["pool_timeout"], arguments["max_overflow"]
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


def _open_existing_file_only(
    dialect: Any, connection_record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    # Open the file with SQLite's mode=rw, so that a mistyped path is an error
    # rather than a new, empty database. A path is checked first, to name it
    # in the error; mode=rw makes sure no file appears even if that races.
    (database,) = cargs
    if cparams.get("uri"):
        # A "file:" URI of the application's: a mode it gives is kept.
        rest, hash_sign, fragment = database.partition("#")
        path, _, query = rest.partition("?")
        if any(item.startswith("mode=") for item in query.split("&")):
            return None
        query = f"{query}&mode=rw" if query else "mode=rw"
        return dialect.connect(f"{path}?{query}{hash_sign}{fragment}", **cparams)
    if not os.path.exists(database):
        raise FileNotFoundError(
            errno.ENOENT, "no SQLite database, and create_database=False", database
        )
    uri = f"{Path(database).as_uri()}?mode=rw"
    return dialect.connect(uri, **{**cparams, "uri": True})


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
