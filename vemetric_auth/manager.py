"""Creating, listing, revoking and authenticating API keys."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import queue
import re
import threading
import time
import unicodedata
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ._http import bearer_token
from .errors import (
    DuplicatePrefix,
    InvalidApiKey,
    InvalidApiKeyFormat,
    KeyNotFound,
    StoreUnavailable,
)
from .hashing import default_hasher
from .keys import display_prefix, generate_key, holds_key, is_valid_format
from .records import MAX_ID_LENGTH, MAX_NAME_LENGTH, ApiKey, IssuedKey
from .stores.base import KeyStore

__all__ = ["KeyManager"]

logger = logging.getLogger("vemetric_auth")

# A fresh key collides with a stored display prefix with a chance of about
# n / 36**8 for n stored keys; ten draws in a row are never all taken.
_CREATE_ATTEMPTS = 10
_T = TypeVar("_T")
# The first 12 characters of a key: a key, or its display prefix, given as an id.
_KEY_START = re.compile(r"vem_[a-z0-9]{8}")
# Threads for store reads on the request path: as many lookups as this may be
# waiting on a database at once; more wait their turn within store_timeout.
_LOOKUP_THREADS = 16
# Calls that may wait for one of those threads; past that, 503 at once.
_LOOKUP_BACKLOG = 256


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

    .. code-block:: python

        keys = KeyManager(InMemoryKeyStore())
        issued = keys.create("proj_1", "Production dashboard")
        print(issued.key)  # shown this once
        record = keys.authenticate(issued.key)
        assert record.project_id == "proj_1"

    Security: the plaintext key is in the :class:`IssuedKey` that
    :meth:`create` returns and nowhere else; stores see only its display
    prefix and argon2 hash, and the cache of verified keys is indexed by a
    SHA-256 digest of the key. Log records carry key ids and display
    prefixes, never keys.
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
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, (int, float)):
            raise TypeError("cache_ttl must be a number of seconds")
        if not (math.isfinite(cache_ttl) and cache_ttl >= 0):
            raise ValueError("cache_ttl must be a finite number of seconds, 0 or more")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int):
            raise TypeError("cache_size must be an int")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        if max_verifications is None:
            max_verifications = os.cpu_count() or 1
        if isinstance(max_verifications, bool) or not isinstance(
            max_verifications, int
        ):
            raise TypeError("max_verifications must be an int")
        if max_verifications < 1:
            raise ValueError("max_verifications must be at least 1")
        if store_timeout is not None:
            if isinstance(store_timeout, bool) or not isinstance(
                store_timeout, (int, float)
            ):
                raise TypeError("store_timeout must be a number of seconds or None")
            if not (math.isfinite(store_timeout) and store_timeout > 0):
                raise ValueError("store_timeout must be a finite number of seconds > 0")
        if hasher is not None and not isinstance(hasher, PasswordHasher):
            raise TypeError("hasher must be an argon2.PasswordHasher")
        self._store = store
        self._hasher = default_hasher() if hasher is None else hasher
        self._cache_ttl = float(cache_ttl)
        self._cache = _VerifiedKeys(cache_size)
        self._max_verifications = max_verifications
        self._argon2 = _Workers(max_verifications, "vemetric-auth-argon2")
        self._store_timeout = store_timeout
        self._lookups = (
            None
            if store_timeout is None
            else _Workers(
                _LOOKUP_THREADS, "vemetric-auth-store", backlog=_LOOKUP_BACKLOG
            )
        )
        self._in_flight = _InFlight()
        self._clock_lock = threading.Lock()
        self._last_created: datetime | None = None
        _ALL_MANAGERS.add(self)

    def _after_fork(self) -> None:
        # Another thread of the parent may have held any of these, or been in
        # the middle of a cache update: the child starts them afresh.
        self._in_flight = _InFlight()
        self._clock_lock = threading.Lock()
        self._cache = _VerifiedKeys(self._cache.size)

    def __repr__(self) -> str:
        return f"<KeyManager store={self._store!r} cache_ttl={self._cache_ttl}>"

    @property
    def store(self) -> KeyStore:
        """The key store this manager reads and writes."""
        return self._store

    @property
    def hasher(self) -> PasswordHasher:
        """The argon2 hasher new keys are hashed with."""
        return self._hasher

    @property
    def cache_ttl(self) -> float:
        """Seconds a verified key is served before its record is read again."""
        return self._cache_ttl

    @property
    def store_timeout(self) -> float | None:
        """Seconds a request waits for the store before it is answered 503."""
        return self._store_timeout

    @property
    def max_verifications(self) -> int:
        """How many argon2 computations may run at once."""
        return self._max_verifications

    # -- management --------------------------------------------------------

    def create(
        self, project_id: str, name: str, *, created_by: str | None = None
    ) -> IssuedKey:
        """Create a key for *project_id* and return it with its record.

        The plaintext is in the returned :attr:`IssuedKey.key` only: show it to
        its owner once. *name* is stored trimmed.

        :raises ValueError: an empty or over-long *project_id*, a *name* that is
            empty or over 100 characters once trimmed or has control
            characters, an over-long *created_by*, or any of them holding an
            API key. Nothing is stored.
        :raises StoreUnavailable: the store failed, or did not answer within
            :attr:`store_timeout`. The key was shown to no one; should the
            store still write it later, it is revoked as soon as it does.
        """
        project_id = _check_id(project_id, "project_id")
        name = _check_name(name)
        if created_by is not None:
            created_by = _check_actor(created_by, "created_by")
        created_at = self._creation_time()
        for _ in range(_CREATE_ATTEMPTS):
            key = generate_key()
            record = ApiKey(
                id=uuid.uuid4().hex,
                project_id=project_id,
                name=name,
                prefix=display_prefix(key),
                created_at=created_at,
                created_by=created_by,
            )
            key_hash = self._argon2.run(self._hasher.hash, key)
            try:
                self._call_store(
                    self._deadline(),
                    self._store.add,
                    record,
                    key_hash,
                    late=functools.partial(self._revoke_unseen, record),
                )
            except DuplicatePrefix:
                logger.info("prefix %s is taken, drawing another key", record.prefix)
                continue
            except Exception as exc:
                logger.warning("key store failed while creating a key", exc_info=True)
                raise StoreUnavailable() from exc
            logger.info(
                "created key %s (%s) for project %s",
                record.id,
                record.prefix,
                record.project_id,
            )
            return IssuedKey(key=key, record=record)
        raise StoreUnavailable(f"no free key prefix after {_CREATE_ATTEMPTS} attempts")

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the keys of *project_id*, newest first.

        Revoked keys are left out unless *include_revoked*. An unknown project
        has no keys: the result is ``[]``.

        :raises ValueError: an empty *project_id*.
        :raises StoreUnavailable: the store failed or did not answer within
            :attr:`store_timeout`.
        """
        project_id = _check_id(project_id, "project_id")
        try:
            return self._call_store(
                self._deadline(),
                functools.partial(self._store.list, include_revoked=include_revoked),
                project_id,
            )
        except Exception as exc:
            logger.warning("key store failed while listing keys", exc_info=True)
            raise StoreUnavailable() from exc

    def get(self, key_id: str) -> ApiKey:
        """Return the record *key_id*.

        :raises KeyNotFound: no key has this id.
        :raises ValueError: *key_id* holds an API key; see :meth:`revoke`.
        :raises StoreUnavailable: the store failed.
        """
        key_id = _check_key_id(key_id)
        try:
            record = self._call_store(self._deadline(), self._store.get, key_id)
        except Exception as exc:
            logger.warning("key store failed while reading a key", exc_info=True)
            raise StoreUnavailable() from exc
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
        :raises ValueError: an over-long *revoked_by*, or a *key_id* that holds
            an API key (the key itself, pasted where its id belongs): it is
            refused before it reaches the store, and not repeated.
        :raises StoreUnavailable: the store failed; the key may or may not be
            revoked, and is re-checked on its next use here.
        """
        key_id = _check_key_id(key_id)
        if revoked_by is not None:
            revoked_by = _check_actor(revoked_by, "revoked_by")
        # Forget the key before and after the write: a verification running
        # meanwhile can not put it back (see _VerifiedKeys.put).
        self._cache.forget(key_id)
        try:
            record = self._call_store(
                self._deadline(),
                functools.partial(
                    self._store.revoke, revoked_at=_utcnow(), revoked_by=revoked_by
                ),
                key_id,
                # A revocation that lands after its timeout must still evict a
                # verification cached in between.
                late=lambda landed: self._cache.forget(key_id),
            )
        except Exception as exc:
            logger.warning("key store failed while revoking a key", exc_info=True)
            raise StoreUnavailable() from exc
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
            the cache; nothing was verified.
        """
        if not is_valid_format(key):
            raise InvalidApiKeyFormat()
        return self._authenticate(key)

    def authenticate_header(self, header: str | None) -> ApiKey:
        """Return the record of the key an ``Authorization`` header carries.

        This is the whole credential check of the HTTP contract.

        :raises MissingApiKey, MalformedAuthorizationHeader, InvalidApiKeyFormat:
            the header is absent or wrong; no store or hasher was used.
        :raises InvalidApiKey: no active key matches.
        :raises StoreUnavailable: the store failed.
        """
        return self._authenticate(bearer_token(header))

    def _authenticate(self, key: str) -> ApiKey:
        digest = hashlib.sha256(key.encode()).digest()
        entry = self._cache.get(digest)
        if entry is not None and time.monotonic() < entry[1]:
            return entry[0]
        return self._authenticate_cold(key, digest)

    def _authenticate_cold(self, key: str, digest: bytes) -> ApiKey:
        # One deadline for the whole request: waiting for another request of
        # the same key, then for the store. Requests queued behind a hung
        # store then fail within store_timeout too, not one after another.
        timeout = self._store_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._in_flight.turn(digest, timeout) as got_turn:
            if not got_turn:
                logger.warning(
                    "timed out waiting for another request of the same key, "
                    "answering 503"
                )
                raise StoreUnavailable()
            entry = self._cache.get(digest)
            if entry is None:
                return self._verify(key, digest, deadline)
            if time.monotonic() < entry[1]:
                return entry[0]
            return self._recheck(digest, entry[0], deadline)

    def _verify(self, key: str, digest: bytes, deadline: float | None) -> ApiKey:
        prefix = display_prefix(key)
        generation = self._cache.generation
        # Freshness counts from the read, not from the end of the verification.
        read_at = time.monotonic()
        try:
            found = self._call_store(deadline, self._store.find_by_prefix, prefix)
        except Exception:
            logger.warning("key store failed, answering 503", exc_info=True)
            raise StoreUnavailable() from None
        if found is None:
            logger.info("rejected unknown key %s", prefix)
            raise InvalidApiKey()
        record, key_hash = found
        if record.revoked_at is not None:
            logger.info("rejected revoked key %s (%s)", record.id, prefix)
            raise InvalidApiKey()
        try:
            new_hash = self._argon2.run(self._check, key_hash, key)
        except VerifyMismatchError:
            logger.info("rejected wrong secret for key %s (%s)", record.id, prefix)
            raise InvalidApiKey() from None
        except (VerificationError, InvalidHashError):
            logger.error("stored hash of key %s can not be verified", record.id)
            raise InvalidApiKey() from None
        except Exception:
            # Not an answer about the key (the workers are shutting down, say):
            # fail closed, as for a store failure.
            logger.warning(
                "could not verify key %s, answering 503", record.id, exc_info=True
            )
            raise StoreUnavailable() from None
        if new_hash is not None:
            try:
                self._call_store(deadline, self._store.set_hash, record.id, new_hash)
            except Exception:
                # The key is verified; a stale hash only costs a rehash later.
                logger.warning("could not store the new hash of key %s", record.id)
            else:
                logger.info("rehashed key %s with the current parameters", record.id)
        self._cache.put(digest, record, read_at + self._cache_ttl, generation)
        logger.debug("authenticated key %s (%s)", record.id, prefix)
        return record

    def _deadline(self) -> float | None:
        if self._store_timeout is None:
            return None
        return time.monotonic() + self._store_timeout

    def _call_store(
        self,
        deadline: float | None,
        method: Callable[..., _T],
        *args: Any,
        late: Callable[[_T], object] | None = None,
    ) -> _T:
        """Call a store method, answered before *deadline*.

        :param late: Called with the result if the store answers after all.
        :raises TimeoutError: the deadline passed first.
        """
        if self._lookups is None or deadline is None:
            return method(*args)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no time left for the store")
        return self._lookups.run(method, *args, timeout=remaining, late=late)

    def _check(self, key_hash: str, key: str) -> str | None:
        """Verify *key* against *key_hash*; return a new hash if it needs one."""
        self._hasher.verify(key_hash, key)
        if self._hasher.check_needs_rehash(key_hash):
            return self._hasher.hash(key)
        return None

    def _recheck(self, digest: bytes, cached: ApiKey, deadline: float | None) -> ApiKey:
        generation = self._cache.generation
        read_at = time.monotonic()
        try:
            record = self._call_store(deadline, self._store.get, cached.id)
        except Exception:
            logger.warning("key store failed, answering 503", exc_info=True)
            raise StoreUnavailable() from None
        if record is None or record.revoked_at is not None:
            self._cache.forget(cached.id)
            logger.info("rejected revoked key %s (%s)", cached.id, cached.prefix)
            raise InvalidApiKey()
        self._cache.put(digest, record, read_at + self._cache_ttl, generation)
        return record

    def _creation_time(self) -> datetime:
        # Strictly increasing within a process, so "newest first" has no ties.
        with self._clock_lock:
            now = _utcnow()
            if self._last_created is not None and now <= self._last_created:
                now = self._last_created + timedelta(microseconds=1)
            self._last_created = now
            return now


