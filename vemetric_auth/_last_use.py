"""When keys were last used: stamped by requests, written by a background thread."""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from ._cache import Verified
from ._fork import reset_in_child
from ._store_calls import StoreCalls
from ._workers import Workers
from .errors import StoreUnavailable
from .stores.base import UsageRecordingKeyStore

__all__ = ["LastUse"]

logger = logging.getLogger("vemetric_auth")

#: Seconds between two stamps of one key in one process: last use is
#: recorded at most once a minute per key and process.
SPACING = 60.0


class LastUse:
    """Stamps of keys' last use, written to the store in batches.

    A use of a key is stamped (``key id -> now`` in a dict) only if the key
    was not stamped in this process for :data:`SPACING` seconds; the request
    path otherwise compares one number. A daemon thread of its own writes the
    stamps with the store's ``record_use``, in one batch :attr:`_interval`
    seconds after the first stamp of the batch: a batch per interval at most,
    however many keys. The thread starts with the first stamp and ends when
    it has had nothing to write for :attr:`Workers.idle_timeout
    <vemetric_auth._workers.Workers.idle_timeout>` seconds. :meth:`close`
    and the end of the interpreter write what is left.

    A store without ``record_use`` records no last use: one WARNING says so,
    at the first use of a key.
    """

    #: Seconds between two batches (a private setting tests shorten).
    _interval: float = 60.0

    def __init__(self, store_calls: StoreCalls) -> None:
        store = store_calls.store
        self._calls = store_calls
        self._store_name = type(store).__name__
        self._record_use: Callable[[Mapping[str, datetime]], None] | None = (
            store.record_use if isinstance(store, UsageRecordingKeyStore) else None
        )
        self._warned = False
        self._closed = False
        #: key id -> when its next use is worth a stamp (monotonic). Read
        #: without the lock on the request path; written under it.
        self._due: dict[str, float] = {}
        #: When the first of the pending stamps was made (monotonic).
        self._batch_started = 0.0
        self._reset()
        reset_in_child(self)
        _OPEN.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, datetime] = {}
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        # The parent writes its own stamps; the child has no thread yet.
        self._reset()
        self._due = {}

    def hit(self, entry: Verified, now: float) -> None:
        """A use, at *now* (monotonic), of a key served from the cache whose
        :attr:`~Verified.stamp_due` has come."""
        entry.stamp_due = self.note(entry.record.id, now)

    def note(self, key_id: str, now: float) -> float:
        """Stamp a use of *key_id* at *now* (monotonic) unless it was stamped
        lately; return when its next use is worth a stamp."""
        due = self._due.get(key_id)
        if due is not None and now < due:
            return due
        if self._record_use is None:
            self._warn_once()
            # Still due once a minute: the change feed counts on such uses.
            return now + SPACING
        stamp = datetime.now(timezone.utc)
        with self._lock:
            if self._closed:
                return math.inf
            due = self._due[key_id] = now + SPACING
            if not self._pending:
                self._batch_started = now
                self._changed.notify()
            self._pending[key_id] = stamp
            if self._thread is None:
                self._start_thread()
        return due

    def _start_thread(self) -> None:
        # Under self._lock. Called on a request's path: never raises.
        thread = threading.Thread(
            target=self._run, name="vemetric-auth-last-use", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            # No thread to be had (interpreter exit, or a process limit):
            # the stamps wait for the next one, close() or the exit.
            logger.warning("could not start the last-use thread", exc_info=True)
            return
        self._thread = thread

    def _warn_once(self) -> None:
        with self._lock:
            if self._warned or self._closed:
                return
            self._warned = True
        logger.warning(
            "the key store %s has no record_use: the last use of keys is not recorded",
            self._store_name,
        )

    def _run(self) -> None:
        # Holds the LastUse, never the manager: a dropped manager is freed.
        idle_since = time.monotonic()
        while True:
            with self._lock:
                if self._closed:
                    self._thread = None
                    return  # close() writes what is left
                now = time.monotonic()
                if self._pending:
                    wait = self._batch_started + self._interval - now
                else:
                    wait = idle_since + Workers.idle_timeout - now
                    if wait <= 0:
                        self._thread = None
                        return
                if wait > 0:
                    self._changed.wait(wait)
                    continue
            self.flush()
            idle_since = time.monotonic()

    def flush(self, *, direct: bool = False) -> None:
        """Write the pending stamps now, in one call of the store's ``record_use``.

        Stamps that could not be written are kept for the next batch, unless
        the stamps are closed. With *direct*, call the store on this thread,
        without its timeout (at interpreter exit, when no thread may start).
        """
        record_use = self._record_use
        if record_use is None:
            return
        with self._lock:
            batch, self._pending = self._pending, {}
            now = time.monotonic()
            # Keys not used for a while need no entry: a missing one is due.
            self._due = {key: due for key, due in self._due.items() if due > now}
        if not batch:
            return
        try:
            if direct:
                record_use(batch)
            else:
                self._calls("recording the last use of keys", record_use, batch)
        except StoreUnavailable:
            # StoreCalls logged why. Never lose a later stamp to an earlier one.
            with self._lock:
                if not self._closed:
                    for key_id, stamp in batch.items():
                        if not self._pending:
                            self._batch_started = now
                        later = self._pending.get(key_id)
                        if later is None or later < stamp:
                            self._pending[key_id] = stamp
            return
        except Exception:
            logger.warning(
                "could not record the last use of %d key(s)", len(batch), exc_info=True
            )
            return
        logger.debug("recorded the last use of %d key(s)", len(batch))

    def close(self, timeout: float | None) -> None:
        """Stop stamping, end the thread (waiting at most *timeout* seconds for
        a write under way) and write what is pending. Closing again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.flush()
        _OPEN.discard(self)

    def _flush_at_exit(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self.flush(direct=True)


# Weak: an open LastUse is written at exit, but kept alive by nothing here.
_OPEN: weakref.WeakSet[LastUse] = weakref.WeakSet()


@atexit.register
def _flush_all_at_exit() -> None:
    for last_use in list(_OPEN):
        last_use._flush_at_exit()
