"""The key store protocols: what :class:`~vemetric_auth.KeyManager` needs of a store.

:class:`KeyStore` is what every store implements. The key lifecycle needs more
of a store, in optional protocols of their own, so that a store written for
:class:`KeyStore` alone keeps working for everything else:

- :class:`RollingKeyStore`: changing a key's expiry, and rolling a key in one
  step (``KeyManager.roll``);
- :class:`UsageRecordingKeyStore`: recording when keys were last used;
- :class:`ChangeFeedKeyStore`: telling which keys were revoked, rolled, or had
  their expiry changed since a cursor (:class:`KeyChanges`), and optionally
  waking its reader when that happens (:class:`ChangeListener`), so that every
  process refuses a revoked key within a second, not after ``cache_ttl``.

All are :func:`~typing.runtime_checkable`: ``isinstance(store,
RollingKeyStore)`` tells whether a store has the methods (not whether they
work: :class:`vemetric_auth.testing.KeyStoreContract` checks that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..records import ApiKey

__all__ = [
    "DEFAULT_TABLE_NAME",
    "ChangeFeedKeyStore",
    "ChangeListener",
    "KeyChanges",
    "KeyStore",
    "RollingKeyStore",
    "UsageRecordingKeyStore",
]

#: The table a SQL key store keeps keys in unless told otherwise.
DEFAULT_TABLE_NAME = "vemetric_api_keys"


@runtime_checkable
class KeyStore(Protocol):
    """Where key records and their argon2 hashes live.

    A backend needs nothing from this package but :class:`~vemetric_auth.ApiKey`
    and :class:`~vemetric_auth.DuplicatePrefix`; it does not have to subclass
    this protocol. The plaintext key never reaches a store: it sees records,
    display prefixes, ids and hashes only.

    Every method may be called from many threads at once. Any exception a
    method raises, other than the ones named below, means the store failed:
    the request is then answered ``503``, never ``401`` and never let through.
    Check a backend with :class:`vemetric_auth.testing.KeyStoreContract`.
    The key lifecycle needs more methods, in the optional protocols
    :class:`RollingKeyStore` and :class:`UsageRecordingKeyStore`; revocation
    within a second in every process needs :class:`ChangeFeedKeyStore`.
    """

    def add(self, record: ApiKey, key_hash: str) -> None:
        """Store a new *record* with the argon2 hash of its key.

        Every field of the record is kept, :attr:`~ApiKey.expires_at` and
        :attr:`~ApiKey.last_used_at` included: a key created with an expiry
        must come back with it from :meth:`get`, :meth:`find_by_prefix` and
        :meth:`list`, or it would never expire.

        :raises DuplicatePrefix: if a stored record, revoked or not, has the
            same :attr:`~ApiKey.prefix`. Nothing is stored then.
        """
        ...

    def get(self, key_id: str) -> ApiKey | None:
        """Return the record with id *key_id*, or ``None`` if there is none."""
        ...

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        """Return the record whose display prefix is *prefix* and its hash.

        Revoked records are returned too. Returns ``None`` if no record has
        this prefix. This runs on every uncached request: keep it one indexed
        lookup.
        """
        ...

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the records of *project_id*, newest first (by ``created_at``).

        Revoked records are left out unless *include_revoked*. Returns an
        empty list for a project with no keys.
        """
        ...

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        """Mark the record *key_id* revoked, at once and for good.

        A record that is already revoked is left as it is. Returns the record
        as stored afterwards, or ``None`` if there is no record with this id.
        Two callers racing to revoke the same key both get the same record.
        """
        ...

    def set_hash(self, key_id: str, key_hash: str) -> None:
        """Replace the stored hash of *key_id*, after a rehash.

        Does nothing if there is no record with this id.
        """
        ...


@runtime_checkable
class RollingKeyStore(Protocol):
    """A store that can change a key's expiry and roll a key over to a new one.

    Optional: :meth:`KeyManager.roll <vemetric_auth.KeyManager.roll>` and
    pending creation need it; a store without it works for everything else.
    Both methods may be called from many threads and processes at once; a
    datetime they are given is timezone-aware (a store may refuse a naive one
    with :exc:`ValueError`, changing nothing). The contract suite calls this
    capability ``"roll"``.
    """

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        """Set the :attr:`~ApiKey.expires_at` of the unrevoked record *key_id*.

        *expires_at* ``None`` means the key never expires; a time in the past
        is stored as given. This is how a key created inactive (already
        expired) is activated, and how an expiry is changed.

        A revoked record is left as it is. Returns the record as stored
        afterwards (so a revoked one unchanged), or ``None`` if there is no
        record with this id. Nothing but ``expires_at`` changes.
        """
        ...

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
        """Activate the new key and retire the old one, both or neither.

        Atomically (in one transaction, or under one lock):

        - the record *new_key_id* gets ``expires_at = new_expires_at``,
          which activates a key created inactive;
        - the record *old_key_id* is retired: with *revoked_at* given, it is
          revoked then, by *revoked_by* (its expiry kept); otherwise it
          expires at the earlier of its own ``expires_at`` and
          *old_expires_at* (``None`` counting as never, so with both
          ``None`` it keeps not expiring). *revoked_by* without *revoked_at*
          is ignored.

        Returns the old record as stored afterwards. Returns ``None``, and
        changes nothing, if either id has no record.

        :raises ValueError: the old or the new record is revoked, or both ids
            are the same. Nothing is changed then. Two callers racing to roll
            the same key with a revocation: one succeeds, the other gets
            :exc:`ValueError`.
        """
        ...


