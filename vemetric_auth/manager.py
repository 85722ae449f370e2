"""Creating, listing, revoking and authenticating API keys."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

from argon2 import PasswordHasher

from ._argon2 import Argon2Threads
from ._cache import VerifiedKeys
from ._fork import reset_in_child
from ._secret import Secret
from ._store_calls import StoreCalls
from ._verifier import Verifier
from .errors import (
    DuplicatePrefix,
    InvalidApiKeyFormat,
    KeyNotFound,
    StoreUnavailable,
)
from .hashing import default_hasher
from .keys import KEY_LENGTH, display_prefix, generate_key, is_valid_format
from .records import (
    ApiKey,
    IssuedKey,
    _check_actor,
    _check_id,
    _check_key_id,
    _check_name,
)
from .stores.base import KeyStore

__all__ = ["KeyManager"]

logger = logging.getLogger("vemetric_auth")

# A fresh key collides with a stored display prefix with a chance of about
# n / 36**8 for n stored keys; ten draws in a row are never all taken.
_CREATE_ATTEMPTS = 10


class KeyManager:
    """Creates, lists, revokes and authenticates API keys kept in a store.

    :param store: Where records and hashes live, any :class:`KeyStore`.
    :param hasher: The :class:`argon2.PasswordHasher` new keys are hashed
        with. ``None`` means :data:`vemetric_auth.hashing.DEFAULT_PARAMETERS`.
        Hashes made with other parameters still verify, and are replaced by
        one of this hasher's after their first successful verification.
    :param cache_ttl: Seconds a verified key is served from memory before its
        record is read again (one lookup, no argon2) to see whether it was
        revoked elsewhere. ``0`` reads it on every request.
    :param cache_size: How many verified keys are remembered, least recently
        used first out.
    :param max_verifications: How many argon2 computations may run at once;
        ``None`` means the number of CPUs. Others wait their turn, which
        bounds the memory a flood of wrong secrets can take. Cached keys
        never wait.
    :param store_timeout: Seconds a request (or a create, list, get or
        revoke) waits for the store's answer before it is answered ``503``
        (:class:`StoreUnavailable`), whatever the store does: a database that
        stops answering can not hang the request threads. Store calls then run
        on a few threads of their own. ``None`` calls the store directly and
        relies on its own timeouts.

    argon2 and store calls run on a few daemon threads of the manager's own,
    started on demand. Each ends after 30 seconds without work, so a manager
    dropped without :meth:`close` keeps none for long; :meth:`close`, or
    leaving a ``with KeyManager(...) as keys:`` block, ends them at once.

    .. code-block:: python

        with KeyManager(InMemoryKeyStore()) as keys:
            issued = keys.create("proj_1", "Production dashboard")
            print(issued.key)  # shown this once
            record = keys.authenticate(issued.key)
            assert record.project_id == "proj_1"

    Security: the plaintext key is in the :class:`IssuedKey` that
    :meth:`create` returns and nowhere else; stores see only its display
    prefix and argon2 hash, and the cache of verified keys is indexed by a
    SHA-256 digest of the key. Log records carry key ids and display
    prefixes, never keys, and no frame of a traceback the manager logs or
    raises holds the key in a local variable.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        hasher: PasswordHasher | None = None,
        cache_ttl: float = 60.0,
        cache_size: int = 10_000,
        max_verifications: int | None = None,
        store_timeout: float | None = 5.0,
    ) -> None:
        if hasher is not None and not isinstance(hasher, PasswordHasher):
            raise TypeError("hasher must be an argon2.PasswordHasher")
        if max_verifications is None:
            max_verifications = os.cpu_count() or 1
        self._cache_ttl = float(_setting("cache_ttl", cache_ttl))
        cache_size = _setting("cache_size", cache_size, whole=True, least=1)
        self._max_verifications: int = _setting(
            "max_verifications", max_verifications, whole=True, least=1
        )
        if store_timeout is not None:
            store_timeout = _setting("store_timeout", store_timeout, above=True)
        self._store = store
        self._call_store: StoreCalls = StoreCalls(store, store_timeout)
        self._argon2 = Argon2Threads(
            default_hasher() if hasher is None else hasher, self._max_verifications
        )
        self._cache = VerifiedKeys(cache_size)
        self._verifier = Verifier(
            self._call_store, self._argon2, self._cache, self._cache_ttl
        )
        self._clock_lock = threading.Lock()
        self._last_created: datetime | None = None
        self._closed = False
        reset_in_child(self)

    def _after_fork(self) -> None:
        # Another thread of the parent may have held it at the fork. (The
        # cache, turns and threads reset themselves.)
        self._clock_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<KeyManager store={self._store!r} cache_ttl={self._cache_ttl}>"

    @property
    def store(self) -> KeyStore:
        """The key store this manager reads and writes."""
        return self._store

    @property
    def hasher(self) -> PasswordHasher:
        """The argon2 hasher new keys are hashed with."""
        return self._argon2.hasher

    @property
    def cache_ttl(self) -> float:
        """Seconds a verified key is served before its record is read again."""
        return self._cache_ttl

    @property
    def store_timeout(self) -> float | None:
        """Seconds a request waits for the store before it is answered 503."""
        return self._call_store.timeout

    @property
    def max_verifications(self) -> int:
        """How many argon2 computations may run at once."""
        return self._max_verifications

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Stop the manager's threads and forget the keys it verified.

        Waits for argon2 and store calls already running to end, at most
        :attr:`store_timeout` seconds; calls not yet started are dropped.
        Closing again does nothing. The store is left open: it may be shared.

        A closed manager refuses every later call that would need the store
        or argon2, :meth:`authenticate` included, with
        :class:`StoreUnavailable` (``503`` over HTTP): it never lets a request
        through, and the HTTP layer answers as for a store outage.
        """
        if self._closed:
            return
        self._closed = True
        self._cache.close()
        self._argon2.close(self._call_store.timeout)
        self._call_store.close(self._call_store.timeout)

    def __enter__(self) -> KeyManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise StoreUnavailable("this KeyManager is closed")

    # -- management --------------------------------------------------------

    def create(
        self, project_id: str, name: str, *, created_by: str | None = None
    ) -> IssuedKey:
        """Create a key for *project_id* and return it with its record.

        The plaintext is in the returned :attr:`IssuedKey.key` only: show it to
        its owner once. *name* is stored trimmed.

        :raises ValueError: an empty or over-long *project_id*, a *name* that is
            empty or over 100 characters once trimmed or has control
            characters, an over-long *created_by*, any of them holding an API
            key or a lone surrogate. Nothing is stored.
        :raises StoreUnavailable: the store failed, or did not answer within
            :attr:`store_timeout`, or the manager is closed. The key was shown
            to no one; should the store still write it later, it is revoked as
            soon as it does.
        """
        project_id = _check_id(project_id, "project_id")
        name = _check_name(name)
        if created_by is not None:
            created_by = _check_actor(created_by, "created_by")
        self._refuse_if_closed()
        created_at = self._creation_time()
        for _ in range(_CREATE_ATTEMPTS):
            secret = Secret(generate_key())
            record = ApiKey(
                id=uuid.uuid4().hex,
                project_id=project_id,
                name=name,
                prefix=display_prefix(secret.value),
                created_at=created_at,
                created_by=created_by,
            )
            key_hash = self._argon2.hash(secret)
            if key_hash is None:
                raise StoreUnavailable("argon2 could not hash the new key")
            try:
                self._call_store(
                    "creating a key",
                    self._store.add,
                    record,
                    key_hash,
                    late=functools.partial(self._revoke_unseen, record),
                    expected=DuplicatePrefix,
                )
            except DuplicatePrefix:
                logger.info("prefix %s is taken, drawing another key", record.prefix)
                continue
            logger.info(
                "created key %s (%s) for project %s",
                record.id,
                record.prefix,
                record.project_id,
            )
            return IssuedKey(key=secret.value, record=record)
        raise StoreUnavailable(f"no free key prefix after {_CREATE_ATTEMPTS} attempts")

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the keys of *project_id*, newest first.

        Revoked keys are left out unless *include_revoked*. An unknown project
        has no keys: the result is ``[]``.

        :raises ValueError: an empty or over-long *project_id*, or one with a
            control character or a lone surrogate.
        :raises StoreUnavailable: the store failed or did not answer within
            :attr:`store_timeout`.
        """
        project_id = _check_id(project_id, "project_id")
        self._refuse_if_closed()
        return self._call_store(
            "listing keys",
            functools.partial(self._store.list, include_revoked=include_revoked),
            project_id,
        )

    def get(self, key_id: str) -> ApiKey:
        """Return the record *key_id*.

        :raises KeyNotFound: no key has this id.
        :raises ValueError: *key_id* holds an API key (see :meth:`revoke`), a
            control character or a lone surrogate.
        :raises StoreUnavailable: the store failed.
        """
        key_id = _check_key_id(key_id)
        self._refuse_if_closed()
        record = self._call_store("reading a key", self._store.get, key_id)
        if record is None:
            raise KeyNotFound()
        return record

    def revoke(self, key_id: str, *, revoked_by: str | None = None) -> ApiKey:
        """Revoke *key_id* for good and return its record.

        The key fails this manager's very next :meth:`authenticate`; other
        processes sharing the store stop accepting it within :attr:`cache_ttl`
        seconds. Revoking a revoked key changes nothing and returns its record
        as it is.

        :raises KeyNotFound: no key has this id.
        :raises ValueError: an over-long *revoked_by*, a *key_id* with a control
            character or a lone surrogate, or one that holds an API key (the
            key itself, pasted where its id belongs): it is refused before it
            reaches the store, and not repeated.
        :raises StoreUnavailable: the store failed; the key may or may not be
            revoked, and is re-checked on its next use here.
        """
        key_id = _check_key_id(key_id)
        if revoked_by is not None:
            revoked_by = _check_actor(revoked_by, "revoked_by")
        self._refuse_if_closed()
        # Forget the key before and after the write: a verification running
        # meanwhile can not put it back (see VerifiedKeys.put).
        self._cache.forget(key_id)
        try:
            record = self._call_store(
                "revoking a key",
                functools.partial(
                    self._store.revoke, revoked_at=_utcnow(), revoked_by=revoked_by
                ),
                key_id,
                # A revocation that lands after its timeout must still evict a
                # verification cached in between.
                late=lambda landed: self._cache.forget(key_id),
            )
        finally:
            self._cache.forget(key_id)
        if record is None:
            raise KeyNotFound()
        # The store may match ids in its own way (a case-insensitive column):
        # evict under the id it answered with too.
        self._cache.forget(record.id)
        logger.info("revoked key %s (%s)", record.id, record.prefix)
        return record

    def _revoke_unseen(self, record: ApiKey, _: object) -> None:
        """Revoke a key whose creation the caller gave up on: nobody has it."""
        self._store.revoke(
            record.id,
            revoked_at=_utcnow(),
            revoked_by="vemetric-auth: created after its request timed out",
        )
        logger.warning("revoked key %s: stored after its creation timed out", record.id)

    # -- authentication ----------------------------------------------------

    def authenticate(self, key: str) -> ApiKey:
        """Return the record of *key* if it is a valid, active key.

        :raises InvalidApiKeyFormat: *key* is not of the ``vem_`` format.
        :raises InvalidApiKey: no active key matches.
        :raises StoreUnavailable: the store failed and the key is not fresh in
            the cache, or the manager is closed; nothing was verified.
        """
        if not is_valid_format(key):
            del key  # out of this frame, which the error's traceback keeps
            raise InvalidApiKeyFormat()
        # What follows is _authenticate_token's body: calling it would keep
        # the key in this frame while an error passes through.
        digest = hashlib.sha256(key.encode()).digest()
        entry = self._cache.get(digest)
        if entry is not None and time.monotonic() < entry[1]:
            return entry[0]
        secret = Secret(key)
        del key
        self._refuse_if_closed()
        return self._verifier.verify(secret, digest)

    def cached(self, key: str) -> ApiKey | None:
        """Return the record of *key* if this manager verified it lately and
        its cache entry is still fresh; ``None`` otherwise.

        Never waits: no store, no argon2, no lock. It is what an event loop
        may ask inline before it hands :meth:`authenticate` to a thread.
        ``None`` says nothing of the key (unknown, stale, not of the format,
        or the manager closed): only :meth:`authenticate` decides.
        """
        # Only keys of the format are ever cached: anything else of their
        # length misses (no regular expression needed), and lone surrogates
        # cannot be encoded.
        if type(key) is not str or len(key) != KEY_LENGTH:
            return None
        try:
            digest = hashlib.sha256(key.encode()).digest()
        except UnicodeEncodeError:
            return None
        entry = self._cache.get(digest)
        if entry is not None and time.monotonic() < entry[1]:
            return entry[0]
        return None

    def _authenticate_token(self, key: str) -> ApiKey:
        """:meth:`authenticate` for a key known to be of the format: the token
        the HTTP layer read from a request."""
        digest = hashlib.sha256(key.encode()).digest()
        entry = self._cache.get(digest)
        if entry is not None and time.monotonic() < entry[1]:
            return entry[0]
        # The cold path: from here on the key travels hidden, and this frame,
        # which any error below passes through, no longer holds it.
        secret = Secret(key)
        del key
        self._refuse_if_closed()
        return self._verifier.verify(secret, digest)

    def _creation_time(self) -> datetime:
        # Strictly increasing within a process, so "newest first" has no ties.
        with self._clock_lock:
            now = _utcnow()
            if self._last_created is not None and now <= self._last_created:
                now = self._last_created + timedelta(microseconds=1)
            self._last_created = now
            return now


def _setting(
    name: str, value: Any, *, whole: bool = False, least: float = 0, above: bool = False
) -> Any:
    """Return the argument *value* if it is a number (an int if *whole*) of
    at least *least* (more than it if *above*); else raise TypeError or
    ValueError naming it. Each setting is checked once, here, at construction.
    """
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise TypeError(
            f"{name} must be {'an int' if whole else 'a number of seconds'}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds")
    if value < least or (above and value == least):
        raise ValueError(
            f"{name} must be {'more than' if above else 'at least'} {least}"
        )
    return value


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
