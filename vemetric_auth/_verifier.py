"""Verifying a key the cache does not hold fresh: the cold path of a request."""

from __future__ import annotations

import logging
import time

from ._argon2 import Argon2Threads, Verdict
from ._cache import VerifiedKeys
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
    """

    def __init__(
        self,
        store_calls: StoreCalls,
        argon2: Argon2Threads,
        cache: VerifiedKeys,
        cache_ttl: float,
    ) -> None:
        self._call_store = store_calls
        self._store = store_calls.store
        self._argon2 = argon2
        self._cache = cache
        self._cache_ttl = cache_ttl
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
                return self._first_use(secret, digest, deadline)
            if time.monotonic() < entry[1]:
                return entry[0]
            return self._recheck(digest, entry[0], deadline)

    def _first_use(
        self, secret: Secret, digest: bytes, deadline: float | None
    ) -> ApiKey:
        prefix = display_prefix(secret.value)
        generation = self._cache.generation
        # Freshness counts from the read, not from the end of the verification.
        read_at = time.monotonic()
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
        self._cache.put(digest, record, read_at + self._cache_ttl, generation)
        logger.debug("authenticated key %s (%s)", record.id, prefix)
        return record

    def _recheck(self, digest: bytes, cached: ApiKey, deadline: float | None) -> ApiKey:
        generation = self._cache.generation
        read_at = time.monotonic()
        record = self._call_store(
            "reading a key", self._store.get, cached.id, deadline=deadline
        )
        if record is None or record.revoked_at is not None:
            self._cache.forget(cached.id)
            logger.info("rejected revoked key %s (%s)", cached.id, cached.prefix)
            raise InvalidApiKey()
        self._cache.put(digest, record, read_at + self._cache_ttl, generation)
        return record
