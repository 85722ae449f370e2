"""Test stores with a change feed, and ways to break it.

:class:`FeedStore` is an :class:`InMemoryKeyStore` that logs each revocation,
roll and change of expiry with a sequence number, and answers
``changes_since`` and (optionally) ``listen`` as the store protocol's change
feed does. Switches make its feed fail, miss changes, or its whole store
fail or slow down, so the manager's side can be tested against each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from vemetric_auth import ApiKey, InMemoryKeyStore


@dataclasses.dataclass(frozen=True)
class Changes:
    """What ``changes_since`` answers (the store's ``KeyChanges``)."""

    cursor: int
    key_ids: tuple[str, ...]
    complete: bool = True


class Listener:
    """Wakes a waiting reader when the store logs a change, as a PostgreSQL
    listener does: a change since the last wait counts too."""

    def __init__(self, store: FeedStore) -> None:
        self._store = store
        self._seen = store._notified
        self.closed = False

    def wait(self, timeout: float) -> bool:
        changed = self._store._changed
        with changed:
            changed.wait_for(lambda: self._store._notified != self._seen, timeout)
            woken = self._store._notified != self._seen
            self._seen = self._store._notified
            return woken

    def close(self) -> None:
        self.closed = True


class FeedStore(InMemoryKeyStore):
    """An in-memory store with a change feed.

    :param listening: ``listen()`` returns a :class:`Listener` (as PostgreSQL
        does); otherwise ``None`` (the feed is polled).
    :param delay: Seconds each call of the key store sleeps first (outside
        any lock): a slow database. The feed is not slowed.
    :param connections: Calls at once, the feed's included, as a pool of
        database connections allows (``None``: any number). A call that finds
        none free within 5 s raises OSError, as a pool's timeout does.
    """

    def __init__(
        self,
        *,
        listening: bool = False,
        delay: float = 0.0,
        connections: int | None = None,
    ) -> None:
        super().__init__()
        self._pool = (
            None if connections is None else threading.BoundedSemaphore(connections)
        )
        self.listening = listening
        self.delay = delay
        #: Every call of the feed raises OSError while set.
        self.feed_failing = False
        #: The next reads of the feed answer ``complete=False`` while set.
        self.feed_incomplete = False
        #: Every call but the feed's raises OSError while set.
        self.failing = False
        #: Every call but the feed's blocks until cleared while set.
        self.hanging = threading.Event()
        self.hanging.set()  # set: not hanging
        self.calls: dict[str, int] = {}
        self.listeners: list[Listener] = []
        self._log: list[str] = []
        self._changed = threading.Condition()
        self._notified = 0

    # -- the feed -------------------------------------------------------------

    def changes_since(self, cursor: int | None) -> Changes:
        self._count("changes_since")
        with self._connection():
            pass
        if self.feed_failing:
            raise OSError("change log unreadable")
        with self._changed:
            head = len(self._log)
            if cursor is None:
                return Changes(head, ())
            if self.feed_incomplete:
                return Changes(head, (), complete=False)
            return Changes(head, tuple(self._log[cursor:]))

    def listen(self) -> Listener | None:
        self._count("listen")
        if not self.listening:
            return None
        listener = Listener(self)
        self.listeners.append(listener)
        return listener

    def log_change(self, key_id: str) -> None:
        """Log a change of *key_id* (as the store does in the same transaction)."""
        with self._changed:
            self._log.append(key_id)
            self._notified += 1
            self._changed.notify_all()

    # -- the store, slowed or broken at will, logging its changes --------------

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    @contextlib.contextmanager
    def _connection(self) -> Iterator[None]:
        if self._pool is None:
            yield
            return
        if not self._pool.acquire(timeout=5):
            raise OSError("no connection free in the pool")
        try:
            yield
        finally:
            self._pool.release()

    def _enter(self, name: str) -> None:
        self._count(name)
        if self.delay:
            with self._connection():
                time.sleep(self.delay)
        self.hanging.wait(60)
        if self.failing:
            raise OSError("key store is down")

    def add(self, record: ApiKey, key_hash: str) -> None:
        self._enter("add")
        super().add(record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        self._enter("get")
        return super().get(key_id)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        self._enter("find_by_prefix")
        return super().find_by_prefix(prefix)

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        self._enter("list")
        return super().list(project_id, include_revoked=include_revoked)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._enter("set_hash")
        super().set_hash(key_id, key_hash)

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        self._enter("revoke")
        record = super().revoke(key_id, revoked_at=revoked_at, revoked_by=revoked_by)
        if record is not None:
            self.log_change(record.id)
        return record

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        self._enter("set_expiry")
        record = super().set_expiry(key_id, expires_at)
        if record is not None:
            self.log_change(record.id)
        return record

    def roll(self, old_key_id: str, new_key_id: str, **kwargs: Any) -> ApiKey | None:
        self._enter("roll")
        record = super().roll(old_key_id, new_key_id, **kwargs)
        if record is not None:
            self.log_change(old_key_id)
            self.log_change(new_key_id)
        return record

    def record_use(self, stamps: Any) -> None:
        self._enter("record_use")
        super().record_use(stamps)


class SlowStore:
    """Wraps a store, without its change feed: each call sleeps *delay*
    seconds first (outside any lock), as a slow or distant database does."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        time.sleep(self.delay)
        return getattr(self.inner, name)(*args, **kwargs)

    def add(self, record: ApiKey, key_hash: str) -> None:
        self._call("add", record, key_hash)

    def get(self, key_id: str) -> Any:
        return self._call("get", key_id)

    def find_by_prefix(self, prefix: str) -> Any:
        return self._call("find_by_prefix", prefix)

    def list(self, project_id: str, *, include_revoked: bool = False) -> Any:
        return self._call("list", project_id, include_revoked=include_revoked)

    def revoke(self, key_id: str, *, revoked_at: Any, revoked_by: Any) -> Any:
        return self._call(
            "revoke", key_id, revoked_at=revoked_at, revoked_by=revoked_by
        )

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._call("set_hash", key_id, key_hash)

    def record_use(self, stamps: Any) -> None:
        self._call("record_use", stamps)
