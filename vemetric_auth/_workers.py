"""A few daemon threads that run calls for callers who wait their turn."""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, TypeVar

from ._fork import reset_in_child

__all__ = ["Closed", "Workers", "join_all", "start_worker"]

logger = logging.getLogger("vemetric_auth")

_T = TypeVar("_T")
_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Closed(RuntimeError):
    """The worker threads are closed: the call was not run.

    Its own class, so that a caller can tell it from a :exc:`RuntimeError`
    the call itself raised.
    """


def start_worker(
    name: str,
    numbers: Iterator[int],
    target: Callable[[], None],
    threads: set[threading.Thread],
) -> bool:
    """Start a daemon thread running *target*, named ``name-N``, and add it
    to *threads*; return whether it started.

    Called under the pool's lock, before the call is queued: a thread that
    can not start (a process or container at its thread limit) then leaves
    the pool's counts as they were, instead of counting a thread that never
    takes a call and stalling the pool for good.

    :raises TimeoutError: no thread could be started, and *threads* has none
        to take the call in its turn.
    """
    thread = threading.Thread(
        target=target, name=f"{name}-{next(numbers)}", daemon=True
    )
    try:
        thread.start()
    except RuntimeError:
        if threads:
            # The threads there are will take the call in their turn.
            logger.warning("could not start another %s thread", name)
            return False
        raise TimeoutError(f"could not start a {name} thread") from None
    threads.add(thread)
    return True


class Workers:
    """Runs calls on at most *size* dedicated daemon threads, callers waiting
    their turn.

    For argon2, besides bounding how many computations run at once, keeping
    them on a few threads bounds memory: the allocator keeps the memory an
    argon2 run used in the arena of the thread that ran it, so argon2 on every
    request thread of a busy server would pin memory_cost per request thread.
    For store calls, it lets a caller give up on a store that does not answer;
    *backlog* then bounds how many calls may wait for a thread, so a hung
    store costs no memory per request beyond that. The threads are daemons,
    so a call stuck in a hung store never keeps the process from exiting.

    Threads start when calls come and end after :attr:`idle_timeout` seconds
    without one, so a pool that is dropped without :meth:`close` keeps no
    thread for long.
    """

    #: Seconds a thread waits for a call before it ends.
    idle_timeout: float = 30.0

    def __init__(self, size: int, name: str, *, backlog: int | None = None) -> None:
        self._size = size
        self._name = name
        self._backlog = backlog
        self._closed = False
        self._numbers = itertools.count(1)
        self._reset()
        reset_in_child(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        # None in the queue asks one thread to end (see close).
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._waiting = 0  # threads waiting for a call
        self._queued = 0  # calls in the queue, not yet taken by a thread
        self._pending = 0  # calls queued or running

    def _after_fork(self) -> None:
        # The child has none of the parent's threads, and none of its queue.
        self._reset()

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        """Queue ``fn(*args)`` for a worker thread.

        :raises TimeoutError: the backlog is full, or no thread could be
            started to run the call.
        :raises Closed: the pool is closed.
        """
        future: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise Closed("the worker threads are closed")
            if (
                self._backlog is not None
                and self._pending >= self._size + self._backlog
            ):
                raise TimeoutError("all worker threads are busy")
            if self._queued >= self._waiting and len(self._threads) < self._size:
                self._start_thread()
            self._pending += 1
            self._queued += 1
            self._queue.put((future, fn, args))
        return future

    def _start_thread(self) -> None:
        # Under self._lock, before the call is queued.
        if start_worker(self._name, self._numbers, self._work, self._threads):
            self._waiting += 1

    def _work(self) -> None:
        while True:
            try:
                call = self._queue.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._queued:  # a call came meanwhile: take it
                        continue
                    self._end_thread()
                    return
            if call is None:
                with self._lock:
                    self._end_thread()
                return
            with self._lock:
                self._waiting -= 1
                self._queued -= 1
            future, fn, args = call
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            # Hold nothing of the call while idle: its arguments may be a
            # manager or a key that should be freed.
            del call, future, fn, args
            with self._lock:
                self._pending -= 1
                self._waiting += 1

    def _end_thread(self) -> None:
        # Under self._lock.
        self._waiting -= 1
        self._threads.discard(threading.current_thread())

    def run(
        self,
        fn: Callable[..., _T],
        *args: Any,
        timeout: float | None = None,
        late: Callable[[_T], object] | None = None,
    ) -> _T:
        """Return ``fn(*args)``, run on a worker thread.

        :param late: Called with the result if the call completes after the
            caller gave up on it.
        :raises TimeoutError: no result within *timeout* seconds, or the
            backlog is full. The call is dropped if it had not started; one
            that did runs on, unwaited.
        :raises Closed: the pool is closed.
        :raises concurrent.futures.CancelledError: the pool was closed before
            the call started.
        """
        future = self.submit(fn, *args)
        try:
            return future.result(timeout)
        except FuturesTimeout:
            if not future.cancel() and late is not None:
                future.add_done_callback(functools.partial(_call_late, late))
            raise TimeoutError(f"no answer within {timeout} seconds") from None

    def stop(self) -> list[threading.Thread]:
        """Refuse new calls, cancel those not started, and ask the threads to
        end; return them, for the caller to join (see :func:`join_all`).
        Stopping again returns ``[]``."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            while True:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
                    self._queued -= 1
                    self._pending -= 1
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        return threads

    def close(self, timeout: float | None = None) -> None:
        """End the threads; calls not yet started are cancelled.

        Waits at most *timeout* seconds for calls already running to end; a
        thread still in one then ends when it returns. Closing again does
        nothing.
        """
        join_all(self.stop(), None if timeout is None else time.monotonic() + timeout)


def join_all(threads: list[threading.Thread], deadline: float | None) -> None:
    """Wait for *threads* to end, until *deadline* (monotonic) at the latest."""
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )


def _call_late(late: Callable[[Any], object], future: Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    try:
        late(future.result())
    except Exception:
        logger.warning("could not finish a store call that timed out", exc_info=True)
