"""A key store in a dict: for tests and single-process applications."""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import overload

from .._fork import reset_in_child
from ..errors import DuplicatePrefix
from ..records import ApiKey
from .base import ChangeListener, KeyChanges, _check_cursor

__all__ = ["InMemoryKeyStore"]

# Change feed entries kept, at most; the oldest half goes when there are more.
# A reader reads about once a second, so it is never that far behind.
_MAX_CHANGES = 10_000


class InMemoryKeyStore:
    """Keeps key records in process memory; everything is lost when it ends.

    Thread-safe: every method runs under one :class:`threading.Lock`, so it can
    serve a threaded WSGI server. It is not shared between processes: a child
    made by ``os.fork()`` starts with a copy of the keys, and a lock of its
    own, free even if another thread of the parent held it at the fork.

    Implements every optional protocol, the change feed
    (:class:`~vemetric_auth.ChangeFeedKeyStore`) included: the ids of the
    last 10,000 changes, in memory; it has no listener (:meth:`listen`
    returns ``None``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ApiKey] = {}
        self._hashes: dict[str, str] = {}
        self._ids_by_prefix: dict[str, str] = {}
        # The change feed: (position, key id) in order of position; entries
        # at or below _pruned_through were dropped.
        self._changes: list[tuple[int, str]] = []
        self._change_position = 0
        self._pruned_through = 0
        reset_in_child(self)

    def _after_fork(self) -> None:
        # The thread that held the lock at the fork is not in the child.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<InMemoryKeyStore keys={len(self._records)}>"

    def add(self, record: ApiKey, key_hash: str) -> None:
        """Store a new record; see :meth:`KeyStore.add`."""
        with self._lock:
            if record.prefix in self._ids_by_prefix:
                raise DuplicatePrefix(f"a key with prefix {record.prefix} exists")
            if record.id in self._records:
                raise ValueError(f"a key with id {record.id!r} exists")
            self._records[record.id] = record
            self._hashes[record.id] = key_hash
            self._ids_by_prefix[record.prefix] = record.id

    def get(self, key_id: str) -> ApiKey | None:
        """Return the record *key_id*, or ``None``."""
        with self._lock:
            return self._records.get(key_id)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        """Return the record with this display prefix and its hash, or ``None``."""
        with self._lock:
            key_id = self._ids_by_prefix.get(prefix)
            if key_id is None:
                return None
            return self._records[key_id], self._hashes[key_id]

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the project's records newest first; ``[]`` if it has none."""
        with self._lock:
            found = [
                record
                for record in self._records.values()
                if record.project_id == project_id
                and (include_revoked or record.revoked_at is None)
            ]
        found.sort(key=lambda record: record.created_at, reverse=True)
        return found

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        """Revoke *key_id* once; return the stored record, or ``None`` if unknown."""
        with self._lock:
            record = self._records.get(key_id)
            if record is None or record.revoked_at is not None:
                return record
            record = dataclasses.replace(
                record, revoked_at=revoked_at, revoked_by=revoked_by
            )
            self._records[key_id] = record
            self._record_changes(key_id)
            return record

    def set_hash(self, key_id: str, key_hash: str) -> None:
        """Replace the hash of *key_id*; nothing happens if it is unknown."""
        with self._lock:
            if key_id in self._hashes:
                self._hashes[key_id] = key_hash

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        """Set the expiry of an unrevoked *key_id*; see :meth:`RollingKeyStore.set_expiry`.

        :raises ValueError: *expires_at* is naive. Nothing is changed then.
        """
        expires_at = _utc(expires_at, "expires_at")
        with self._lock:
            record = self._records.get(key_id)
            if record is None or record.revoked_at is not None:
                return record
            record = dataclasses.replace(record, expires_at=expires_at)
            self._records[key_id] = record
            self._record_changes(key_id)
            return record

    def roll(
        self,
        old_key_id: str,
        new_key_id: str,
        *,
        new_expires_at: datetime | None,
        old_expires_at: datetime | None,
        revoked_at: datetime | None,
        revoked_by: str | None,
    ) -> ApiKey | None:
        """Activate *new_key_id* and retire *old_key_id* under the lock.

        See :meth:`RollingKeyStore.roll`: returns the old record as stored
        afterwards, ``None`` if either id is unknown.

        :raises ValueError: either record is revoked, the ids are the same,
            or a datetime is naive. Nothing is changed then.
        """
        new_expires_at = _utc(new_expires_at, "new_expires_at")
        old_expires_at = _utc(old_expires_at, "old_expires_at")
        revoked_at = _utc(revoked_at, "revoked_at")
        if old_key_id == new_key_id:
            raise ValueError("a key can not be rolled over to itself")
        with self._lock:
            old = self._records.get(old_key_id)
            new = self._records.get(new_key_id)
            if old is None or new is None:
                return None
            if old.revoked_at is not None:
                raise ValueError("the key to roll is revoked")
            if new.revoked_at is not None:
                raise ValueError("the new key is revoked")
            changed = [new_key_id]
            if revoked_at is not None:
                old = dataclasses.replace(
                    old, revoked_at=revoked_at, revoked_by=revoked_by
                )
                changed.append(old_key_id)
            elif old_expires_at is not None and (
                old.expires_at is None or old_expires_at < old.expires_at
            ):
                old = dataclasses.replace(old, expires_at=old_expires_at)
                changed.append(old_key_id)
            self._records[new_key_id] = dataclasses.replace(
                new, expires_at=new_expires_at
            )
            self._records[old_key_id] = old
            self._record_changes(*changed)
            return old

    def record_use(self, stamps: Mapping[str, datetime]) -> None:
        """Record last use, never moving a stamp backwards; unknown ids are ignored.

        :raises ValueError: a stamp is naive. Nothing is changed then.
        """
        utc_stamps = {
            key_id: _utc(stamp, "a last-use stamp") for key_id, stamp in stamps.items()
        }
        with self._lock:
            for key_id, stamp in utc_stamps.items():
                record = self._records.get(key_id)
                if record is None:
                    continue
                if record.last_used_at is None or record.last_used_at < stamp:
                    self._records[key_id] = dataclasses.replace(
                        record, last_used_at=stamp
                    )

    def changes_since(self, cursor: int | None) -> KeyChanges:
        """Return the keys changed after *cursor*; see
        :meth:`ChangeFeedKeyStore.changes_since
        <vemetric_auth.ChangeFeedKeyStore.changes_since>`.

        ``complete`` is ``False`` for a cursor older than the last 10,000
        changes, or newer than any this store gave.

        :raises TypeError: *cursor* is not an int or ``None``.
        :raises ValueError: *cursor* is negative.
        """
        cursor = _check_cursor(cursor)
        with self._lock:
            head = self._change_position
            if cursor is None:
                return KeyChanges(head, (), True)
            start = bisect.bisect_right(
                self._changes, cursor, key=lambda change: change[0]
            )
            key_ids = tuple(key_id for _, key_id in self._changes[start:])
            complete = self._pruned_through <= cursor <= head
        return KeyChanges(head, key_ids, complete)

    def listen(self) -> ChangeListener | None:
        """Return ``None``: changes are read by polling :meth:`changes_since`."""
        return None

    def _record_changes(self, *key_ids: str) -> None:
        # Called under the lock, with the change it records.
        for key_id in key_ids:
            self._change_position += 1
            self._changes.append((self._change_position, key_id))
        if len(self._changes) > _MAX_CHANGES:
            dropped = len(self._changes) - _MAX_CHANGES // 2
            self._pruned_through = self._changes[dropped - 1][0]
            del self._changes[:dropped]


@overload
def _utc(moment: datetime, what: str) -> datetime: ...
@overload
def _utc(moment: None, what: str) -> None: ...
@overload
def _utc(moment: datetime | None, what: str) -> datetime | None: ...
def _utc(moment: datetime | None, what: str) -> datetime | None:
    """Return *moment* in UTC, as the SQL store gives datetimes back.

    :raises TypeError: not a datetime.
    :raises ValueError: a naive datetime.
    """
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        raise TypeError(f"{what} must be a datetime")
    if moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return moment.astimezone(timezone.utc)
