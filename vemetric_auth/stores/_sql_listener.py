"""The PostgreSQL listener of :class:`~vemetric_auth.SQLKeyStore`'s change feed:
``LISTEN`` on a connection of its own, woken by the ``NOTIFY`` every change
sends when it commits.

Needs psycopg 3 (the engine's driver). A hint only: the change log is what
the feed's reader reads, so a notification lost with a connection loses
nothing; the listener then says "read now" and listens again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
import socket
import threading
import time
from typing import Any, cast

import psycopg
from psycopg import pq, sql
from psycopg.pq.abc import PGconn
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["PostgresChangeListener"]

logger = logging.getLogger("vemetric_auth")

# While it can not listen, the listener tries again this often, and its wait
# returns True as often, so that its reader reads the change log about once
# a second: a polling store's pace.
_RETRY_INTERVAL = 1.0

# Connections a forked child found open: they belong to the parent, and
# closing one (or letting it be collected) would end the parent's session.
_ABANDONED: list[object] = []


class PostgresChangeListener:
    """Waits for the ``NOTIFY`` of a change on *channel*; see
    :class:`~vemetric_auth.ChangeListener`.

    :param engine: The store's engine; the listener's connection is made by
        its pool (with its connect arguments, timeouts and keepalives), then
        detached from it, so it never takes a pooled connection's place.
    :param channel: The channel changes are notified on: the change log's
        table name.

    One thread waits at a time; :meth:`close` may come from any thread, and
    makes a wait in progress return at once. A child made by ``os.fork()``
    leaves its parent's connection alone and makes its own.
    """

    def __init__(self, engine: Engine, channel: str) -> None:
        self._engine = engine
        self._channel = channel
        # Quoted: LISTEN folds an unquoted name to lower case; pg_notify does not.
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        self._state = threading.Lock()
        self._closed = threading.Event()
        self._waiting = False
        self._connection: psycopg.Connection[Any] | None = None
        # The descriptor registered with the selector, if any: asked of a
        # lost connection, psycopg may no longer tell.
        self._registered: int | None = None
        self._next_attempt = 0.0
        self._failing = False
        self._pid = os.getpid()
        self._selector, self._wake_in, self._wake_out = _wake_up_selector()

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed.is_set()
            else "listening"
            if self._connection is not None
            else "not connected"
        )
        return f"<PostgresChangeListener channel={self._channel!r} {state}>"

    def wait(self, timeout: float) -> bool:
        """Block up to *timeout* seconds for a change; see
        :meth:`ChangeListener.wait <vemetric_auth.ChangeListener.wait>`.

        Returns ``True`` at once after the listener (re)connected, since a
        change may have come before it listened. Making the connection may
        take up to the store's ``connect_timeout``, beyond *timeout*.

        :raises TypeError: *timeout* is not a number.
        :raises ValueError: *timeout* is negative or not finite.
        :raises RuntimeError: another thread is waiting.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds")
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError("timeout must be a finite number of seconds, at least 0")
        with self._state:
            if self._closed.is_set():
                return False
            if self._waiting:
                raise RuntimeError("another thread is waiting on this listener")
            self._waiting = True
        try:
            if self._pid != os.getpid():
                self._forget_parent()
            return self._wait(time.monotonic() + timeout)
        finally:
            with self._state:
                self._waiting = False
                closed = self._closed.is_set()
            if closed:
                self._release()

    def close(self) -> None:
        """Stop listening and close the connection. A wait in progress returns
        ``False`` at once (or, if it is connecting, once connected or
        failed). Idempotent."""
        with self._state:
            if self._closed.is_set():
                return
            self._closed.set()
            waiting = self._waiting
        if waiting:
            # The waiting thread releases everything once it wakes.
            with contextlib.suppress(OSError):
                self._wake_out.send(b"\0")
        else:
            self._release()

    def _wait(self, deadline: float) -> bool:
        connection = self._connection
        if connection is None:
            now = time.monotonic()
            if now >= self._next_attempt:
                if self._connect():
                    # A change may have come before it listened: read now.
                    return not self._closed.is_set()
                self._next_attempt = now + _RETRY_INTERVAL
            # Not listening: the reader polls, about once a second.
            self._sleep(min(deadline, self._next_attempt) - time.monotonic())
            return not self._closed.is_set()
        pgconn = connection.pgconn
        while True:
            try:
                if _take_notifies(pgconn):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                ready = self._selector.select(remaining)
                if any(key.fileobj is self._wake_in for key, _ in ready):
                    return False
                if not ready:
                    continue
                # The server sent something: take it in. A lost connection
                # (a server restarted, a backend terminated) shows here.
                pgconn.consume_input()
                if pgconn.status != pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the connection is lost")
            except (psycopg.Error, OSError) as error:
                self._lost(error)
                return True

    def _connect(self) -> bool:
        """Make the connection and LISTEN; return whether it worked."""
        try:
            proxied = self._engine.raw_connection()
        except (SQLAlchemyError, psycopg.Error, OSError) as error:
            # The pool raises the driver's own errors when it connects.
            self._log_failure(error)
            return False
        try:
            connection = cast("psycopg.Connection[Any]", proxied.driver_connection)
            proxied.detach()
            # A pool's pre-ping may have begun a transaction.
            connection.rollback()
            connection.autocommit = True
            connection.execute(self._listen)
        except (psycopg.Error, OSError) as error:
            proxied.close()
            self._log_failure(error)
            return False
        self._connection = connection
        self._registered = connection.fileno()
        self._selector.register(self._registered, selectors.EVENT_READ)
        if self._failing:
            self._failing = False
            logger.info("the change listener on %s listens again", self._channel)
        return True

    def _lost(self, error: BaseException) -> None:
        connection, self._connection = self._connection, None
        self._unregister()
        if connection is not None:
            connection.close()
        self._log_failure(error)

    def _log_failure(self, error: BaseException) -> None:
        # Once per outage; the reader polls the change log meanwhile.
        if not self._failing:
            self._failing = True
            logger.warning(
                "the change listener on %s is not listening (%s); the change "
                "log is read about once a second until it is",
                self._channel,
                type(error).__name__,
            )

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._selector.select(seconds)

    def _unregister(self) -> None:
        registered, self._registered = self._registered, None
        if registered is not None:
            self._selector.unregister(registered)

    def _forget_parent(self) -> None:
        # In a child of os.fork(): the connection, selector and sockets are
        # the parent's too. Closing our copies of the descriptors is safe;
        # the connection itself must not be closed (that would end the
        # parent's session), so it is kept, unused.
        if self._connection is not None:
            _ABANDONED.append(self._connection)
            self._connection = None
        self._registered = None
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()
        self._selector, self._wake_in, self._wake_out = _wake_up_selector()
        self._pid = os.getpid()
        self._next_attempt = 0.0

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            if self._pid == os.getpid():
                connection.close()
            else:
                _ABANDONED.append(connection)
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()


def _wake_up_selector() -> tuple[selectors.BaseSelector, socket.socket, socket.socket]:
    """A selector watching the read end of a socket pair, and both ends: a
    byte sent on the second wakes a select on the first."""
    wake_in, wake_out = socket.socketpair()
    wake_in.setblocking(False)
    wake_out.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(wake_in, selectors.EVENT_READ)
    return selector, wake_in, wake_out


def _take_notifies(pgconn: PGconn) -> bool:
    """Take every notification received; return whether there was one."""
    taken = False
    while pgconn.notifies() is not None:
        taken = True
    return taken
