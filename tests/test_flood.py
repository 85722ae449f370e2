"""Floods do not fail legitimate keys (SPEC section 7).

- Hundreds of threads sending random well-formed keys against a slow store
  fill the lookup threads and their backlog; a key this process verified
  keeps being answered all along (no ``503``), with a change feed (served
  from memory, re-read in the background) and without one (re-read on
  store threads of its own).
- Hundreds of threads sending wrong secrets for one known prefix queue up
  for argon2; another key's first verification waits for about one argon2
  run, not for the queue, since prefixes take turns.
- A wait for argon2 is bounded by ``store_timeout``.

The bounds are checked with slack: the figures are in
``benchmarks/bench_flood.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import statistics
import threading
import time
from collections import Counter
from typing import Any

import pytest
from argon2 import PasswordHasher, profiles
from conftest import CountingHasher
from feed_store import FeedStore, SlowStore

from vemetric_auth import (
    InMemoryKeyStore,
    InvalidApiKey,
    KeyManager,
    StoreUnavailable,
)
from vemetric_auth._feed import ChangeFeed

pytestmark = pytest.mark.slow

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def random_key(rng: random.Random) -> str:
    return "vem_" + "".join(rng.choice(_ALPHABET) for _ in range(32))


class Flood:
    """*count* threads calling ``attack(rng)`` until stopped; counts outcomes."""

    def __init__(self, count: int, attack: Any) -> None:
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._attack = attack
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True)
            for n in range(count)
        ]

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        while not self._stop.is_set():
            try:
                self._attack(rng)
                outcome = "accepted"
            except Exception as exc:
                outcome = type(exc).__name__
            with self._lock:
                self.outcomes[outcome] += 1

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.mark.parametrize(
    "with_feed",
    [pytest.param(True, id="with-feed"), pytest.param(False, id="without-feed")],
)
def test_a_random_key_flood_on_a_slow_store_never_fails_a_known_key(
    with_feed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ChangeFeed, "_interval", 0.1)
    ttl = 0.2
    store: Any = (
        FeedStore(delay=0.05)
        if with_feed
        else SlowStore(InMemoryKeyStore(), delay=0.05)
    )
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=ttl)
    try:
        legit = keys.create("p1", "legit")
        assert keys.authenticate(legit.key) == legit.record
        answers: Counter[str] = Counter()

        def attack(rng: random.Random) -> None:
            keys.authenticate(random_key(rng))

        with Flood(300, attack) as flood:
            time.sleep(0.5)  # the lookup threads and their backlog fill up
            stop = time.monotonic() + 3.0
            while time.monotonic() < stop:
                try:
                    keys.authenticate(legit.key)
                    answers["200"] += 1
                except StoreUnavailable:
                    answers["503"] += 1
                time.sleep(0.02)
        # The flood did fill them: some attackers got 503 at once.
        assert flood.outcomes["StoreUnavailable"] > 0, flood.outcomes
        assert flood.outcomes["InvalidApiKey"] > 0, flood.outcomes
        assert answers["503"] == 0, answers
        assert answers["200"] >= 20, answers
        # The known key was read again (its entry went stale many times).
        assert store.calls["get"] >= 2
    finally:
        keys.close()


def test_a_random_key_flood_leaves_pooled_connections_to_known_keys_and_the_feed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store with 15 connections (SQLAlchemy's default pool: 5 and 10
    more): the lookups of unknown keys never take them all, so the feed keeps
    being read and a known key keeps being answered."""
    monkeypatch.setattr(ChangeFeed, "_interval", 0.1)
    store = FeedStore(delay=0.05, connections=15)
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=0.2)
    try:
        legit = keys.create("p1", "legit")
        assert keys.authenticate(legit.key) == legit.record
        answers: Counter[str] = Counter()

        def attack(rng: random.Random) -> None:
            keys.authenticate(random_key(rng))

        with Flood(300, attack):
            time.sleep(0.5)
            reads = store.calls["changes_since"]
            stop = time.monotonic() + 3.0
            while time.monotonic() < stop:
                try:
                    keys.authenticate(legit.key)
                    answers["200"] += 1
                except StoreUnavailable:
                    answers["503"] += 1
                time.sleep(0.02)
            # Read about ten times a second all along.
            assert store.calls["changes_since"] - reads >= 10
        assert answers["503"] == 0, answers
        assert answers["200"] >= 20, answers
    finally:
        keys.close()


