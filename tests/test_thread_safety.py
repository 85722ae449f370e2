"""Every structure threads share, pinned by a concurrent test.

- the verified-key cache (LRU, eviction, revocation while verifying),
- the in-memory store (see also the contract's concurrent tests),
- the creation clock (strictly increasing created_at),
- the argon2 workers (bound, see test_manager), from many threads at once,
- the in-memory store's lock in a child forked while another thread held it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
from conftest import CountingHasher, assert_each_key_as_stored, run_threads

from vemetric_auth import InMemoryKeyStore, InvalidApiKey, KeyManager


def test_cache_under_eviction_pressure_and_concurrent_revocation() -> None:
    hasher = CountingHasher()
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher, cache_size=8)
    issued = [keys.create(f"p{n % 4}", f"k{n}") for n in range(24)]
    doomed = {i.record.id for i in issued[::3]}
    revoked_done = threading.Event()

    def worker(n: int) -> None:
        rng = random.Random(n)
        if n == 0:
            for item in issued[::3]:
                keys.revoke(item.record.id)
            revoked_done.set()
            return
        for _ in range(400):
            item = rng.choice(issued)
            try:
                record = keys.authenticate(item.key)
            except InvalidApiKey:
                assert item.record.id in doomed
                continue
            assert record.id == item.record.id
            assert record.project_id == item.record.project_id

    assert run_threads(worker, 8) == []
    assert revoked_done.is_set()
    assert len(keys._cache) <= 8
    for item in issued:
        if item.record.id in doomed:
            with pytest.raises(InvalidApiKey):
                keys.authenticate(item.key)
        else:
            assert keys.authenticate(item.key).id == item.record.id


def test_revocation_wins_over_a_verification_in_flight() -> None:
    """A verification that read the record before a revocation cannot put the key
    back in the cache after it."""
    store = InMemoryKeyStore()
    entered = threading.Event()
    release = threading.Event()

    class PausingHasher(CountingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            entered.set()
            release.wait(5)
            return super().verify(hash, password)

    keys = KeyManager(store, hasher=PausingHasher())
    issued = keys.create("p1", "n")
    outcome: list[Any] = []
    verifying = threading.Thread(
        target=lambda: outcome.append(keys.authenticate(issued.key))
    )
    verifying.start()
    assert entered.wait(5)
    keys.revoke(issued.record.id)
    release.set()
    verifying.join()
    assert outcome == [issued.record]  # began before the revocation
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


def test_concurrent_creates_get_distinct_ordered_times() -> None:
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher())

    def create(n: int) -> None:
        for i in range(10):
            keys.create("p1", f"{n}-{i}")

    assert run_threads(create, 8) == []
    listed = keys.list("p1")
    assert len(listed) == 80
    times = [record.created_at for record in listed]
    assert len(set(times)) == 80
    assert times == sorted(times, reverse=True)


def test_in_memory_store_mixed_operations_from_many_threads() -> None:
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher())
    created: list[Any] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(n)
        for i in range(30):
            issued = keys.create(f"p{n % 2}", f"{n}-{i}")
            with lock:
                created.append(issued)
            assert keys.authenticate(issued.key).id == issued.record.id
            if rng.random() < 0.3:
                keys.revoke(issued.record.id)
            keys.list(f"p{n % 2}", include_revoked=True)

    assert run_threads(worker, 8) == []
    everything = keys.list("p0", include_revoked=True) + keys.list(
        "p1", include_revoked=True
    )
    assert sorted(r.id for r in everything) == sorted(i.record.id for i in created)
    assert_each_key_as_stored(keys, created)


# -- after fork() --------------------------------------------------------------------


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _in_child(check: Callable[[], bool]) -> NoReturn:
    """Run *check* in the forked child; report through the exit status only."""
    code = 2
    try:
        signal.alarm(5)  # a deadlocked child is killed, not waited for
        code = 0 if check() else 1
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_another_thread_holds_the_memory_stores_lock() -> None:
    """A pre-forking server forks while a request thread is inside the store:
    the child's store has a lock of its own, and the keys as they were."""
    store = InMemoryKeyStore()
    keys = KeyManager(store, hasher=CountingHasher())
    issued = keys.create("p1", "n")
    inside = threading.Event()
    leave = threading.Event()

    class Holding:
        """Stands for a store method in progress on another thread."""

        def __init__(self) -> None:
            self.thread = threading.Thread(target=self.hold)

        def hold(self) -> None:
            with store._lock:  # what every method of the store takes
                inside.set()
                leave.wait(10)

    holding = Holding()
    holding.thread.start()
    try:
        assert inside.wait(5)
        pid = _fork()
        if pid == 0:
            _in_child(
                lambda: (
                    store.get(issued.record.id) == issued.record
                    and KeyManager(store, hasher=CountingHasher()).authenticate(
                        issued.key
                    )
                    == issued.record
                )
            )
    finally:
        leave.set()
        holding.thread.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
