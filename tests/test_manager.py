from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from datetime import timedelta, timezone
from typing import Any

import pytest
from argon2 import PasswordHasher, profiles
from conftest import CountingHasher, FlakyStore

from vemetric_auth import (
    InMemoryKeyStore,
    InvalidApiKey,
    InvalidApiKeyFormat,
    KeyManager,
    KeyNotFound,
    StoreUnavailable,
    generate_key,
)
from vemetric_auth.hashing import DEFAULT_PARAMETERS

# -- construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"cache_ttl": -1}, ValueError, id="negative-ttl"),
        pytest.param({"cache_ttl": float("inf")}, ValueError, id="infinite-ttl"),
        pytest.param({"cache_ttl": float("nan")}, ValueError, id="nan-ttl"),
        pytest.param({"cache_ttl": "60"}, TypeError, id="str-ttl"),
        pytest.param({"cache_size": 0}, ValueError, id="zero-cache"),
        pytest.param({"cache_size": 1.5}, TypeError, id="float-cache"),
        pytest.param({"max_verifications": 0}, ValueError, id="zero-verifications"),
        pytest.param({"hasher": object()}, TypeError, id="not-a-hasher"),
    ],
)
def test_bad_settings_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        KeyManager(InMemoryKeyStore(), **kwargs)


def test_default_hasher_is_argon2id_with_the_documented_parameters() -> None:
    keys = KeyManager(InMemoryKeyStore())
    issued = keys.create("p1", "default")
    _, stored = keys.store.find_by_prefix(issued.record.prefix)  # type: ignore[misc]
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert keys.hasher.memory_cost == DEFAULT_PARAMETERS.memory_cost
    assert keys.max_verifications >= 1


# -- create ---------------------------------------------------------------------


def test_create_returns_the_key_once_and_stores_only_a_hash(
    keys: KeyManager, memory_store: InMemoryKeyStore
) -> None:
    issued = keys.create("p1", "  Production dashboard  ", created_by="alice")
    record = issued.record
    assert record.project_id == "p1"
    assert record.name == "Production dashboard"
    assert record.created_by == "alice"
    assert record.prefix == issued.key[:12] + "..."
    assert record.revoked_at is None
    assert record.revoked_by is None
    assert record.created_at.tzinfo is not None
    assert record.created_at.utcoffset() == timedelta(0)
    assert issued.key[4:] not in record.id
    found = memory_store.find_by_prefix(record.prefix)
    assert found is not None
    assert found[0] == record
    assert found[1].startswith("$argon2id$")
    assert issued.key not in found[1]