def test_the_sql_stores_pool_has_a_connection_for_each_store_call_of_a_manager(
    tmp_path: Any,
) -> None:
    """Every thread a manager may call the store on at once finds a
    connection without waiting for a lookup of an unknown key to end."""
    from vemetric_auth import _store_calls
    from vemetric_auth.stores.sql import SQLKeyStore

    store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        pool: Any = store._engine.pool
        at_once = (
            _store_calls._LOOKUP_THREADS
            + 2 * _store_calls._KNOWN_THREADS  # request re-reads, background
            + 1  # the feed's reader
        )
        assert pool.size() + pool._max_overflow >= at_once
    finally:
        store.close()


def slow_hasher() -> PasswordHasher:
    """About 10 to 40 ms a run: fairness shows against the queue."""
    return CountingHasher(
        dataclasses.replace(profiles.CHEAPEST, time_cost=1, memory_cost=32768)
    )


def one_run(keys: KeyManager, store: InMemoryKeyStore) -> float:
    """Seconds of one cold verification here, the median of five."""
    samples = []
    for n in range(5):
        issued = keys.create("p_other", f"calibration {n}")
        started = time.monotonic()
        keys.authenticate(issued.key)
        samples.append(time.monotonic() - started)
    return statistics.median(samples)


def test_a_wrong_secret_flood_on_one_prefix_delays_another_key_by_about_one_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="vemetric_auth")  # no log per attempt
    store = InMemoryKeyStore()
    keys = KeyManager(
        store, hasher=slow_hasher(), max_verifications=2, store_timeout=30
    )
    try:
        target = keys.create("p_target", "attacked")
        run = one_run(keys, store)
        others = [keys.create("p_other", f"first use {n}") for n in range(5)]

        def attack(rng: random.Random) -> None:
            wrong = target.key[:12] + random_key(rng)[12:]
            with contextlib.suppress(InvalidApiKey):
                keys.authenticate(wrong)

        latencies = []
        with Flood(200, attack):
            time.sleep(1.0)  # hundreds of wrong secrets queue for argon2
            for other in others:
                started = time.monotonic()
                assert keys.authenticate(other.key) == other.record
                latencies.append(time.monotonic() - started)
                time.sleep(0.1)
        # One cold verification is one run; a FIFO queue of 200 makes it
        # about 100 runs. Slack for a shared machine.
        assert statistics.median(latencies) < 6 * run + 0.2, (latencies, run)
    finally:
        keys.close()


def test_a_wait_for_argon2_is_bounded_by_store_timeout(
    memory_store: InMemoryKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
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
    timeout = 0.3
    keys = KeyManager(
        memory_store, hasher=hasher, max_verifications=1, store_timeout=timeout
    )
    busy, waiting = keys.create("p1", "busy"), keys.create("p1", "waiting")
    outcome: list[Any] = []
    first = threading.Thread(target=lambda: outcome.append(keys.authenticate(busy.key)))
    first.start()
    try:
        assert hasher.entered.wait(5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            keys.authenticate(waiting.key)
        assert timeout * 0.8 < time.monotonic() - started < timeout + 0.5
        assert "argon2 could not verify a key in time" in caplog.text
    finally:
        hasher.release.set()
        first.join(5)
    # The run that had started was waited for: its caller got its answer.
    assert outcome == [busy.record]
    assert keys.authenticate(waiting.key) == waiting.record
    keys.close()
