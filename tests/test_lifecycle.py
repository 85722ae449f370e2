"""The key lifecycle through KeyManager: expiry, rolling with overlap, last use."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import CountingHasher, FlakyStore

from vemetric_auth import (
    ApiKey,
    InMemoryKeyStore,
    InvalidApiKey,
    IssuedKey,
    KeyManager,
    KeyNotFound,
    StoreUnavailable,
    _last_use,
)

HOUR = timedelta(hours=1)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CountingStore(InMemoryKeyStore):
    """The in-memory store, counting the calls that reach it by method name,
    and keeping every ``record_use`` batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.batches: list[dict[str, datetime]] = []

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def add(self, record: ApiKey, key_hash: str) -> None:
        self._count("add")
        super().add(record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        self._count("get")
        return super().get(key_id)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        self._count("find_by_prefix")
        return super().find_by_prefix(prefix)

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        self._count("revoke")
        return super().revoke(key_id, revoked_at=revoked_at, revoked_by=revoked_by)

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        self._count("set_expiry")
        return super().set_expiry(key_id, expires_at)

    def roll(self, old_key_id: str, new_key_id: str, **kwargs: Any) -> ApiKey | None:
        self._count("roll")
        return super().roll(old_key_id, new_key_id, **kwargs)

    def record_use(self, stamps: Mapping[str, datetime]) -> None:
        self._count("record_use")
        self.batches.append(dict(stamps))
        super().record_use(stamps)

    def reads(self) -> int:
        return self.calls.get("get", 0) + self.calls.get("find_by_prefix", 0)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def manager(store: CountingStore, hasher: CountingHasher) -> Iterator[KeyManager]:
    keys = KeyManager(store, hasher=hasher)
    yield keys
    keys.close()


@pytest.fixture
def quick_batches(monkeypatch: pytest.MonkeyPatch) -> float:
    """Last-use batches are written 0.1 s after their first stamp, not 60 s."""
    monkeypatch.setattr(_last_use.LastUse, "_interval", 0.1)
    return 0.1


def wait_until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- create(..., expires_at=...) -----------------------------------------------------


def test_create_with_an_expiry_stores_it_in_utc(
    manager: KeyManager, store: CountingStore
) -> None:
    paris = timezone(timedelta(hours=2))
    expires_at = (utcnow() + HOUR).astimezone(paris)
    issued = manager.create("p1", "n", expires_at=expires_at)
    assert issued.record.expires_at == expires_at
    assert issued.record.expires_at is not None
    assert issued.record.expires_at.utcoffset() == timedelta(0)
    assert store.get(issued.record.id) == issued.record
    assert issued.record.active
    assert manager.authenticate(issued.key) == issued.record


@pytest.mark.parametrize(
    ("expires_at", "error", "message"),
    [
        pytest.param(datetime.now() + HOUR, ValueError, "timezone-aware", id="naive"),
        pytest.param(utcnow() - HOUR, ValueError, "in the future", id="past"),
        pytest.param(
            datetime(2000, 1, 1, tzinfo=timezone.utc),
            ValueError,
            "in the future",
            id="long-past",
        ),
        pytest.param(date(2999, 1, 1), TypeError, "datetime", id="a-date"),
        pytest.param("2999-01-01T00:00:00Z", TypeError, "datetime", id="a-str"),
        pytest.param(3600, TypeError, "datetime", id="a-number"),
    ],
)
def test_a_bad_expiry_stores_nothing(
    manager: KeyManager,
    store: CountingStore,
    expires_at: Any,
    error: type[Exception],
    message: str,
) -> None:
    for pending in (False, True):
        with pytest.raises(error, match=message):
            manager.create("p1", "n", expires_at=expires_at, pending=pending)
    assert store.calls == {}


def test_an_expiry_of_now_is_refused(manager: KeyManager, store: CountingStore) -> None:
    with pytest.raises(ValueError, match="in the future"):
        manager.create("p1", "n", expires_at=utcnow())
    assert store.calls == {}


# -- expiry on the request path ------------------------------------------------------


def test_an_expired_key_is_refused_from_the_instant_it_expires_in_every_manager(
    store: CountingStore, hasher: CountingHasher
) -> None:
    """Cached or not, in the manager that made it and in others over the same
    store: accepted up to its expires_at, refused from then on."""
    expires_at = utcnow() + timedelta(seconds=1.5)
    creator = KeyManager(store, hasher=hasher)
    issued = creator.create("p1", "n", expires_at=expires_at)
    managers = {
        "creator": creator,
        "cached": KeyManager(store, hasher=hasher, cache_ttl=3600),
        "uncached": KeyManager(store, hasher=hasher, cache_ttl=0),
    }
    for keys in managers.values():
        assert keys.authenticate(issued.key) == issued.record
    last_accepted: dict[str, datetime] = {}
    first_refused: dict[str, datetime] = {}
    give_up = time.monotonic() + 10
    while len(first_refused) < len(managers) and time.monotonic() < give_up:
        for name, keys in managers.items():
            if name in first_refused:
                continue
            before = utcnow()
            try:
                keys.authenticate(issued.key)
            except InvalidApiKey:
                first_refused[name] = utcnow()
            else:
                last_accepted[name] = before
    # Clocks: the expiry is carried to the monotonic clock at each read; a
    # few milliseconds allow for the two clocks drifting apart meanwhile.
    slack = timedelta(milliseconds=5)
    for name in managers:
        assert last_accepted[name] < expires_at + slack, name
        assert first_refused[name] >= expires_at - slack, name
    # And it stays refused, as a key that was never used here is.
    later = KeyManager(store, hasher=hasher)
    for keys in [*managers.values(), later]:
        for _ in range(3):
            with pytest.raises(InvalidApiKey) as refused:
                keys.authenticate(issued.key)
            assert refused.value.message == "Invalid or revoked API key"
        keys.close()


def test_a_cached_key_past_its_expiry_is_refused_without_a_store_call(
    store: CountingStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(store, hasher=hasher, cache_ttl=3600)
    issued = keys.create("p1", "n", expires_at=utcnow() + timedelta(seconds=0.3))
    keys.authenticate(issued.key)
    reads = store.reads()
    time.sleep(0.35)
    for _ in range(100):
        with pytest.raises(InvalidApiKey):
            keys.authenticate(issued.key)
    assert store.reads() == reads
    assert hasher.verifications == 1


def test_an_expired_key_is_read_again_once_per_cache_ttl(
    store: CountingStore, hasher: CountingHasher
) -> None:
    """So that an expiry changed in the store is seen within cache_ttl."""
    keys = KeyManager(store, hasher=hasher, cache_ttl=0.3)
    issued = keys.create("p1", "n", expires_at=utcnow() + timedelta(seconds=0.1))
    keys.authenticate(issued.key)
    time.sleep(0.4)
    reads = store.reads()
    for _ in range(50):
        with pytest.raises(InvalidApiKey):
            keys.authenticate(issued.key)
    assert store.reads() == reads + 1  # one re-read, then refused from memory
    store.set_expiry(issued.record.id, utcnow() + HOUR)
    time.sleep(0.35)
    assert (
        keys.authenticate(issued.key).expires_at
        == store.get(issued.record.id).expires_at
    )  # type: ignore[union-attr]
    assert hasher.verifications == 1


def test_a_first_use_of_an_expired_key_runs_no_argon2(
    store: CountingStore, hasher: CountingHasher
) -> None:
    creator = KeyManager(store, hasher=hasher)
    issued = creator.create("p1", "n", expires_at=utcnow() + timedelta(seconds=0.1))
    time.sleep(0.15)
    keys = KeyManager(store, hasher=hasher)
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)
    assert hasher.verifications == 0


def test_the_cached_path_reads_the_clock_once(
    manager: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry and last use cost the cached path no clock call of their own."""
    issued = manager.create("p1", "n", expires_at=utcnow() + HOUR)
    manager.authenticate(issued.key)
    manager.authenticate(issued.key)  # the first cached use takes its stamp

    import vemetric_auth.manager as manager_module

    calls = []
    real = time.monotonic

    class Clock:
        @staticmethod
        def monotonic() -> float:
            calls.append(1)
            return real()

    monkeypatch.setattr(manager_module, "time", Clock)
    for _ in range(10):
        assert manager.authenticate(issued.key) == issued.record
    assert len(calls) == 10


# -- roll ------------------------------------------------------------------------------


def test_roll_issues_a_key_of_the_same_project_and_name_and_retires_the_old(
    manager: KeyManager, store: CountingStore
) -> None:
    old = manager.create("p1", "Production", created_by="alice")
    manager.authenticate(old.key)
    new_expiry = utcnow() + timedelta(days=90)
    before = utcnow()
    new = manager.roll(old.record.id, rolled_by="bob", expires_at=new_expiry)
    after = utcnow()
    assert isinstance(new, IssuedKey)
    assert new.key != old.key
    record = new.record
    assert (record.project_id, record.name, record.created_by) == (
        "p1",
        "Production",
        "bob",
    )
    assert record.expires_at == new_expiry
    assert record.id != old.record.id
    assert store.get(record.id) == record
    retired = manager.get(old.record.id)
    assert retired.revoked_at is None
    assert retired.expires_at is not None
    assert (
        before + timedelta(hours=24)
        <= retired.expires_at
        <= after + timedelta(hours=24)
    )
    # Both work during the overlap.
    assert manager.authenticate(new.key) == record
    assert manager.authenticate(old.key).expires_at == retired.expires_at
    # Two store writes for the roll: the new key, then one atomic roll.
    assert (store.calls["add"], store.calls["roll"]) == (2, 1)
    assert "set_expiry" not in store.calls


def test_roll_keeps_an_earlier_expiry_of_the_old_key(manager: KeyManager) -> None:
    soon = utcnow() + HOUR
    old = manager.create("p1", "n", expires_at=soon)
    manager.roll(old.record.id, overlap=timedelta(days=7))
    assert manager.get(old.record.id).expires_at == soon


def test_roll_with_no_overlap_revokes_the_old_key_at_once(
    manager: KeyManager,
) -> None:
    old = manager.create("p1", "n")
    manager.authenticate(old.key)  # cached
    new = manager.roll(old.record.id, overlap=timedelta(0), rolled_by="bob")
    retired = manager.get(old.record.id)
    assert retired.revoked
    assert retired.revoked_by == "bob"
    with pytest.raises(InvalidApiKey):
        manager.authenticate(old.key)
    assert manager.authenticate(new.key) == new.record


def test_a_rolled_key_stops_by_itself_when_the_overlap_ends(
    store: CountingStore, hasher: CountingHasher
) -> None:
    """Cached in this manager with a long cache_ttl: refused at the new expiry."""
    keys = KeyManager(store, hasher=hasher, cache_ttl=3600)
    old = keys.create("p1", "n")
    keys.authenticate(old.key)
    new = keys.roll(old.record.id, overlap=timedelta(seconds=0.5))
    expires_at = keys.get(old.record.id).expires_at
    assert expires_at is not None
    assert keys.authenticate(old.key).expires_at == expires_at  # re-read
    while utcnow() < expires_at - timedelta(milliseconds=50):
        keys.authenticate(old.key)
        time.sleep(0.01)
    time.sleep(max(0.0, (expires_at - utcnow()).total_seconds()))
    with pytest.raises(InvalidApiKey):
        keys.authenticate(old.key)
    assert keys.authenticate(new.key) == new.record
    keys.close()


def test_roll_evicts_the_old_key_from_the_cache(
    store: CountingStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(store, hasher=hasher, cache_ttl=3600)
    old = keys.create("p1", "n")
    keys.authenticate(old.key)
    keys.authenticate(old.key)
    reads = store.reads()
    keys.roll(old.record.id)  # one read: the old record
    keys.authenticate(old.key)  # read again, with its new expiry
    assert store.reads() == reads + 2
    keys.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param(
            {"overlap": timedelta(seconds=-1)}, ValueError, "negative", id="negative"
        ),
        pytest.param({"overlap": 3600}, TypeError, "timedelta", id="number"),
        pytest.param(
            {"expires_at": utcnow() - HOUR}, ValueError, "future", id="past-expiry"
        ),
        pytest.param(
            {"expires_at": datetime.now() + HOUR}, ValueError, "aware", id="naive"
        ),
        pytest.param({"rolled_by": ""}, ValueError, "empty", id="empty-roller"),
        pytest.param({"rolled_by": 5}, TypeError, "rolled_by", id="roller-type"),
    ],
)
def test_bad_roll_arguments_change_nothing(
    manager: KeyManager,
    store: CountingStore,
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    old = manager.create("p1", "n")
    calls = dict(store.calls)
    with pytest.raises(error, match=message):
        manager.roll(old.record.id, **kwargs)
    assert store.calls == calls


def test_rolling_a_revoked_key_is_a_value_error(
    manager: KeyManager, store: CountingStore
) -> None:
    old = manager.create("p1", "n")
    manager.revoke(old.record.id)
    with pytest.raises(ValueError, match="revoked"):
        manager.roll(old.record.id)
    assert len(store.list("p1", include_revoked=True)) == 1


def test_rolling_an_unknown_key_is_key_not_found(
    manager: KeyManager, store: CountingStore
) -> None:
    with pytest.raises(KeyNotFound):
        manager.roll("0" * 32)
    assert "add" not in store.calls


def test_rolling_a_pasted_key_is_refused(manager: KeyManager) -> None:
    old = manager.create("p1", "n")
    with pytest.raises(ValueError, match="API key, not a key id"):
        manager.roll(old.key)


def test_a_store_without_the_rolling_methods_names_them(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    """A store written for the six-method protocol: create, list, get, revoke
    and authenticate work; roll and pending creation say what is missing."""
    old = flaky_keys.create("p1", "n")
    calls = dict(flaky_store.calls)
    with pytest.raises(TypeError, match=r"FlakyStore lacks set_expiry and roll"):
        flaky_keys.roll(old.record.id)
    with pytest.raises(TypeError, match=r"RollingKeyStore"):
        flaky_keys.create("p1", "n", pending=True)
    assert flaky_store.calls == calls
    # An expiry still works: the store keeps the whole record.
    issued = flaky_keys.create("p1", "expiring", expires_at=utcnow() + HOUR)
    assert flaky_keys.get(issued.record.id).expires_at == issued.record.expires_at
    assert flaky_keys.authenticate(issued.key) == issued.record


def test_a_store_that_drops_the_expiry_gets_no_key_that_never_expires(
    hasher: CountingHasher,
) -> None:
    """A store written for an earlier release, keeping the fields it knew."""

    class OldStore(FlakyStore):
        def add(self, record: Any, key_hash: str) -> None:
            self.inner.add(dataclasses.replace(record, expires_at=None), key_hash)

    store = OldStore(InMemoryKeyStore())
    keys = KeyManager(store, hasher=hasher)
    with pytest.raises(TypeError, match="did not keep the key's expires_at"):
        keys.create("p1", "n", expires_at=utcnow() + HOUR)
    (record,) = store.inner.list("p1", include_revoked=True)
    assert record.revoked


class FailingRollStore(CountingStore):
    """``roll`` fails with *error* while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None

    def roll(self, old_key_id: str, new_key_id: str, **kwargs: Any) -> ApiKey | None:
        if self.error is not None:
            raise self.error
        return super().roll(old_key_id, new_key_id, **kwargs)


def test_a_roll_that_fails_leaves_the_old_key_and_no_working_new_key(
    hasher: CountingHasher,
) -> None:
    store = FailingRollStore()
    keys = KeyManager(store, hasher=hasher)
    old = keys.create("p1", "n")
    store.error = OSError("connection lost")
    with pytest.raises(StoreUnavailable):
        keys.roll(old.record.id)
    assert store.get(old.record.id) == old.record
    (new,) = [
        r for r in store.list("p1", include_revoked=True) if r.id != old.record.id
    ]
    assert new.revoked
    assert new.revoked_by == "vemetric-auth: roll or creation did not complete"
    assert keys.authenticate(old.key) == old.record


def test_a_roll_refused_by_the_store_is_a_value_error_and_revokes_the_new_key(
    hasher: CountingHasher,
) -> None:
    """The old key was revoked by another process between the read and the roll."""
    store = FailingRollStore()
    keys = KeyManager(store, hasher=hasher)
    old = keys.create("p1", "n")
    store.error = ValueError("the key to roll is revoked")
    with pytest.raises(ValueError, match="revoked"):
        keys.roll(old.record.id)
    records = store.list("p1", include_revoked=True)
    assert [r.revoked for r in records] == [True, False]
    assert records[1] == old.record


class LateRollStore(CountingStore):
    """``roll`` and ``set_expiry`` wait for ``release``; ``revoke`` fails
    while ``revoke_fails`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.revoke_fails = False
        self.landed = threading.Event()

    def roll(self, old_key_id: str, new_key_id: str, **kwargs: Any) -> ApiKey | None:
        self.release.wait(30)
        try:
            return super().roll(old_key_id, new_key_id, **kwargs)
        finally:
            self.landed.set()

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        if not self.release.is_set():  # the activation, not the undo
            self.release.wait(30)
            try:
                return super().set_expiry(key_id, expires_at)
            finally:
                self.landed.set()
        return super().set_expiry(key_id, expires_at)

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        if self.revoke_fails:
            raise OSError("connection lost")
        return super().revoke(key_id, revoked_at=revoked_at, revoked_by=revoked_by)


def new_key_of(store: InMemoryKeyStore, old: IssuedKey) -> ApiKey:
    (new,) = [
        r for r in store.list("p1", include_revoked=True) if r.id != old.record.id
    ]
    return new


def test_a_roll_that_lands_after_its_timeout_is_undone(
    hasher: CountingHasher, caplog: pytest.LogCaptureFixture
) -> None:
    store = LateRollStore()
    keys = KeyManager(store, hasher=hasher, store_timeout=0.2)
    store.release.set()
    old = keys.create("p1", "n", expires_at=utcnow() + timedelta(days=30))
    store.release.clear()
    store.revoke_fails = True  # the immediate revocation fails too
    with pytest.raises(StoreUnavailable):
        keys.roll(old.record.id, overlap=HOUR)
    new = new_key_of(store, old)
    assert not new.revoked
    assert new.expired  # stored inactive, and so it stays
    store.revoke_fails = False
    store.release.set()
    wait_until(lambda: store.get(new.id).revoked)  # type: ignore[union-attr]
    wait_until(lambda: store.get(old.record.id).expires_at == old.record.expires_at)  # type: ignore[union-attr]
    assert store.get(old.record.id) == old.record
    assert keys.authenticate(old.key) == old.record
    keys.close()


def test_a_revoking_roll_that_lands_late_is_logged_as_an_error(
    hasher: CountingHasher, caplog: pytest.LogCaptureFixture
) -> None:
    store = LateRollStore()
    keys = KeyManager(store, hasher=hasher, store_timeout=0.2)
    store.release.set()
    old = keys.create("p1", "n")
    store.release.clear()
    store.revoke_fails = True
    with pytest.raises(StoreUnavailable):
        keys.roll(old.record.id, overlap=timedelta(0))
    store.revoke_fails = False
    store.release.set()
    new = new_key_of(store, old)
    wait_until(lambda: store.get(new.id).revoked)  # type: ignore[union-attr]
    wait_until(lambda: [r for r in caplog.records if r.levelno == logging.ERROR])
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert old.record.id in error.getMessage()
    assert store.get(old.record.id).revoked  # type: ignore[union-attr]
    keys.close()


# -- pending creation and activation ---------------------------------------------------


def test_a_pending_key_works_only_once_activated(
    manager: KeyManager, store: CountingStore
) -> None:
    expires_at = utcnow() + timedelta(days=90)
    issued = manager.create("p1", "n", expires_at=expires_at, pending=True)
    assert issued.record.expires_at == expires_at  # as it will be
    stored = store.get(issued.record.id)
    assert stored is not None
    assert stored.expires_at == stored.created_at  # inactive until then
    assert stored.expired
    assert not stored.active
    with pytest.raises(InvalidApiKey):
        manager.authenticate(issued.key)
    activated = manager.activate(issued)
    assert activated == issued.record
    assert manager.authenticate(issued.key) == issued.record
    with pytest.raises(ValueError, match="not pending"):
        manager.activate(issued)


def test_a_pending_key_without_expiry_never_expires_once_activated(
    manager: KeyManager,
) -> None:
    issued = manager.create("p1", "n", pending=True)
    assert manager.activate(issued.record.id).expires_at is None
    assert manager.authenticate(issued.key).active


def test_a_pending_roll_changes_nothing_until_activated(
    manager: KeyManager, store: CountingStore
) -> None:
    old = manager.create("p1", "n")
    new = manager.roll(old.record.id, overlap=timedelta(0), pending=True)
    assert store.get(old.record.id) == old.record
    with pytest.raises(InvalidApiKey):
        manager.authenticate(new.key)
    assert manager.authenticate(old.key) == old.record
    assert manager.activate(new) == new.record
    assert manager.get(old.record.id).revoked
    assert manager.authenticate(new.key) == new.record
    with pytest.raises(InvalidApiKey):
        manager.authenticate(old.key)


def test_a_revoked_pending_key_can_not_be_activated(manager: KeyManager) -> None:
    issued = manager.create("p1", "n", pending=True)
    manager.revoke(issued.record.id)
    with pytest.raises(ValueError, match="not pending"):
        manager.activate(issued)
    with pytest.raises(InvalidApiKey):
        manager.authenticate(issued.key)


def test_activating_what_is_not_pending_is_a_value_error(manager: KeyManager) -> None:
    issued = manager.create("p1", "n")
    with pytest.raises(ValueError, match="not pending"):
        manager.activate(issued)
    with pytest.raises(ValueError, match="not pending"):
        manager.activate("0" * 32)
    with pytest.raises(ValueError, match="API key, not a key id"):
        manager.activate(issued.key)


@pytest.mark.parametrize("command", ["create", "roll"])
def test_a_shown_key_whose_activation_lands_late_is_left_to_work(
    hasher: CountingHasher, command: str
) -> None:
    """activate() after the key was shown: revoking the new key of a roll
    that did land would leave no key working. Both changes land, or none."""
    store = LateRollStore()
    keys = KeyManager(store, hasher=hasher, store_timeout=0.2)
    store.release.set()
    old = keys.create("p1", "old")
    store.release.clear()
    if command == "create":
        issued = keys.create("p1", "n", pending=True)
    else:
        issued = keys.roll(old.record.id, overlap=timedelta(0), pending=True)
    with pytest.raises(StoreUnavailable):
        keys.activate(issued)
    assert not store.get(issued.record.id).revoked  # type: ignore[union-attr]
    store.release.set()
    wait_until(store.landed.is_set)
    assert keys.authenticate(issued.key).id == issued.record.id
    if command == "roll":
        assert store.get(old.record.id).revoked  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not pending"):
        keys.activate(issued)
    keys.close()


def test_a_shown_key_whose_activation_is_refused_never_works(
    hasher: CountingHasher,
) -> None:
    store = FailingRollStore()
    keys = KeyManager(store, hasher=hasher)
    old = keys.create("p1", "n")
    issued = keys.roll(old.record.id, pending=True)
    store.error = ValueError("the key to roll is revoked")
    with pytest.raises(ValueError, match="revoked"):
        keys.activate(issued)
    assert store.get(issued.record.id).revoked  # type: ignore[union-attr]
    assert store.get(old.record.id) == old.record


# -- last use --------------------------------------------------------------------------


def test_last_use_is_written_in_the_background_and_shown_by_get_and_list(
    store: CountingStore, hasher: CountingHasher, quick_batches: float
) -> None:
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("p1", "n")
    assert issued.record.last_used_at is None
    before = utcnow()
    keys.authenticate(issued.key)
    after = utcnow()
    wait_until(lambda: store.batches)
    used = keys.get(issued.record.id).last_used_at
    assert used is not None
    assert before <= used <= after
    assert keys.list("p1")[0].last_used_at == used
    keys.close()


def test_a_key_is_stamped_at_most_once_a_minute_per_process(
    store: CountingStore, hasher: CountingHasher, quick_batches: float
) -> None:
    keys = KeyManager(store, hasher=hasher, cache_ttl=0.05)
    issued = keys.create("p1", "n")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # cached, re-read, cached...
        keys.authenticate(issued.key)
    keys.close()
    assert [list(batch) for batch in store.batches] == [[issued.record.id]]


def test_stamps_of_one_key_move_forwards(
    store: CountingStore,
    hasher: CountingHasher,
    quick_batches: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_last_use, "SPACING", 0.1)
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("p1", "n")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        keys.authenticate(issued.key)
        time.sleep(0.001)
    keys.close()
    stamps = [batch[issued.record.id] for batch in store.batches]
    assert len(stamps) >= 3
    assert all(b - a >= timedelta(seconds=0.1) for a, b in itertools.pairwise(stamps))
    assert store.get(issued.record.id).last_used_at == stamps[-1]  # type: ignore[union-attr]


def test_ten_thousand_keys_used_in_one_interval_are_one_batch(
    store: CountingStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(store, hasher=hasher, store_timeout=None, cache_size=20_000)
    issued = [keys.create("p1", f"key {n}") for n in range(10_000)]
    started = utcnow()
    for item in issued:
        keys.authenticate(item.key)
        keys.authenticate(item.key)  # cached: no second stamp
    ended = utcnow()
    assert "record_use" not in store.calls  # within the interval
    keys.close()
    assert store.calls["record_use"] == 1
    (batch,) = store.batches
    assert set(batch) == {item.record.id for item in issued}
    assert all(started <= stamp <= ended for stamp in batch.values())
    stamps = [batch[item.record.id] for item in issued]
    assert stamps == sorted(stamps)
    for item in issued[::1000]:
        assert store.get(item.record.id).last_used_at == batch[item.record.id]  # type: ignore[union-attr]


def test_one_batch_per_interval_however_many_keys(
    store: CountingStore, hasher: CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_last_use.LastUse, "_interval", 0.5)
    keys = KeyManager(store, hasher=hasher, store_timeout=None)
    issued = [keys.create("p1", f"key {n}") for n in range(200)]
    started = time.monotonic()
    for item in issued:
        keys.authenticate(item.key)
    assert time.monotonic() - started < 0.5, "too slow a machine for this test"
    wait_until(lambda: store.batches)
    time.sleep(0.6)
    assert len(store.batches) == 1
    assert len(store.batches[0]) == 200
    keys.close()


def test_close_writes_what_is_pending_and_ends_the_thread(
    store: CountingStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    thread = keys._last_use._thread
    assert thread is not None
    assert thread.is_alive()
    assert "record_use" not in store.calls
    keys.close()
    assert store.calls["record_use"] == 1
    assert store.get(issued.record.id).last_used_at is not None  # type: ignore[union-attr]
    assert not thread.is_alive()


def test_a_failed_write_is_tried_again_with_the_next_batch(
    hasher: CountingHasher, quick_batches: float
) -> None:
    class Failing(CountingStore):
        fail = True

        def record_use(self, stamps: Mapping[str, datetime]) -> None:
            super().record_use(stamps)
            if self.fail:
                self.fail = False
                raise OSError("connection lost")

    store = Failing()
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    wait_until(lambda: len(store.batches) == 2)
    assert store.batches[0] == store.batches[1]
    keys.close()


def test_a_store_without_record_use_warns_once(
    flaky_keys: KeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vemetric_auth")
    issued = [flaky_keys.create("p1", f"k{n}") for n in range(3)]
    for item in issued * 3:
        flaky_keys.authenticate(item.key)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "the key store FlakyStore has no record_use: the last use of keys is "
        "not recorded"
    ]
    flaky_keys.close()


def test_a_dropped_manager_is_freed_while_its_stamps_wait(
    store: CountingStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    dropped = weakref.ref(keys)
    del keys
    gc.collect()
    assert dropped() is None


def test_stamps_are_written_at_interpreter_exit(tmp_path: Path) -> None:
    """Without close(): the manager is still referenced, or dropped."""
    written = tmp_path / "batches.jsonl"
    script = textwrap.dedent(
        f"""
        import json
        from vemetric_auth import InMemoryKeyStore, KeyManager

        class Store(InMemoryKeyStore):
            def record_use(self, stamps):
                with open({str(written)!r}, "a") as out:
                    out.write(json.dumps({{k: v.isoformat() for k, v in stamps.items()}}))
                    out.write("\\n")

        kept = KeyManager(Store())
        dropped = KeyManager(Store())
        for keys in (kept, dropped):
            issued = keys.create("p1", "n")
            keys.authenticate(issued.key)
            print(issued.record.id)
        del dropped
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = done.stdout.split()
    batches = [json.loads(line) for line in written.read_text().splitlines()]
    assert sorted(key for batch in batches for key in batch) == sorted(ids)
    assert done.stderr == ""


# -- no plaintext key in the frames of a failing roll or activation ------------------


def test_no_frame_of_a_failing_roll_or_activation_holds_a_key(
    hasher: CountingHasher, caplog: pytest.LogCaptureFixture
) -> None:
    """Error reporters record every local of every frame: the new key, which
    nobody saw, travels only inside the IssuedKey, whose repr hides it."""
    import re

    from test_traceback_locals import chain, frames, safe_repr

    caplog.set_level(logging.DEBUG, "vemetric_auth")
    store = FailingRollStore()
    keys = KeyManager(store, hasher=hasher, store_timeout=0.5)
    old = keys.create("p1", "n")
    errors: list[BaseException] = []
    store.error = OSError("connection lost")
    for call in (
        lambda: keys.roll(old.record.id),
        lambda: keys.activate(keys.roll(old.record.id, pending=True)),
    ):
        with pytest.raises(StoreUnavailable) as info:
            call()
        errors.append(info.value)
    errors += [r.exc_info[1] for r in caplog.records if r.exc_info and r.exc_info[1]]
    key_pattern = re.compile(r"vem_[a-z0-9]{32}")
    walked = 0
    for error in errors:
        for each in chain(error):
            assert not key_pattern.search(str(each))
        for frame in frames(error):
            if frame.f_code.co_filename == __file__:
                continue
            walked += 1
            for name, value in frame.f_locals.items():
                assert not key_pattern.search(safe_repr(value)), (frame, name)
    assert walked
    keys.close()


def test_the_inline_cache_check_of_asgi_refuses_an_expired_key(
    hasher: CountingHasher,
) -> None:
    """KeyManager.cached, which the ASGI middleware asks on the event loop,
    answers as the request path does: never past the key's expiry, however
    long cache_ttl is."""
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher, cache_ttl=3600)
    expires_at = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    issued = keys.create("p1", "short", expires_at=expires_at)
    record = keys.authenticate(issued.key)
    assert keys.cached(issued.key) == record
    time.sleep(max(0.0, (expires_at - datetime.now(timezone.utc)).total_seconds()))
    assert keys.cached(issued.key) is None
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)
    keys.close()
