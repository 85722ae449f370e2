"""Creating, listing, revoking and authenticating API keys."""

from __future__ import annotations

import dataclasses
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
from typing import Any, cast

from argon2 import PasswordHasher

from ._argon2 import Argon2Threads
from ._cache import Verified, VerifiedKeys
from ._feed import ChangeFeed, has_change_feed
from ._fork import reset_in_child
from ._last_use import LastUse
from ._secret import Secret
from ._store_calls import StoreCalls
from ._verifier import Verifier
from ._workers import join_all
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
from .stores.base import KeyStore, RollingKeyStore

__all__ = ["KeyManager"]

logger = logging.getLogger("vemetric_auth")

# A fresh key collides with a stored display prefix with a chance of about
# n / 36**8 for n stored keys; ten draws in a row are never all taken.
_CREATE_ATTEMPTS = 10
# Who revoked a key whose activation failed, as the record says.
_NOT_ACTIVATED = "vemetric-auth: roll or creation did not complete"


@dataclasses.dataclass(frozen=True)
class _Pending:
    """What :meth:`KeyManager.activate` needs to finish a pending create or
    roll; nothing secret."""

    #: The new key as it is once active.
    record: ApiKey
    #: A roll's old key, as read before the new key was stored.
    old: ApiKey | None = None
    overlap: timedelta = timedelta(0)
    rolled_by: str | None = None


