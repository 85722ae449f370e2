"""A key store of your own: every record and hash in one JSON file.

A backend is any class with the six methods of ``vemetric_auth.KeyStore``.
This one also has the methods of the optional protocols the key lifecycle
needs: ``set_expiry`` and ``roll`` (``vemetric_auth.RollingKeyStore``, for
``KeyManager.roll``) and ``record_use`` (``vemetric_auth.UsageRecordingKeyStore``,
for ``ApiKey.last_used_at``), and the change feed (``changes_since`` and
``listen``, ``vemetric_auth.ChangeFeedKeyStore``) through which managers learn
within a second of keys revoked, rolled or given a new expiry, rather than
after their ``cache_ttl``. It imports nothing private, and proves itself with
the contract tests the shipped stores pass, those of the optional methods
included (``tests/test_examples.py`` runs them on this one)::

    import pytest
    from vemetric_auth.testing import KeyStoreContract
    from custom_store import JSONFileKeyStore

    class TestJSONFileKeyStore(KeyStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return JSONFileKeyStore(tmp_path / "keys.json")

Use it like any store, e.g. behind the middleware of ``wsgi_app.py``::

    keys = KeyManager(JSONFileKeyStore("keys.json"))
    app = ApiKeyMiddleware(app, keys)

    curl -i -H "Authorization: Bearer vem_..." http://127.0.0.1:8000/

Run this file to try it: ``python examples/custom_store.py keys.json``
creates a key in ``keys.json`` and checks it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from vemetric_auth import ApiKey, ChangeListener, DuplicatePrefix, KeyChanges

_FORMAT_VERSION = 1
# Changes the feed keeps; a reader further behind reads complete=False.
_KEPT_CHANGES = 1_000


class JSONFileKeyStore:
    """Keeps key records and their argon2 hashes in a JSON file.

    Thread-safe: every method runs under one :class:`threading.Lock`, and a
    change is written to a temporary file that then replaces the old one
    (:func:`os.replace`), so the file is never seen half-written, even after
    a crash. The memory copy changes only once the file did: a failed write
    raises (the request is answered ``503``) and changes nothing.

    For one process: two processes writing the same file would lose each
    other's changes. Share keys between processes with ``SQLKeyStore``.
    A file written by vemetric-auth 0.1 (records without ``expires_at`` and
    ``last_used_at``) is read as it is.

    The change feed is kept in memory, beside the file: the ids of the last
    1,000 keys this store changed. That is all a feed needs in one process;
    a store shared by processes must keep it where they all see it, written
    with the change itself (``SQLKeyStore`` has a change log table).

    :param path: The JSON file; created on the first change if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        # id -> (record, hash); the file is read once, then kept in sync.
        self._entries: dict[str, tuple[ApiKey, str]] = self._read()
        # The change feed: the ids of the keys changed, oldest first, after
        # the first _dropped changes; a cursor counts changes.
        self._changes: list[str] = []
        self._dropped = 0

    def __repr__(self) -> str:
        return f"<JSONFileKeyStore {str(self._path)!r}>"

    # -- the KeyStore protocol --------------------------------------------

    def add(self, record: ApiKey, key_hash: str) -> None:
        """Store a new record; :class:`DuplicatePrefix` if its prefix is taken."""
        with self._lock:
            if any(r.prefix == record.prefix for r, _ in self._entries.values()):
                raise DuplicatePrefix(f"a key with prefix {record.prefix} exists")
            if record.id in self._entries:
                raise ValueError(f"a key with id {record.id!r} exists")
            self._commit({**self._entries, record.id: (record, key_hash)})

    def get(self, key_id: str) -> ApiKey | None:
        """Return the record *key_id*, or ``None`` if there is none."""
        with self._lock:
            entry = self._entries.get(key_id)
        return None if entry is None else entry[0]

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        """Return the record with this display prefix and its hash, or ``None``."""
        with self._lock:
            # A scan: fine for the few hundred keys a file holds.
            for record, key_hash in self._entries.values():
                if record.prefix == prefix:
                    return record, key_hash
        return None

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the project's records newest first; ``[]`` if it has none."""
        with self._lock:
            found = [
                record
                for record, _ in self._entries.values()
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
            entry = self._entries.get(key_id)
            if entry is None:
                return None
            record, key_hash = entry
            if record.revoked_at is not None:
                return record
            record = dataclasses.replace(
                record, revoked_at=revoked_at, revoked_by=revoked_by
            )
            self._commit({**self._entries, key_id: (record, key_hash)}, [key_id])
            return record

    def set_hash(self, key_id: str, key_hash: str) -> None:
        """Replace the hash of *key_id*; nothing happens if it is unknown."""
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is not None:
                self._commit({**self._entries, key_id: (entry[0], key_hash)})

    # -- the optional protocols: RollingKeyStore, UsageRecordingKeyStore,
    # -- ChangeFeedKeyStore ----------------------------------------------------

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        """Set the expiry of an unrevoked key; return the stored record or ``None``."""
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is None:
                return None
            record, key_hash = entry
            if record.revoked_at is not None:
                return record
            record = dataclasses.replace(record, expires_at=expires_at)
            self._commit({**self._entries, key_id: (record, key_hash)}, [key_id])
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
        """Activate the new key and retire the old one in one write of the file.

        Returns the old record as stored afterwards, ``None`` if either key is
        unknown; :class:`ValueError` if either is revoked.
        """
        if old_key_id == new_key_id:
            raise ValueError("a key can not be rolled over to itself")
        with self._lock:
            old_entry = self._entries.get(old_key_id)
            new_entry = self._entries.get(new_key_id)
            if old_entry is None or new_entry is None:
                return None
            (old, old_hash), (new, new_hash) = old_entry, new_entry
            if old.revoked_at is not None:
                raise ValueError("the key to roll is revoked")
            if new.revoked_at is not None:
                raise ValueError("the new key is revoked")
            if revoked_at is not None:
                old = dataclasses.replace(
                    old, revoked_at=revoked_at, revoked_by=revoked_by
                )
            elif old_expires_at is not None and (
                old.expires_at is None or old_expires_at < old.expires_at
            ):
                old = dataclasses.replace(old, expires_at=old_expires_at)
            new = dataclasses.replace(new, expires_at=new_expires_at)
            # One commit: the file holds both changes or neither.
            self._commit(
                {
                    **self._entries,
                    old_key_id: (old, old_hash),
                    new_key_id: (new, new_hash),
                },
                [old_key_id, new_key_id],
            )
            return old

    def record_use(self, stamps: Mapping[str, datetime]) -> None:
        """Record last use, never moving a stamp backwards; unknown ids are ignored."""
        with self._lock:
            entries = dict(self._entries)
            for key_id, stamp in stamps.items():
                entry = entries.get(key_id)
                if entry is None:
                    continue
                record, key_hash = entry
                if record.last_used_at is None or record.last_used_at < stamp:
                    record = dataclasses.replace(record, last_used_at=stamp)
                    entries[key_id] = (record, key_hash)
            if entries != self._entries:
                self._commit(entries)

    def changes_since(self, cursor: int | None) -> KeyChanges:
        """Return the ids of the keys changed after *cursor*, and the new cursor.

        ``None`` gives the current cursor. ``complete`` is ``False`` for a
        cursor older than the changes kept (or one this store never gave).
        """
        if cursor is not None and (
            isinstance(cursor, bool) or not isinstance(cursor, int)
        ):
            raise TypeError("cursor must be an int or None")
        if cursor is not None and cursor < 0:
            raise ValueError("cursor must not be negative")
        with self._lock:
            head = self._dropped + len(self._changes)
            if cursor is None:
                return KeyChanges(head, (), True)
            key_ids = tuple(self._changes[max(cursor - self._dropped, 0) :])
            return KeyChanges(head, key_ids, self._dropped <= cursor <= head)

    def listen(self) -> ChangeListener | None:
        """``None``: nothing pushes changes, the feed is read by polling."""
        return None

    # -- the file -----------------------------------------------------------

    def _read(self) -> dict[str, tuple[ApiKey, str]]:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        document = json.loads(text)
        if document.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{self._path}: not a key file of version 1")
        entries = {}
        for item in document["keys"]:
            record = _record_from_dict(item["record"])
            entries[record.id] = (record, item["hash"])
        return entries

    def _commit(
        self, entries: dict[str, tuple[ApiKey, str]], changed: list[str] | None = None
    ) -> None:
        """Write *entries* to the file, then keep them, and log the keys
        *changed* in the feed: all of it, or nothing if the write fails."""
        document = {
            "version": _FORMAT_VERSION,
            "keys": [
                {"record": record.to_dict(), "hash": key_hash}
                for record, key_hash in entries.values()
            ],
        }
        # mkstemp makes the file readable by its owner only: it holds hashes.
        fd, temporary = tempfile.mkstemp(
            dir=self._path.parent, prefix=self._path.name, suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._entries = entries
        self._changes += changed or []
        if len(self._changes) > _KEPT_CHANGES:
            self._dropped += len(self._changes) - _KEPT_CHANGES
            del self._changes[:-_KEPT_CHANGES]


def _record_from_dict(data: dict[str, Any]) -> ApiKey:
    def moment(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    created_at = moment(data["created_at"])
    assert created_at is not None
    return ApiKey(
        id=data["id"],
        project_id=data["project_id"],
        name=data["name"],
        prefix=data["prefix"],
        created_at=created_at,
        created_by=data["created_by"],
        revoked_at=moment(data["revoked_at"]),
        revoked_by=data["revoked_by"],
        # Absent from the files of 0.1.
        expires_at=moment(data.get("expires_at")),
        last_used_at=moment(data.get("last_used_at")),
    )


if __name__ == "__main__":
    from vemetric_auth import KeyManager

    path = sys.argv[1] if len(sys.argv) > 1 else "keys.json"
    keys = KeyManager(JSONFileKeyStore(path))
    issued = keys.create("proj_demo", "custom store demo")
    print(issued.key)
    print(f"{path}: {keys.authenticate(issued.key)}")