@runtime_checkable
class UsageRecordingKeyStore(Protocol):
    """A store that records when keys were last used.

    Optional: without it, :attr:`ApiKey.last_used_at` is simply not recorded.
    The contract suite calls this capability ``"record_use"``.
    """

    def record_use(self, stamps: Mapping[str, datetime]) -> None:
        """Record last use: *stamps* maps key ids to when each was last used.

        Each record's :attr:`~ApiKey.last_used_at` becomes its stamp, unless
        the stored one is later: a stamp never moves backwards, even when
        several processes record use of the same key at once. Revoked and
        expired records are recorded too; ids with no record are ignored;
        nothing else of a record changes. Returns nothing, also when nothing
        was found.

        Called by a background thread with a batch of up to many thousands
        of stamps, about once a minute: keep it a few statements per batch
        (the SQL store sends one per 10,000 keys), not one per key. If it
        raises, nothing should have changed: the caller may send the batch
        again.
        """
        ...


@dataclasses.dataclass(frozen=True)
class KeyChanges:
    """What :meth:`ChangeFeedKeyStore.changes_since` found: the keys changed
    after a cursor, and the cursor to read on from.

    :raises TypeError: a field of the wrong type.
    """

    #: Where the next read starts: pass it to the next
    #: :meth:`~ChangeFeedKeyStore.changes_since`. Opaque to the caller.
    cursor: int
    #: The ids of the keys revoked, rolled, or whose expiry changed after the
    #: cursor that was given, oldest change first. An id may appear more than
    #: once, and again in a later read: forgetting a key twice is harmless.
    key_ids: tuple[str, ...]
    #: ``False`` when changes may have been missed: the cursor given is older
    #: than what the store still keeps (or is not one of its cursors). The
    #: caller must then forget every key it verified, as if all had changed.
    complete: bool

    def __post_init__(self) -> None:
        if isinstance(self.cursor, bool) or not isinstance(self.cursor, int):
            raise TypeError("KeyChanges.cursor must be an int")
        if not isinstance(self.key_ids, tuple) or not all(
            isinstance(key_id, str) for key_id in self.key_ids
        ):
            raise TypeError("KeyChanges.key_ids must be a tuple of key ids (str)")
        if not isinstance(self.complete, bool):
            raise TypeError("KeyChanges.complete must be True or False")


@runtime_checkable
class ChangeListener(Protocol):
    """Wakes the reader of a change feed as soon as a change may have been made.

    Returned by :meth:`ChangeFeedKeyStore.listen`. A hint only: the reader
    still reads :meth:`~ChangeFeedKeyStore.changes_since`, which is the truth.
    One thread waits at a time; :meth:`close` may be called from any thread.
    """

    def wait(self, timeout: float) -> bool:
        """Block for up to *timeout* seconds, until a change may have been made.

        Returns ``True`` if one may have been (read the feed now), ``False``
        if the time ran out with none, or the listener is closed. Never
        raises for a failing connection: it returns ``True`` instead, since
        changes may have been missed, and keeps trying to listen again; while
        it can not, it returns ``True`` about once a second, so its reader
        falls back to polling.
        """
        ...

    def close(self) -> None:
        """Stop listening and release the connection; a wait in progress returns.

        Idempotent.
        """
        ...


@runtime_checkable
class ChangeFeedKeyStore(Protocol):
    """A store that tells which keys changed since a cursor: a change feed.

    Optional: :class:`~vemetric_auth.KeyManager` reads it about once a second
    in a background thread and forgets the keys it returns, so that a key
    revoked in any process is refused by every other process within about a
    second. Without it, another process refuses a revoked key within its
    ``cache_ttl``. The contract suite calls this capability ``"changes"``.

    Every :meth:`~KeyStore.revoke` that revokes, :meth:`~RollingKeyStore.roll`
    and :meth:`~RollingKeyStore.set_expiry` that changes a record must be
    recorded, atomically with the change (a change is never visible without
    its entry). Creating keys, rehashing and recording last use are not
    changes. Old entries may be dropped: a cursor older than what is kept
    then reads ``complete=False``.
    """

    def changes_since(self, cursor: int | None) -> KeyChanges:
        """Return the keys changed after *cursor*, and the cursor to continue from.

        *cursor* ``None`` returns the current position (no key ids,
        ``complete=True``): where a new reader starts, before it trusts
        anything it verifies. Otherwise *cursor* is one a previous call
        returned; a change recorded after that call is in the result (a
        store must not miss one that commits late, e.g. a transaction that
        took its place in the log before another but committed after it).
        ``complete`` is ``False`` if changes after *cursor* may be missing.

        Called about once a second by every process: keep it one small
        indexed read, whatever the number of keys (the SQL store reads a
        range of its change log's primary key).

        :raises TypeError: *cursor* is not an int or ``None``.
        :raises ValueError: *cursor* is negative.
        """
        ...

    def listen(self) -> ChangeListener | None:
        """Return a new :class:`ChangeListener` that wakes on changes, or ``None``.

        ``None`` when the store can not push changes: its reader then polls
        :meth:`changes_since`. Never raises for a failing database: the
        listener connects, and reconnects, in its :meth:`~ChangeListener.wait`.
        The caller closes what it gets.
        """
        ...


def _check_cursor(cursor: object) -> int | None:
    """Return the *cursor* given to ``changes_since`` if it may be one.

    :raises TypeError: not an int or ``None``.
    :raises ValueError: negative.
    """
    if cursor is None:
        return None
    if isinstance(cursor, bool) or not isinstance(cursor, int):
        raise TypeError("cursor must be an int (from changes_since) or None")
    if cursor < 0:
        raise ValueError("cursor must not be negative")
    return cursor
