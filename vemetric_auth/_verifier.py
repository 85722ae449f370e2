"""Verifying a key the cache does not hold fresh: the cold path of a request."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from ._argon2 import Argon2Threads, Verdict
from ._cache import Verified, VerifiedKeys
from ._last_use import LastUse
from ._secret import Secret
from ._store_calls import StoreCalls
from ._turns import KeyTurns
from .errors import InvalidApiKey, StoreUnavailable
from .keys import display_prefix
from .records import ApiKey

__all__ = ["Verifier"]

logger = logging.getLogger("vemetric_auth")


class Verifier:
    """Verifies keys against the store and argon2, and caches those verified.

    A key's first use looks its display prefix up and runs argon2; a key whose
    cache entry is stale has its record read again, without argon2. Requests
    for one key take turns, so a burst of them runs argon2 once.

    A key is refused once its :attr:`~ApiKey.expires_at` has come, to the
    instant: an entry's :attr:`~Verified.fresh_until` is the earlier of
    ``cache_ttl`` seconds after the read and the expiry, both on the
    monotonic clock, so the cached path compares one number as before; an
    entry past its expiry but not its ``cache_ttl`` is refused from its own
    record, without a store call. The expiry is carried to the monotonic
    clock at each read, so a change of the system clock is followed within
    ``cache_ttl`` seconds.
    """

    def __init__(
        self,
        store_calls: StoreCalls,
        argon2: Argon2Threads,
        cache: VerifiedKeys,
        cache_ttl: float,
        last_use: LastUse,
    ) -> None:
        self._call_store = store_calls
        self._store = store_calls.store
        self._argon2 = argon2
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._last_use = last_use
        self._turns = KeyTurns()

    def verify(self, secret: Secret, digest: bytes) -> ApiKey:
        """Return the record of the key, its SHA-256 *digest* given.

        :raises InvalidApiKey: no active key matches.
        :raises StoreUnavailable: the store failed or did not answer within
            its timeout, or argon2 could not run.
        """
        # One deadline for the whole request: waiting for another request of
        # the same key, then for the store. Requests queued behind a hung
        # store then fail within store_timeout too, not one after another.
        timeout = self._call_store.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._turns.turn(digest, timeout) as got_turn:
            if not got_turn:
                logger.warning(
                    "timed out waiting for another request of the same key, "
                    "answering 503"
                )
                raise StoreUnavailable()
            entry = self._cache.get(digest)
            if entry is None:
                record = self._first_use(secret, digest, deadline)
            else:
                now = time.monotonic()
                if now < entry.fresh_until:
                    record = entry.record
                elif now < entry.checked_until:
                    # Stale before its cache_ttl ran out: it expired.
                    logger.info(
                        "rejected expired key %s (%s)",
                        entry.record.id,
                        entry.record.prefix,
                    )
                    raise InvalidApiKey()
                else:
                    record = self._recheck(digest, entry.record, deadline)
        self._last_use.note(record.id, time.monotonic())
        return record

    def _first_use(
        self, secret: Secret, digest: bytes, deadline: float | None
    ) -> ApiKey:
        prefix = display_prefix(secret.value)
        generation = self._cache.generation
        # Freshness counts from the read, not from the end of the verification.
        # The monotonic clock is read first: an expiry carried over from the
        # wall clock then falls a hair early, never late.
        read_at = time.monotonic()
        wall_at = datetime.now(timezone.utc)
        found = self._call_store(
            "looking a key up", self._store.find_by_prefix, prefix, deadline=deadline
        )
        if found is None:
            logger.info("rejected unknown key %s", prefix)
            raise InvalidApiKey()
        record, key_hash = found
        if record.revoked_at is not None:
            logger.info("rejected revoked key %s (%s)", record.id, prefix)
            raise InvalidApiKey()
        if _expired(record):
            # Refused before argon2, and not cached: a key created inactive
            # (already expired) is activated by a later write.
            logger.info("rejected expired key %s (%s)", record.id, prefix)
            raise InvalidApiKey()
        verdict, new_hash = self._argon2.verify(key_hash, secret)
        if verdict is Verdict.MISMATCH:
            logger.info("rejected wrong secret for key %s (%s)", record.id, prefix)
            raise InvalidApiKey()
        if verdict is Verdict.BAD_HASH:
            logger.error("stored hash of key %s can not be verified", record.id)
            raise InvalidApiKey()
        if verdict is not Verdict.MATCH:
            # Not an answer about the key: fail closed, as for a store failure.
            logger.warning("could not verify key %s, answering 503", record.id)
            raise StoreUnavailable()
        if new_hash is not None:
            try:
                self._call_store(
                    "storing a new hash",
                    self._store.set_hash,
                    record.id,
                    new_hash,
                    deadline=deadline,
                )
            except StoreUnavailable:
                # The key is verified; a stale hash only costs a rehash later.
                logger.warning("could not store the new hash of key %s", record.id)
            else:
                logger.info("rehashed key %s with the current parameters", record.id)
        if _expired(record):  # while argon2 ran
            logger.info("rejected expired key %s (%s)", record.id, prefix)
            raise InvalidApiKey()
        self._cache.put(digest, self._entry(record, read_at, wall_at), generation)
        logger.debug("authenticated key %s (%s)", record.id, prefix)
        return record

    def _recheck(self, digest: bytes, cached: ApiKey, deadline: float | None) -> ApiKey:
        generation = self._cache.generation
        read_at = time.monotonic()
        wall_at = datetime.now(timezone.utc)
        record = self._call_store(
            "reading a key", self._store.get, cached.id, deadline=deadline
        )
        if record is None or record.revoked_at is not None:
            self._cache.forget(cached.id)
            logger.info("rejected revoked key %s (%s)", cached.id, cached.prefix)
            raise InvalidApiKey()
        # Kept even when expired: until cache_ttl runs out, its uses are
        # refused without a store call (see verify).
        self._cache.put(digest, self._entry(record, read_at, wall_at), generation)
        if _expired(record):
            logger.info("rejected expired key %s (%s)", record.id, record.prefix)
            raise InvalidApiKey()
        return record

    def _entry(self, record: ApiKey, read_at: float, wall_at: datetime) -> Verified:
        """The cache entry of *record*, read at *read_at* (monotonic), which
        was *wall_at* on the wall clock."""
        checked_until = read_at + self._cache_ttl
        fresh_until = checked_until
        if record.expires_at is not None:
            expires = read_at + (record.expires_at - wall_at).total_seconds()
            fresh_until = min(fresh_until, expires)
        return Verified(record, fresh_until, checked_until)


def _expired(record: ApiKey) -> bool:
    return record.expires_at is not None and (
        datetime.now(timezone.utc) >= record.expires_at
    )
