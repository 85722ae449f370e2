"""argon2 on a few threads of its own, every outcome returned as a value."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ._secret import Secret
from ._workers import Workers
from .errors import StoreUnavailable

__all__ = ["Argon2Threads", "Verdict"]

logger = logging.getLogger("vemetric_auth")

_T = TypeVar("_T")


class Verdict(enum.Enum):
    """What argon2 said of a key."""

    #: The key matches its hash.
    MATCH = enum.auto()
    #: Another secret.
    MISMATCH = enum.auto()
    #: The stored hash is not one argon2 can read.
    BAD_HASH = enum.auto()
    #: argon2 itself failed: no answer about the key.
    FAILED = enum.auto()


class Argon2Threads:
    """Hashes and verifies keys with *hasher*, at most *size* at once.

    The functions run on the threads return every outcome as a value, never
    as an exception: an exception raised in argon2 carries argon2's frames,
    whose locals hold the plaintext, into the caller's traceback and from
    there into logs and error reports.
    """

    def __init__(self, hasher: PasswordHasher, size: int) -> None:
        self.hasher = hasher
        self._workers = Workers(size, "vemetric-auth-argon2")

    def verify(self, key_hash: str, secret: Secret) -> tuple[Verdict, str | None]:
        """Return the verdict on the key, and a new hash if its hash needs one.

        :raises StoreUnavailable: the threads are closed.
        """
        return self._run(self._verify, key_hash, secret)

    def hash(self, secret: Secret) -> str | None:
        """Return the hash of a new key, or ``None`` if argon2 failed.

        :raises StoreUnavailable: the threads are closed.
        """
        return self._run(self._hash, secret)

    def close(self, timeout: float | None) -> None:
        """End the threads; see :meth:`Workers.close`."""
        self._workers.close(timeout)

    def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return self._workers.run(fn, *args)
        except (RuntimeError, CancelledError) as exc:
            # Closed, before or during the call: the threads are gone.
            raise StoreUnavailable("this KeyManager is closed") from exc
        except TimeoutError as exc:
            # No thread could be started for the call: fail closed, for now.
            raise StoreUnavailable("argon2 could not be run") from exc

    def _verify(self, key_hash: str, secret: Secret) -> tuple[Verdict, str | None]:
        hasher = self.hasher
        try:
            hasher.verify(key_hash, secret.value)
        except VerifyMismatchError:
            return Verdict.MISMATCH, None
        except (VerificationError, InvalidHashError):
            return Verdict.BAD_HASH, None
        except Exception as exc:
            logger.warning("argon2 failed to verify a key: %s", type(exc).__name__)
            return Verdict.FAILED, None
        try:
            if hasher.check_needs_rehash(key_hash):
                return Verdict.MATCH, hasher.hash(secret.value)
        except Exception as exc:
            # The key is verified; its old hash still serves.
            logger.warning("argon2 failed to rehash a key: %s", type(exc).__name__)
        return Verdict.MATCH, None

    def _hash(self, secret: Secret) -> str | None:
        try:
            return self.hasher.hash(secret.value)
        except Exception as exc:
            logger.error("argon2 failed to hash a new key: %s", type(exc).__name__)
            return None
