"""The key record and the one-time result of creating a key."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any

from .keys import holds_key

__all__ = ["MAX_ID_LENGTH", "MAX_NAME_LENGTH", "ApiKey", "IssuedKey"]

#: Longest ``name`` of a key, in characters, once trimmed.
MAX_NAME_LENGTH = 100
#: Longest ``project_id``, ``created_by`` or ``revoked_by``, in characters.
MAX_ID_LENGTH = 255

# The first 12 characters of a key: a key, or its display prefix, given as an id.
_KEY_START = re.compile(r"vem_[a-z0-9]{8}")


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known of an API key, never its secret nor its hash.

    :param id: Opaque id of the record, not derived from the secret.
    :param project_id: The one project the key gives access to.
    :param name: What the key is for, 1 to 100 characters.
    :param prefix: The display prefix, e.g. ``vem_a1b2c3d4...``.
    :param created_at: When the key was created, timezone-aware UTC.
    :param created_by: Who created it, if known.
    :param revoked_at: When it was revoked; ``None`` while it is active.
    :param revoked_by: Who revoked it, if known.
    :param expires_at: When the key stops working, timezone-aware UTC;
        ``None``: never.
    :param last_used_at: When the key last authenticated a request, as far as
        the store knows (recorded at most about once a minute); ``None``:
        never, or not recorded.
    """

    id: str
    project_id: str
    name: str
    prefix: str
    created_at: datetime
    created_by: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked. A revoked key is never active again."""
        return self.revoked_at is not None

    @property
    def expired(self) -> bool:
        """Whether the key has expired, as of now: :attr:`expires_at` has come."""
        return self.expires_at is not None and (
            datetime.now(timezone.utc) >= self.expires_at
        )

    @property
    def active(self) -> bool:
        """Whether the key works, as of now: neither revoked nor expired."""
        return self.revoked_at is None and not self.expired

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data, datetimes in ISO 8601 UTC."""
        return {
            "id": self.id,
            "project_id": self.project_id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "revoked_at": _iso(self.revoked_at),
            "revoked_by": self.revoked_by,
            "expires_at": _iso(self.expires_at),
            "last_used_at": _iso(self.last_used_at),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedKey:
    """A newly created key: the plaintext :attr:`key`, shown this once, and its record.

    The key is left out of ``repr`` and ``str``, so logging this object never
    writes the secret.
    """

    key: str = dataclasses.field(repr=False)
    record: ApiKey

    def __reduce__(self) -> Any:
        # Pickling would carry the plaintext into caches and queues.
        raise TypeError("an IssuedKey holds a secret and cannot be pickled")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# -- checks of the fields a caller gives ------------------------------------------
#
# KeyManager runs them before any store call, so that bad input is a ValueError
# (or TypeError) with a clear message, never a store error or a half-written key.


def _check_id(value: object, what: str) -> str:
    """Return *value* if it can be a ``project_id``, ``created_by`` or ``revoked_by``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} must be at most {MAX_ID_LENGTH} characters")
    _check_text(value, what)
    if holds_key(value):
        raise ValueError(f"{what} must not contain an API key")
    return value


def _check_key_id(value: object) -> str:
    """Return *value* if it can be the id of a key record."""
    if not isinstance(value, str):
        raise TypeError("key_id must be a str")
    _check_text(value, "key_id")
    # A display prefix given as an id is refused as well: ids never start so.
    if _KEY_START.search(value) or holds_key(value):
        raise ValueError(
            "that is an API key, not a key id: give the id that list shows"
        )
    return value


def _check_name(value: object) -> str:
    """Return *value* trimmed if it can be the ``name`` of a key."""
    if not isinstance(value, str):
        raise TypeError("name must be a str")
    name = value.strip()
    if not name:
        raise ValueError("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}"
        )
    _check_text(name, "name")
    if holds_key(name):
        raise ValueError("name must not contain an API key")
    return name


def _check_actor(value: object, what: str) -> str:
    """Return *value* if it can say who created or revoked a key."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None")
    return _check_id(value, what)


def _check_text(value: str, what: str) -> None:
    # A lone surrogate (from a non-UTF-8 command line argument, say) can not
    # be encoded for any database; a NUL ends a C string in some drivers.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{what} must be valid Unicode text: it holds a lone surrogate"
        ) from None
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError(f"{what} must not contain control characters")
