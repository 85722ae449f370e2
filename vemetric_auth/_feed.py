"""The change feed: keys revoked, rolled or re-dated in any process leave this
process's cache of verified keys within about a second."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref

from ._cache import VerifiedKeys
from ._fork import reset_in_child
from ._workers import Workers
from .stores.base import ChangeFeedKeyStore, ChangeListener

__all__ = ["ChangeFeed", "has_change_feed"]

logger = logging.getLogger("vemetric_auth")

#: Seconds a listener is waited on at a time, so that close() and a dropped
#: manager end the reader quickly.
_LISTEN_SLICE = 0.25
#: Seconds before a store whose listen() failed is asked again.
_RELISTEN_AFTER = 30.0


def has_change_feed(store: object) -> bool:
    """Whether *store* has a change feed: a callable ``changes_since`` (its
    ``listen`` is optional)."""
    return callable(getattr(store, "changes_since", None))


class ChangeFeed:
    """Reads a store's change feed on a daemon thread; the keys it names are
    read again before their next use here.

    Started by a verification (:meth:`touch`), the reader first takes the
    feed's head, ``changes_since(None)``: a change made between the read of
    an entry cached before and that head is in no read of the feed, so such
    entries are read again at their next use (see
    :meth:`~vemetric_auth._cache.VerifiedKeys.unvouch_all`; a store read,
    no argon2).
    Then, every :attr:`_interval` seconds, or at once when the store's
    listener (its optional ``listen()``) says a change came, it reads the
    changes since its cursor and marks each key named (see
    :meth:`~vemetric_auth._cache.VerifiedKeys.reread`: a revoked key is
    refused at its next use, a re-dated one read with its new expiry, with no
    argon2). A feed that may have missed changes (``complete`` false) marks
    them all.

    :attr:`confirmed_at` is when the last successful read began: every change
    committed before then has been marked. A read that fails is logged once
    at WARNING until one succeeds again; the cursor is kept, so nothing is
    missed, and :attr:`confirmed_at` stays where it was meanwhile, which is
    how the request path knows to fall back to ``cache_ttl``.

    The reader ends at :meth:`stop`, soon after the manager is dropped (it
    holds the feed weakly), or after :meth:`idle_timeout` seconds in which
    no request came (:meth:`touch`: any request but those of the cache's
    fast path, and those too once a minute per key), unless its reads fail:
    every cached key is then read again at its next use, which starts a
    reader again.
    """

    #: Seconds between two reads of the feed (a private setting tests shorten):
    #: twice a second, so that a revocation is seen within one.
    _interval: float = 0.5

    @staticmethod
    def idle_timeout() -> float:
        """Seconds without a request after which the reader ends: ten times
        the worker threads' (300 s by default), well over the minute between
        two last-use stamps of a key served from the cache, which is how such
        a key keeps the reader going."""
        return 10 * Workers.idle_timeout

    def __init__(self, store: ChangeFeedKeyStore, cache: VerifiedKeys) -> None:
        self._store = store
        self._cache = cache
        self._closed = False
        self._reset()
        reset_in_child(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Wakes the reader: close().
        self._wake = threading.Event()
        #: The reader's listener, if it has one, for close() to wake it.
        self._listener: ChangeListener | None = None
        #: When the last successful read began (monotonic); -inf: none yet.
        self.confirmed_at = -math.inf
        self._failing = False
        #: When a request last needed more than the cache (monotonic).
        self._active_at = -math.inf

    def _after_fork(self) -> None:
        # The child has no reader, and its cache starts empty: it starts a
        # reader of its own, from a cursor of its own, on its first use.
        self._reset()

    def touch(self, now: float, *, start: bool = True) -> None:
        """A request at *now* (monotonic) needed more than the fast path of
        the cache, or a key served from it is due a last-use stamp (once a
        minute): keep reading, or (*start*) start again, from a head of the
        reader's own (see :meth:`start_at` for the better way)."""
        # Under the lock, against the reader deciding it is idle meanwhile:
        # either it sees this request, or this request sees it gone.
        with self._lock:
            self._active_at = now
            if start and self._thread is None:
                self._start_thread(None)

    def needs_head(self) -> bool:
        """Whether no reader runs: the next read of a key should take the
        feed's head first and hand it to :meth:`start_at`."""
        return self._thread is None and not self._closed

    def start_at(self, cursor: int, read_at: float) -> None:
        """Start the reader from *cursor*, the feed's head as read at
        *read_at* (monotonic) by a caller about to read a key: every change
        after it reaches the cache, so what that read finds is vouched for.
        What was cached before is read again at its next use."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._cache.unvouch_all()
            self._active_at = max(self._active_at, read_at)
            if self._start_thread(cursor):
                self.confirmed_at = read_at

    def _start_thread(self, cursor: int | None) -> bool:
        # Called with self._lock held. Returns whether a reader started.
        if self._thread is not None or self._closed:
            return False
        thread = threading.Thread(
            target=_read_changes,
            args=(weakref.ref(self), self._wake, self._interval, cursor),
            name="vemetric-auth-feed",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            # No thread to be had: the cache_ttl bound holds meanwhile.
            logger.warning("could not start the change feed thread", exc_info=True)
            return False
        self._thread = thread
        return True

    def stop(self) -> list[threading.Thread]:
        """End the reader; return its thread, for the caller to join."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            listener = self._listener
        self._wake.set()
        if listener is not None:
            _close_quietly(listener)  # returns a wait under way
        return [] if thread is None else [thread]

    # -- on the reader thread ------------------------------------------------

    def _read(self, cursor: int | None) -> int | None:
        """Read the changes after *cursor* and mark them; return the new
        cursor, or *cursor* if the read failed."""
        started = time.monotonic()
        try:
            changes = self._store.changes_since(cursor)
            next_cursor = changes.cursor
            if cursor is None:
                # A first cursor: it vouches for nothing cached before.
                self._cache.unvouch_all()
            elif not changes.complete:
                # Changes may have been missed.
                self._cache.reread_all()
                logger.info(
                    "the key store's change feed may have missed changes: "
                    "every cached key is read again at its next use"
                )
            elif changes.key_ids:
                self._cache.reread(changes.key_ids)
        except Exception:
            if self._closed:
                return cursor  # the store may have closed with the manager
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
        if self._failing:
            self._failing = False
            logger.info("the key store's change feed can be read again")
        return next_cursor

    def _listen(self) -> ChangeListener | None:
        listen = getattr(self._store, "listen", None)
        if not callable(listen):
            return None
        try:
            listener: ChangeListener | None = listen()
        except Exception:
            logger.warning(
                "could not listen for the key store's changes: reading them "
                "every %s s instead",
                self._interval,
                exc_info=True,
            )
            return None
        with self._lock:
            self._listener = listener
            closed = self._closed
        if closed and listener is not None:
            _close_quietly(listener)
            return None
        return listener

    def _forget_listener(self) -> None:
        with self._lock:
            self._listener = None

    def _stop_if_idle(self) -> bool:
        """End this reader if no request came for :meth:`idle_timeout`
        seconds; return whether it ends."""
        with self._lock:
            if self._closed or self._thread is not threading.current_thread():
                return True
            if self._failing or time.monotonic() - self._active_at < (
                self.idle_timeout()
            ):
                # Busy; or failing: the outage grace counts from the last read
                # of this reader, which must stay to vouch for the cache.
                return False
            self._thread = None
            self._listener = None
            # Nothing is vouched for while no reader runs: what is cached is
            # read again at its next use, which starts a reader.
            self.confirmed_at = -math.inf
            self._cache.reread_all()
            return True


def _read_changes(
    ref: weakref.ReferenceType[ChangeFeed],
    wake: threading.Event,
    interval: float,
    cursor: int | None,
) -> None:
    """The reader thread, from *cursor* (``None``: the feed's head): holds
    its feed only while it reads."""
    listener: ChangeListener | None = None
    listen_at = 0.0  # when to ask the store for a listener
    try:
        while True:
            feed = ref()
            if feed is None or feed._closed:
                return
            started = time.monotonic()
            cursor = feed._read(cursor)
            if feed._stop_if_idle():
                return
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
                    feed = ref()
                    if feed is not None:
                        feed._forget_listener()
                        del feed
                    break
                if ref() is None:
                    return
    finally:
        if listener is not None:
            _close_quietly(listener)


def _close_quietly(listener: ChangeListener) -> None:
    try:
        listener.close()
    except Exception:
        logger.debug("closing the change listener failed", exc_info=True)
