"""The key store failing, hanging, frozen or stopped.

Whatever the store does, a protected request is answered ``503`` with
``Retry-After`` and the contract's JSON body within a bound: never ``401``,
never let through. The service recovers by itself once the store does, and
nothing is lost or half-written: keys and revocations made before a fault hold
after it (read by a fresh manager on a fresh store, from the database, not a
cache), and a create or revoke attempted during it either happened whole or
not at all.

Through :class:`ApiKeyMiddleware` and :class:`KeyManager`, on an in-memory
store wrapped to fail or hang, and on the real PostgreSQL :class:`SQLKeyStore`
of the test session: stopped (``pg_ctl stop``), frozen (``SIGSTOP`` to the
postmaster and every child), or cut off mid-transaction
(``pg_terminate_backend``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, profiles
from conftest import CountingHasher
from feed_store import FeedStore
from werkzeug.test import Client, TestResponse

from vemetric_auth import (
    ApiKey,
    ApiKeyMiddleware,
    InMemoryKeyStore,
    InvalidApiKey,
    IssuedKey,
    KeyManager,
    KeyNotFound,
    KeyStore,
    MissingApiKey,
    SQLKeyStore,
    StoreUnavailable,
    generate_key,
)
from vemetric_auth._feed import ChangeFeed

UNAVAILABLE = {
    "error": {
        "code": "SERVICE_UNAVAILABLE",
        "message": "Authentication is temporarily unavailable",
    }
}
INVALID = {"error": {"code": "UNAUTHORIZED", "message": "Invalid or revoked API key"}}
PROJECT = "proj_faults"
# What "within the bound" allows beyond store_timeout on a noisy 2-core machine.
SLACK = 2.0


# -- the service under test ----------------------------------------------------


class Downstream:
    """The protected WSGI app: counts its calls, answers with the project id."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        self.calls += 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["vemetric_auth.project_id"].encode()]


class Service:
    """One manager, one middleware and one client, kept for the whole test:
    recovery must happen without rebuilding any of them."""

    def __init__(self, keys: KeyManager) -> None:
        self.keys = keys
        self.downstream = Downstream()
        self.client = Client(ApiKeyMiddleware(self.downstream, keys))

    def call(self, key: str) -> TestResponse:
        return self.client.get(
            "/v1/project", headers={"Authorization": f"Bearer {key}"}
        )

    def timed_call(self, key: str) -> tuple[TestResponse, float]:
        started = time.monotonic()
        response = self.call(key)
        return response, time.monotonic() - started


def assert_unavailable(response: TestResponse) -> None:
    assert response.status_code == 503, response.data
    assert response.mimetype == "application/json"
    assert json.loads(response.data) == UNAVAILABLE
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Cache-Control"] == "no-store"
    assert "WWW-Authenticate" not in response.headers


def assert_served(response: TestResponse, project_id: str = PROJECT) -> None:
    assert response.status_code == 200, response.data
    assert response.data == project_id.encode()


def assert_refused(response: TestResponse) -> None:
    assert response.status_code == 401, response.data
    assert json.loads(response.data) == INVALID


def wrong_secret(key: str) -> str:
    return key[:12] + ("a" if key[12] != "a" else "b") + key[13:]


def names(keys: KeyManager) -> set[str]:
    return {record.name for record in keys.list(PROJECT, include_revoked=True)}


class Outcome:
    """Runs *call* on a daemon thread; its result or exception, once done."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # inspected by the test
            self.error = exc

    def wait(self, timeout: float) -> bool:
        """Return whether the call ended within *timeout* seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


# -- stores that fail or hang ---------------------------------------------------

STORE_METHODS = ("add", "get", "find_by_prefix", "list", "revoke", "set_hash")


