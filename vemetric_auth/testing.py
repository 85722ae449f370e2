"""The contract every :class:`~vemetric_auth.KeyStore` backend must meet, as tests.

Subclass :class:`KeyStoreContract` in a test module and give it a ``store``
fixture that returns an empty store; pytest then runs every contract test
against it, the same tests the shipped backends pass:

.. code-block:: python

    import pytest
    from vemetric_auth.testing import KeyStoreContract

    class TestMyStore(KeyStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "keys.db")

The tests of an optional capability (:data:`CAPABILITIES`: ``"roll"`` for
:class:`~vemetric_auth.stores.base.RollingKeyStore`, ``"record_use"`` for
:class:`~vemetric_auth.stores.base.UsageRecordingKeyStore`, ``"changes"``
for :class:`~vemetric_auth.stores.base.ChangeFeedKeyStore`) run when the
store has its methods, and skip otherwise: a store with the six methods of
:class:`~vemetric_auth.KeyStore` passes the contract for what it implements.
Set :attr:`KeyStoreContract.capabilities` to declare them instead; a store
that lacks a declared one then fails.

Needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Protocol, cast

import pytest

from .errors import DuplicatePrefix
from .keys import display_prefix, generate_key
from .records import ApiKey
from .stores.base import (
    ChangeFeedKeyStore,
    ChangeListener,
    KeyChanges,
    KeyStore,
    RollingKeyStore,
    UsageRecordingKeyStore,
)

__all__ = ["CAPABILITIES", "KeyStoreContract", "make_record"]

#: The optional capabilities of a store, by name, and the protocol of each.
CAPABILITIES: Mapping[str, type[Any]] = MappingProxyType(
    {
        "roll": RollingKeyStore,
        "record_use": UsageRecordingKeyStore,
        "changes": ChangeFeedKeyStore,
    }
)

_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_record(
    project_id: str = "proj_1",
    *,
    name: str = "test key",
    minutes: int = 0,
    created_by: str | None = None,
    expires_at: datetime | None = None,
    last_used_at: datetime | None = None,
) -> ApiKey:
    """Return a new unrevoked record with a fresh id and prefix, created *minutes*
    after 2026-01-01 UTC."""
    return ApiKey(
        id=uuid.uuid4().hex,
        project_id=project_id,
        name=name,
        prefix=display_prefix(generate_key()),
        created_at=_EPOCH + timedelta(minutes=minutes),
        created_by=created_by,
        expires_at=expires_at,
        last_used_at=last_used_at,
    )


def _inactive_record(**options: Any) -> ApiKey:
    """A record as a roll or pending creation stores it: expired at creation."""
    record = make_record(**options)
    return dataclasses.replace(record, expires_at=record.created_at)


class _RollingStore(KeyStore, RollingKeyStore, Protocol):
    pass


class _RecordingStore(KeyStore, UsageRecordingKeyStore, Protocol):
    pass


class _FeedStore(KeyStore, ChangeFeedKeyStore, Protocol):
    pass


def _read_on(store: ChangeFeedKeyStore, cursor: int) -> tuple[int, list[str]]:
    """Read the feed from *cursor* (the read must be complete); return the
    cursor to go on from and the key ids read."""
    changes = store.changes_since(cursor)
    assert isinstance(changes, KeyChanges)
    assert changes.complete, f"changes_since({cursor}) is not complete"
    return changes.cursor, list(changes.key_ids)


def _race(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(n)`` on *count* threads released at once; return each outcome,
    its result or the exception it raised."""
    outcomes: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        barrier.wait()
        try:
            outcomes[n] = work(n)
        except BaseException as exc:  # the test inspects it
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


