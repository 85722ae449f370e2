"""The keys this process verified lately, so that argon2 runs once per key."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable

from ._fork import reset_in_child
from .records import ApiKey

__all__ = ["Verified", "VerifiedKeys"]


class Verified:
    """A verified key's cache entry: its record and when to look again.

    Times are on the :func:`time.monotonic` clock. The request path reads
    :attr:`fresh_until` and :attr:`stamp_due` only: one comparison each.
    """

    __slots__ = (
        "checked_until",
        "expires",
        "fresh_until",
        "record",
        "reread",
        "stamp_due",
        "trusted_until",
        "vouched",
    )

    def __init__(
        self,
        record: ApiKey,
        fresh_until: float,
        checked_until: float,
        expires: float = math.inf,
    ) -> None:
        #: The record as read from the store.
        self.record = record
        #: Until when the key is let through without a second look: the
        #: earlier of its expiry and :attr:`checked_until`.
        self.fresh_until = fresh_until
        #: Until when the record stands without reading it again
        #: (``cache_ttl`` seconds from the read). Past :attr:`fresh_until`
        #: but before this, the key has expired: refused without a store call.
        self.checked_until = checked_until
        #: When the key expires, as of the read; :data:`math.inf`: never.
        self.expires = expires
        #: Until when the record may be served should a read again fail, as
        #: without a change feed (``cache_ttl`` from the read); -inf once the
        #: feed named the key.
        self.trusted_until = checked_until
        #: The record may have changed since the read (the change feed named
        #: it, or could not vouch for it): read it again before any use.
        self.reread = False
        #: The change feed may vouch for the record once it is stale: the
        #: feed read it from before the record was read. Never served stale
        #: if not (see :class:`~vemetric_auth._verifier.Verifier`).
        self.vouched = True
        #: When a use of the key is next worth a last-use stamp; 0.0: at
        #: the next use (see :class:`~vemetric_auth._last_use.LastUse`).
        self.stamp_due = 0.0


class VerifiedKeys:
    """Keys verified by this process: digest -> :class:`Verified`.

    An LRU of bounded size, protected by a :class:`threading.Lock`. Indexed by
    the key's SHA-256 digest, never the key; looking a digest up reveals
    nothing of a key through timing, since the digest of a guess can not be
    steered towards a stored one.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, Verified] = OrderedDict()
        self._digests: dict[str, bytes] = {}
        #: Bumped by :meth:`forget`, :meth:`reread`, :meth:`reread_all` and
        #: :meth:`close`; a
        #: put that started before one is dropped, so a revocation can not be
        #: undone by a verification that read the record before it.
        self.generation = 0
        #: Bumped by every :meth:`unvouch_all`; a put that started before one
        #: is read again at its next use too.
        self.epoch = 0
        self._closed = False
        reset_in_child(self)

    def _after_fork(self) -> None:
        # Another thread of the parent may have held the lock, or been half
        # way through an update: the child starts empty.
        self._lock = threading.Lock()
        self._entries = OrderedDict()
        self._digests = {}
        self.generation += 1

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> Verified | None:
        """Return the entry of *digest*, or ``None``."""
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

    def holds(self, digest: bytes, entry: Verified) -> bool:
        """Whether *entry* is still the entry of *digest* (not dropped,
        replaced or evicted since it was read), without reordering."""
        return self._entries.get(digest) is entry

    def seen(self) -> tuple[int, int]:
        """What :meth:`put` is given: :attr:`generation` and :attr:`epoch`,
        read before the record was."""
        return self.generation, self.epoch

    def put(self, digest: bytes, entry: Verified, seen: tuple[int, int]) -> None:
        """Remember *entry*, unless :attr:`generation` moved on since *seen*
        was taken; to be read again at its next use if :attr:`epoch` did."""
        generation, epoch = seen
        with self._lock:
            if generation != self.generation or self._closed:
                return
            if epoch != self.epoch:
                _unvouch(entry)
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            self._digests[entry.record.id] = digest
            while len(self._entries) > self.size:
                _, old = self._entries.popitem(last=False)
                self._digests.pop(old.record.id, None)

    def forget(self, key_id: str) -> None:
        """Drop the entry of *key_id*, if any, and any put under way."""
        with self._lock:
            self.generation += 1
            digest = self._digests.pop(key_id, None)
            if digest is not None:
                self._entries.pop(digest, None)

    def reread(self, key_ids: Iterable[str]) -> None:
        """Have the entries of *key_ids* read again before their next use,
        and drop any put under way. Cheaper than :meth:`forget` for a key
        that is still valid (its expiry changed): a store read, not argon2.
        """
        with self._lock:
            self.generation += 1
            for key_id in key_ids:
                digest = self._digests.get(key_id)
                if digest is not None:
                    entry = self._entries.get(digest)
                    if entry is not None:
                        _reread(entry)

    def unvouch_all(self) -> None:
        """Have every entry, and any put under way, read again at its next
        use (one store read, no argon2): the feed's first read takes its
        head, and a change made between an entry's read and that head is in
        no read of the feed."""
        with self._lock:
            self.epoch += 1
            for entry in self._entries.values():
                _unvouch(entry)

    def reread_all(self) -> None:
        """Have every entry read again before its next use, and drop any put
        under way."""
        with self._lock:
            self.generation += 1
            for entry in self._entries.values():
                _reread(entry)

    def close(self) -> None:
        """Drop every entry, and keep none from now on."""
        with self._lock:
            self._closed = True
            self.generation += 1
            self._entries.clear()
            self._digests.clear()


def _reread(entry: Verified) -> None:
    # Stale at once, on the request path's one comparison; and its record
    # no longer stands for an expiry either.
    entry.reread = True
    entry.fresh_until = entry.checked_until = entry.trusted_until = -math.inf


def _unvouch(entry: Verified) -> None:
    # Read again at its next use, as for _reread; but should that read fail,
    # still served within cache_ttl of its own read, as without a feed.
    entry.vouched = False
    entry.fresh_until = entry.checked_until = -math.inf
