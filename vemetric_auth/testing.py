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

Needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from .errors import DuplicatePrefix
from .keys import display_prefix, generate_key
from .records import ApiKey
from .stores.base import KeyStore

__all__ = ["KeyStoreContract", "make_record"]

_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_record(
    project_id: str = "proj_1",
    *,
    name: str = "test key",
    minutes: int = 0,
    created_by: str | None = None,
) -> ApiKey:
    """Return a new active record with a fresh id and prefix, created *minutes* after
    2026-01-01 UTC."""
    return ApiKey(
        id=uuid.uuid4().hex,
        project_id=project_id,
        name=name,
        prefix=display_prefix(generate_key()),
        created_at=_EPOCH + timedelta(minutes=minutes),
        created_by=created_by,
    )


class KeyStoreContract:
    """Tests of the :class:`~vemetric_auth.KeyStore` contract.

    Subclasses provide a ``store`` fixture returning an empty store.
    """

    @pytest.fixture
    def store(self) -> KeyStore:
        raise NotImplementedError("define a 'store' fixture returning an empty store")

    def test_is_a_key_store(self, store: KeyStore) -> None:
        assert isinstance(store, KeyStore)

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