class KeyStoreContract:
    """Tests of the :class:`~vemetric_auth.KeyStore` contract.

    Subclasses provide a ``store`` fixture returning an empty store, and may
    set :attr:`capabilities`.
    """

    #: The optional capabilities (names of :data:`CAPABILITIES`) the store
    #: has, whose tests then run. ``None``, the default: those whose protocol
    #: the store implements, by ``isinstance``.
    capabilities: frozenset[str] | None = None

    @pytest.fixture
    def store(self) -> KeyStore:
        raise NotImplementedError("define a 'store' fixture returning an empty store")

    @pytest.fixture
    def rolling_store(self, store: KeyStore) -> _RollingStore:
        """The store, for the tests of ``"roll"``; they skip without it."""
        self._require(store, "roll")
        return cast(_RollingStore, store)

    @pytest.fixture
    def recording_store(self, store: KeyStore) -> _RecordingStore:
        """The store, for the tests of ``"record_use"``; they skip without it."""
        self._require(store, "record_use")
        return cast(_RecordingStore, store)

    @pytest.fixture
    def feed_store(self, store: KeyStore) -> _FeedStore:
        """The store, for the tests of ``"changes"``; they skip without it."""
        self._require(store, "changes")
        return cast(_FeedStore, store)

    def _capabilities_of(self, store: KeyStore) -> frozenset[str]:
        if self.capabilities is not None:
            return frozenset(self.capabilities)
        return frozenset(
            name
            for name, protocol in CAPABILITIES.items()
            if isinstance(store, protocol)
        )

    def _require(self, store: KeyStore, capability: str) -> None:
        if capability not in self._capabilities_of(store):
            protocol = CAPABILITIES[capability].__name__
            pytest.skip(f"the store lacks the {capability!r} capability ({protocol})")

    def test_is_a_key_store(self, store: KeyStore) -> None:
        assert isinstance(store, KeyStore)

    def test_declared_capabilities_are_implemented(self, store: KeyStore) -> None:
        declared = self.capabilities
        if declared is None:
            return
        assert isinstance(declared, frozenset), "capabilities must be a frozenset"
        unknown = sorted(declared - CAPABILITIES.keys())
        assert not unknown, (
            f"unknown capabilities {unknown}; known: {sorted(CAPABILITIES)}"
        )
        for name in sorted(declared):
            protocol = CAPABILITIES[name]
            assert isinstance(store, protocol), (
                f"the store declares {name!r} but lacks the methods of "
                f"{protocol.__name__}"
            )

    def test_add_then_get_returns_an_equal_record(self, store: KeyStore) -> None:
        record = make_record(created_by="alice")
        store.add(record, "hash-1")
        assert store.get(record.id) == record

    def test_datetimes_come_back_timezone_aware_utc(self, store: KeyStore) -> None:
        record = make_record()
        store.add(record, "hash-1")
        got = store.get(record.id)
        assert got is not None
        assert got.created_at == record.created_at
        assert got.created_at.utcoffset() == timedelta(0)

    def test_get_unknown_returns_none(self, store: KeyStore) -> None:
        assert store.get(uuid.uuid4().hex) is None

    def test_find_by_prefix_returns_record_and_hash(self, store: KeyStore) -> None:
        record = make_record()
        store.add(record, "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA")
        assert store.find_by_prefix(record.prefix) == (
            record,
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        )

    def test_find_by_unknown_prefix_returns_none(self, store: KeyStore) -> None:
        store.add(make_record(), "hash-1")
        assert store.find_by_prefix(make_record().prefix) is None

    def test_duplicate_prefix_is_refused_and_stores_nothing(
        self, store: KeyStore
    ) -> None:
        first = make_record("proj_1")
        store.add(first, "hash-1")
        clash = dataclasses.replace(make_record("proj_2"), prefix=first.prefix)
        with pytest.raises(DuplicatePrefix):
            store.add(clash, "hash-2")
        assert store.get(clash.id) is None
        assert store.list("proj_2", include_revoked=True) == []
        assert store.find_by_prefix(first.prefix) == (first, "hash-1")

    def test_duplicate_prefix_of_a_revoked_key_is_refused(
        self, store: KeyStore
    ) -> None:
        first = make_record()
        store.add(first, "hash-1")
        store.revoke(first.id, revoked_at=_EPOCH, revoked_by=None)
        with pytest.raises(DuplicatePrefix):
            store.add(dataclasses.replace(make_record(), prefix=first.prefix), "h")

    def test_list_is_newest_first_and_scoped_to_the_project(
        self, store: KeyStore
    ) -> None:
        old = make_record("proj_1", minutes=1)
        new = make_record("proj_1", minutes=3)
        middle = make_record("proj_1", minutes=2)
        other = make_record("proj_2", minutes=4)
        for record in (old, new, other, middle):
            store.add(record, "hash")
        assert store.list("proj_1") == [new, middle, old]
        assert store.list("proj_2") == [other]
        assert store.list("proj_3") == []

    def test_list_leaves_out_revoked_unless_asked(self, store: KeyStore) -> None:
        kept = make_record(minutes=1)
        gone = make_record(minutes=2)
        store.add(kept, "hash")
        store.add(gone, "hash")
        revoked = store.revoke(gone.id, revoked_at=_EPOCH, revoked_by="bob")
        assert store.list("proj_1") == [kept]
        assert store.list("proj_1", include_revoked=True) == [revoked, kept]

    def test_revoke_sets_when_and_who_and_keeps_the_rest(self, store: KeyStore) -> None:
        record = make_record(created_by="alice")
        store.add(record, "hash-1")
        when = _EPOCH + timedelta(days=3, microseconds=123)
        revoked = store.revoke(record.id, revoked_at=when, revoked_by="bob")
        assert revoked == dataclasses.replace(record, revoked_at=when, revoked_by="bob")
        assert store.get(record.id) == revoked
        assert store.find_by_prefix(record.prefix) == (revoked, "hash-1")

    def test_revoking_twice_changes_nothing(self, store: KeyStore) -> None:
        record = make_record()
        store.add(record, "hash-1")
        first = store.revoke(record.id, revoked_at=_EPOCH, revoked_by="bob")
        again = store.revoke(
            record.id, revoked_at=_EPOCH + timedelta(days=1), revoked_by="eve"
        )
        assert again == first
        assert store.get(record.id) == first

    def test_revoke_unknown_returns_none(self, store: KeyStore) -> None:
        assert (
            store.revoke(uuid.uuid4().hex, revoked_at=_EPOCH, revoked_by=None) is None
        )

    def test_set_hash_replaces_the_hash_only(self, store: KeyStore) -> None:
        record = make_record()
        store.add(record, "hash-1")
        store.set_hash(record.id, "hash-2")
        assert store.find_by_prefix(record.prefix) == (record, "hash-2")

    def test_set_hash_of_unknown_does_nothing(self, store: KeyStore) -> None:
        store.set_hash(uuid.uuid4().hex, "hash-2")

    def test_optional_fields_round_trip_as_none(self, store: KeyStore) -> None:
        record = make_record()
        store.add(record, "hash-1")
        got = store.get(record.id)
        assert got is not None
        assert (got.created_by, got.revoked_at, got.revoked_by) == (None, None, None)

    def test_names_round_trip_unchanged(self, store: KeyStore) -> None:
        record = make_record(name="Prod ünïcode ✓ 鍵 " + "x" * 80)
        store.add(record, "hash-1")
        assert store.get(record.id) == record

    def test_concurrent_adds_keep_every_record(self, store: KeyStore) -> None:
        records = [make_record(minutes=n) for n in range(80)]
        errors: list[BaseException] = []

        def add(chunk: list[ApiKey]) -> None:
            try:
                for record in chunk:
                    store.add(record, "hash")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=add, args=(records[i::8],)) for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert store.list("proj_1") == sorted(
            records, key=lambda record: record.created_at, reverse=True
        )

    def test_concurrent_adds_of_one_prefix_store_exactly_one(
        self, store: KeyStore
    ) -> None:
        base = make_record()
        rivals = [
            dataclasses.replace(make_record(), prefix=base.prefix) for _ in range(8)
        ]
        outcomes: list[str] = []
        barrier = threading.Barrier(len(rivals))

        def add(record: ApiKey) -> None:
            barrier.wait()
            try:
                store.add(record, "hash")
            except DuplicatePrefix:
                outcomes.append("duplicate")
            except BaseException as exc:  # reported below
                outcomes.append(repr(exc))
            else:
                outcomes.append("added")

        threads = [threading.Thread(target=add, args=(r,)) for r in rivals]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["added"] + ["duplicate"] * 7
        assert len(store.list("proj_1")) == 1

    def test_racing_revokes_return_the_same_record(self, store: KeyStore) -> None:
        record = make_record()
        store.add(record, "hash")
        results: list[ApiKey | None] = []
        barrier = threading.Barrier(8)

        def revoke(n: int) -> None:
            barrier.wait()
            results.append(
                store.revoke(
                    record.id,
                    revoked_at=_EPOCH + timedelta(seconds=n),
                    revoked_by=str(n),
                )
            )

        threads = [threading.Thread(target=revoke, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 8
        assert all(result == results[0] for result in results)
        assert results[0] is not None
        assert results[0].revoked_at is not None
        assert store.get(record.id) == results[0]

    def test_expiry_and_last_use_round_trip(self, store: KeyStore) -> None:
        record = make_record(
            expires_at=_EPOCH + timedelta(days=90, microseconds=7),
            last_used_at=_EPOCH + timedelta(hours=5, microseconds=999999),
        )
        store.add(record, "hash-1")
        assert store.get(record.id) == record
        assert store.find_by_prefix(record.prefix) == (record, "hash-1")
        assert store.list("proj_1") == [record]
        got = store.get(record.id)
        assert got is not None
        assert got.expires_at is not None
        assert got.expires_at.utcoffset() == timedelta(0)

    # -- "roll": RollingKeyStore -------------------------------------------

    def test_set_expiry_sets_it_and_returns_the_record(
        self, rolling_store: _RollingStore
    ) -> None:
        store = rolling_store
        record = _inactive_record(created_by="alice", last_used_at=_EPOCH)
        store.add(record, "hash-1")
        when = _EPOCH + timedelta(days=30, microseconds=5)
        changed = store.set_expiry(record.id, when)
        assert changed == dataclasses.replace(record, expires_at=when)
        assert store.get(record.id) == changed
        assert store.find_by_prefix(record.prefix) == (changed, "hash-1")

    def test_set_expiry_to_none_means_never(self, rolling_store: _RollingStore) -> None:
        record = _inactive_record()
        rolling_store.add(record, "hash-1")
        changed = rolling_store.set_expiry(record.id, None)
        assert changed == dataclasses.replace(record, expires_at=None)
        assert rolling_store.get(record.id) == changed

    def test_set_expiry_leaves_a_revoked_record_as_it_is(
        self, rolling_store: _RollingStore
    ) -> None:
        record = _inactive_record()
        rolling_store.add(record, "hash-1")
        revoked = rolling_store.revoke(record.id, revoked_at=_EPOCH, revoked_by="bob")
        assert rolling_store.set_expiry(record.id, None) == revoked
        assert rolling_store.get(record.id) == revoked

    def test_set_expiry_of_unknown_returns_none(
        self, rolling_store: _RollingStore
    ) -> None:
        assert rolling_store.set_expiry(uuid.uuid4().hex, None) is None

    def test_roll_activates_the_new_key_and_sets_the_old_keys_expiry(
        self, rolling_store: _RollingStore
    ) -> None:
        store = rolling_store
        old = make_record(created_by="alice", last_used_at=_EPOCH)
        new = _inactive_record(minutes=1)
        store.add(old, "hash-old")
        store.add(new, "hash-new")
        new_expiry = _EPOCH + timedelta(days=90)
        overlap_end = _EPOCH + timedelta(days=1, microseconds=3)
        rolled = store.roll(
            old.id,
            new.id,
            new_expires_at=new_expiry,
            old_expires_at=overlap_end,
            revoked_at=None,
            revoked_by=None,
        )
        assert rolled == dataclasses.replace(old, expires_at=overlap_end)
        assert store.get(old.id) == rolled
        assert store.get(new.id) == dataclasses.replace(new, expires_at=new_expiry)
        assert store.find_by_prefix(old.prefix) == (rolled, "hash-old")

    @pytest.mark.parametrize(
        ("own_expiry_days", "kept"),
        [
            pytest.param(None, False, id="no-expiry"),
            pytest.param(1, True, id="earlier-kept"),
            pytest.param(10, False, id="later-shortened"),
        ],
    )
    def test_roll_keeps_the_earlier_of_the_two_expiries(
        self, rolling_store: _RollingStore, own_expiry_days: int | None, kept: bool
    ) -> None:
        own = None if own_expiry_days is None else _EPOCH + timedelta(own_expiry_days)
        old = make_record(expires_at=own)
        new = _inactive_record(minutes=1)
        rolling_store.add(old, "hash")
        rolling_store.add(new, "hash")
        overlap_end = _EPOCH + timedelta(days=2)
        rolled = rolling_store.roll(
            old.id,
            new.id,
            new_expires_at=None,
            old_expires_at=overlap_end,
            revoked_at=None,
            revoked_by=None,
        )
        assert rolled is not None
        assert rolled.expires_at == (own if kept else overlap_end)
        assert rolled.revoked_at is None
        assert rolling_store.get(new.id) == dataclasses.replace(new, expires_at=None)

    def test_roll_with_a_revocation_revokes_the_old_key(
        self, rolling_store: _RollingStore
    ) -> None:
        store = rolling_store
        old = make_record(expires_at=_EPOCH + timedelta(days=3))
        new = _inactive_record(minutes=1)
        store.add(old, "hash")
        store.add(new, "hash")
        when = _EPOCH + timedelta(hours=1, microseconds=1)
        rolled = store.roll(
            old.id,
            new.id,
            new_expires_at=None,
            old_expires_at=None,
            revoked_at=when,
            revoked_by="carol",
        )
        assert rolled == dataclasses.replace(old, revoked_at=when, revoked_by="carol")
        assert store.get(old.id) == rolled
        assert store.get(new.id) == dataclasses.replace(new, expires_at=None)

    @pytest.mark.parametrize("unknown", ["old", "new"])
    def test_roll_with_an_unknown_key_returns_none_and_changes_nothing(
        self, rolling_store: _RollingStore, unknown: str
    ) -> None:
        old = make_record()
        new = _inactive_record(minutes=1)
        rolling_store.add(old if unknown == "new" else new, "hash")
        rolled = rolling_store.roll(
            old.id,
            new.id,
            new_expires_at=None,
            old_expires_at=None,
            revoked_at=_EPOCH,
            revoked_by="carol",
        )
        assert rolled is None
        assert rolling_store.list("proj_1", include_revoked=True) == [
            old if unknown == "new" else new
        ]

    @pytest.mark.parametrize("revoked", ["old", "new"])
    @pytest.mark.parametrize("revoking", [False, True], ids=["overlap", "revoke"])
    def test_roll_with_a_revoked_key_raises_and_changes_nothing(
        self, rolling_store: _RollingStore, revoked: str, revoking: bool
    ) -> None:
        old = make_record()
        new = _inactive_record(minutes=1)
        rolling_store.add(old, "hash")
        rolling_store.add(new, "hash")
        gone = old if revoked == "old" else new
        rolling_store.revoke(gone.id, revoked_at=_EPOCH, revoked_by="bob")
        before = rolling_store.list("proj_1", include_revoked=True)
        with pytest.raises(ValueError, match="revoked"):
            rolling_store.roll(
                old.id,
                new.id,
                new_expires_at=None,
                old_expires_at=_EPOCH,
                revoked_at=_EPOCH if revoking else None,
                revoked_by="carol" if revoking else None,
            )
        assert rolling_store.list("proj_1", include_revoked=True) == before

    def test_rolling_a_key_over_to_itself_raises(
        self, rolling_store: _RollingStore
    ) -> None:
        record = make_record()
        rolling_store.add(record, "hash")
        with pytest.raises(ValueError, match="itself"):
            rolling_store.roll(
                record.id,
                record.id,
                new_expires_at=None,
                old_expires_at=_EPOCH,
                revoked_at=None,
                revoked_by=None,
            )
        assert rolling_store.get(record.id) == record

    def test_racing_rolls_with_revocation_let_exactly_one_through(
        self, rolling_store: _RollingStore
    ) -> None:
        old = make_record()
        rolling_store.add(old, "hash")
        rivals = [_inactive_record(minutes=n + 1) for n in range(8)]
        for rival in rivals:
            rolling_store.add(rival, "hash")

        def roll(n: int) -> ApiKey | None:
            return rolling_store.roll(
                old.id,
                rivals[n].id,
                new_expires_at=None,
                old_expires_at=None,
                revoked_at=_EPOCH + timedelta(seconds=n),
                revoked_by=str(n),
            )

        outcomes = _race(len(rivals), roll)
        won = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, ApiKey)]
        lost = [
            n for n, outcome in enumerate(outcomes) if isinstance(outcome, ValueError)
        ]
        assert len(won) == 1, outcomes
        assert len(won) + len(lost) == len(rivals), outcomes
        (winner,) = won
        assert rolling_store.get(old.id) == outcomes[winner]
        assert outcomes[winner] == dataclasses.replace(
            old, revoked_at=_EPOCH + timedelta(seconds=winner), revoked_by=str(winner)
        )
        for n, rival in enumerate(rivals):
            # Only the winner's new key was activated; the others stay inactive.
            expected = (
                rival if n != winner else dataclasses.replace(rival, expires_at=None)
            )
            assert rolling_store.get(rival.id) == expected

    def test_racing_rolls_with_overlap_keep_the_earliest_expiry(
        self, rolling_store: _RollingStore
    ) -> None:
        old = make_record()
        rolling_store.add(old, "hash")
        rivals = [_inactive_record(minutes=n + 1) for n in range(8)]
        for rival in rivals:
            rolling_store.add(rival, "hash")
        # Every writer a different end, the earliest neither first nor last.
        ends = [_EPOCH + timedelta(hours=1 + (n * 3 + 2) % 8) for n in range(8)]

        def roll(n: int) -> ApiKey | None:
            return rolling_store.roll(
                old.id,
                rivals[n].id,
                new_expires_at=None,
                old_expires_at=ends[n],
                revoked_at=None,
                revoked_by=None,
            )

        outcomes = _race(len(rivals), roll)
        assert all(isinstance(outcome, ApiKey) for outcome in outcomes), outcomes
        assert rolling_store.get(old.id) == dataclasses.replace(
            old, expires_at=min(ends)
        )
        for rival in rivals:
            assert rolling_store.get(rival.id) == dataclasses.replace(
                rival, expires_at=None
            )

    # -- "record_use": UsageRecordingKeyStore ------------------------------

    def test_record_use_sets_last_used_at_and_nothing_else(
        self, recording_store: _RecordingStore
    ) -> None:
        store = recording_store
        first = make_record(created_by="alice", expires_at=_EPOCH + timedelta(days=9))
        second = make_record(minutes=1)
        store.add(first, "hash-1")
        store.add(second, "hash-2")
        plus_two = timezone(timedelta(hours=2))
        one = _EPOCH + timedelta(minutes=5, microseconds=17)
        two = datetime(2026, 1, 1, 4, 0, 0, 999999, tzinfo=plus_two)
        store.record_use({first.id: one, second.id: two})
        assert store.get(first.id) == dataclasses.replace(first, last_used_at=one)
        # The same instant; a store may give it back in UTC.
        assert store.get(second.id) == dataclasses.replace(second, last_used_at=two)
        assert store.find_by_prefix(first.prefix) == (
            dataclasses.replace(first, last_used_at=one),
            "hash-1",
        )

    def test_record_use_never_moves_a_stamp_backwards(
        self, recording_store: _RecordingStore
    ) -> None:
        later = _EPOCH + timedelta(minutes=10)
        record = make_record(last_used_at=later)
        recording_store.add(record, "hash")
        recording_store.record_use({record.id: later - timedelta(microseconds=1)})
        assert recording_store.get(record.id) == record
        recording_store.record_use({record.id: later})
        assert recording_store.get(record.id) == record
        latest = later + timedelta(minutes=1)
        recording_store.record_use({record.id: latest})
        got = recording_store.get(record.id)
        assert got is not None
        assert got.last_used_at == latest

    def test_record_use_ignores_unknown_ids(
        self, recording_store: _RecordingStore
    ) -> None:
        record = make_record()
        recording_store.add(record, "hash")
        unknown = uuid.uuid4().hex
        recording_store.record_use({unknown: _EPOCH, record.id: _EPOCH})
        assert recording_store.get(unknown) is None
        assert recording_store.list("proj_1", include_revoked=True) == [
            dataclasses.replace(record, last_used_at=_EPOCH)
        ]
        recording_store.record_use({uuid.uuid4().hex: _EPOCH})

    def test_record_use_of_nothing_does_nothing(
        self, recording_store: _RecordingStore
    ) -> None:
        record = make_record()
        recording_store.add(record, "hash")
        recording_store.record_use({})
        assert recording_store.get(record.id) == record

    def test_record_use_records_revoked_and_expired_keys_too(
        self, recording_store: _RecordingStore
    ) -> None:
        expired = _inactive_record()
        revoked = make_record(minutes=1)
        recording_store.add(expired, "hash")
        recording_store.add(revoked, "hash")
        gone = recording_store.revoke(revoked.id, revoked_at=_EPOCH, revoked_by="b")
        assert gone is not None
        when = _EPOCH + timedelta(seconds=59)
        recording_store.record_use({expired.id: when, gone.id: when})
        assert recording_store.get(expired.id) == dataclasses.replace(
            expired, last_used_at=when
        )
        assert recording_store.get(gone.id) == dataclasses.replace(
            gone, last_used_at=when
        )

    def test_record_use_of_many_keys_in_one_batch(
        self, recording_store: _RecordingStore
    ) -> None:
        records = [make_record(minutes=n) for n in range(120)]
        for record in records:
            recording_store.add(record, "hash")
        stamps = {
            record.id: _EPOCH + timedelta(days=1, seconds=n)
            for n, record in enumerate(records)
        }
        recording_store.record_use(stamps)
        stored = recording_store.list("proj_1")
        assert len(stored) == len(records)
        assert {record.id: record.last_used_at for record in stored} == stamps

    def test_racing_record_use_keeps_the_latest_stamp(
        self, recording_store: _RecordingStore
    ) -> None:
        records = [make_record(minutes=n) for n in range(12)]
        for record in records:
            recording_store.add(record, "hash")
        writers = 8

        def record_use(n: int) -> None:
            # Each writer its own stamp for every key, in its own order.
            ids = [record.id for record in records]
            ids = ids[n:] + ids[:n]
            if n % 2:
                ids.reverse()
            stamp = _EPOCH + timedelta(minutes=(n * 5) % writers)
            for _ in range(3):
                recording_store.record_use(dict.fromkeys(ids, stamp))

        outcomes = _race(writers, record_use)
        assert outcomes == [None] * writers
        latest = _EPOCH + timedelta(minutes=writers - 1)
        for record in records:
            assert recording_store.get(record.id) == dataclasses.replace(
                record, last_used_at=latest
            )

    # -- "changes": ChangeFeedKeyStore ---------------------------------------

    def test_changes_since_none_is_where_a_reader_starts(
        self, feed_store: _FeedStore
    ) -> None:
        record = make_record()
        feed_store.add(record, "hash")
        feed_store.revoke(record.id, revoked_at=_EPOCH, revoked_by=None)
        start = feed_store.changes_since(None)
        assert isinstance(start, KeyChanges)
        assert (start.key_ids, start.complete) == ((), True)
        # Nothing changed since: nothing to read, and the cursor stays.
        assert feed_store.changes_since(start.cursor) == start

    def test_a_revocation_is_read_once_after_the_cursor(
        self, feed_store: _FeedStore
    ) -> None:
        record = make_record()
        other = make_record(minutes=1)
        feed_store.add(record, "hash")
        feed_store.add(other, "hash")
        cursor = feed_store.changes_since(None).cursor
        feed_store.revoke(record.id, revoked_at=_EPOCH, revoked_by="bob")
        cursor, key_ids = _read_on(feed_store, cursor)
        assert set(key_ids) == {record.id}
        assert _read_on(feed_store, cursor) == (cursor, [])

    def test_changes_are_read_in_order_across_reads(
        self, feed_store: _FeedStore
    ) -> None:
        records = [make_record(minutes=n) for n in range(6)]
        for record in records:
            feed_store.add(record, "hash")
        cursor = feed_store.changes_since(None).cursor
        read: list[str] = []
        for record in records:
            feed_store.revoke(record.id, revoked_at=_EPOCH, revoked_by=None)
            if len(read) % 2 == 0:
                cursor, key_ids = _read_on(feed_store, cursor)
                read += key_ids
        cursor, key_ids = _read_on(feed_store, cursor)
        read += key_ids
        assert list(dict.fromkeys(read)) == [record.id for record in records]

    def test_creating_rehashing_and_recording_use_are_not_changes(
        self, feed_store: _FeedStore
    ) -> None:
        cursor = feed_store.changes_since(None).cursor
        record = make_record()
        feed_store.add(record, "hash-1")
        feed_store.set_hash(record.id, "hash-2")
        if isinstance(feed_store, UsageRecordingKeyStore):
            feed_store.record_use({record.id: _EPOCH})
        feed_store.get(record.id)
        feed_store.find_by_prefix(record.prefix)
        feed_store.list("proj_1")
        assert _read_on(feed_store, cursor) == (cursor, [])

    def test_set_expiry_and_roll_are_changes(self, feed_store: _FeedStore) -> None:
        if not isinstance(feed_store, RollingKeyStore):
            pytest.skip("the store lacks the 'roll' capability (RollingKeyStore)")
        pending = _inactive_record()
        old = make_record(minutes=1)
        new = _inactive_record(minutes=2)
        older = make_record(minutes=3)
        newer = _inactive_record(minutes=4)
        for record in (pending, old, new, older, newer):
            feed_store.add(record, "hash")
        cursor = feed_store.changes_since(None).cursor

        feed_store.set_expiry(pending.id, None)
        cursor, key_ids = _read_on(feed_store, cursor)
        assert set(key_ids) == {pending.id}

        feed_store.roll(
            old.id,
            new.id,
            new_expires_at=None,
            old_expires_at=_EPOCH,
            revoked_at=None,
            revoked_by=None,
        )
        cursor, key_ids = _read_on(feed_store, cursor)
        assert set(key_ids) == {old.id, new.id}

        feed_store.roll(
            older.id,
            newer.id,
            new_expires_at=None,
            old_expires_at=None,
            revoked_at=_EPOCH,
            revoked_by="carol",
        )
        cursor, key_ids = _read_on(feed_store, cursor)
        assert set(key_ids) == {older.id, newer.id}

    def test_a_roll_that_fails_is_not_a_change(self, feed_store: _FeedStore) -> None:
        if not isinstance(feed_store, RollingKeyStore):
            pytest.skip("the store lacks the 'roll' capability (RollingKeyStore)")
        old = make_record()
        new = _inactive_record(minutes=1)
        feed_store.add(old, "hash")
        feed_store.add(new, "hash")
        feed_store.revoke(old.id, revoked_at=_EPOCH, revoked_by="bob")
        cursor = feed_store.changes_since(None).cursor
        with pytest.raises(ValueError, match="revoked"):
            feed_store.roll(
                old.id,
                new.id,
                new_expires_at=None,
                old_expires_at=None,
                revoked_at=_EPOCH,
                revoked_by="carol",
            )
        assert _read_on(feed_store, cursor) == (cursor, [])

    def test_a_cursor_the_store_never_gave_is_not_complete(
        self, feed_store: _FeedStore
    ) -> None:
        record = make_record()
        feed_store.add(record, "hash")
        feed_store.revoke(record.id, revoked_at=_EPOCH, revoked_by=None)
        head = feed_store.changes_since(None).cursor
        unknown = feed_store.changes_since(head + 1000)
        assert not unknown.complete
        # The cursor it gives is one to go on from.
        assert _read_on(feed_store, unknown.cursor) == (unknown.cursor, [])

    @pytest.mark.parametrize(
        ("cursor", "error"),
        [
            pytest.param("0", TypeError, id="str"),
            pytest.param(1.0, TypeError, id="float"),
            pytest.param(True, TypeError, id="bool"),
            pytest.param(-1, ValueError, id="negative"),
        ],
    )
    def test_bad_cursors_are_refused(
        self, feed_store: _FeedStore, cursor: Any, error: type[Exception]
    ) -> None:
        with pytest.raises(error):
            feed_store.changes_since(cursor)

    def test_a_reader_polling_while_many_threads_revoke_misses_none(
        self, feed_store: _FeedStore
    ) -> None:
        records = [make_record(minutes=n) for n in range(48)]
        for record in records:
            feed_store.add(record, "hash")
        cursor = feed_store.changes_since(None).cursor
        writers = 8
        read: set[str] = set()
        incomplete: list[int] = []
        done = threading.Event()

        def poll() -> None:
            nonlocal cursor
            while True:
                finished = done.is_set()
                changes = feed_store.changes_since(cursor)
                if not changes.complete:
                    incomplete.append(cursor)
                read.update(changes.key_ids)
                cursor = changes.cursor
                if finished:
                    return

        reader = threading.Thread(target=poll)
        reader.start()
        try:
            outcomes = _race(
                writers,
                lambda n: [
                    feed_store.revoke(record.id, revoked_at=_EPOCH, revoked_by=None)
                    for record in records[n::writers]
                ],
            )
        finally:
            done.set()
            reader.join()
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        assert incomplete == []
        assert read == {record.id for record in records}

    def test_listen_gives_none_or_a_listener_woken_by_a_change(
        self, feed_store: _FeedStore
    ) -> None:
        listener = feed_store.listen()
        if listener is None:
            return
        assert isinstance(listener, ChangeListener)
        try:
            record = make_record()
            feed_store.add(record, "hash")
            cursor = feed_store.changes_since(None).cursor
            # Once listening (a first wait may say "read now"), it is quiet
            # while nothing changes.
            deadline = time.monotonic() + 10
            while listener.wait(0.2):
                assert time.monotonic() < deadline, "the listener is never quiet"
            feed_store.revoke(record.id, revoked_at=_EPOCH, revoked_by=None)
            assert listener.wait(10), "the listener was not woken by a change"
            assert record.id in _read_on(feed_store, cursor)[1]
        finally:
            listener.close()
        assert listener.wait(0.1) is False
        listener.close()
