"""Key store backends and the protocol they follow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DuplicatePrefix
from .base import (
    ChangeFeedKeyStore,
    ChangeListener,
    KeyChanges,
    KeyStore,
    RollingKeyStore,
    UsageRecordingKeyStore,
)
from .memory import InMemoryKeyStore

if TYPE_CHECKING:
    from .sql import SQLKeyStore

__all__ = [
    "ChangeFeedKeyStore",
    "ChangeListener",
    "DuplicatePrefix",
    "InMemoryKeyStore",
    "KeyChanges",
    "KeyStore",
    "RollingKeyStore",
    "SQLKeyStore",
    "UsageRecordingKeyStore",
]


def __getattr__(name: str) -> Any:
    # SQLAlchemy is an extra: import it only when the SQL store is asked for.
    if name == "SQLKeyStore":
        from .._extras import sql_key_store

        return sql_key_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
