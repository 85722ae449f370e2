"""Calls to a key store: answered in time, or turned into StoreUnavailable."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._workers import Workers
from .errors import StoreUnavailable
from .stores.base import KeyStore

__all__ = ["StoreCalls"]

logger = logging.getLogger("vemetric_auth")

_T = TypeVar("_T")
# Threads for store calls: as many as this may be waiting on a database at
# once; more wait their turn within the timeout.
_THREADS = 16
# Calls that may wait for one of those threads; past that, 503 at once.
_BACKLOG = 256


class StoreCalls:
    """Calls *store*, each answered within *timeout* seconds.

    With a *timeout*, calls run on a few threads of their own, so that a
    caller can give up on a store that does not answer; ``None`` calls the
    store on the caller's thread and relies on the store's own timeouts.
    """

    def __init__(self, store: KeyStore, timeout: float | None) -> None:
        self.store = store
        self.timeout = timeout
        self._workers = (
            None
            if timeout is None
            else Workers(_THREADS, "vemetric-auth-store", backlog=_BACKLOG)
        )

    def __call__(
        self,
        doing: str,
        method: Callable[..., _T],
        *args: Any,
        deadline: float | None = None,
        late: Callable[[_T], object] | None = None,
        expected: type[Exception] | tuple[type[Exception], ...] = (),
    ) -> _T:
        """Return ``method(*args)``, the store's answer before *deadline*.

        :param doing: What the call is for, in the WARNING logged if it fails.
        :param deadline: When to give up, on the :func:`time.monotonic` clock;
            ``None``: :attr:`timeout` seconds from now.
        :param late: Called with the result if the store answers after the
            deadline after all.
        :param expected: Exceptions that are answers, raised as they are.
        :raises StoreUnavailable: the store raised anything else, the deadline
            passed first, or the calls are closed. Its ``__cause__`` says what
            went wrong; the WARNING carries its traceback.
        """
        try:
            if self._workers is None or self.timeout is None:
                return method(*args)
            if deadline is None:
                remaining = self.timeout
            else:
                remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no time left for the store")
            return self._workers.run(method, *args, timeout=remaining, late=late)
        except expected:
            raise
        except Exception as exc:
            logger.warning("key store failed while %s", doing, exc_info=True)
            raise StoreUnavailable() from exc

    def close(self, timeout: float | None) -> None:
        """End the threads; see :meth:`Workers.close`."""
        if self._workers is not None:
            self._workers.close(timeout)
