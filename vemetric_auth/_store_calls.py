"""Calls to a key store: answered in time, or turned into StoreUnavailable."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any, TypeVar

from ._workers import Closed, Workers, join_all
from .errors import StoreUnavailable
from .stores.base import KeyStore

__all__ = ["StoreCalls"]

logger = logging.getLogger("vemetric_auth")

_T = TypeVar("_T")
# Threads for lookups of keys this process has not verified (first uses): as
# many as this may be waiting on a database at once; more wait their turn
# within the timeout. Fewer than a connection pool holds (SQLAlchemy's
# default: 15), so that a flood of lookups never takes every connection from
# the re-reads of known keys and the change feed.
_LOOKUP_THREADS = 8
# Lookups that may wait for one of those threads; past that, 503 at once.
_LOOKUP_BACKLOG = 256
# Threads for every other call: re-reads of keys this process verified,
# management calls, last use. A flood of unknown keys fills the lookup
# threads and their backlog, never these.
_KNOWN_THREADS = 8
_KNOWN_BACKLOG = 256


class StoreCalls:
    """Calls *store*, each answered within *timeout* seconds.

    With a *timeout*, calls run on threads of their own, so that a caller can
    give up on a store that does not answer; ``None`` calls the store on the
    caller's thread and relies on the store's own timeouts.

    The threads are two pools: one for lookups of keys this process has not
    verified, which anyone can send by the thousand, and one for everything
    else, so that a flood of random keys never delays the re-read of a key
    this process knows, nor a revocation.
    """

    def __init__(self, store: KeyStore, timeout: float | None) -> None:
        self.store = store
        self.timeout = timeout
        #: When set (monotonic), no call waits past it: the manager is closing.
        self.closing_deadline: float | None = None
        #: Whether :meth:`stop` was called.
        self.closed = False
        self._lookups: Workers | None = None
        self._lookups_warned_at = -float("inf")
        self._known: Workers | None = None
        if timeout is not None:
            self._lookups = Workers(
                _LOOKUP_THREADS, "vemetric-auth-lookup", backlog=_LOOKUP_BACKLOG
            )
            self._known = Workers(
                _KNOWN_THREADS, "vemetric-auth-store", backlog=_KNOWN_BACKLOG
            )
        # Re-reads no request waits for (see in_background).
        self._background = Workers(
            _KNOWN_THREADS, "vemetric-auth-recheck", backlog=_KNOWN_BACKLOG
        )

    def __call__(
        self,
        doing: str,
        method: Callable[..., _T],
        *args: Any,
        deadline: float | None = None,
        late: Callable[[_T], object] | None = None,
        expected: type[Exception] | tuple[type[Exception], ...] = (),
        lookup: bool = False,
        quiet: bool = False,
    ) -> _T:
        """Return ``method(*args)``, the store's answer before *deadline*.

        :param doing: What the call is for, in the WARNING logged if it fails.
        :param deadline: When to give up, on the :func:`time.monotonic` clock;
            ``None``: :attr:`timeout` seconds from now.
        :param late: Called with the result if the store answers after the
            deadline after all.
        :param expected: Exceptions that are answers, raised as they are.
        :param lookup: A lookup of a key this process has not verified: run
            in the pool such lookups share.
        :param quiet: Log nothing: the caller says what failed.
        :raises StoreUnavailable: the store raised anything else, the deadline
            passed first, or the calls are closed (then with the message
            "this KeyManager is closed", and nothing logged). Its
            ``__cause__`` says what went wrong; the WARNING carries its
            traceback.
        """
        workers = self._lookups if lookup else self._known
        try:
            if workers is None or self.timeout is None:
                return method(*args)
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            if self.closing_deadline is not None:
                deadline = min(deadline, self.closing_deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no time left for the store")
            return workers.run(method, *args, timeout=remaining, late=late)
        except expected:
            raise
        except (Closed, CancelledError) as exc:
            # Closed before the call started: the store was never asked.
            raise StoreUnavailable("this KeyManager is closed") from exc
        except TimeoutError as exc:
            if quiet:
                pass
            elif lookup:
                # A flood of unknown keys makes thousands of these a second.
                self._warn_lookups_busy(exc)
            else:
                logger.warning("key store failed while %s", doing, exc_info=True)
            raise StoreUnavailable() from exc
        except Exception as exc:
            if not quiet:
                logger.warning("key store failed while %s", doing, exc_info=True)
            raise StoreUnavailable() from exc

    def _warn_lookups_busy(self, error: TimeoutError) -> None:
        # Once a minute at most. (No lock: two threads logging it at once is
        # no harm.)
        now = time.monotonic()
        if now < self._lookups_warned_at + 60.0:
            return
        self._lookups_warned_at = now
        logger.warning(
            "the key store did not answer a lookup in time, or all lookup "
            "threads are busy (a flood of unknown keys?): answering 503; "
            "logged once a minute at most",
            exc_info=error,
        )

    def in_background(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` on a thread of its own, not waiting for it;
        return whether it was queued (not if many are queued already, or the
        calls are closed). *fn* calls the store with :meth:`__call__`, as any
        caller does, and must not raise."""
        try:
            self._background.submit(fn, *args)
        except (Closed, TimeoutError):
            return False
        return True

    def stop(self) -> list[threading.Thread]:
        """Refuse new calls and cancel those not started; return the threads
        to join (see :func:`~vemetric_auth._workers.join_all`)."""
        self.closed = True
        threads = self._background.stop()
        for workers in (self._lookups, self._known):
            if workers is not None:
                threads += workers.stop()
        return threads

    def close(self, timeout: float | None) -> None:
        """End the threads, waiting at most *timeout* seconds for calls
        under way; see :meth:`Workers.close`."""
        join_all(self.stop(), None if timeout is None else time.monotonic() + timeout)