class BrokenStore:
    """Wraps a store; each method named in ``broken`` raises ``error()``.

    ``reply_lost`` names methods that do their work on the inner store and
    then raise, as a database whose commit succeeded but whose answer never
    arrived.
    """

    def __init__(self, inner: KeyStore) -> None:
        self.inner = inner
        self.broken: set[str] = set()
        self.reply_lost: set[str] = set()
        self.error: Callable[[], BaseException] = lambda: OSError("store is down")

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.broken:
            raise self.error()
        result = getattr(self.inner, name)(*args, **kwargs)
        if name in self.reply_lost:
            raise ConnectionResetError("connection lost before the reply")
        return result

    def add(self, record: ApiKey, key_hash: str) -> None:
        self._call("add", record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        result: ApiKey | None = self._call("get", key_id)
        return result

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        result: tuple[ApiKey, str] | None = self._call("find_by_prefix", prefix)
        return result

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        result: list[ApiKey] = self._call(
            "list", project_id, include_revoked=include_revoked
        )
        return result

    def revoke(
        self, key_id: str, *, revoked_at: Any, revoked_by: str | None
    ) -> ApiKey | None:
        result: ApiKey | None = self._call(
            "revoke", key_id, revoked_at=revoked_at, revoked_by=revoked_by
        )
        return result

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._call("set_hash", key_id, key_hash)


class HangingStore(InMemoryKeyStore):
    """An in-memory store whose methods named in ``hanging`` block until
    :meth:`release`: a database that stopped answering, for ever."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging: set[str] = set()
        self._gate = threading.Event()

    def release(self) -> None:
        self.hanging = set()
        self._gate.set()

    def _maybe_hang(self, name: str) -> None:
        if name in self.hanging:
            self._gate.wait()

    def get(self, key_id: str) -> ApiKey | None:
        self._maybe_hang("get")
        return super().get(key_id)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        self._maybe_hang("find_by_prefix")
        return super().find_by_prefix(prefix)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._maybe_hang("set_hash")
        super().set_hash(key_id, key_hash)


@pytest.fixture
def broken() -> BrokenStore:
    return BrokenStore(InMemoryKeyStore())


@pytest.fixture
def hanging() -> Iterator[HangingStore]:
    store = HangingStore()
    yield store
    # Never leave a worker thread blocked: it would hold up the interpreter's exit.
    store.release()


# -- a store that raises -----------------------------------------------------------

STORE_ERRORS = [
    pytest.param(lambda: OSError("connection reset by peer"), id="OSError"),
    pytest.param(TimeoutError, id="TimeoutError"),
    pytest.param(
        lambda: sa.exc.OperationalError(
            "SELECT 1", {}, Exception("server closed the connection unexpectedly")
        ),
        id="sqlalchemy-OperationalError",
    ),
    pytest.param(lambda: RuntimeError("pool exhausted"), id="RuntimeError"),
    pytest.param(lambda: ValueError("unexpected row"), id="ValueError"),
    pytest.param(lambda: KeyError("prefix"), id="KeyError"),
    # A store raising the library's own exceptions is failing too: a 401 or a
    # "not found" from it would be a lie.
    pytest.param(InvalidApiKey, id="store-raises-InvalidApiKey"),
    pytest.param(MissingApiKey, id="store-raises-MissingApiKey"),
    pytest.param(KeyNotFound, id="store-raises-KeyNotFound"),
    pytest.param(StoreUnavailable, id="store-raises-StoreUnavailable"),
]


@pytest.mark.parametrize("error", STORE_ERRORS)
def test_a_store_raising_anything_is_503_never_401_and_heals_by_itself(
    broken: BrokenStore, error: Callable[[], BaseException]
) -> None:
    hasher = CountingHasher()
    # cache_ttl=0: a key verified before is re-read on every request (the
    # stale path), so each kind of request below needs the store.
    keys = KeyManager(broken, hasher=hasher, cache_ttl=0)
    service = Service(keys)
    active = keys.create(PROJECT, "active")
    used = keys.create(PROJECT, "used before the fault")
    revoked = keys.create(PROJECT, "revoked before the fault")
    keys.revoke(revoked.record.id, revoked_by="admin")
    assert_served(service.call(used.key))
    verifications = hasher.verifications

    broken.error = error
    broken.broken = set(STORE_METHODS)
    for key in (
        active.key,
        used.key,
        revoked.key,
        wrong_secret(active.key),
        generate_key(),
    ):
        assert_unavailable(service.call(key))
    assert service.downstream.calls == 1
    assert hasher.verifications == verifications  # nothing was verified
    # Management says the store failed, never "not found" nor "invalid".
    for attempt in (
        lambda: keys.create(PROJECT, "created during the fault"),
        lambda: keys.list(PROJECT),
        lambda: keys.get(active.record.id),
        lambda: keys.revoke(active.record.id),
    ):
        with pytest.raises(StoreUnavailable) as raised:
            attempt()
        assert type(raised.value) is StoreUnavailable

    broken.broken = set()
    assert_served(service.call(active.key))
    assert_served(service.call(used.key))
    assert_refused(service.call(revoked.key))
    assert_refused(service.call(wrong_secret(active.key)))
    assert_refused(service.call(generate_key()))
    # Nothing lost, nothing half-done: a fresh manager sees the store as it
    # was before the fault.
    fresh = KeyManager(broken.inner, hasher=CountingHasher())
    assert names(fresh) == {
        "active",
        "used before the fault",
        "revoked before the fault",
    }
    assert fresh.authenticate(active.key) == active.record
    assert fresh.get(active.record.id).revoked_at is None
    with pytest.raises(InvalidApiKey):
        fresh.authenticate(revoked.key)
    assert fresh.get(revoked.record.id).revoked_by == "admin"


def test_a_failing_lookup_alone_spares_fresh_and_stale_cached_keys(
    broken: BrokenStore,
) -> None:
    keys = KeyManager(broken, hasher=CountingHasher(), cache_ttl=0)
    service = Service(keys)
    used = keys.create(PROJECT, "used")
    fresh_key = keys.create(PROJECT, "never used")
    assert_served(service.call(used.key))
    broken.broken = {"find_by_prefix"}
    # A stale entry only needs the record by id, which still answers.
    assert_served(service.call(used.key))
    assert_unavailable(service.call(fresh_key.key))
    assert_unavailable(service.call(generate_key()))


def test_a_failing_read_by_id_alone_spares_first_uses(broken: BrokenStore) -> None:
    keys = KeyManager(broken, hasher=CountingHasher(), cache_ttl=0)
    service = Service(keys)
    used = keys.create(PROJECT, "used")
    first_use = keys.create(PROJECT, "never used")
    assert_served(service.call(used.key))
    broken.broken = {"get"}
    assert_unavailable(service.call(used.key))  # stale: its revocation is unknown
    assert_served(service.call(first_use.key))  # verified from its prefix and hash


@pytest.mark.parametrize("method", ["add", "list", "revoke"])
def test_a_failing_write_or_list_alone_leaves_authentication_alone(
    broken: BrokenStore, method: str
) -> None:
    keys = KeyManager(broken, hasher=CountingHasher())
    service = Service(keys)
    issued = keys.create(PROJECT, "in use")
    assert_served(service.call(issued.key))
    attempts: dict[str, Callable[[], object]] = {
        "add": lambda: keys.create(PROJECT, "not stored"),
        "list": lambda: keys.list(PROJECT),
        "revoke": lambda: keys.revoke(issued.record.id),
    }
    broken.broken = {method}
    with pytest.raises(StoreUnavailable):
        attempts[method]()
    # Still served: from the store if the revocation failed (re-verified,
    # since this manager can not know), else from the cache.
    assert_served(service.call(issued.key))
    broken.broken = set()
    assert names(keys) == {"in use"}
    assert keys.get(issued.record.id).revoked_at is None


def test_a_failed_revocation_makes_the_manager_check_the_key_again(
    broken: BrokenStore,
) -> None:
    """A revoke that raised may have happened: the manager must not go on serving
    the key from its cache, however fresh."""
    keys = KeyManager(broken, hasher=CountingHasher(), cache_ttl=60)
    service = Service(keys)
    issued = keys.create(PROJECT, "revoked during the fault")
    assert_served(service.call(issued.key))
    broken.broken = set(STORE_METHODS)
    assert_served(service.call(issued.key))  # fresh in the cache
    with pytest.raises(StoreUnavailable):
        keys.revoke(issued.record.id)
    assert_unavailable(service.call(issued.key))
    broken.broken = set()
    # It did not happen: the key is active, whole, and served again.
    record = keys.get(issued.record.id)
    assert (record.revoked_at, record.revoked_by) == (None, None)
    assert_served(service.call(issued.key))


def test_a_revocation_whose_reply_was_lost_still_takes_effect_here(
    broken: BrokenStore,
) -> None:
    keys = KeyManager(broken, hasher=CountingHasher(), cache_ttl=60)
    service = Service(keys)
    issued = keys.create(PROJECT, "revoked, reply lost")
    assert_served(service.call(issued.key))
    broken.reply_lost = {"revoke"}
    with pytest.raises(StoreUnavailable):
        keys.revoke(issued.record.id, revoked_by="admin")
    broken.reply_lost = set()
    # It happened, whole; and the cache does not undo it.
    record = keys.get(issued.record.id)
    assert record.revoked_at is not None
    assert record.revoked_by == "admin"
    assert_refused(service.call(issued.key))


def test_a_creation_whose_reply_was_lost_leaves_a_whole_record(
    broken: BrokenStore,
) -> None:
    """The store committed, then the answer was lost: create raises, and the
    record it stored is whole (its key was never shown to anyone, so it can
    only be revoked)."""
    keys = KeyManager(broken, hasher=CountingHasher())
    broken.reply_lost = {"add"}
    with pytest.raises(StoreUnavailable):
        keys.create(PROJECT, "reply lost", created_by="alice")
    broken.reply_lost = set()
    (record,) = keys.list(PROJECT, include_revoked=True)
    assert (record.name, record.project_id, record.created_by) == (
        "reply lost",
        PROJECT,
        "alice",
    )
    found = broken.inner.find_by_prefix(record.prefix)
    assert found is not None
    assert found[0] == record
    assert found[1].startswith("$argon2id$")
    assert keys.revoke(record.id).revoked


def test_a_fresh_cached_key_is_served_while_the_store_is_down_then_503_once_stale(
    broken: BrokenStore,
) -> None:
    ttl = 0.5
    keys = KeyManager(broken, hasher=CountingHasher(), cache_ttl=ttl)
    service = Service(keys)
    issued = keys.create(PROJECT, "cached")
    never_used = keys.create(PROJECT, "never used")
    assert_served(service.call(issued.key))
    cached_at = time.monotonic()
    broken.broken = set(STORE_METHODS)
    assert_served(service.call(issued.key))
    assert_unavailable(service.call(never_used.key))
    time.sleep(max(0.0, cached_at + ttl - time.monotonic()) + 0.05)
    assert_unavailable(service.call(issued.key))
    assert_unavailable(service.call(issued.key))
    broken.broken = set()
    assert_served(service.call(issued.key))
    assert_served(service.call(never_used.key))
    assert service.downstream.calls == 4


# -- a store that hangs ----------------------------------------------------------


def test_a_store_that_hangs_is_503_within_store_timeout_and_heals(
    hanging: HangingStore,
) -> None:
    timeout = 0.3
    # No outage grace: a stale key is not bridged from memory here (see the
    # outage tests below for that).
    keys = KeyManager(
        hanging,
        hasher=CountingHasher(),
        store_timeout=timeout,
        cache_ttl=60,
        outage_grace=0,
    )
    stale_keys = KeyManager(
        hanging,
        hasher=CountingHasher(),
        store_timeout=timeout,
        cache_ttl=0,
        outage_grace=0,
    )
    service, stale_service = Service(keys), Service(stale_keys)
    cached = keys.create(PROJECT, "cached")
    uncached = keys.create(PROJECT, "never used")
    assert_served(service.call(cached.key))
    assert_served(stale_service.call(cached.key))

    hanging.hanging = {"find_by_prefix", "get"}
    for this, key in (
        (service, uncached.key),
        (service, generate_key()),
        (stale_service, cached.key),
    ):
        response, elapsed = this.timed_call(key)
        assert_unavailable(response)
        assert timeout * 0.9 <= elapsed < timeout + SLACK
    response, elapsed = service.timed_call(cached.key)
    assert_served(response)  # fresh in the cache: the store is not asked
    assert elapsed < timeout
    assert (service.downstream.calls, stale_service.downstream.calls) == (2, 1)

    hanging.release()
    assert_served(service.call(uncached.key))
    assert_served(stale_service.call(cached.key))


def test_more_hung_requests_than_lookup_threads_are_each_503_in_time(
    hanging: HangingStore,
) -> None:
    """Each hung read keeps a lookup thread; once all are taken, further requests
    wait in the queue and still get their 503 within store_timeout, and the
    threads stay bounded."""
    timeout = 0.1
    before = set(threading.enumerate())
    keys = KeyManager(hanging, hasher=CountingHasher(), store_timeout=timeout)
    service = Service(keys)
    issued = keys.create(PROJECT, "after the hang")
    hanging.hanging = {"find_by_prefix"}
    for _ in range(20):  # the manager has 16 lookup threads
        response, elapsed = service.timed_call(generate_key())
        assert_unavailable(response)
        assert elapsed < timeout + SLACK
    lookup_threads = [
        thread
        for thread in set(threading.enumerate()) - before
        if thread.name.startswith("vemetric-auth-lookup")
    ]
    assert 1 <= len(lookup_threads) <= 16
    hanging.release()
    assert_served(service.call(issued.key))
    assert service.downstream.calls == 1


@pytest.mark.parametrize("stale", [False, True], ids=["uncached", "stale"])
def test_concurrent_requests_for_one_key_on_a_hung_store_are_each_503_in_time(
    hanging: HangingStore, stale: bool
) -> None:
    """Requests for one key wait for each other (one argon2 run per key), but
    not one store_timeout after another: a popular key going stale while the
    database hangs must not pile up the request threads."""
    timeout, requests = 0.25, 6
    keys = KeyManager(
        hanging,
        hasher=CountingHasher(),
        store_timeout=timeout,
        cache_ttl=0,
        outage_grace=0,  # not bridged from memory
    )
    service = Service(keys)
    issued = keys.create(PROJECT, "popular key")
    if stale:
        assert_served(service.call(issued.key))
    hanging.hanging = {"find_by_prefix", "get"}
    elapsed: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(requests)

    def request() -> None:
        barrier.wait()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            keys.authenticate(issued.key)
        with lock:
            elapsed.append(time.monotonic() - started)

    threads = [threading.Thread(target=request) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(elapsed) == requests
    # (Queued one timeout after another, the n-th would wait n * 0.25 s.)
    assert max(elapsed) < timeout + 1.0, sorted(elapsed)


def test_a_rehash_write_that_hangs_does_not_hold_the_request(
    hanging: HangingStore,
) -> None:
    """The write of a new hash after a verification is on the request path too."""
    timeout = 0.3
    old = KeyManager(hanging, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST))
    issued = old.create(PROJECT, "hashed with old parameters")
    # Other (still cheap) parameters: every verification wants a rehash.
    other = dataclasses.replace(profiles.CHEAPEST, time_cost=2)
    keys = KeyManager(hanging, hasher=CountingHasher(other), store_timeout=timeout)
    hanging.hanging = {"set_hash"}
    outcome = Outcome(lambda: keys.authenticate(issued.key))
    try:
        assert outcome.wait(timeout + 1.0), "still waiting on set_hash"
    finally:
        hanging.release()
        outcome.wait(10)
    # Verified, so served: the old hash only costs a rehash later.
    assert outcome.error is None
    assert outcome.result == issued.record


# -- an outage, bridged from memory (outage_grace) -----------------------------------


@pytest.fixture
def fast_feed(monkeypatch: pytest.MonkeyPatch) -> float:
    """The change feed is read every 0.05 s instead of 0.5 s."""
    monkeypatch.setattr(ChangeFeed, "_interval", 0.05)
    return 0.05


def wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def cache_vouched(service: Service, key: str, ttl: float) -> None:
    """Serve *key*, and have the change feed vouch for its cache entry (read
    after the feed's head, which the first verification takes) once it has
    been read again after *ttl*."""
    keys = service.keys
    feed = keys._feed
    assert feed is not None
    assert_served(service.call(key))
    time.sleep(ttl + 0.05)
    assert_served(service.call(key))
    wait_until(
        lambda: (
            time.monotonic() - feed.confirmed_at < 1.0
            and all(entry.vouched for entry in list(keys._cache._entries.values()))
        ),
        within=10,
    )


def test_an_outage_serves_keys_verified_before_for_outage_grace_new_keys_503(
    fast_feed: float, caplog: pytest.LogCaptureFixture
) -> None:
    ttl, grace = 0.2, 1.5
    store = FeedStore()
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=ttl, outage_grace=grace)
    service = Service(keys)
    cached = keys.create(PROJECT, "verified before")
    uncached = keys.create(PROJECT, "never used")
    cache_vouched(service, cached.key, ttl)

    store.failing = store.feed_failing = True  # the database is gone
    down_at = time.monotonic()
    time.sleep(ttl + 0.05)  # past cache_ttl, and the feed is failing
    for _ in range(5):
        assert_served(service.call(cached.key))
    assert_unavailable(service.call(uncached.key))
    assert_unavailable(service.call(generate_key()))
    assert caplog.text.count("keys verified before are served from memory") == 1
    # Bounded: once the grace is over, 503 as for any key.
    time.sleep(max(0.0, down_at + grace - time.monotonic()) + 0.1)
    assert_unavailable(service.call(cached.key))

    store.failing = store.feed_failing = False  # back: recovers by itself
    assert_served(service.call(cached.key))
    assert_served(service.call(uncached.key))
    assert service.downstream.calls == 9
    keys.close()


def test_an_outage_of_a_hanging_store_costs_one_timeout_then_answers_from_memory(
    fast_feed: float,
) -> None:
    timeout, ttl = 0.5, 0.2
    store = FeedStore()
    keys = KeyManager(
        store, hasher=CountingHasher(), store_timeout=timeout, cache_ttl=ttl
    )
    service = Service(keys)
    cached = keys.create(PROJECT, "verified before")
    uncached = keys.create(PROJECT, "never used")
    cache_vouched(service, cached.key, ttl)
    store.feed_failing = True
    store.hanging.clear()  # every key store call blocks
    try:
        time.sleep(ttl + 0.05)
        response, elapsed = service.timed_call(cached.key)
        assert_served(response)  # from memory, once the re-read timed out
        assert elapsed < timeout + SLACK
        for _ in range(5):  # known to be down: no request waits any more
            response, elapsed = service.timed_call(cached.key)
            assert_served(response)
            assert elapsed < 0.2
        response, elapsed = service.timed_call(uncached.key)
        assert_unavailable(response)
        assert timeout * 0.9 <= elapsed < timeout + SLACK
    finally:
        store.hanging.set()
        store.feed_failing = False
    wait_until(lambda: not keys._verifier._is_down(), within=5)
    assert_served(service.call(uncached.key))
    keys.close()


def test_an_outage_longer_than_the_idle_timeout_keeps_the_reader_and_its_grace(
    fast_feed: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key served from the cache alone needs no request to reach the
    reader; a reader that can not read stays all the same, so that what it
    read before still vouches for the cache."""
    from vemetric_auth._feed import ChangeFeed

    monkeypatch.setattr(ChangeFeed, "idle_timeout", staticmethod(lambda: 0.2))
    ttl = 1.0
    store = FeedStore()
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=ttl, outage_grace=30)
    service = Service(keys)
    cached = keys.create(PROJECT, "verified before")
    cache_vouched(service, cached.key, ttl)
    store.failing = store.feed_failing = True
    time.sleep(1.5)  # idle, past cache_ttl
    assert keys._feed is not None
    assert keys._feed._thread is not None  # still there
    for _ in range(3):
        assert_served(service.call(cached.key))
    store.failing = store.feed_failing = False
    keys.close()


def test_outage_grace_zero_is_503_once_stale(fast_feed: float) -> None:
    store = FeedStore()
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=0.2, outage_grace=0)
    service = Service(keys)
    cached = keys.create(PROJECT, "verified before")
    assert_served(service.call(cached.key))
    store.failing = store.feed_failing = True
    assert_served(service.call(cached.key))  # fresh: served as ever
    time.sleep(0.25)
    assert_unavailable(service.call(cached.key))
    store.failing = store.feed_failing = False
    assert_served(service.call(cached.key))
    keys.close()


