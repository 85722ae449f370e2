"""The keys this process verified lately, so that argon2 runs once per key."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ._fork import reset_in_child
from .records import ApiKey

__all__ = ["Verified", "VerifiedKeys"]


class Verified:
    """A verified key's cache entry: its record and when to look again.

    Times are on the :func:`time.monotonic` clock. The request path reads
    :attr:`fresh_until` and :attr:`stamp_due` only: one comparison each.
    """

    __slots__ = ("checked_until", "fresh_until", "record", "stamp_due")

    def __init__(
        self, record: ApiKey, fresh_until: float, checked_until: float
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
        #: Bumped by every :meth:`forget` and :meth:`close`; a put that started
        #: before one is dropped, so a revocation can not be undone by a
        #: verification that read the record before it.
        self.generation = 0
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

    def put(self, digest: bytes, entry: Verified, generation: int) -> None:
        """Remember *entry*, unless :attr:`generation` moved on since the
        caller read it."""
        with self._lock:
            if generation != self.generation or self._closed:
                return
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

    def close(self) -> None:
        """Drop every entry, and keep none from now on."""
        with self._lock:
            self._closed = True
            self.generation += 1
            self._entries.clear()
            self._digests.clear()