class KeyManager:
    """Creates, lists, revokes and authenticates API keys kept in a store.

    :param store: Where records and hashes live, any :class:`KeyStore`.
    :param hasher: The :class:`argon2.PasswordHasher` new keys are hashed
        with. ``None`` means :data:`vemetric_auth.hashing.DEFAULT_PARAMETERS`.
        Hashes made with other parameters still verify, and are replaced by
        one of this hasher's after their first successful verification.
    :param cache_ttl: Seconds a verified key is served from memory before its
        record is read again (one lookup, no argon2) to see whether it was
        revoked elsewhere. ``0`` reads it on every request. On a store with
        a change feed (see below) it is only the fallback bound, for when
        the feed can not be read. A key's expiry is not bounded by it: an
        expired key is refused from the instant its
        :attr:`~ApiKey.expires_at` comes, cached or not.
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
        relies on its own timeouts. argon2 waits for a thread as long at most.
    :param outage_grace: Seconds into an outage of the store that keys this
        process verified before are still served from memory (re-read
        in the background, answered as soon as the store is back); keys it
        never verified get ``503`` meanwhile. Counted from the last read of
        the change feed, so it needs a store with one; ``0`` turns it off.
        The default, 300 s, outlasts a database restart or failover, and is
        safe because no revocation can be written while the store is down,
        and the feed delivered every revocation made up to the outage. It is
        bounded because a process cut off from a store that others still
        write to (a network partition) would miss revocations for as long.

    On a store with a change feed (the SQL and in-memory stores; see
    :class:`~vemetric_auth.stores.base.ChangeFeedKeyStore`), a daemon thread
    of the manager's own reads the feed about twice a second, or at once
    when the store's listener says a change came (PostgreSQL's ``NOTIFY``),
    and evicts each key revoked, rolled or re-dated in any process: a key
    revoked anywhere is refused here within about a second, whatever
    :attr:`cache_ttl` is, at the cost of one small query per interval
    however many keys there are. A cached key older than ``cache_ttl`` is
    then still served, as the feed vouches for it, and re-read in the
    background. Should the feed fail, a WARNING says so (once per outage)
    and ``cache_ttl`` bounds again how long a revocation takes to show.

    Floods: lookups of keys this process never verified run on store
    threads of their own, so a flood of random keys never delays a key it
    knows; argon2 threads take turns between display prefixes, so a flood of
    wrong secrets for one key delays another key's first verification by
    about one argon2 run.

    argon2 and store calls run on a few daemon threads of the manager's own,
    started on demand. Each ends after 30 seconds without work, so a manager
    dropped without :meth:`close` keeps none for long; :meth:`close`, or
    leaving a ``with KeyManager(...) as keys:`` block, ends them at once.

    Each successful :meth:`authenticate` is a use of its key: the manager
    stamps it at most once a minute per key (a dict write on the request
    path, no I/O), and one more daemon thread writes the stamps to the
    store in one batch about a minute after the first of them, with the
    store's ``record_use``
    (:class:`~vemetric_auth.stores.base.UsageRecordingKeyStore`; a store
    without it records no last use, which is logged once at WARNING).
    :meth:`close` writes what is pending, and so does the end of the
    interpreter for a manager that was not closed; a crash loses at most
    about a minute of stamps.

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
        outage_grace: float = 300.0,
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
        self._outage_grace = float(_setting("outage_grace", outage_grace))
        self._store = store
        self._call_store: StoreCalls = StoreCalls(store, store_timeout)
        self._argon2 = Argon2Threads(
            default_hasher() if hasher is None else hasher, self._max_verifications
        )
        self._cache = VerifiedKeys(cache_size)
        self._last_use = LastUse(self._call_store)
        self._feed = (
            ChangeFeed(cast(Any, store), self._cache)
            if has_change_feed(store)
            else None
        )
        self._verifier = Verifier(
            self._call_store,
            self._argon2,
            self._cache,
            self._cache_ttl,
            self._last_use,
            feed=self._feed,
            outage_grace=self._outage_grace,
        )
        # What KeyManager.roll and pending creation need, checked once.
        self._missing_roll = tuple(
            name
            for name in ("set_expiry", "roll")
            if not callable(getattr(store, name, None))
        )
        # Used only once _require_rolling has passed.
        self._rolling = cast(RollingKeyStore, store)
        self._pending: dict[str, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._clock_lock = threading.Lock()
        self._last_created: datetime | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._close_done: threading.Event | None = None
        reset_in_child(self)

    def _after_fork(self) -> None:
        # Another thread of the parent may have held them at the fork. (The
        # cache, turns, last use and threads reset themselves.)
        self._clock_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._close_lock = threading.Lock()

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
    def outage_grace(self) -> float:
        """Seconds into a store outage that keys verified before are served."""
        return self._outage_grace

    @property
    def max_verifications(self) -> int:
        """How many argon2 computations may run at once."""
        return self._max_verifications

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Write pending last-use stamps, stop the manager's threads and
        forget the keys it verified.

        Waits for argon2 and store calls already running to end, at most
        :attr:`store_timeout` seconds in all; calls not yet started are
        dropped. Closing again does nothing, but waits for a close under way
        in another thread. The store is left open: it may be shared. A
        manager that is not closed writes its stamps at interpreter exit.

        A closed manager refuses every later call that would need the store
        or argon2, :meth:`authenticate` included, with
        :class:`StoreUnavailable` (``503`` over HTTP): it never lets a request
        through, and the HTTP layer answers as for a store outage.
        """
        timeout = self._call_store.timeout
        with self._close_lock:
            done = self._close_done
            if done is None:
                done = self._close_done = threading.Event()
                first = True
            else:
                first = False
            self._closed = True
        if not first:
            # Another thread closes: return once it has (it is bounded by the
            # same deadline).
            done.wait(None if timeout is None else timeout + 1.0)
            return
        try:
            # One deadline for everything close() waits for.
            deadline = None if timeout is None else time.monotonic() + timeout
            self._call_store.closing_deadline = deadline
            # Before the store calls stop: the stamps are written through them.
            self._last_use.close(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
            threads = self._feed.stop() if self._feed is not None else []
            self._cache.close()
            threads += self._argon2.stop()
            threads += self._call_store.stop()
            join_all(threads, deadline)
        finally:
            done.set()

    def __enter__(self) -> KeyManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _hit(self, entry: Verified, now: float) -> None:
        """A use at *now* of a key served from the cache's fast path, once a
        minute per key: a last-use stamp, and the change feed kept going."""
        self._last_use.hit(entry, now)
        if self._feed is not None:
            self._feed.touch(now)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise StoreUnavailable("this KeyManager is closed")

    # -- management --------------------------------------------------------

    def create(
        self,
        project_id: str,
        name: str,
        *,
        created_by: str | None = None,
        expires_at: datetime | None = None,
        pending: bool = False,
    ) -> IssuedKey:
        """Create a key for *project_id* and return it with its record.

        The plaintext is in the returned :attr:`IssuedKey.key` only: show it to
        its owner once. *name* is stored trimmed.

        :param expires_at: When the key stops working: a timezone-aware
            datetime in the future (stored in UTC). ``None``: never.
        :param pending: Store the key inactive, for a caller that must show it
            before it may work (a command line, a web page): it works only
            once :meth:`activate` is given the result. The returned record is
            the key as it will be then; until then the stored record is
            expired (its ``expires_at`` is its ``created_at``). Needs a
            :class:`~vemetric_auth.stores.base.RollingKeyStore`.
        :raises ValueError: an empty or over-long *project_id*, a *name* that is
            empty or over 100 characters once trimmed or has control
            characters, an over-long *created_by*, any of them holding an API
            key or a lone surrogate; an *expires_at* that is naive or not in
            the future. Nothing is stored.
        :raises TypeError: *pending* with a store that lacks
            :class:`~vemetric_auth.stores.base.RollingKeyStore`'s methods (the
            message names them), or an *expires_at* that is not a datetime.
            Nothing is stored. Also if a store without them (written for an
            earlier release) dropped *expires_at*: the key is revoked then.
        :raises StoreUnavailable: the store failed, or did not answer within
            :attr:`store_timeout`, or the manager is closed. The key was shown
            to no one; should the store still write it later, it is revoked as
            soon as it does.
        """
        project_id = _check_id(project_id, "project_id")
        name = _check_name(name)
        if created_by is not None:
            created_by = _check_actor(created_by, "created_by")
        expires_at = _check_expiry(expires_at, "expires_at")
        if pending:
            self._require_rolling("create(pending=True)")
        self._refuse_if_closed()
        issued = self._issue(project_id, name, created_by, expires_at, inactive=pending)
        if pending:
            with self._pending_lock:
                self._pending[issued.record.id] = _Pending(issued.record)
        elif expires_at is not None and self._missing_roll:
            self._check_expiry_kept(issued.record)
        return issued

    def roll(
        self,
        key_id: str,
        *,
        overlap: timedelta = timedelta(hours=24),
        rolled_by: str | None = None,
        expires_at: datetime | None = None,
        pending: bool = False,
    ) -> IssuedKey:
        """Replace the key *key_id* by a new one; return the new key, shown once.

        The new key has the old one's project and name, is created by
        *rolled_by* and expires at *expires_at* (``None``: never). The old key
        then expires at ``now + overlap``, or at its own expiry if that comes
        earlier, so that clients can move to the new key meanwhile;
        ``overlap=timedelta(0)`` revokes it at once, by *rolled_by*. Both
        changes happen in one atomic store call, or neither: if the store
        refuses the roll, the old key is as it was and the new one never
        works (it is revoked).

        The old key fails this manager's very next :meth:`authenticate` once
        it is expired or revoked; other processes see the change within
        about a second on a store with a change feed, within
        :attr:`cache_ttl` seconds on one without.

        :param pending: Store the new key inactive and change nothing else:
            the roll happens when :meth:`activate` is given the result (the
            overlap counts from then). For a caller that must show the new
            key before it may work. Only the new key is stored then: the
            exceptions below about the roll itself come from :meth:`activate`.
        :raises KeyNotFound: no key has this id.
        :raises ValueError: the key is revoked; *overlap* is negative; an
            *expires_at* that is naive or not in the future; a *key_id* or
            *rolled_by* refused as by :meth:`revoke`. Nothing is changed.
        :raises TypeError: the store lacks
            :class:`~vemetric_auth.stores.base.RollingKeyStore`'s ``roll`` or
            ``set_expiry`` (the message names what it lacks), or *overlap* is
            not a :class:`~datetime.timedelta`. Nothing is changed.
        :raises StoreUnavailable: the store failed, did not answer within
            :attr:`store_timeout`, or the manager is closed. The new key,
            which nobody saw, never works: it is revoked, also should the
            store finish the roll later, and the old key's expiry is then put
            back. An old key revoked by a roll with no overlap that the store
            finished after all stays revoked (logged as an ERROR when the
            late answer comes): roll with an overlap, and revoke later, where
            that matters.
        """
        self._require_rolling("roll")
        key_id = _check_key_id(key_id)
        if not isinstance(overlap, timedelta):
            raise TypeError("overlap must be a datetime.timedelta")
        if overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        if rolled_by is not None:
            rolled_by = _check_actor(rolled_by, "rolled_by")
        expires_at = _check_expiry(expires_at, "expires_at")
        self._refuse_if_closed()
        old = self._call_store("reading a key", self._store.get, key_id)
        if old is None:
            raise KeyNotFound()
        if old.revoked_at is not None:
            raise ValueError(
                f"key {old.id} is revoked: a revoked key can not be rolled"
            )
        issued = self._issue(
            old.project_id, old.name, rolled_by, expires_at, inactive=True
        )
        state = _Pending(issued.record, old=old, overlap=overlap, rolled_by=rolled_by)
        if pending:
            with self._pending_lock:
                self._pending[issued.record.id] = state
        else:
            self._activate(state, shown=False)
        return issued

    def activate(self, issued: IssuedKey | str, *, shown: bool = True) -> ApiKey:
        """Make a key created or rolled with ``pending=True`` work.

        For a pending :meth:`create`, the key gets its expiry; for a pending
        :meth:`roll`, the roll happens now (one atomic store call): the new
        key works and the old one expires after the overlap, counted from
        now, or is revoked. Show the key first, then activate it: an
        interruption in between leaves no working key that nobody saw.

        :param issued: What :meth:`create` or :meth:`roll` returned, or the
            new key's id.
        :param shown: Whether the key has reached its owner already. Pass
            ``False`` when it is ready but not yet delivered (a page rendered
            and not sent, which is answered with an error instead if this
            fails): then any failure revokes the new key, and an activation
            the store lands after :attr:`store_timeout` is undone, as for a
            key nobody saw.
        :returns: The new key's record as it is now.
        :raises ValueError: the key is not pending in this manager (never
            was, activated already, or revoked since); for a roll, the old key
            was revoked meanwhile. Nothing changed; the new key never works.
        :raises KeyNotFound: the new key, or the old one, is no longer stored.
            Nothing changed; the new key never works.
        :raises StoreUnavailable: the store failed or did not answer within
            :attr:`store_timeout`, or the manager is closed. The activation
            may or may not have happened (for a roll: both changes or
            neither), and may still happen if the store answers late; a key
            that was *shown* is left so (:meth:`get` tells), one that was not
            is undone.
        """
        if isinstance(issued, IssuedKey):
            key_id = issued.record.id
        else:
            key_id = _check_key_id(issued)
        with self._pending_lock:
            state = self._pending.pop(key_id, None)
        if state is None:
            raise ValueError(
                f"key {key_id} is not pending activation in this KeyManager"
            )
        return self._activate(state, shown=shown)

    def _activate(self, state: _Pending, *, shown: bool) -> ApiKey:
        """Activate *state*'s key; *shown*: its caller has shown it already.

        A key nobody saw never works unless this returns: it is revoked on
        any failure, and a late activation is undone. A key that was shown is
        revoked only when the store refused the activation: after a failure
        that leaves it unknown whether the activation landed, revoking the new
        key of a roll that did land would leave neither key working.
        """
        try:
            self._refuse_if_closed()
            if state.old is None:
                return self._activate_created(state, shown)
            return self._activate_roll(state, state.old, shown)
        except (ValueError, KeyNotFound):
            self._abandon(state)
            raise
        except BaseException:
            if not shown:
                self._abandon(state)
            raise

    def _activate_created(self, state: _Pending, shown: bool) -> ApiKey:
        record: ApiKey | None = self._call_store(
            "activating a key",
            self._rolling.set_expiry,
            state.record.id,
            state.record.expires_at,
            late=None if shown else functools.partial(self._activated_late, state),
        )
        if record is None:
            raise KeyNotFound()
        if record.revoked_at is not None:
            raise ValueError(f"key {record.id} was revoked before it was activated")
        logger.info("activated key %s (%s)", record.id, record.prefix)
        return record

    def _activate_roll(self, state: _Pending, old: ApiKey, shown: bool) -> ApiKey:
        now = _utcnow()
        revoke = state.overlap == timedelta(0)
        # Forget the old key before and after the write, as revoke does: it
        # is then read again, with its new expiry, on its next use here.
        self._cache.forget(old.id)
        try:
            landed = self._call_store(
                "rolling a key",
                functools.partial(
                    self._rolling.roll,
                    new_expires_at=state.record.expires_at,
                    old_expires_at=None if revoke else now + state.overlap,
                    revoked_at=now if revoke else None,
                    revoked_by=state.rolled_by if revoke else None,
                ),
                old.id,
                state.record.id,
                late=None if shown else functools.partial(self._activated_late, state),
                expected=ValueError,
            )
        finally:
            self._cache.forget(old.id)
        if landed is None:
            raise KeyNotFound()
        self._cache.forget(landed.id)
        logger.info(
            "rolled key %s (%s) over to key %s (%s)",
            old.id,
            old.prefix,
            state.record.id,
            state.record.prefix,
        )
        return state.record

    def _abandon(self, state: _Pending) -> None:
        """A pending key whose activation failed: revoke it, if the store answers."""
        try:
            self._call_store(
                "revoking a key that was not activated",
                functools.partial(
                    self._store.revoke,
                    revoked_at=_utcnow(),
                    revoked_by=_NOT_ACTIVATED,
                ),
                state.record.id,
            )
        except StoreUnavailable:
            # Still inactive; and revoked by _activated_late should the
            # activation land after all.
            logger.warning("could not revoke key %s, never activated", state.record.id)

    def _activated_late(self, state: _Pending, landed: ApiKey | None) -> None:
        """An activation landed after its caller was told it failed: undo it."""
        self._store.revoke(
            state.record.id, revoked_at=_utcnow(), revoked_by=_NOT_ACTIVATED
        )
        logger.warning(
            "revoked key %s: activated after its request timed out", state.record.id
        )
        old = state.old
        if old is None or landed is None:
            return
        self._cache.forget(old.id)
        if landed.revoked_at is None:
            self._rolling.set_expiry(old.id, old.expires_at)
            logger.warning("put back the expiry of key %s", old.id)
        else:
            logger.error(
                "key %s was revoked by a roll that completed after its request "
                "timed out, and its new key %s never works: create a new key",
                old.id,
                state.record.id,
            )

    def _issue(
        self,
        project_id: str,
        name: str,
        created_by: str | None,
        expires_at: datetime | None,
        *,
        inactive: bool,
    ) -> IssuedKey:
        """Store a new key; return it with its record as it is once active.

        *inactive*: stored already expired, for :meth:`activate` to activate.
        """
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
                expires_at=expires_at,
            )
            stored = (
                dataclasses.replace(record, expires_at=created_at)
                if inactive
                else record
            )
            timeout = self._call_store.timeout
            key_hash = self._argon2.hash(
                secret,
                deadline=None if timeout is None else time.monotonic() + timeout,
            )
            if key_hash is None:
                raise StoreUnavailable("argon2 could not hash the new key")
            try:
                self._call_store(
                    "creating a key",
                    self._store.add,
                    stored,
                    key_hash,
                    late=functools.partial(self._revoke_unseen, record),
                    expected=DuplicatePrefix,
                )
            except DuplicatePrefix:
                logger.info("prefix %s is taken, drawing another key", record.prefix)
                continue
            logger.info(
                "created key %s (%s) for project %s%s",
                record.id,
                record.prefix,
                record.project_id,
                ", inactive until activated" if inactive else "",
            )
            return IssuedKey(key=secret.value, record=record)
        raise StoreUnavailable(f"no free key prefix after {_CREATE_ATTEMPTS} attempts")

    def _check_expiry_kept(self, record: ApiKey) -> None:
        """A store written for an earlier release may drop ``expires_at``:
        a key that never expires is not what was asked for."""
        stored = self._call_store("reading a key", self._store.get, record.id)
        kept = stored is not None and (
            stored.expires_at is not None
            and record.expires_at is not None
            and stored.expires_at <= record.expires_at
        )
        if kept:
            return
        self._call_store(
            "revoking a key",
            functools.partial(
                self._store.revoke,
                revoked_at=_utcnow(),
                revoked_by="vemetric-auth: the store dropped its expiry",
            ),
            record.id,
        )
        raise TypeError(
            f"the key store {type(self._store).__name__} did not keep the key's "
            "expires_at (written for an earlier release?); the key was revoked"
        )

    def _require_rolling(self, what: str) -> None:
        if self._missing_roll:
            raise TypeError(
                f"{what} needs a key store with set_expiry and roll "
                f"(RollingKeyStore); {type(self._store).__name__} lacks "
                f"{' and '.join(self._missing_roll)}"
            )

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        """Return the keys of *project_id*, newest first.

        Revoked keys are left out unless *include_revoked*; expired keys are
        listed (their :attr:`~ApiKey.expired` tells). An unknown project has
        no keys: the result is ``[]``. :attr:`~ApiKey.last_used_at` is what
        the store has: stamps of the last minute may still be on their way.

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
        """Return the record *key_id*, as the store has it.

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
        processes sharing the store stop accepting it within about a second
        on a store with a change feed (the SQL stores), within
        :attr:`cache_ttl` seconds on one without, or while the feed can not
        be read. Revoking a revoked key changes nothing and returns its record
        as it is. A key pending activation (see :meth:`activate`) can no
        longer be activated.

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
        with self._pending_lock:
            self._pending.pop(key_id, None)
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
        with self._pending_lock:
            self._pending.pop(record.id, None)
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

        A successful authentication is the key's last use: see
        :attr:`ApiKey.last_used_at`. The record returned is the one verified,
        which may not show the newest stamp yet.

        :raises InvalidApiKeyFormat: *key* is not of the ``vem_`` format.
        :raises InvalidApiKey: no active key matches: unknown, revoked,
            expired (from the instant its ``expires_at`` comes), or a wrong
            secret.
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
        if entry is not None:
            now = time.monotonic()
            if now < entry.fresh_until:
                if now >= entry.stamp_due:
                    self._hit(entry, now)
                return entry.record
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
        if entry is not None:
            # As on the request path: expiry and cache_ttl in one comparison,
            # and the key's last use stamped when due.
            now = time.monotonic()
            if now < entry.fresh_until:
                if now >= entry.stamp_due:
                    self._hit(entry, now)
                return entry.record
        return None

    def _authenticate_token(self, key: str) -> ApiKey:
        """:meth:`authenticate` for a key known to be of the format: the token
        the HTTP layer read from a request."""
        digest = hashlib.sha256(key.encode()).digest()
        entry = self._cache.get(digest)
        if entry is not None:
            # One comparison for expiry and cache_ttl alike (fresh_until is
            # the earlier), one for last use (due once a minute).
            now = time.monotonic()
            if now < entry.fresh_until:
                if now >= entry.stamp_due:
                    self._hit(entry, now)
                return entry.record
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


def _check_expiry(value: object, what: str) -> datetime | None:
    """Return *value* in UTC if it can be a new key's expiry: ``None``, or an
    aware datetime in the future."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime or None")
    if value.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware, e.g. datetime.now(timezone.utc) + ..."
        )
    value = value.astimezone(timezone.utc)
    if value <= _utcnow():
        raise ValueError(f"{what} must be in the future")
    return value


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
