"""Every structure threads share, pinned by a concurrent test.

- the verified-key cache: LRU eviction under pressure, a revocation while a
  key is being verified or its stale entry re-read, how long a revocation
  made elsewhere can be outlived;
- the creation clock (strictly increasing ``created_at``);
- the in-memory store (see also the contract's concurrent tests);
- the worker pools (argon2, store lookups) from many threads at once, across
  ``fork``, and the locks a forked child inherits;
- the SQL store: mixed work on a file and on an in-memory database (one
  connection the threads take turns on), and ``close()`` while in use;
- the middleware's prebuilt error answers, which every request shares;
- the Flask extension: two apps, each with its own state, served at once.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import CountingHasher, assert_each_key_as_stored, run_threads
from flask import Flask, g
from werkzeug.test import Client

from vemetric_auth import (
    ApiKey,
    ApiKeyMiddleware,
    InMemoryKeyStore,
    InvalidApiKey,
    IssuedKey,
    KeyManager,
    SQLKeyStore,
    StoreUnavailable,
    generate_key,
)
from vemetric_auth.flask import VemetricAuth

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class PausingHasher(CountingHasher):
    """Cheap argon2 whose verifications wait for ``release`` once ``pause`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.pause = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        if self.pause.is_set():
            self.entered.set()
            self.release.wait(10)
        return super().verify(hash, password)


# -- the verified-key cache, the creation clock, the in-memory store ---------------


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
    hasher = PausingHasher()
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("p1", "n")
    hasher.pause.set()
    outcome: list[Any] = []
    verifying = threading.Thread(
        target=lambda: outcome.append(keys.authenticate(issued.key))
    )
    verifying.start()
    assert hasher.entered.wait(5)
    keys.revoke(issued.record.id)
    hasher.release.set()
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


class PausingReads(InMemoryKeyStore):
    """``get`` reads the record, then waits for ``release`` before answering it:
    a read that happened before a revocation and is answered after it."""

    def __init__(self) -> None:
        super().__init__()
        self.pause = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def get(self, key_id: str) -> ApiKey | None:
        record = super().get(key_id)
        if self.pause.is_set():
            self.entered.set()
            self.release.wait(10)
        return record


def test_a_stale_entry_re_read_across_a_revocation_here_is_not_put_back() -> None:
    store = PausingReads()
    ttl = 0.3
    keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=ttl)
    issued = keys.create("p1", "n")
    keys.authenticate(issued.key)
    time.sleep(ttl + 0.05)  # stale: the next request re-reads the record
    store.pause.set()
    outcome: list[Any] = []
    rereading = threading.Thread(
        target=lambda: outcome.append(keys.authenticate(issued.key))
    )
    rereading.start()
    assert store.entered.wait(5)
    keys.revoke(issued.record.id)
    store.release.set()
    rereading.join(10)
    assert outcome == [issued.record]  # it began before the revocation
    # Its put, made with the record read before the revocation, was dropped:
    # the key is refused at once, not after another cache_ttl.
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


def test_revocations_here_hold_against_many_threads_rereading() -> None:
    """With every entry going stale quickly, threads re-read and re-put keys while
    one thread revokes some: once revoke() returned, no request that starts
    afterwards is served that key."""
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher(), cache_ttl=0.002)
    issued = [keys.create("p1", f"k{n}") for n in range(12)]
    doomed = issued[::3]
    revoked_at: dict[str, float] = {}
    served_after: list[str] = []

    def worker(n: int) -> None:
        if n == 0:
            for item in doomed:
                time.sleep(0.01)
                keys.revoke(item.record.id)
                revoked_at[item.record.id] = time.monotonic()
            return
        rng = random.Random(n)
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            item = rng.choice(issued)
            started = time.monotonic()
            try:
                keys.authenticate(item.key)
            except InvalidApiKey:
                continue
            done = revoked_at.get(item.record.id)
            if done is not None and started > done:
                served_after.append(item.record.id)

    assert run_threads(worker, 6) == []
    assert len(revoked_at) == len(doomed)
    assert served_after == []


def test_a_revocation_elsewhere_is_seen_within_cache_ttl_of_it() -> None:
    store = InMemoryKeyStore()
    ttl = 0.2
    hasher = PausingHasher()
    here = KeyManager(store, hasher=hasher, cache_ttl=ttl)
    elsewhere = KeyManager(store, hasher=CountingHasher())
    issued = here.create("p1", "n")
    hasher.pause.set()
    outcome: list[Any] = []
    verifying = threading.Thread(
        target=lambda: outcome.append(here.authenticate(issued.key))
    )
    verifying.start()
    assert hasher.entered.wait(5)  # the record was read: active
    elsewhere.revoke(issued.record.id)
    time.sleep(ttl + 0.1)  # the revocation is older than cache_ttl
    hasher.pause.clear()
    hasher.release.set()
    verifying.join(10)
    assert outcome == [issued.record]  # it began before the revocation
    with pytest.raises(InvalidApiKey):
        here.authenticate(issued.key)


# -- worker pools across fork -----------------------------------------------------------


def _fork() -> int:
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _in_child(check: Callable[[], bool]) -> None:
    """Run *check* in the forked child; report through the exit status only."""
    code = 2
    try:
        signal.alarm(10)  # a deadlocked child is killed, not waited for
        code = 0 if check() else 1
    finally:
        os._exit(code)


def _child_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@needs_fork
def test_a_forked_child_gets_worker_pools_of_its_own() -> None:
    """A pre-forking server: the parent used the manager (its argon2 and lookup
    threads exist), then forks; the child has none of those threads."""
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher(), store_timeout=2.0)
    before = keys.create("p1", "before the fork")
    assert keys.authenticate(before.key) == before.record
    pid = _fork()
    if pid == 0:

        def check() -> bool:
            made = keys.create("p1", "in the child")  # argon2 hash
            return (
                keys.authenticate(made.key) == made.record  # lookup, argon2
                and keys.authenticate(before.key) == before.record
            )

        _in_child(check)
    assert _child_status(pid) == 0
    # The parent's pools are untouched.
    after = keys.create("p1", "after the fork")
    assert keys.authenticate(after.key) == after.record


@needs_fork
def test_a_fork_during_a_verification_leaves_the_child_working() -> None:
    """The parent forks while one of its threads is in the middle of argon2."""
    hasher = PausingHasher()
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher, store_timeout=2.0)
    busy = keys.create("p1", "verifying at the fork")
    other = keys.create("p1", "used by the child")
    hasher.pause.set()
    verifying = threading.Thread(target=keys.authenticate, args=(busy.key,))
    verifying.start()
    try:
        assert hasher.entered.wait(5)
        pid = _fork()
        if pid == 0:
            hasher.pause.clear()
            _in_child(lambda: keys.authenticate(other.key) == other.record)
    finally:
        hasher.release.set()
        verifying.join(10)
    assert _child_status(pid) == 0


@needs_fork
def test_a_fork_while_a_key_is_being_verified_leaves_that_key_usable() -> None:
    """The parent forks while one of its threads holds the turn of a key (it is
    in argon2 for it): the child can still authenticate that very key."""
    hasher = PausingHasher()
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher, store_timeout=0.5)
    busy = keys.create("p1", "verifying at the fork")
    hasher.pause.set()
    verifying = threading.Thread(target=keys.authenticate, args=(busy.key,))
    verifying.start()
    try:
        assert hasher.entered.wait(5)
        pid = _fork()
        if pid == 0:
            hasher.pause.clear()

            def check() -> bool:
                try:
                    return keys.authenticate(busy.key) == busy.record
                except StoreUnavailable:
                    return False

            _in_child(check)
    finally:
        hasher.release.set()
        verifying.join(10)
    assert _child_status(pid) == 0


# -- the SQL store ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "memory"])
def test_sqlite_store_under_mixed_work_from_many_threads(
    where: str, tmp_path: Path
) -> None:
    """Creates, authentications (store reads on the lookup threads), revocations,
    lists and gets at once; in memory, all on the one connection the threads
    take turns on."""
    url = f"sqlite:///{tmp_path / 'keys.db'}" if where == "file" else "sqlite://"
    with SQLKeyStore(url) as store:
        keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=0)
        created: list[IssuedKey] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            rng = random.Random(n)
            for i in range(12):
                issued = keys.create(f"p{n % 2}", f"{n}-{i}")
                with lock:
                    created.append(issued)
                assert keys.authenticate(issued.key) == issued.record
                if rng.random() < 0.3:
                    keys.revoke(issued.record.id)
                    with pytest.raises(InvalidApiKey):
                        keys.authenticate(issued.key)
                keys.list(f"p{n % 2}", include_revoked=True)
                assert keys.get(issued.record.id).id == issued.record.id
                with pytest.raises(InvalidApiKey):
                    keys.authenticate(generate_key())

        assert run_threads(worker, 6) == []
        stored = store.list("p0", include_revoked=True) + store.list(
            "p1", include_revoked=True
        )
        assert sorted(r.id for r in stored) == sorted(i.record.id for i in created)
        assert_each_key_as_stored(keys, created)


def test_closing_a_file_store_while_threads_use_it_fails_no_request(
    tmp_path: Path,
) -> None:
    """close() only drops pooled connections: requests in flight, and after,
    go on (the store reconnects and checks its table again)."""
    with SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}") as store:
        keys = KeyManager(store, hasher=CountingHasher(), cache_ttl=0)
        issued = [keys.create("p1", f"k{n}") for n in range(8)]
        deadline = time.monotonic() + 0.8

        def worker(n: int) -> None:
            if n == 0:
                while time.monotonic() < deadline:
                    store.close()
                    time.sleep(0.005)
                return
            i = n
            while time.monotonic() < deadline:
                item = issued[i % len(issued)]
                assert keys.authenticate(item.key) == item.record
                assert len(keys.list("p1")) == len(issued)
                i += 1

        assert run_threads(worker, 5) == []


# -- the middleware's shared answers --------------------------------------------------


def test_shared_error_answers_are_not_changed_by_what_callers_do_with_them() -> None:
    """Each refusal gets its own header list: an outer layer adding headers to one
    response, on many threads at once, never changes the next response."""
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher())
    inner = ApiKeyMiddleware(lambda environ, start_response: [], keys)

    def outer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        def add_header(status: str, headers: list[tuple[str, str]]) -> Any:
            headers.append(("X-Request", environ["HTTP_X_REQUEST"]))
            return start_response(status, headers)

        return inner(environ, add_header)

    client_headers = [
        {},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {generate_key()}"},
    ]

    def worker(n: int) -> None:
        client = Client(outer)
        for i in range(60):
            headers = dict(client_headers[(n + i) % 4], **{"X-Request": f"{n}-{i}"})
            response = client.get("/", headers=headers)
            assert response.status_code == 401
            assert response.headers.getlist("X-Request") == [f"{n}-{i}"]

    assert run_threads(worker, 6) == []
    plain = Client(inner)
    for headers in client_headers:
        assert "X-Request" not in plain.get("/", headers=headers).headers


# -- Flask: apps served at once ------------------------------------------------------


def test_two_flask_apps_served_at_once_keep_their_own_keys_and_g() -> None:
    """Two apps, each with its extension, manager, store and project loader,
    served from many threads: every request sees its own key, project and g."""
    apps: list[tuple[Flask, KeyManager]] = []
    for name in ("first", "second"):
        app = Flask(name)
        app.config["TESTING"] = True
        keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher(), cache_ttl=0)
        auth = VemetricAuth(app, keys=keys)
        auth.project_loader(lambda project_id, name=name: f"{name}:{project_id}")

        @app.get("/v1/project")
        def project() -> dict[str, Any]:
            time.sleep(0.0005)  # let other threads run in between
            return {
                "project": g.project,
                "project_id": g.project_id,
                "key": g.api_key.id,
            }

        apps.append((app, keys))
    issued = [
        [keys.create(f"proj_{n}", f"key {n}") for n in range(4)] for _, keys in apps
    ]

    def worker(n: int) -> None:
        rng = random.Random(n)
        clients = [app.test_client() for app, _ in apps]
        for _ in range(80):
            which = rng.randrange(2)
            item = rng.choice(issued[which])
            response = clients[which].get(
                "/v1/project", headers={"Authorization": f"Bearer {item.key}"}
            )
            assert response.status_code == 200
            assert response.json == {
                "project": f"{('first', 'second')[which]}:{item.record.project_id}",
                "project_id": item.record.project_id,
                "key": item.record.id,
            }
            # A key of the other app's store is unknown here.
            stranger = rng.choice(issued[1 - which])
            refused = clients[which].get(
                "/v1/project", headers={"Authorization": f"Bearer {stranger.key}"}
            )
            assert refused.status_code == 401

    assert run_threads(worker, 6) == []


# -- found in review: each pinned -------------------------------------------------------


def test_a_call_stuck_in_a_hung_store_does_not_keep_the_process_alive(
    tmp_path: Path,
) -> None:
    """store_timeout answers 503, and the thread left in the store must not
    hold the interpreter at exit (a server worker could never stop)."""
    script = tmp_path / "hung.py"
    script.write_text(
        "import threading\n"
        "from vemetric_auth import InMemoryKeyStore, KeyManager, StoreUnavailable\n"
        "from vemetric_auth import generate_key\n"
        "class Hung(InMemoryKeyStore):\n"
        "    def find_by_prefix(self, prefix):\n"
        "        threading.Event().wait()\n"
        "keys = KeyManager(Hung(), store_timeout=0.2)\n"
        "try:\n"
        "    keys.authenticate(generate_key())\n"
        "except StoreUnavailable:\n"
        "    print('503')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "503\n")


def test_unrelated_keys_do_not_wait_for_each_other() -> None:
    """Rechecks of several keys at once, on a slow but healthy store, all
    succeed: only requests of the same key take turns. The keys are picked so
    that their digests share a first byte, as keys sharing a lock stripe would."""
    store = InMemoryKeyStore()
    hasher = CountingHasher()
    keys = KeyManager(store, hasher=hasher, store_timeout=1.0, cache_ttl=0)
    chosen: list[str] = []
    first_byte = hashlib.sha256(generate_key().encode()).digest()[0]
    while len(chosen) < 6:
        candidate = generate_key()
        if hashlib.sha256(candidate.encode()).digest()[0] == first_byte:
            chosen.append(candidate)
    records = []
    for n, key in enumerate(chosen):
        record = ApiKey(
            id=f"k{n}",
            project_id="p1",
            name=f"k{n}",
            prefix=key[:12] + "...",
            created_at=datetime.now(timezone.utc),
        )
        store.add(record, hasher.hash(key))
        records.append(record)
        assert keys.authenticate(key) == record
    slow_get = store.get

    def get(key_id: str) -> Any:
        time.sleep(0.3)
        return slow_get(key_id)

    store.get = get  # type: ignore[method-assign]
    results: list[Any] = []
    # One after another, six rechecks of 0.3 s would overrun the 1 s bound.
    assert run_threads(lambda n: results.append(keys.authenticate(chosen[n])), 6) == []
    assert sorted(r.id for r in results) == sorted(r.id for r in records)


def test_a_revocation_that_lands_after_its_timeout_still_evicts_the_key() -> None:
    store = InMemoryKeyStore()
    # store_timeout also bounds the authenticate below (lookup and argon2):
    # long enough for a busy machine, shorter than the revocation's delay.
    keys = KeyManager(store, hasher=CountingHasher(), store_timeout=1.0)
    issued = keys.create("p1", "n")
    landing = threading.Event()
    real_revoke = store.revoke

    def slow_revoke(key_id: str, **kwargs: Any) -> Any:
        landing.wait(5)
        return real_revoke(key_id, **kwargs)

    store.revoke = slow_revoke  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        keys.revoke(issued.record.id)
    # Verified (and cached) while the revocation is still on its way.
    assert keys.authenticate(issued.key) == issued.record
    landing.set()
    deadline = time.monotonic() + 5
    while True:
        try:
            keys.authenticate(issued.key)
        except InvalidApiKey:
            break
        assert time.monotonic() < deadline, "the late revocation left the key cached"
        time.sleep(0.01)


def test_revoke_evicts_under_the_id_the_store_answered_with() -> None:
    """A store matching ids its own way (a case-insensitive column)."""

    class CaseInsensitive(InMemoryKeyStore):
        def revoke(self, key_id: str, **kwargs: Any) -> Any:
            return super().revoke(key_id.lower(), **kwargs)

    keys = KeyManager(CaseInsensitive(), hasher=CountingHasher())
    issued = keys.create("p1", "n")
    assert keys.authenticate(issued.key) == issued.record
    assert keys.revoke(issued.record.id.upper()).revoked
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)


@needs_fork
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
    assert _child_status(pid) == 0


# -- worker threads that can not start ------------------------------------------------


def test_a_thread_that_cannot_start_does_not_stall_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process at its thread limit for a moment: the request that could get
    no argon2 thread is answered 503, and the next ones are served once threads
    start again, instead of waiting for a thread that never ran."""
    from vemetric_auth import StoreUnavailable
    from vemetric_auth._workers import Workers

    monkeypatch.setattr(Workers, "idle_timeout", 0.2)
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher(), max_verifications=1)
    first = keys.create("p1", "first")
    second = keys.create("p1", "second")
    time.sleep(0.6)  # the threads that hashed the keys end

    real_start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def start(thread: threading.Thread) -> None:
        if failures and thread.name.startswith("vemetric-auth-argon2"):
            raise failures.pop()
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(StoreUnavailable):
        keys.authenticate(first.key)
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.extend(
            [keys.authenticate(first.key), keys.authenticate(second.key)]
        )
    )
    real_start(worker)
    worker.join(10)
    assert outcome == [first.record, second.record]
    keys.close()
