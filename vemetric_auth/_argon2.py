"""argon2 on a few threads of its own, every outcome returned as a value."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import CancelledError
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ._fair import FairWorkers
from ._secret import Secret
from ._workers import Closed
from .errors import StoreUnavailable

__all__ = ["Argon2Threads", "Verdict"]

logger = logging.getLogger("vemetric_auth")

_T = TypeVar("_T")
# The lane of hashes of new keys (see Argon2Threads.hash); a display prefix,
# the lane of a verification, is never empty.
_NEW_KEYS = ""


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

    The threads are shared fairly between keys: verifications wait in one
    lane per display prefix, and a thread that comes free serves the lanes
    in turn (see :class:`~vemetric_auth._fair.FairWorkers`). A flood of
    wrong secrets for one prefix then delays the first verification of
    another key by about one argon2 run, not by the whole flood. A caller
    waits for a thread until its deadline at most; a run that started is
    waited for (it ends by itself).

    The functions run on the threads return every outcome as a value, never
    as an exception: an exception raised in argon2 carries argon2's frames,
    whose locals hold the plaintext, into the caller's traceback and from
    there into logs and error reports.
    """

    def __init__(self, hasher: PasswordHasher, size: int) -> None:
        self.hasher = hasher
        self._workers = FairWorkers(size, "vemetric-auth-argon2")
        self._warned_at = -float("inf")

    def verify(
        self,
        key_hash: str,
        secret: Secret,
        *,
        lane: Hashable,
        deadline: float | None = None,
    ) -> tuple[Verdict, str | None]:
        """Return the verdict on the key, and a new hash if its hash needs one.

        :param lane: The key's display prefix: verifications of one prefix
            wait in line, and the prefixes take turns.
        :param deadline: When to give up (monotonic); ``None``: never.
        :raises StoreUnavailable: no answer before *deadline*, or the threads
            are closed.
        """
        return self._run(lane, deadline, self._verify, key_hash, secret)

    def hash(self, secret: Secret, *, deadline: float | None = None) -> str | None:
        """Return the hash of a new key, or ``None`` if argon2 failed.

        :raises StoreUnavailable: no answer before *deadline* (monotonic;
            ``None``: never), or the threads are closed.
        """
        return self._run(_NEW_KEYS, deadline, self._hash, secret)

    def stop(self) -> list[threading.Thread]:
        """Refuse new calls; see :meth:`FairWorkers.stop`."""
        return self._workers.stop()

    def close(self, timeout: float | None) -> None:
        """End the threads; see :meth:`FairWorkers.close`."""
        self._workers.close(timeout)

    def _run(
        self, lane: Hashable, deadline: float | None, fn: Callable[..., _T], *args: Any
    ) -> _T:
        timeout = None if deadline is None else deadline - time.monotonic()
        try:
            if timeout is not None and timeout <= 0:
                raise TimeoutError("no time left for argon2")
            return self._workers.run(lane, fn, *args, timeout=timeout)
        except (Closed, CancelledError) as exc:
            # Closed, before or during the call: the threads are gone.
            raise StoreUnavailable("this KeyManager is closed") from exc
        except TimeoutError as exc:
            # Busy with others (a flood), or no thread could be started:
            # fail closed, for now.
            self._warn_busy()
            raise StoreUnavailable("argon2 could not be run in time") from exc

    def _warn_busy(self) -> None:
        # Once a minute at most: a flood makes thousands of these. (No lock:
        # two threads logging it at once is no harm.)
        now = time.monotonic()
        if now < self._warned_at + 60.0:
            return
        self._warned_at = now
        logger.warning(
            "argon2 could not verify a key in time (all threads busy), answering "
            "503; logged once a minute at most"
        )

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
