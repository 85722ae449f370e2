"""The API key format: ``vem_`` followed by 32 characters from ``[a-z0-9]``."""

from __future__ import annotations

import re
import secrets

__all__ = [
    "ALPHABET",
    "KEY_LENGTH",
    "KEY_PREFIX",
    "LOOKUP_PREFIX_LENGTH",
    "display_prefix",
    "generate_key",
    "holds_key",
    "is_valid_format",
]

#: Every key starts with this marker.
KEY_PREFIX = "vem_"
#: The characters of the random part of a key.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
#: Length of a whole key, marker included.
KEY_LENGTH = 36
#: How many leading characters of a key identify its record. They are shown in
#: lists and logs, so the secret a key carries is the 24 characters after them.
LOOKUP_PREFIX_LENGTH = 12

_SECRET_LENGTH = KEY_LENGTH - len(KEY_PREFIX)
_FORMAT = re.compile(r"vem_[a-z0-9]{32}")
_KEY_ANYWHERE = re.compile(r"vem_[a-z0-9]{32}")


def generate_key() -> str:
    """Return a new random API key.

    The 32 characters after ``vem_`` come from the operating system's CSPRNG
    through :mod:`secrets`: about 165 bits of entropy.
    """
    return KEY_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(_SECRET_LENGTH))


def is_valid_format(key: object) -> bool:
    """Tell whether *key* is a string of the API key format.

    Only the shape is checked: ``vem_`` then exactly 32 of ``[a-z0-9]``, with
    nothing around it. Whether such a key exists is for
    :meth:`~vemetric_auth.KeyManager.authenticate` to say.
    """
    return (
        type(key) is str
        and len(key) == KEY_LENGTH
        and _FORMAT.fullmatch(key) is not None
    )


def display_prefix(key: str) -> str:
    """Return what may be shown of *key*: its first 12 characters and ``...``.

    :raises ValueError: if *key* is not of the API key format. The message
        never contains the key.
    """
    if not is_valid_format(key):
        raise ValueError("not an API key of the vem_ format") from None
    return key[:LOOKUP_PREFIX_LENGTH] + "..."


def holds_key(text: str) -> bool:
    """Tell whether an API key stands anywhere in *text*.

    For refusing a key pasted where a name or an id belongs, before it reaches
    a store, a log or an error message. Text that merely starts like a key,
    such as ``"vem_analytics"``, is not one.
    """
    return _KEY_ANYWHERE.search(text) is not None