def test_no_grace_for_a_key_revoked_before_the_outage(fast_feed: float) -> None:
    """The feed delivered the revocation before the store went down: the key
    is not in memory to be served."""
    store = FeedStore()
    here = KeyManager(store, hasher=CountingHasher(), cache_ttl=3600)
    elsewhere = KeyManager(store, hasher=CountingHasher())
    service = Service(here)
    issued = here.create(PROJECT, "revoked, then an outage")
    assert_served(service.call(issued.key))
    elsewhere.revoke(issued.record.id)
    wait_until(
        lambda: all(entry.reread for entry in list(here._cache._entries.values())),
        within=1.0,
    )
    store.failing = store.feed_failing = True
    assert_unavailable(service.call(issued.key))
    store.failing = store.feed_failing = False
    assert_refused(service.call(issued.key))
    here.close()
    elsewhere.close()


def test_an_expired_key_is_refused_during_an_outage(fast_feed: float) -> None:
    ttl = 0.1
    store = FeedStore()
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=ttl)
    service = Service(keys)
    soon = datetime.now(timezone.utc) + timedelta(seconds=1.0)
    issued = keys.create(PROJECT, "expires soon", expires_at=soon)
    cache_vouched(service, issued.key, ttl)
    store.failing = store.feed_failing = True
    time.sleep(0.2)
    assert_served(service.call(issued.key))  # stale, in the grace, unexpired
    time.sleep(max(0.0, (soon - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    assert_refused(service.call(issued.key))
    store.failing = store.feed_failing = False
    keys.close()


# -- PostgreSQL ------------------------------------------------------------------------


def _postmaster_pid(server: Any) -> int:
    path = os.path.join(server.data_dir, "postmaster.pid")
    with open(path, encoding="ascii") as file:
        return int(file.readline())


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return found


@contextlib.contextmanager
def frozen(server: Any) -> Iterator[None]:
    """Freeze the PostgreSQL server with SIGSTOP: postmaster and all children.

    The kernel still accepts and acknowledges TCP, but nothing answers, as a
    database host that hangs. Everything is SIGCONT-ed on the way out, always.
    """
    postmaster = _postmaster_pid(server)
    stopped: list[int] = []
    try:
        # The postmaster first: once stopped, it forks no new backends.
        os.kill(postmaster, signal.SIGSTOP)
        stopped.append(postmaster)
        while True:
            new = [pid for pid in _children(postmaster) if pid not in stopped]
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = [_proc_stat(pid) for pid in stopped]
            if all(fields is None or fields[0] == "T" for fields in states):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the PostgreSQL processes did not stop")
        yield
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture
def pg_stores(postgres_server: Any) -> Iterator[Callable[..., SQLKeyStore]]:
    """Make stores on one fresh table of the session's PostgreSQL server.

    Closed at teardown; and whatever the test did, the server is left running
    and unfrozen for the tests after it.
    """
    table_name = "f_" + uuid.uuid4().hex[:12]
    stores: list[SQLKeyStore] = []
    if not postgres_server.is_running():
        postgres_server.start()

    def make(**options: Any) -> SQLKeyStore:
        store = SQLKeyStore(postgres_server.url, table_name=table_name, **options)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
        # The test's managers are gone, or go with a collection (a traceback
        # may hold one); their change feed readers end then, and must have
        # before the stores close: a read after that would open a connection
        # nobody closes.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", ".*was deleted while still open", ResourceWarning
            )
            gc.collect()
        deadline = time.monotonic() + 5
        while any(t.name == "vemetric-auth-feed" for t in threading.enumerate()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for store in stores:
            store.close()
        # A store call the manager gave up on (store_timeout) may finish only
        # now, on a pool closed meanwhile; its connection is then released by
        # the garbage collector, which psycopg warns of. Collect it here.
        time.sleep(0.2)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", ".*was deleted while still open", ResourceWarning
            )
            gc.collect()


@pytest.fixture
def admin_engine(postgres_server: Any) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _fresh_manager(make_store: Callable[..., SQLKeyStore]) -> KeyManager:
    """A manager on a new store: it reads the database, no cache in between."""
    return KeyManager(make_store(), hasher=CountingHasher())


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_stopped_is_503_then_recovers_with_nothing_lost(
    postgres_server: Any,
    pg_stores: Callable[..., SQLKeyStore],
    admin_engine: sa.Engine,
    mode: str,
) -> None:
    keys = KeyManager(pg_stores(connect_timeout=2), hasher=CountingHasher())
    service = Service(keys)
    cached = keys.create(PROJECT, "cached")
    uncached = keys.create(PROJECT, "never used")
    revoked = keys.create(PROJECT, "revoked before")
    revoked_record = keys.revoke(revoked.record.id, revoked_by="admin")
    to_revoke = keys.create(PROJECT, "revoked during the outage")
    assert_served(service.call(cached.key))
    assert_served(service.call(to_revoke.key))
    # The throwaway server runs with synchronous_commit=off: an immediate stop
    # could drop its last commits, which a production server never does.
    with admin_engine.connect() as connection:
        connection.exec_driver_sql("CHECKPOINT")

    postgres_server.stop(mode)
    try:
        started = time.monotonic()
        for key in (uncached.key, revoked.key, generate_key()):
            assert_unavailable(service.call(key))
        assert_served(service.call(cached.key))  # fresh in this process's cache
        with pytest.raises(StoreUnavailable):
            keys.create(PROJECT, "created during the outage")
        with pytest.raises(StoreUnavailable):
            keys.revoke(to_revoke.record.id, revoked_by="admin")
        # Whether that revocation happened is unknown here: no longer served
        # from the cache.
        assert_unavailable(service.call(to_revoke.key))
        with pytest.raises(StoreUnavailable):
            keys.list(PROJECT)
        with pytest.raises(StoreUnavailable):
            keys.get(cached.record.id)
        assert time.monotonic() - started < 10
        assert service.downstream.calls == 3
    finally:
        postgres_server.start()

    # The same manager, store and middleware recover by themselves.
    assert_served(service.call(uncached.key))
    assert_served(service.call(cached.key))
    assert_served(service.call(to_revoke.key))
    assert_refused(service.call(revoked.key))

    fresh = _fresh_manager(pg_stores)
    assert names(fresh) == {
        "cached",
        "never used",
        "revoked before",
        "revoked during the outage",
    }
    assert fresh.authenticate(cached.key) == cached.record
    assert fresh.authenticate(uncached.key) == uncached.record
    assert fresh.authenticate(to_revoke.key) == to_revoke.record
    with pytest.raises(InvalidApiKey):
        fresh.authenticate(revoked.key)
    assert fresh.get(revoked.record.id) == revoked_record
    keys.close()
    fresh.close()


def _assert_created_whole_or_not_at_all(
    outcome: Outcome, name: str, fresh: KeyManager
) -> None:
    matching = [r for r in fresh.list(PROJECT, include_revoked=True) if r.name == name]
    if outcome.error is None:
        issued: IssuedKey = outcome.result
        assert matching == [issued.record]
        assert fresh.authenticate(issued.key) == issued.record
    else:
        # Given up on: either never stored, or stored once the server thawed
        # and then revoked at once, since nobody was ever shown its key.
        assert isinstance(outcome.error, StoreUnavailable)
        deadline = time.monotonic() + 10
        while matching and matching[0].revoked_at is None:
            assert time.monotonic() < deadline, "a key nobody saw stayed active"
            time.sleep(0.05)
            matching = [
                r for r in fresh.list(PROJECT, include_revoked=True) if r.name == name
            ]
        assert len(matching) <= 1
        for record in matching:
            assert record.revoked_by == (
                "vemetric-auth: created after its request timed out"
            )


def _assert_revoked_whole_or_not_at_all(
    outcome: Outcome, issued: IssuedKey, fresh: KeyManager
) -> None:
    record = fresh.get(issued.record.id)
    if outcome.error is None:
        assert outcome.result == record
    else:
        assert isinstance(outcome.error, StoreUnavailable)
    if record.revoked_at is None:
        assert record.revoked_by is None
        assert fresh.authenticate(issued.key) == record
    else:
        assert record.revoked_by == "admin"
        with pytest.raises(InvalidApiKey):
            fresh.authenticate(issued.key)


@pytest.mark.postgres
def test_postgresql_frozen_is_503_within_store_timeout_and_recovers_on_sigcont(
    postgres_server: Any, pg_stores: Callable[..., SQLKeyStore]
) -> None:
    timeout, ttl = 1.0, 2.5
    # The store's own timeouts (5 s) can not help: a frozen server never
    # starts the statement, and the kernel still acknowledges every packet.
    # outage_grace=0: once stale, the cached key is not bridged from memory
    # (see the test after this one for that).
    keys = KeyManager(
        pg_stores(),
        hasher=CountingHasher(),
        store_timeout=timeout,
        cache_ttl=ttl,
        outage_grace=0,
    )
    service = Service(keys)
    uncached = keys.create(PROJECT, "never used")
    revoked = keys.create(PROJECT, "revoked before")
    keys.revoke(revoked.record.id, revoked_by="admin")
    to_revoke = keys.create(PROJECT, "revoked during the freeze")
    cached = keys.create(PROJECT, "cached")
    assert_served(service.call(cached.key))
    cached_at = time.monotonic()

    with frozen(postgres_server):
        response, elapsed = service.timed_call(cached.key)
        assert_served(response)
        assert elapsed < timeout
        for key in (uncached.key, revoked.key, generate_key()):
            response, elapsed = service.timed_call(key)
            assert_unavailable(response)
            assert timeout * 0.9 <= elapsed < timeout + SLACK
        creating = Outcome(lambda: keys.create(PROJECT, "created during the freeze"))
        revoking = Outcome(lambda: keys.revoke(to_revoke.record.id, revoked_by="admin"))
        time.sleep(max(0.0, cached_at + ttl - time.monotonic()) + 0.05)
        response, elapsed = service.timed_call(cached.key)  # now stale
        assert_unavailable(response)
        assert elapsed < timeout + SLACK
        assert service.downstream.calls == 2

    # Management calls end once the server answers again (see the xfail test
    # below for how long they wait meanwhile).
    assert creating.wait(30)
    assert revoking.wait(30)
    assert_served(service.call(uncached.key))
    assert_served(service.call(cached.key))
    assert_refused(service.call(revoked.key))

    fresh = _fresh_manager(pg_stores)
    assert {"never used", "revoked before", "cached"} <= names(fresh)
    assert fresh.authenticate(uncached.key) == uncached.record
    assert fresh.authenticate(cached.key) == cached.record
    with pytest.raises(InvalidApiKey):
        fresh.authenticate(revoked.key)
    _assert_created_whole_or_not_at_all(creating, "created during the freeze", fresh)
    _assert_revoked_whole_or_not_at_all(revoking, to_revoke, fresh)
    keys.close()
    fresh.close()


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["stopped", "frozen"])
def test_postgresql_down_serves_keys_verified_before_for_outage_grace(
    postgres_server: Any,
    pg_stores: Callable[..., SQLKeyStore],
    fault: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ChangeFeed, "_interval", 0.1)
    timeout, ttl, grace = 1.0, 0.5, 4.0
    keys = KeyManager(
        pg_stores(connect_timeout=1),
        hasher=CountingHasher(),
        store_timeout=timeout,
        cache_ttl=ttl,
        outage_grace=grace,
    )
    service = Service(keys)
    cached = keys.create(PROJECT, "verified before")
    uncached = keys.create(PROJECT, "never used")
    cache_vouched(service, cached.key, ttl)
    with contextlib.ExitStack() as outage:
        if fault == "stopped":
            postgres_server.stop("fast")
            outage.callback(postgres_server.start)
        else:
            outage.enter_context(frozen(postgres_server))
        down_at = time.monotonic()
        time.sleep(ttl + 0.2)  # stale, and the feed can not be read
        served = [service.timed_call(cached.key) for _ in range(5)]
        for response, _ in served:
            assert_served(response)
        # At most the first waits for the store, once.
        assert sorted(elapsed for _, elapsed in served)[-2] < 0.3
        assert_unavailable(service.call(uncached.key))
        time.sleep(max(0.0, down_at + grace - time.monotonic()) + 0.3)
        assert_unavailable(service.call(cached.key))  # bounded
    deadline = time.monotonic() + 30
    while service.call(cached.key).status_code != 200:  # recovers by itself
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert_served(service.call(uncached.key))
    keys.close()


@pytest.mark.postgres
def test_management_calls_on_a_frozen_postgresql_end_within_a_bound(
    postgres_server: Any, pg_stores: Callable[..., SQLKeyStore]
) -> None:
    timeout = 1.0
    store = pg_stores(connect_timeout=1, statement_timeout=1)
    keys = KeyManager(store, hasher=CountingHasher(), store_timeout=timeout)
    issued = keys.create(PROJECT, "revoked during the freeze")
    keys.list(PROJECT)  # leaves an idle connection in the pool
    with frozen(postgres_server):
        revoking = Outcome(lambda: keys.revoke(issued.record.id, revoked_by="admin"))
        ended = revoking.wait(timeout + 3)
    revoking.wait(30)
    assert ended, "revoke waited for the frozen server"
    assert isinstance(revoking.error, StoreUnavailable)
    keys.close()  # waits for the revocation still under way


@contextlib.contextmanager
def cut_off_after(store: SQLKeyStore, verb: str, admin: sa.Engine) -> Iterator[None]:
    """Terminate the server process of the store's connection right after its
    next *verb* statement (INSERT, UPDATE) ran, inside the transaction."""
    armed = [True]

    def cut(conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if armed[0] and statement.lstrip().upper().startswith(verb):
            armed[0] = False
            pid = conn.connection.dbapi_connection.info.backend_pid
            with admin.connect() as connection:
                connection.execute(
                    sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}
                )

    sa.event.listen(store.engine, "after_cursor_execute", cut)
    try:
        yield
    finally:
        sa.event.remove(store.engine, "after_cursor_execute", cut)
    assert not armed[0], f"no {verb} statement ran"


@pytest.mark.postgres
def test_a_creation_cut_off_mid_transaction_stores_nothing(
    pg_stores: Callable[..., SQLKeyStore], admin_engine: sa.Engine
) -> None:
    store = pg_stores()
    keys = KeyManager(store, hasher=CountingHasher())
    keys.create(PROJECT, "before")
    with cut_off_after(store, "INSERT", admin_engine), pytest.raises(StoreUnavailable):
        keys.create(PROJECT, "cut off")
    fresh = _fresh_manager(pg_stores)
    assert names(fresh) == {"before"}
    # The dead connection was dropped: the same manager goes on.
    after = keys.create(PROJECT, "after")
    assert fresh.authenticate(after.key) == after.record


@pytest.mark.postgres
def test_a_revocation_cut_off_mid_transaction_leaves_the_key_active(
    pg_stores: Callable[..., SQLKeyStore], admin_engine: sa.Engine
) -> None:
    store = pg_stores()
    keys = KeyManager(store, hasher=CountingHasher())
    service = Service(keys)
    issued = keys.create(PROJECT, "revoke cut off")
    assert_served(service.call(issued.key))
    with cut_off_after(store, "UPDATE", admin_engine), pytest.raises(StoreUnavailable):
        keys.revoke(issued.record.id, revoked_by="admin")
    fresh = _fresh_manager(pg_stores)
    record = fresh.get(issued.record.id)
    assert (record.revoked_at, record.revoked_by) == (None, None)
    assert fresh.authenticate(issued.key) == issued.record
    assert_served(service.call(issued.key))
    # And revoking again works, for good.
    keys.revoke(issued.record.id, revoked_by="admin")
    assert_refused(service.call(issued.key))
    with pytest.raises(InvalidApiKey):
        _fresh_manager(pg_stores).authenticate(issued.key)
