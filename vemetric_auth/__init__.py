"""Vemetric-style API keys for Flask and any WSGI application.

Keys look like ``vem_`` followed by 32 characters from ``[a-z0-9]``, are sent
as ``Authorization: Bearer <key>``, are stored only as argon2id hashes, and
each gives access to exactly one project.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthError,
    DuplicatePrefix,
    InvalidApiKey,
    InvalidApiKeyFormat,
    KeyNotFound,
    MalformedAuthorizationHeader,
    MissingApiKey,
    StoreUnavailable,
)
from .keys import display_prefix, generate_key, is_valid_format
from .manager import KeyManager
from .middleware import ApiKeyMiddleware
from .records import ApiKey, IssuedKey
from .stores import (
    ChangeFeedKeyStore,
    ChangeListener,
    InMemoryKeyStore,
    KeyChanges,
    KeyStore,
    RollingKeyStore,
    UsageRecordingKeyStore,
)

if TYPE_CHECKING:
    from .stores.sql import SQLKeyStore

# A library's logger stays silent until the application configures logging.
logging.getLogger("vemetric_auth").addHandler(logging.NullHandler())

__all__ = [
    "ApiKey",
    "ApiKeyMiddleware",
    "AuthError",
    "ChangeFeedKeyStore",
    "ChangeListener",
    "DuplicatePrefix",
    "InMemoryKeyStore",
    "InvalidApiKey",
    "InvalidApiKeyFormat",
    "IssuedKey",
    "KeyChanges",
    "KeyManager",
    "KeyNotFound",
    "KeyStore",
    "MalformedAuthorizationHeader",
    "MissingApiKey",
    "RollingKeyStore",
    "SQLKeyStore",
    "StoreUnavailable",
    "UsageRecordingKeyStore",
    "display_prefix",
    "generate_key",
    "is_valid_format",
]


def __getattr__(name: str) -> Any:
    # SQLAlchemy is an extra: import it only when the SQL store is asked for.
    if name == "SQLKeyStore":
        from ._extras import sql_key_store

        return sql_key_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
