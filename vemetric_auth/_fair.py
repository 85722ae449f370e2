"""A few daemon threads shared fairly between lanes: round-robin, not first come."""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, TypeVar

from ._fork import reset_in_child
from ._workers import Closed, Workers, join_all, start_worker

__all__ = ["FairWorkers"]


_T = TypeVar("_T")
_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class FairWorkers:
    """Runs calls on at most *size* daemon threads, taking turns between lanes.

    Each call is queued in a lane (for argon2: the display prefix of the key
    it verifies). A thread that comes free takes the oldest call of the next
    lane in turn, round-robin, so a lane with a thousand calls waiting delays
    a call of another lane by at most about one call per busy lane, where one
    first-come queue would have it wait for the thousand. Calls whose caller
    gave up are dropped when their turn comes, at no cost.

    Threads start when calls come and end after
    :attr:`Workers.idle_timeout <vemetric_auth._workers.Workers.idle_timeout>`
    seconds without one, like :class:`~vemetric_auth._workers.Workers`.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._numbers = itertools.count(1)
        self._closed = False
        self._reset()
        reset_in_child(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        # lane -> its calls, oldest first; the lane next in turn comes first.
        self._lanes: OrderedDict[Hashable, deque[_Call]] = OrderedDict()
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads waiting for a call
        self._queued = 0  # calls in the lanes, cancelled ones included

    def _after_fork(self) -> None:
        # The child has none of the parent's threads, and none of its calls.
        self._reset()

    def run(
        self,
        lane: Hashable,
        fn: Callable[..., _T],
        *args: Any,
        timeout: float | None = None,
    ) -> _T:
        """Return ``fn(*args)``, run on a worker thread in its lane's turn.

        :raises TimeoutError: the call did not start within *timeout*
            seconds (it is dropped then), or no thread could be started to
            run it. A call that started is waited for until it ends.
        :raises Closed: the threads are closed.
        :raises concurrent.futures.CancelledError: they were closed before
            the call started.
        """
        future: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise Closed("the worker threads are closed")
            if self._queued >= self._waiting and len(self._threads) < self._size:
                self._start_thread()
            calls = self._lanes.get(lane)
            if calls is None:
                calls = self._lanes[lane] = deque()
            calls.append((future, fn, args))
            self._queued += 1
            self._ready.notify()
        try:
            return future.result(timeout)
        except FuturesTimeout:
            if future.cancel():
                raise TimeoutError(f"not started within {timeout} seconds") from None
        # Started in time: a call that runs is waited for, as it ends by
        # itself (argon2 takes the same time on every call).
        return future.result()

    def _start_thread(self) -> None:
        # Under self._lock, before the call is queued.
        if start_worker(self._name, self._numbers, self._work, self._threads):
            self._waiting += 1

    def _next_call(self) -> _Call | None:
        """The next call to run, in turn; ``None``: end this thread."""
        with self._lock:
            idle_since = time.monotonic()
            while True:
                while self._lanes:
                    lane, calls = next(iter(self._lanes.items()))
                    call = calls.popleft()
                    self._queued -= 1
                    if calls:
                        self._lanes.move_to_end(lane)  # the other lanes first
                    else:
                        del self._lanes[lane]
                    if call[0].set_running_or_notify_cancel():
                        self._waiting -= 1
                        return call
                    # Its caller gave up: nothing to run, take the next one.
                if self._closed:
                    break
                left = idle_since + Workers.idle_timeout - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            self._waiting -= 1
            self._threads.discard(threading.current_thread())
            return None

    def _work(self) -> None:
        while True:
            call = self._next_call()
            if call is None:
                return
            future, fn, args = call
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
                del result
            # Hold nothing of the call while idle: its arguments may be a key.
            del call, future, fn, args
            with self._lock:
                self._waiting += 1

    def stop(self) -> list[threading.Thread]:
        """Refuse new calls, cancel those not started, and ask the threads to
        end once idle; return them, for the caller to join. Stopping again
        returns ``[]``."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            for calls in self._lanes.values():
                for future, _, _ in calls:
                    future.cancel()
            self._ready.notify_all()
            return list(self._threads)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`stop`, then wait at most *timeout* seconds for the threads."""
        join_all(self.stop(), None if timeout is None else time.monotonic() + timeout)