class _InFlight:
    """Lets requests for one key digest take turns, and nothing else wait.

    A burst of first requests for a key then runs argon2 once, while requests
    for other keys go on in parallel. Turns are created on demand and dropped
    when nobody waits, so the table only holds keys being checked right now.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[bytes, list[Any]] = {}  # digest -> [lock, users]

    @contextlib.contextmanager
    def turn(self, digest: bytes, timeout: float | None) -> Iterator[bool]:
        """Wait for this digest's turn, at most *timeout* seconds; yield whether
        it came."""
        with self._lock:
            turn = self._turns.get(digest)
            if turn is None:
                turn = self._turns[digest] = [threading.Lock(), 0]
            turn[1] += 1
        lock: threading.Lock = turn[0]
        got = lock.acquire(timeout=-1 if timeout is None else timeout)
        try:
            yield got
        finally:
            if got:
                lock.release()
            with self._lock:
                turn[1] -= 1
                if turn[1] == 0:
                    del self._turns[digest]


class _Workers:
    """Runs calls on at most *size* dedicated daemon threads, callers waiting
    their turn.

    For argon2, besides bounding how many computations run at once, keeping
    them on a few threads bounds memory: the allocator keeps the memory an
    argon2 run used in the arena of the thread that ran it, so argon2 on every
    request thread of a busy server would pin memory_cost per request thread.
    For store calls, it lets a caller give up on a store that does not answer;
    *backlog* then bounds how many calls may wait for a thread, so a hung
    store costs no memory per request beyond that. The threads are daemons,
    so a call stuck in a hung store never keeps the process from exiting.
    """

    def __init__(self, size: int, name: str, *, backlog: int | None = None) -> None:
        self._size = size
        self._name = name
        self._backlog = backlog
        self._reset()
        _ALL_WORKERS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]
        ] = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._pending = 0

    def _after_fork(self) -> None:
        # The child has none of the parent's threads, and none of its queue.
        self._reset()

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        """Queue ``fn(*args)`` for a worker thread.

        :raises TimeoutError: the backlog is full.
        """
        future: Future[_T] = Future()
        with self._lock:
            if (
                self._backlog is not None
                and self._pending >= self._size + self._backlog
            ):
                raise TimeoutError("all store threads are busy")
            self._pending += 1
            self._queue.put((future, fn, args))
            if self._idle == 0 and self._threads < self._size:
                self._threads += 1
                threading.Thread(
                    target=self._work,
                    name=f"{self._name}-{self._threads}",
                    daemon=True,
                ).start()
            elif self._idle > 0:
                self._idle -= 1
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._pending -= 1
                self._idle += 1

    def run(
        self,
        fn: Callable[..., _T],
        *args: Any,
        timeout: float | None = None,
        late: Callable[[_T], object] | None = None,
    ) -> _T:
        """Return ``fn(*args)``, run on a worker thread.

        :param late: Called with the result if the call completes after the
            caller gave up on it.
        :raises TimeoutError: no result within *timeout* seconds, or the
            backlog is full. The call is dropped if it had not started; one
            that did runs on, unwaited.
        """
        future = self.submit(fn, *args)
        try:
            return future.result(timeout)
        except FuturesTimeout:
            if not future.cancel() and late is not None:
                future.add_done_callback(functools.partial(_call_late, late))
            raise TimeoutError(f"no answer within {timeout} seconds") from None


def _call_late(late: Callable[[Any], object], future: Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    try:
        late(future.result())
    except Exception:
        logger.warning("could not finish a store call that timed out", exc_info=True)


_ALL_WORKERS: weakref.WeakSet[_Workers] = weakref.WeakSet()


_ALL_MANAGERS: weakref.WeakSet[KeyManager] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A forked child (a pre-forking server) has only the thread that forked:
    # give each pool an executor of its own, and make new the locks another
    # thread of the parent may have held at the fork.
    for workers in list(_ALL_WORKERS):
        workers._after_fork()
    for manager in list(_ALL_MANAGERS):
        manager._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


class _VerifiedKeys:
    """Keys verified by this process: digest -> (record, monotonic deadline).

    An LRU of bounded size, protected by a :class:`threading.Lock`. Indexed by
    the key's SHA-256 digest, never the key; looking a digest up reveals
    nothing of a key through timing, since the digest of a guess can not be
    steered towards a stored one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[ApiKey, float]] = OrderedDict()
        self._digests: dict[str, bytes] = {}
        #: Bumped by every :meth:`forget`; a put that started before one is
        #: dropped, so a revocation can not be undone by a verification that
        #: read the record before it.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> tuple[ApiKey, float] | None:
        # Read without the lock: each OrderedDict operation is atomic under
        # the GIL, and this is the per-request path. Writers hold the lock.
        entry = self._entries.get(digest)
        if entry is not None:
            # (try/except rather than contextlib.suppress: cheaper per request)
            try:  # noqa: SIM105
                self._entries.move_to_end(digest)
            except KeyError:  # evicted by another thread in between
                pass
        return entry

    def put(
        self, digest: bytes, record: ApiKey, fresh_until: float, generation: int
    ) -> None:
        with self._lock:
            if generation != self.generation:
                return
            self._entries[digest] = (record, fresh_until)
            self._entries.move_to_end(digest)
            self._digests[record.id] = digest
            while len(self._entries) > self.size:
                _, (old, _) = self._entries.popitem(last=False)
                self._digests.pop(old.id, None)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            digest = self._digests.pop(key_id, None)
            if digest is not None:
                self._entries.pop(digest, None)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} must be at most {MAX_ID_LENGTH} characters")
    if _has_control(value):
        raise ValueError(f"{what} must not contain control characters")
    if holds_key(value):
        raise ValueError(f"{what} must not contain an API key")
    return value


def _check_key_id(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("key_id must be a str")
    # A display prefix given as an id is refused as well: ids never start so.
    if _KEY_START.search(value) or holds_key(value):
        raise ValueError(
            "that is an API key, not a key id: give the id that list shows"
        )
    return value


def _check_name(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("name must be a str")
    name = value.strip()
    if not name:
        raise ValueError("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}"
        )
    if _has_control(name):
        raise ValueError("name must not contain control characters")
    if holds_key(name):
        raise ValueError("name must not contain an API key")
    return name


def _check_actor(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None")
    return _check_id(value, what)


def _has_control(value: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in value)
