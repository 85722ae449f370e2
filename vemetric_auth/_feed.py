"""The change feed: keys revoked, rolled or re-dated in any process leave this
process's cache of verified keys within about a second."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ._cache import VerifiedKeys
from ._fork import reset_in_child

__all__ = ["ChangeFeed", "has_change_feed"]

logger = logging.getLogger("vemetric_auth")

#: Seconds a listener is waited on at a time, so that close() and a dropped
#: manager end the reader quickly.
_LISTEN_SLICE = 0.25
#: Seconds before a store whose listen() failed is asked again.
_RELISTEN_AFTER = 30.0


class _Changes(Protocol):
    """What ``changes_since`` returns (the store's ``KeyChanges``)."""

    @property
    def cursor(self) -> int: ...

    @property
    def key_ids(self) -> Sequence[str]: ...

    @property
    def complete(self) -> bool: ...


class _Listener(Protocol):
    """What a store's ``listen()`` returns: wakes the reader at a change."""

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class _FeedStore(Protocol):
    """A store with a change feed (``ChangeFeedKeyStore``)."""

    def changes_since(self, cursor: int | None) -> _Changes: ...


def has_change_feed(store: object) -> bool:
    """Whether *store* has a change feed: a callable ``changes_since``."""
    return isinstance(store, _FeedStore) and callable(
        getattr(store, "changes_since", None)
    )


class ChangeFeed:
    """Reads a store's change feed on a daemon thread and evicts what it names.

    Started by the first verification (:meth:`start`), the reader first takes
    the feed's head, ``changes_since(None)``, and drops anything cached
    before, so that no entry predates its cursor. Then, every
    :attr:`_interval` seconds, or at once when the store's listener (its
    optional ``listen()``) says a change came, it reads the changes since its
    cursor and evicts each key named; a feed that may have missed changes
    (``complete`` false) clears the whole cache.

    :attr:`confirmed_at` is when the last successful read began: every change
    committed before then has been evicted. A read that fails is logged once
    at WARNING until one succeeds again; the cursor is kept, so nothing is
    missed, and :attr:`confirmed_at` stays where it was meanwhile, which is
    how the request path knows to fall back to ``cache_ttl``.

    The thread holds the feed weakly: it ends at :meth:`close`, or soon after
    the manager is dropped.
    """

    #: Seconds between two reads of the feed (a private setting tests shorten):
    #: twice a second, so that a revocation is seen within one.
    _interval: float = 0.5

    def __init__(self, store: _FeedStore, cache: VerifiedKeys) -> None:
        self._store = store
        self._cache = cache
        self._closed = False
        self._reset()
        reset_in_child(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Set once the first read has been tried, whatever came of it.
        self._tried = threading.Event()
        #: Wakes the reader: close().
        self._wake = threading.Event()
        #: When the last successful read began (monotonic); -inf: none yet.
        self.confirmed_at = -math.inf
        self._failing = False

    def _after_fork(self) -> None:
        # The child has no reader, and its cache starts empty: it starts a
        # reader of its own, from a cursor of its own, on its first use.
        self._reset()

    def start(self) -> None:
        """Start the reader, unless it runs. Cheap when it does."""
        if self._thread is None:
            self._start_thread()

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=_read_changes,
                args=(weakref.ref(self), self._store, self._wake, self._interval),
                name="vemetric-auth-feed",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:
                # No thread to be had: the cache_ttl bound holds meanwhile.
                logger.warning("could not start the change feed thread", exc_info=True)
                return
            self._thread = thread

    def wait_tried(self, timeout: float | None) -> None:
        """Wait at most *timeout* seconds for the first read to be tried."""
        self._tried.wait(timeout)

    def stop(self) -> list[threading.Thread]:
        """End the reader; return its thread, for the caller to join."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._wake.set()
        return [] if thread is None else [thread]

    # -- on the reader thread ------------------------------------------------

    def _read(self, cursor: int | None) -> int | None:
        """Read the changes after *cursor* and evict them; return the new
        cursor, or *cursor* if the read failed."""
        started = time.monotonic()
        try:
            changes = self._store.changes_since(cursor)
            next_cursor = changes.cursor
            if cursor is None or not changes.complete:
                # A first cursor: nothing cached may predate it. Incomplete:
                # changes may have been missed.
                self._cache.clear()
                if cursor is not None:
                    logger.info(
                        "the key store's change feed may have missed changes: "
                        "cleared the cache of verified keys"
                    )
            elif changes.key_ids:
                self._cache.forget_many(changes.key_ids)
        except Exception:
            if not self._failing:
                self._failing = True
                logger.warning(
                    "could not read the key store's change feed: keys revoked "
                    "elsewhere are refused here within cache_ttl until it can be "
                    "read again",
                    exc_info=True,
                )
            return cursor
        else:
            self.confirmed_at = started
        finally:
            self._tried.set()
        if self._failing:
            self._failing = False
            logger.info("the key store's change feed can be read again")
        return next_cursor

    def _listen(self) -> _Listener | None:
        listen = getattr(self._store, "listen", None)
        if not callable(listen):
            return None
        try:
            listener: _Listener | None = listen()
        except Exception:
            logger.warning(
                "could not listen for the key store's changes: reading them "
                "every %s s instead",
                self._interval,
                exc_info=True,
            )
            return None
        return listener


def _read_changes(
    ref: weakref.ReferenceType[ChangeFeed],
    store: _FeedStore,
    wake: threading.Event,
    interval: float,
) -> None:
    """The reader thread: holds its feed only while it reads."""
    cursor: int | None = None
    listener: _Listener | None = None
    listen_at = 0.0  # when to ask the store for a listener
    try:
        while True:
            feed = ref()
            if feed is None or feed._closed:
                return
            started = time.monotonic()
            cursor = feed._read(cursor)
            if listener is None and cursor is not None and started >= listen_at:
                listener = feed._listen()
                listen_at = started + _RELISTEN_AFTER
            del feed
            next_read = started + interval
            while True:
                left = next_read - time.monotonic()
                if left <= 0 or wake.is_set():
                    break
                if listener is None:
                    wake.wait(left)
                    break
                try:
                    if listener.wait(min(left, _LISTEN_SLICE)):
                        break  # a change came: read it now
                except Exception:
                    logger.warning(
                        "the key store's change listener failed: reading the "
                        "changes every %s s instead",
                        interval,
                        exc_info=True,
                    )
                    _close_quietly(listener)
                    listener = None
                    break
                if ref() is None:
                    return
    finally:
        if listener is not None:
            _close_quietly(listener)


def _close_quietly(listener: _Listener) -> None:
    try:
        listener.close()
    except Exception:
        logger.debug("closing the change listener failed", exc_info=True)
