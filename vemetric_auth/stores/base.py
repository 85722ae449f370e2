"""The key store protocols: what :class:`~vemetric_auth.KeyManager` needs of a store.

:class:`KeyStore` is what every store implements. The key lifecycle needs more
of a store, in optional protocols of their own, so that a store written for
:class:`KeyStore` alone keeps working for everything else:

- :class:`RollingKeyStore`: changing a key's expiry, and rolling a key in one
  step (``KeyManager.roll``);
- :class:`UsageRecordingKeyStore`: recording when keys were last used.

All are :func:`~typing.runtime_checkable`: ``isinstance(store,
RollingKeyStore)`` tells whether a store has the methods (not whether they
work: :class:`vemetric_auth.testing.KeyStoreContract` checks that).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..records import ApiKey

__all__ = [
    "DEFAULT_TABLE_NAME",
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
    :class:`RollingKeyStore` and :class:`UsageRecordingKeyStore`.
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