@pytest.mark.parametrize(
    ("project_id", "name", "created_by", "message"),
    [
        pytest.param("", "n", None, "project_id must not be empty", id="empty-project"),
        pytest.param(
            "  ", "n", None, "project_id must not be empty", id="blank-project"
        ),
        pytest.param(
            "p" * 256, "n", None, "project_id must be at most", id="long-project"
        ),
        pytest.param("p1", "", None, "name must not be empty", id="empty-name"),
        pytest.param("p1", " \t ", None, "name must not be empty", id="blank-name"),
        pytest.param("p1", "x" * 101, None, "name must be at most 100", id="long-name"),
        pytest.param("p1", "a\nb", None, "control characters", id="newline-name"),
        pytest.param("p1", "n", "", "created_by must not be empty", id="empty-creator"),
        pytest.param(
            "p1", "n", "u" * 256, "created_by must be at most", id="long-creator"
        ),
    ],
)
def test_create_refuses_bad_input_and_stores_nothing(
    keys: KeyManager,
    memory_store: InMemoryKeyStore,
    project_id: str,
    name: str,
    created_by: str | None,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        keys.create(project_id, name, created_by=created_by)
    assert memory_store.list(project_id, include_revoked=True) == []
    assert repr(memory_store) == "<InMemoryKeyStore keys=0>"


def test_name_of_exactly_100_characters_after_trimming_is_accepted(
    keys: KeyManager,
) -> None:
    assert keys.create("p1", " " + "x" * 100 + " ").record.name == "x" * 100


def test_create_draws_again_on_a_prefix_collision(
    keys: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = keys.create("p1", "first")
    clash = first.key[:12] + "z" * 24
    fresh = generate_key()
    drawn = iter([clash, fresh])
    monkeypatch.setattr("vemetric_auth.manager.generate_key", lambda: next(drawn))
    second = keys.create("p2", "second")
    assert second.key == fresh
    assert {r.id for r in keys.list("p1")} == {first.record.id}
    assert [r.id for r in keys.list("p2")] == [second.record.id]


def test_create_gives_up_after_repeated_collisions_without_storing(
    keys: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = keys.create("p1", "first")
    monkeypatch.setattr(
        "vemetric_auth.manager.generate_key", lambda: first.key[:12] + "z" * 24
    )
    with pytest.raises(StoreUnavailable):
        keys.create("p2", "second")
    assert keys.list("p2") == []


def test_create_with_a_failing_store_raises_store_unavailable(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    flaky_store.failing = True
    with pytest.raises(StoreUnavailable):
        flaky_keys.create("p1", "n")
    flaky_store.failing = False
    assert flaky_keys.list("p1") == []


# -- list / get / revoke -------------------------------------------------------


def test_list_is_newest_first_and_per_project(keys: KeyManager) -> None:
    made = [keys.create("p1", f"k{n}").record for n in range(5)]
    keys.create("p2", "other")
    assert keys.list("p1") == made[::-1]
    assert keys.list("nobody") == []


def test_list_hides_revoked_unless_asked(keys: KeyManager) -> None:
    kept = keys.create("p1", "kept").record
    gone = keys.revoke(keys.create("p1", "gone").record.id, revoked_by="bob")
    assert keys.list("p1") == [kept]
    assert keys.list("p1", include_revoked=True) == [gone, kept]


def test_get_returns_the_record_or_raises_key_not_found(keys: KeyManager) -> None:
    record = keys.create("p1", "n").record
    assert keys.get(record.id) == record
    with pytest.raises(KeyNotFound):
        keys.get("missing")
    assert issubclass(KeyNotFound, LookupError)


def test_revoke_is_soft_and_final(keys: KeyManager) -> None:
    issued = keys.create("p1", "n")
    revoked = keys.revoke(issued.record.id, revoked_by="bob")
    assert revoked.revoked_by == "bob"
    assert revoked.revoked_at is not None
    assert revoked.revoked_at.tzinfo == timezone.utc
    assert keys.get(issued.record.id) == revoked
    again = keys.revoke(issued.record.id, revoked_by="eve")
    assert again == revoked
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


def test_revoke_unknown_raises_key_not_found(keys: KeyManager) -> None:
    with pytest.raises(KeyNotFound):
        keys.revoke("missing")


def test_revoking_through_the_manager_takes_effect_on_the_next_call(
    keys: KeyManager,
) -> None:
    issued = keys.create("p1", "n")
    assert keys.authenticate(issued.key) == issued.record  # now cached
    keys.revoke(issued.record.id)
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


# -- authenticate -----------------------------------------------------------------


def test_authenticate_returns_the_record(keys: KeyManager) -> None:
    issued = keys.create("p1", "n")
    assert keys.authenticate(issued.key) == issued.record


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("vem_short", id="short"),
        pytest.param("vem_" + "A" * 32, id="upper"),
        pytest.param(" vem_" + "a" * 32, id="padded"),
    ],
)
def test_authenticate_refuses_bad_format_without_the_store(
    flaky_keys: KeyManager, flaky_store: FlakyStore, hasher: CountingHasher, key: str
) -> None:
    with pytest.raises(InvalidApiKeyFormat):
        flaky_keys.authenticate(key)
    assert flaky_store.calls == {}
    assert hasher.verifications == 0


def test_unknown_prefix_never_runs_argon2(
    keys: KeyManager, hasher: CountingHasher
) -> None:
    keys.create("p1", "n")
    for _ in range(50):
        with pytest.raises(InvalidApiKey):
            keys.authenticate(generate_key())
    assert hasher.verifications == 0


def test_wrong_secret_for_a_known_prefix_is_invalid_and_never_cached(
    keys: KeyManager, hasher: CountingHasher
) -> None:
    issued = keys.create("p1", "n")
    wrong = issued.key[:12] + ("a" if issued.key[12] != "a" else "b") + issued.key[13:]
    for attempt in range(1, 4):
        with pytest.raises(InvalidApiKey):
            keys.authenticate(wrong)
        assert hasher.verifications == attempt
    assert keys.authenticate(issued.key) == issued.record


def test_argon2_runs_once_for_10000_requests_with_one_key(
    keys: KeyManager, hasher: CountingHasher
) -> None:
    issued = keys.create("p1", "n")
    for _ in range(10_000):
        keys.authenticate(issued.key)
    assert hasher.verifications == 1


def test_a_burst_of_first_requests_runs_argon2_once(
    keys: KeyManager, hasher: CountingHasher
) -> None:
    issued = keys.create("p1", "n")
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def first_request() -> None:
        barrier.wait()
        results.append(keys.authenticate(issued.key))

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [issued.record] * 8
    assert hasher.verifications == 1


def test_revoked_key_is_refused_without_argon2(
    keys: KeyManager, hasher: CountingHasher
) -> None:
    issued = keys.create("p1", "n")
    keys.revoke(issued.record.id)
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)
    assert hasher.verifications == 0


def test_cache_is_keyed_by_digest_never_the_key(keys: KeyManager) -> None:
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    cache = keys._cache  # the one place the test looks inside
    assert len(cache) == 1
    for stored in cache._entries:
        assert isinstance(stored, bytes)
        assert issued.key.encode() not in stored
        assert issued.key[4:].encode() not in stored


def test_cache_is_bounded_lru(memory_store: InMemoryKeyStore) -> None:
    hasher = CountingHasher()
    keys = KeyManager(memory_store, hasher=hasher, cache_size=2)
    a, b, c = (keys.create("p1", name).key for name in "abc")
    keys.authenticate(a)
    keys.authenticate(b)
    keys.authenticate(a)  # a is now the most recently used
    keys.authenticate(c)  # evicts b
    assert hasher.verifications == 3
    keys.authenticate(a)
    keys.authenticate(c)
    assert hasher.verifications == 3
    keys.authenticate(b)
    assert hasher.verifications == 4
    assert len(keys._cache) == 2


def test_stale_entry_rechecks_the_store_without_argon2(
    flaky_store: FlakyStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(flaky_store, hasher=hasher, cache_ttl=0.05)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    time.sleep(0.06)
    gets_before = flaky_store.calls.get("get", 0)
    assert keys.authenticate(issued.key) == issued.record
    assert flaky_store.calls.get("get", 0) == gets_before + 1
    assert hasher.verifications == 1


def test_revocation_elsewhere_is_seen_within_the_ttl(
    memory_store: InMemoryKeyStore, hasher: CountingHasher
) -> None:
    here = KeyManager(memory_store, hasher=hasher, cache_ttl=0.05)
    elsewhere = KeyManager(memory_store, hasher=hasher, cache_ttl=0.05)
    issued = here.create("p1", "n")
    here.authenticate(issued.key)
    elsewhere.revoke(issued.record.id)
    time.sleep(0.06)
    with pytest.raises(InvalidApiKey):
        here.authenticate(issued.key)


def test_store_failure_is_store_unavailable_never_invalid(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    issued = flaky_keys.create("p1", "n")
    flaky_store.failing = True
    with pytest.raises(StoreUnavailable) as info:
        flaky_keys.authenticate(issued.key)
    # Every store failure is raised the one way, ``from`` the store's error.
    assert isinstance(info.value.__cause__, OSError)
    flaky_store.failing = False
    assert flaky_keys.authenticate(issued.key) == issued.record


def test_fresh_cached_key_is_served_while_the_store_is_down(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    issued = flaky_keys.create("p1", "n")
    flaky_keys.authenticate(issued.key)
    flaky_store.failing = True
    assert flaky_keys.authenticate(issued.key) == issued.record


def test_stale_cached_key_with_the_store_down_is_store_unavailable(
    flaky_store: FlakyStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(flaky_store, hasher=hasher, cache_ttl=0.01)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    time.sleep(0.02)
    flaky_store.failing = True
    with pytest.raises(StoreUnavailable):
        keys.authenticate(issued.key)
    flaky_store.failing = False
    assert keys.authenticate(issued.key) == issued.record


def test_hashes_with_other_parameters_verify_and_are_rehashed(
    memory_store: InMemoryKeyStore,
) -> None:
    old = KeyManager(
        memory_store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
    )
    issued = old.create("p1", "n")
    new_hasher = CountingHasher(profiles.PRE_21_2)
    new = KeyManager(memory_store, hasher=new_hasher)
    assert new.authenticate(issued.key) == issued.record
    _, stored = memory_store.find_by_prefix(issued.record.prefix)  # type: ignore[misc]
    assert not new_hasher.check_needs_rehash(stored)
    assert new_hasher.hashes == 1
    fresh = KeyManager(memory_store, hasher=new_hasher)
    fresh.authenticate(issued.key)
    assert new_hasher.hashes == 1  # no second rehash


def test_failing_rehash_write_still_authenticates(
    flaky_store: FlakyStore, memory_store: InMemoryKeyStore
) -> None:
    old = KeyManager(
        memory_store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
    )
    issued = old.create("p1", "n")
    new = KeyManager(flaky_store, hasher=CountingHasher(profiles.PRE_21_2))

    def set_hash_fails(key_id: str, key_hash: str) -> None:
        raise OSError("read-only replica")

    flaky_store.set_hash = set_hash_fails  # type: ignore[method-assign]
    assert new.authenticate(issued.key) == issued.record


def test_corrupt_stored_hash_is_invalid_not_an_error(
    keys: KeyManager, memory_store: InMemoryKeyStore
) -> None:
    issued = keys.create("p1", "n")
    memory_store.set_hash(issued.record.id, "not-a-hash")
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


def test_argon2_concurrency_stays_within_its_bound(
    memory_store: InMemoryKeyStore,
) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    class SlowHasher(CountingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.02)
            with lock:
                running -= 1
            return super().verify(hash, password)

    keys = KeyManager(memory_store, hasher=SlowHasher(), max_verifications=2)
    issued = keys.create("p1", "n")
    cached = keys.create("p1", "cached")
    keys.authenticate(cached.key)
    wrong = [issued.key[:12] + generate_key()[12:] for _ in range(16)]
    served_during_flood: list[float] = []

    def attack(key: str) -> None:
        with pytest.raises(InvalidApiKey):
            keys.authenticate(key)

    threads = [threading.Thread(target=attack, args=(w,)) for w in wrong]
    for thread in threads:
        thread.start()
    for _ in range(100):
        started = time.perf_counter()
        keys.authenticate(cached.key)
        served_during_flood.append(time.perf_counter() - started)
    for thread in threads:
        thread.join()
    assert peak == 2
    # A cached key never waits for the argon2 queue (each verify sleeps 20 ms).
    assert sorted(served_during_flood)[50] < 0.01


# -- logging ---------------------------------------------------------------------


def test_logs_name_ids_and_prefixes_never_keys(
    flaky_keys: KeyManager, flaky_store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vemetric_auth")
    issued = flaky_keys.create("p1", "n")
    flaky_keys.authenticate(issued.key)
    wrong = issued.key[:12] + generate_key()[12:]
    with pytest.raises(InvalidApiKey):
        flaky_keys.authenticate(wrong)
    with pytest.raises(InvalidApiKey):
        flaky_keys.authenticate(generate_key())
    flaky_keys.revoke(issued.record.id)
    flaky_store.failing = True
    with pytest.raises(StoreUnavailable):
        flaky_keys.authenticate(issued.key)
    text = caplog.text
    assert issued.record.prefix in text
    assert issued.record.id in text
    for secret in (issued.key, wrong):
        assert secret[12:] not in text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "a store failure is logged at WARNING"
    assert all(r.name == "vemetric_auth" for r in caplog.records)


# -- a store that hangs ------------------------------------------------------------


class HangingStore(InMemoryKeyStore):
    """Reads hang until ``release`` is set, as a database that stopped answering."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging = threading.Event()
        self.release = threading.Event()

    def find_by_prefix(self, prefix: str) -> Any:
        if self.hanging.is_set():
            self.release.wait(30)
        return super().find_by_prefix(prefix)

    def get(self, key_id: str) -> Any:
        if self.hanging.is_set():
            self.release.wait(30)
        return super().get(key_id)


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "stale"])
def test_a_store_that_hangs_is_store_unavailable_within_the_timeout(
    cached: bool,
) -> None:
    store = HangingStore()
    # No outage grace: a stale key is not bridged from memory here (see
    # tests/test_faults.py for that).
    keys = KeyManager(
        store,
        hasher=CountingHasher(),
        store_timeout=0.2,
        cache_ttl=0.01,
        outage_grace=0,
    )
    issued = keys.create("p1", "n")
    if cached:
        keys.authenticate(issued.key)
        time.sleep(0.02)
    store.hanging.set()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            keys.authenticate(issued.key)
        # Bounded by store_timeout, not by the hang (30 s).
        assert time.monotonic() - started < 5
    finally:
        store.release.set()
        store.hanging.clear()
    assert keys.authenticate(issued.key) == issued.record


def test_store_timeout_none_calls_the_store_directly(memory_store: Any) -> None:
    seen: list[str] = []

    class Recording(InMemoryKeyStore):
        def find_by_prefix(self, prefix: str) -> Any:
            seen.append(threading.current_thread().name)
            return super().find_by_prefix(prefix)

    keys = KeyManager(Recording(), hasher=CountingHasher(), store_timeout=None)
    with pytest.raises(InvalidApiKey):
        keys.authenticate(generate_key())
    assert seen == [threading.current_thread().name]


@pytest.mark.parametrize("value", [0, -1, float("inf"), "5"])
def test_bad_store_timeout_is_refused(value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        KeyManager(InMemoryKeyStore(), store_timeout=value)


def test_requests_queued_behind_a_hung_store_fail_within_one_timeout() -> None:
    """Concurrent first requests for one key wait for each other; with a hung
    store, each still fails within store_timeout, not one timeout after another."""
    store = HangingStore()
    keys = KeyManager(store, hasher=CountingHasher(), store_timeout=0.3)
    issued = keys.create("p1", "n")
    store.hanging.set()
    waits: list[float] = []
    lock = threading.Lock()

    def request() -> None:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            keys.authenticate(issued.key)
        with lock:
            waits.append(time.monotonic() - started)

    threads = [threading.Thread(target=request) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        store.release.set()
    assert len(waits) == 6
    # One after another they would take 0.3, 0.6, ... 1.8 s.
    assert max(waits) < 1.2


@pytest.mark.parametrize("method", ["get", "revoke"])
def test_a_key_given_as_key_id_is_refused_before_the_store(
    flaky_keys: KeyManager, flaky_store: FlakyStore, method: str
) -> None:
    issued = flaky_keys.create("p1", "n")
    calls_before = dict(flaky_store.calls)
    for pasted in (issued.key, " " + issued.key, issued.record.prefix):
        with pytest.raises(ValueError, match="not a key id") as info:
            getattr(flaky_keys, method)(pasted)
        assert issued.key[12:] not in str(info.value)
        assert issued.key[4:12] not in str(info.value)
    assert flaky_store.calls == calls_before
    assert flaky_keys.authenticate(issued.key) == issued.record


def test_key_not_found_does_not_repeat_the_id(keys: KeyManager) -> None:
    with pytest.raises(KeyNotFound) as info:
        keys.get("0123456789abcdef" * 2)
    assert "0123456789abcdef" not in str(info.value)
    assert str(info.value) == "no API key with this id"


def test_cache_ttl_zero_reads_the_record_on_every_request_without_argon2(
    flaky_store: FlakyStore, hasher: CountingHasher
) -> None:
    keys = KeyManager(flaky_store, hasher=hasher, cache_ttl=0)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    gets_before = flaky_store.calls.get("get", 0)
    for _ in range(5):
        assert keys.authenticate(issued.key) == issued.record
    assert flaky_store.calls.get("get", 0) == gets_before + 5
    assert hasher.verifications == 1


# -- bad input is refused before the store -------------------------------------------


BAD_INPUT = [
    pytest.param("create", ("p\ud800", "n"), {}, id="create-project-surrogate"),
    pytest.param("create", ("p1", "n\udcff"), {}, id="create-name-surrogate"),
    pytest.param(
        "create", ("p1", "n"), {"created_by": "al\ud800ce"}, id="create-creator"
    ),
    pytest.param("create", ("p\x00", "n"), {}, id="create-project-nul"),
    pytest.param("list", ("\ud800",), {}, id="list-surrogate"),
    pytest.param("list", ("p\x00",), {}, id="list-nul"),
    pytest.param("get", ("\ud800",), {}, id="get-surrogate"),
    pytest.param("get", ("id\x00",), {}, id="get-nul"),
    pytest.param("revoke", ("id\udfff",), {}, id="revoke-surrogate"),
    pytest.param("revoke", ("id\x00",), {}, id="revoke-nul"),
    pytest.param("revoke", ("0" * 32,), {"revoked_by": "\ud800"}, id="revoke-revoker"),
]


@pytest.mark.parametrize(("method", "args", "kwargs"), BAD_INPUT)
def test_lone_surrogates_and_nuls_are_value_errors_before_any_store_call(
    flaky_keys: KeyManager,
    flaky_store: FlakyStore,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """A non-UTF-8 command line argument, say, is bad input, not a store outage."""
    with pytest.raises(ValueError, match=r"surrogate|control") as info:
        getattr(flaky_keys, method)(*args, **kwargs)
    assert not isinstance(info.value, StoreUnavailable)
    assert flaky_store.calls == {}


# -- the manager's threads: close(), with, idle -------------------------------------


def worker_threads() -> set[threading.Thread]:
    return {
        thread
        for thread in threading.enumerate()
        if thread.name.startswith("vemetric-auth-")
    }


def wait_for_no_worker_threads(before: set[threading.Thread], within: float) -> None:
    deadline = time.monotonic() + within
    while worker_threads() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker_threads() - before == set()


@pytest.fixture
def short_idle(monkeypatch: pytest.MonkeyPatch) -> float:
    """Worker threads end after 0.2 s without work instead of 30 s, and
    last-use stamps are written 0.2 s after they are made instead of 60 s."""
    from vemetric_auth import _last_use, _workers

    monkeypatch.setattr(_workers.Workers, "idle_timeout", 0.2)
    monkeypatch.setattr(_last_use.LastUse, "_interval", 0.2)
    return 0.2


def test_close_stops_the_threads_and_later_calls_fail_cleanly(
    memory_store: InMemoryKeyStore, hasher: CountingHasher
) -> None:
    before = worker_threads()
    keys = KeyManager(memory_store, hasher=hasher)
    issued = keys.create("p1", "n")
    assert keys.authenticate(issued.key) == issued.record
    assert worker_threads() - before  # an argon2 thread and a store thread
    keys.close()
    assert worker_threads() - before == set()  # close() waits for them
    keys.close()  # again: nothing happens
    # A closed manager never lets a key through, cached or not.
    for call in (
        lambda: keys.authenticate(issued.key),
        lambda: keys.authenticate(generate_key()),
        lambda: keys.create("p1", "after close"),
        lambda: keys.list("p1"),
        lambda: keys.get(issued.record.id),
        lambda: keys.revoke(issued.record.id),
    ):
        with pytest.raises(StoreUnavailable, match="closed"):
            call()
    # What needs neither the store nor argon2 answers as before.
    with pytest.raises(InvalidApiKeyFormat):
        keys.authenticate("not a key")
    with pytest.raises(ValueError, match="empty"):
        keys.create("p1", " ")
    assert worker_threads() - before == set()
    # The store is left open; close() wrote the key's last use to it.
    stored = memory_store.get(issued.record.id)
    assert stored is not None
    assert stored.last_used_at is not None
    assert dataclasses.replace(stored, last_used_at=None) == issued.record


def test_a_with_block_closes_the_manager(memory_store: InMemoryKeyStore) -> None:
    before = worker_threads()
    with KeyManager(memory_store, hasher=CountingHasher()) as keys:
        issued = keys.create("p1", "n")
        assert keys.authenticate(issued.key) == issued.record
    assert worker_threads() - before == set()
    with pytest.raises(StoreUnavailable):
        keys.authenticate(issued.key)


def test_close_drops_the_calls_waiting_for_a_thread(
    memory_store: InMemoryKeyStore,
) -> None:
    """A verification waiting for the one argon2 thread is answered 503 by
    close() at once; the one running ends in its own time."""

    class PausingHasher(CountingHasher):
        def __init__(self) -> None:
            super().__init__()
            self.entered = threading.Event()
            self.release = threading.Event()

        def verify(self, hash: str | bytes, password: str | bytes) -> Any:
            self.entered.set()
            self.release.wait(10)
            return super().verify(hash, password)

    hasher = PausingHasher()
    keys = KeyManager(
        memory_store, hasher=hasher, max_verifications=1, store_timeout=0.5
    )
    running, waiting = keys.create("p1", "running"), keys.create("p1", "waiting")
    outcomes: dict[str, Any] = {}

    def request(name: str, key: str) -> None:
        try:
            outcomes[name] = keys.authenticate(key)
        except Exception as exc:
            outcomes[name] = exc

    first = threading.Thread(target=request, args=("running", running.key))
    first.start()
    assert hasher.entered.wait(5)
    second = threading.Thread(target=request, args=("waiting", waiting.key))
    second.start()
    time.sleep(0.1)  # queued behind the running verification
    try:
        keys.close()  # waits at most store_timeout for the running one
        second.join(5)
        assert isinstance(outcomes["waiting"], StoreUnavailable)
        assert "running" not in outcomes
    finally:
        hasher.release.set()
        first.join(5)
    assert outcomes["running"] == running.record  # it began before close()
    with pytest.raises(StoreUnavailable):
        keys.authenticate(running.key)  # but is not served from the cache


def test_idle_threads_end_by_themselves_and_come_back_when_needed(
    memory_store: InMemoryKeyStore, short_idle: float
) -> None:
    before = worker_threads()
    keys = KeyManager(memory_store, hasher=CountingHasher())
    issued = keys.create("p1", "n")
    assert keys.authenticate(issued.key) == issued.record
    assert worker_threads() - before
    wait_for_no_worker_threads(before, within=short_idle + 5)
    other = keys.create("p1", "later")  # the threads start again
    assert keys.authenticate(other.key) == other.record


def test_a_thousand_managers_used_once_and_dropped_leave_no_thread(
    memory_store: InMemoryKeyStore, short_idle: float
) -> None:
    before = worker_threads()
    issued = KeyManager(memory_store, hasher=CountingHasher()).create("p1", "n")
    hasher = CountingHasher()
    for _ in range(1_000):
        assert KeyManager(memory_store, hasher=hasher).authenticate(issued.key)
    assert hasher.verifications == 1_000
    wait_for_no_worker_threads(before, within=short_idle + 10)


# -- the manager knows nothing of HTTP ------------------------------------------------


def test_the_manager_and_its_helpers_import_nothing_of_http() -> None:
    import ast
    from pathlib import Path

    import vemetric_auth

    assert not hasattr(KeyManager, "authenticate_header")
    package = Path(vemetric_auth.__file__).parent
    domain = ["manager.py", "records.py", "keys.py", "errors.py", "hashing.py"]
    domain += [
        path.name
        for path in package.glob("_*.py")
        if path.name != "_http.py" and not path.name.startswith("__")
    ]
    for name in domain:
        tree = ast.parse((package / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        http = {"_http", "middleware", "flask", "werkzeug"}
        assert not {m for m in imported if m.split(".")[-1] in http or m in http}, name


# -- close() racing calls and itself ----------------------------------------------


class PausingHasher(CountingHasher):
    """Each verification waits for ``release``: an argon2 run that takes long."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        self.entered.set()
        self.release.wait(10)
        return super().verify(hash, password)


def test_close_waits_one_store_timeout_in_all_not_one_per_pool() -> None:
    """An argon2 run and a store call both running: close() waits for them
    until one deadline, not one store_timeout after the other."""
    timeout = 0.5
    store = HangingStore()
    hasher = PausingHasher()
    keys = KeyManager(store, hasher=hasher, store_timeout=timeout)
    verifying, listed = keys.create("p1", "verifying"), keys.create("p1", "read")
    running = threading.Thread(
        target=lambda: _swallow(keys.authenticate, verifying.key)
    )
    running.start()
    assert hasher.entered.wait(5)
    store.hanging.set()
    reading = threading.Thread(target=lambda: _swallow(keys.get, listed.record.id))
    reading.start()
    time.sleep(0.1)  # the read is in the store
    try:
        started = time.monotonic()
        keys.close()
        elapsed = time.monotonic() - started
    finally:
        hasher.release.set()
        store.release.set()
        running.join(5)
        reading.join(5)
    assert elapsed < timeout + 0.3  # two pools one after another: 2 * timeout


def _swallow(call: Any, *args: Any) -> None:
    with contextlib.suppress(StoreUnavailable):
        call(*args)


def test_a_second_close_waits_for_the_first() -> None:
    timeout = 0.5
    store = HangingStore()
    keys = KeyManager(store, hasher=CountingHasher(), store_timeout=timeout)
    issued = keys.create("p1", "n")
    store.hanging.set()
    reading = threading.Thread(target=lambda: _swallow(keys.get, issued.record.id))
    reading.start()
    time.sleep(0.1)
    ended: dict[str, float] = {}

    def close(name: str) -> None:
        keys.close()
        ended[name] = time.monotonic()

    try:
        first = threading.Thread(target=close, args=("first",))
        first.start()
        time.sleep(0.1)  # the first close waits for the read
        close("second")
        first.join(5)
    finally:
        store.release.set()
        reading.join(5)
    # The second returned once the first had: the manager was closed then.
    assert ended["second"] >= ended["first"] - 0.01


@pytest.mark.parametrize("call", ["list", "authenticate", "revoke"])
def test_a_call_racing_close_is_store_unavailable_closed_with_no_warning(
    memory_store: InMemoryKeyStore, caplog: pytest.LogCaptureFixture, call: str
) -> None:
    keys = KeyManager(memory_store, hasher=CountingHasher())
    issued = keys.create("p1", "n")
    checked = keys._refuse_if_closed

    def close_right_after_the_check() -> None:
        checked()
        keys.close()  # as another thread would, in between

    keys._refuse_if_closed = close_right_after_the_check  # type: ignore[method-assign]
    calls = {
        "list": lambda: keys.list("p1"),
        "authenticate": lambda: keys.authenticate(issued.key),
        "revoke": lambda: keys.revoke(issued.record.id),
    }
    caplog.clear()
    with pytest.raises(StoreUnavailable, match="this KeyManager is closed"):
        calls[call]()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_store_call_queued_when_close_comes_is_closed_with_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every store thread busy in a hung store, one call waiting for a thread:
    close() cancels it, and its caller is told the manager closed."""
    store = HangingStore()
    keys = KeyManager(store, hasher=CountingHasher(), store_timeout=2)
    issued = keys.create("p1", "n")
    store.hanging.set()
    busy = [
        threading.Thread(target=lambda: _swallow(keys.get, issued.record.id))
        for _ in range(8)  # the known-key store threads
    ]
    for thread in busy:
        thread.start()
    time.sleep(0.2)
    queued: list[BaseException] = []

    def waiting() -> None:
        try:
            keys.get(issued.record.id)
        except StoreUnavailable as exc:
            queued.append(exc)

    waiter = threading.Thread(target=waiting)
    waiter.start()
    time.sleep(0.2)
    caplog.clear()
    closer = threading.Thread(target=keys.close)
    closer.start()
    waiter.join(5)
    store.release.set()
    closer.join(5)
    for thread in busy:
        thread.join(5)
    assert [str(exc) for exc in queued] == ["this KeyManager is closed"]
    cancelled = [r for r in caplog.records if "key store failed" in r.getMessage()]
    assert len(cancelled) <= 8  # those that were in the store, not the queued one


def test_a_failed_rehash_write_logs_one_record(
    flaky_store: FlakyStore,
    memory_store: InMemoryKeyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = KeyManager(
        memory_store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
    )
    issued = old.create("p1", "n")
    new = KeyManager(flaky_store, hasher=CountingHasher(profiles.PRE_21_2))

    def set_hash_fails(key_id: str, key_hash: str) -> None:
        raise OSError("read-only replica")

    flaky_store.set_hash = set_hash_fails  # type: ignore[method-assign]
    caplog.clear()
    assert new.authenticate(issued.key) == issued.record
    problems = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "record_use" not in r.getMessage()
    ]
    assert [r.getMessage() for r in problems] == [
        f"could not store the new hash of key {issued.record.id}"
    ]
    assert problems[0].exc_info is not None  # the store's error, attached
