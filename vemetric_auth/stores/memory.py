"""A key store in a dict: for tests and single-process applications."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime

from .._fork import reset_in_child
from ..errors import DuplicatePrefix
from ..records import ApiKey

__all__ = ["InMemoryKeyStore"]


class InMemoryKeyStore:
    """Keeps key records in process memory; everything is lost when it ends.

    Thread-safe: every method runs under one :class:`threading.Lock`, so it can
    serve a threaded WSGI server. It is not shared between processes: a child
    made by ``os.fork()`` starts with a copy of the keys, and a lock of its
    own, free even if another thread of the parent held it at the fork.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ApiKey] = {}
        self._hashes: dict[str, str] = {}
        self._ids_by_prefix: dict[str, str] = {}
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
            return record

    def set_hash(self, key_id: str, key_hash: str) -> None:
        """Replace the hash of *key_id*; nothing happens if it is unknown."""
        with self._lock:
            if key_id in self._hashes:
                self._hashes[key_id] = key_hash
