"""Verifying a key the cache does not hold fresh: the cold path of a request."""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import cast

from ._argon2 import Argon2Threads, Verdict
from ._cache import Verified, VerifiedKeys
from ._feed import ChangeFeed
from ._fork import reset_in_child
from ._last_use import LastUse
from ._secret import Secret
from ._store_calls import StoreCalls
from ._turns import KeyTurns
from .errors import InvalidApiKey, StoreUnavailable
from .keys import display_prefix
from .records import ApiKey
from .stores.base import ChangeFeedKeyStore

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

    With a change *feed*, a read of the feed vouches for every entry it did
    not evict: an entry read more than ``cache_ttl`` seconds ago is served
    as it is while the feed was read less than ``cache_ttl`` seconds ago (any
    change older than that was evicted), and re-read in the background, off
    the request path. So a stale entry costs no request a store call, and a
    flood that slows the store delays no key this process knows. Should the
    feed stop being read, entries fall back to ``cache_ttl``.

    While re-reads of known keys fail (the store is down), an entry that is
    not expired is served from memory until *outage_grace* seconds after the
    feed was last read, re-read in the background meanwhile; keys never
    verified get ``503``. Without a feed there is no such grace: a revocation
    written elsewhere just before the outage would go unseen.
    """

    def __init__(
        self,
        store_calls: StoreCalls,
        argon2: Argon2Threads,
        cache: VerifiedKeys,
        cache_ttl: float,
        last_use: LastUse,
        *,
        feed: ChangeFeed | None = None,
        outage_grace: float = 0.0,
    ) -> None:
        self._call_store = store_calls
        self._store = store_calls.store
        self._argon2 = argon2
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._last_use = last_use
        self._feed = feed
        self._outage_grace = outage_grace
        self._turns = KeyTurns()
        #: When a re-read of a known key last failed (monotonic), if none
        #: has succeeded since; see _is_down.
        self._down_since: float | None = None
        #: Serving keys from memory for the store's outage was logged.
        self._told_outage = False
        self._after_fork()
        reset_in_child(self)

    def _after_fork(self) -> None:
        # The parent's background re-reads are not in the child.
        self._rechecks_lock = threading.Lock()
        self._rechecking: set[str] = set()

    def verify(self, secret: Secret, digest: bytes) -> ApiKey:
        """Return the record of the key, its SHA-256 *digest* given.

        :raises InvalidApiKey: no active key matches.
        :raises StoreUnavailable: the store failed or did not answer within
            its timeout, or argon2 could not run.
        """
        now = time.monotonic()
        entry = self._cache.get(digest)
        if entry is not None:
            if self._feed is not None:
                # Not started here: the read of the key below takes the head.
                self._feed.touch(now, start=False)
            # A stale entry the feed vouches for needs no turn: served at once.
            record = self._from_memory(digest, entry, now)
            if record is not None:
                self._last_use.note(record.id, time.monotonic())
                return record
        # One deadline for the whole request: waiting for another request of
        # the same key, then for the store and argon2. Requests queued behind
        # a hung store then fail within store_timeout too, not one after another.
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
                elif now < entry.checked_until or (
                    now >= entry.expires
                    and not entry.reread
                    and (
                        now < entry.trusted_until
                        or (entry.vouched and self._is_down() and self._stands(now))
                    )
                ):
                    # Expired, and its record stands: read less than cache_ttl
                    # ago (and the feed named it not), or the store is down
                    # and no change could be made.
                    logger.info(
                        "rejected expired key %s (%s)",
                        entry.record.id,
                        entry.record.prefix,
                    )
                    raise InvalidApiKey()
                else:
                    record = self._recheck_now(digest, entry, deadline)
        self._last_use.note(record.id, time.monotonic())
        return record

    def _stands(self, now: float) -> bool:
        """Whether a cached record stands without reading it again: the feed
        was read less than cache_ttl seconds ago (every change older than
        that was evicted), or the store is down and was read (the feed) less
        than outage_grace seconds ago."""
        feed = self._feed
        if feed is None:
            return False
        confirmed_at = feed.confirmed_at
        if now - confirmed_at < self._cache_ttl:
            return True
        return now - confirmed_at < self._outage_grace and self._is_down()

    def _is_down(self) -> bool:
        """Whether the store is known to be down: a re-read failed, and
        neither a re-read nor the feed succeeded since."""
        since = self._down_since
        if since is None:
            return False
        return self._feed is None or self._feed.confirmed_at < since

    def _from_memory(self, digest: bytes, entry: Verified, now: float) -> ApiKey | None:
        """The record of a stale, unexpired *entry* if it may be served with
        no store call: the feed vouches for it, or the store is known to be
        down and the outage is within its grace. It is then re-read in the
        background. ``None``: the caller reads it again."""
        if now < entry.fresh_until:
            return entry.record  # made fresh meanwhile
        if (
            now < entry.checked_until
            or now >= entry.expires
            or entry.reread
            or not entry.vouched
        ):
            return None  # expired, or to be read again: the caller does
        if self._stands(now):
            if self._down_since is not None:
                self._tell_outage()  # found down by a re-read in the background
            self._recheck_later(digest, entry.record)
            return entry.record
        return None

    def _first_use(
        self, secret: Secret, digest: bytes, deadline: float | None
    ) -> ApiKey:
        prefix = display_prefix(secret.value)
        self._take_feed_head(deadline, lookup=True)
        seen = self._cache.seen()
        # Freshness counts from the read, not from the end of the verification.
        # The monotonic clock is read first: an expiry carried over from the
        # wall clock then falls a hair early, never late.
        read_at = time.monotonic()
        wall_at = datetime.now(timezone.utc)
        try:
            found = self._call_store(
                "looking a key up",
                self._store.find_by_prefix,
                prefix,
                deadline=deadline,
                lookup=True,
            )
        finally:
            if self._feed is not None:
                # Started once the lookup is done, not to vie with it for a
                # connection the store may be slow to give (a first read
                # can not vouch for this key anyway; see below).
                self._feed.touch(time.monotonic())
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
        verdict, new_hash = self._argon2.verify(
            key_hash, secret, lane=prefix, deadline=deadline
        )
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
                    lookup=True,
                    quiet=True,
                )
            except StoreUnavailable as exc:
                # The key is verified; a stale hash only costs a rehash later.
                # One record says it all, the store's error attached.
                logger.warning(
                    "could not store the new hash of key %s", record.id, exc_info=exc
                )
            else:
                logger.info("rehashed key %s with the current parameters", record.id)
        if _expired(record):  # while argon2 ran
            logger.info("rejected expired key %s (%s)", record.id, prefix)
            raise InvalidApiKey()
        self._cache.put(digest, self._entry(record, read_at, wall_at), seen)
        logger.debug("authenticated key %s (%s)", record.id, prefix)
        return record

    def _recheck_now(
        self, digest: bytes, entry: Verified, deadline: float | None
    ) -> ApiKey:
        """Re-read a stale entry on the request path; bridge an outage."""
        try:
            return self._recheck(digest, entry.record, deadline)
        except StoreUnavailable:
            now = time.monotonic()
            if not self._cache.holds(digest, entry):
                # Dropped (revoked here), replaced or evicted meanwhile: what
                # the feed marked since is not on this object.
                raise
            if (
                not self._call_store.closed  # a closed manager serves nothing
                and now < entry.expires
                and entry.vouched
                and not entry.reread
                and self._stands(now)
            ):
                # Down (just found so), in the grace: served from memory, and
                # re-read in the background until the store answers.
                self._tell_outage()
                self._recheck_later(digest, entry.record)
                return entry.record
            if (
                not self._call_store.closed
                and not entry.reread
                and now < min(entry.trusted_until, entry.expires)
            ):
                # Read again only because the feed could not vouch for it:
                # within cache_ttl of its read, as without a feed.
                return entry.record
            raise

    def _take_feed_head(
        self, deadline: float | None, *, lookup: bool, quiet: bool = False
    ) -> None:
        """With no feed reader running, read the feed's head before a read of
        a key, and start the reader from it: every change after the head
        reaches the cache, so the feed vouches for what the read finds. (A
        reader taking its own head later could not: a change between the
        two reads would be in no read of the feed.)

        Should that fail, the reader is started all the same, to take its
        own head (what is cached meanwhile is read again at its next use),
        and the request fails as the read of the key would have: a store
        that can not answer this can not answer that.

        :raises StoreUnavailable: the store failed, or did not answer in time.
        """
        feed = self._feed
        if feed is None or not feed.needs_head():
            return
        read_at = time.monotonic()
        try:
            head = self._call_store(
                "reading the change feed",
                cast(ChangeFeedKeyStore, self._store).changes_since,
                None,
                deadline=deadline,
                lookup=lookup,
                quiet=quiet,
            )
            cursor = int(head.cursor)
        except StoreUnavailable:
            feed.touch(time.monotonic())
            raise
        except Exception:  # an answer not of the protocol's shape
            feed.touch(time.monotonic())
            return
        feed.start_at(cursor, read_at)

    def _recheck_later(self, digest: bytes, cached: ApiKey) -> None:
        """Re-read *cached* on a background thread, unless one does already."""
        with self._rechecks_lock:
            if cached.id in self._rechecking:
                return
            self._rechecking.add(cached.id)
        # Weakly: a manager dropped meanwhile reads nothing more.
        if not self._call_store.in_background(
            _recheck_quietly, weakref.ref(self), digest, cached
        ):
            with self._rechecks_lock:
                self._rechecking.discard(cached.id)

    def _recheck(
        self,
        digest: bytes,
        cached: ApiKey,
        deadline: float | None,
        *,
        quiet: bool = False,
    ) -> ApiKey:
        try:
            # A known key: on the threads a flood of unknown keys can not fill.
            self._take_feed_head(
                deadline, lookup=False, quiet=quiet or self._down_since is not None
            )
            seen = self._cache.seen()
            read_at = time.monotonic()
            wall_at = datetime.now(timezone.utc)
            record = self._call_store(
                "reading a key",
                self._store.get,
                cached.id,
                deadline=deadline,
                quiet=quiet or self._down_since is not None,
            )
        except StoreUnavailable:
            if not self._call_store.closed:
                self._down_since = time.monotonic()
            raise
        if self._down_since is not None:
            self._down_since = None
            if self._told_outage:
                self._told_outage = False
                logger.info(
                    "the key store answers again: keys are checked against it again"
                )
        if record is None or record.revoked_at is not None:
            self._cache.forget(cached.id)
            logger.info("rejected revoked key %s (%s)", cached.id, cached.prefix)
            raise InvalidApiKey()
        # Kept even when expired: until cache_ttl runs out, its uses are
        # refused without a store call (see verify).
        self._cache.put(digest, self._entry(record, read_at, wall_at), seen)
        if _expired(record):
            logger.info("rejected expired key %s (%s)", record.id, record.prefix)
            raise InvalidApiKey()
        return record

    def _tell_outage(self) -> None:
        if self._told_outage:
            return
        self._told_outage = True
        logger.warning(
            "the key store is unavailable: keys verified before are served from "
            "memory for at most %s s after the change feed was last read; new "
            "keys get 503",
            self._outage_grace,
        )

    def _entry(self, record: ApiKey, read_at: float, wall_at: datetime) -> Verified:
        """The cache entry of *record*, read at *read_at* (monotonic), which
        was *wall_at* on the wall clock."""
        checked_until = read_at + self._cache_ttl
        fresh_until = checked_until
        expires = math.inf
        if record.expires_at is not None:
            expires = read_at + (record.expires_at - wall_at).total_seconds()
            fresh_until = min(fresh_until, expires)
        return Verified(record, fresh_until, checked_until, expires)


def _expired(record: ApiKey) -> bool:
    return record.expires_at is not None and (
        datetime.now(timezone.utc) >= record.expires_at
    )


def _recheck_quietly(
    ref: weakref.ReferenceType[Verifier], digest: bytes, cached: ApiKey
) -> None:
    """A re-read in the background (see Verifier._recheck_later)."""
    verifier = ref()
    if verifier is None:
        return
    try:
        verifier._recheck(digest, cached, None, quiet=True)
    except (InvalidApiKey, StoreUnavailable):
        pass  # forgotten, or kept for the next request to try again
    except Exception:
        logger.exception("re-reading key %s failed", cached.id)
    finally:
        with verifier._rechecks_lock:
            verifier._rechecking.discard(cached.id)
