"""The key store protocol: what :class:`~vemetric_auth.KeyManager` needs of one."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from ..records import ApiKey

__all__ = ["DEFAULT_TABLE_NAME", "KeyStore"]

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
    """

    def add(self, record: ApiKey, key_hash: str) -> None:
        """Store a new *record* with the argon2 hash of its key.

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
