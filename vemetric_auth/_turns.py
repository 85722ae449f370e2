"""Turns per key: requests for one key take turns, others go on in parallel."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ._fork import reset_in_child

__all__ = ["KeyTurns"]


class KeyTurns:
    """Lets requests for one key digest take turns, and nothing else wait.

    A burst of first requests for a key then runs argon2 once, while requests
    for other keys go on in parallel. Turns are created on demand and dropped
    when nobody waits, so the table only holds keys being checked right now.
    """

    def __init__(self) -> None:
        self._after_fork()
        reset_in_child(self)

    def _after_fork(self) -> None:
        # In a child, the turns taken by the parent's other threads are gone.
        self._lock = threading.Lock()
        self._turns: dict[bytes, list[Any]] = {}  # digest -> [lock, users]

    @contextlib.contextmanager
    def turn(self, digest: bytes, timeout: float | None) -> Iterator[bool]:
        """Wait for this digest's turn, at most *timeout* seconds; yield whether
        it came."""
        with self._lock:
            turn = self._turns.get(digest)
            if turn is None:
                turn = self._turns[digest] = [threading.Lock(), 0]
            turn[1] += 1
        lock: threading.Lock = turn[0]
        got = lock.acquire(timeout=-1 if timeout is None else timeout)
        try:
            yield got
        finally:
            if got:
                lock.release()
            with self._lock:
                turn[1] -= 1
                if turn[1] == 0:
                    del self._turns[digest]
