"""Fixtures and helpers shared by the test modules.

The throwaway servers (``postgres_server``, ``postgres_url``) come from the
plugin in ``tests/servers/``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher, profiles
from servers import in_ci

from vemetric_auth import InMemoryKeyStore, KeyManager

pytest_plugins = ["servers.plugin"]

#: CI=true: tests needing something missing fail instead of skipping.
IN_CI = in_ci()


class CountingHasher(PasswordHasher):
    """The cheapest argon2 parameters, counting every hash and verification."""

    def __init__(self, parameters: Any = profiles.CHEAPEST) -> None:
        p = parameters
        super().__init__(
            time_cost=p.time_cost,
            memory_cost=p.memory_cost,
            parallelism=p.parallelism,
            hash_len=p.hash_len,
            salt_len=p.salt_len,
            type=p.type,
        )
        self.verifications = 0
        self.hashes = 0
        # argon2 runs on the manager's worker threads: count under a lock.
        self._count_lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._count_lock:
            self.verifications += 1
        return super().verify(hash, password)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self._count_lock:
            self.hashes += 1
        return super().hash(password, salt=salt)


#: Whether a test runs (its setup included): what it makes is recorded for
#: the teardown below; what is made at import, shared by a module, is not.
_in_a_test = False


def _recorded(cls: Any) -> weakref.WeakSet[Any]:
    """Record each instance of *cls* made while a test runs."""
    made: weakref.WeakSet[Any] = weakref.WeakSet()
    init = cls.__init__

    @functools.wraps(init)
    def recorded_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if _in_a_test:
            made.add(self)

    cls.__init__ = recorded_init
    return made


_MANAGERS = _recorded(KeyManager)
try:
    from vemetric_auth.stores.sql import SQLKeyStore
except ImportError:  # no SQLAlchemy: no SQL store to record
    _SQL_STORES: weakref.WeakSet[Any] = weakref.WeakSet()
else:
    _SQL_STORES = _recorded(SQLKeyStore)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _in_a_test
    _in_a_test = True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """A test's managers are closed before its fixtures are torn down, then
    its SQL stores (again, if the test closed them while a manager still
    read them): no background thread of a manager (change feed reader,
    last-use writer, store call) reaches a store after the test, and no
    connection it opened outlives the test. Last-use stamps not yet written
    are dropped first: tests of last use close their managers themselves."""
    from vemetric_auth import _last_use

    global _in_a_test
    _in_a_test = False
    for last_use in list(_last_use._OPEN):
        with last_use._lock:
            last_use._pending.clear()
    for manager in list(_MANAGERS):
        manager.close()
    _MANAGERS.clear()
    for store in list(_SQL_STORES):
        store.close()
    _SQL_STORES.clear()


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def memory_store() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture
def keys(memory_store: InMemoryKeyStore, hasher: CountingHasher) -> KeyManager:
    return KeyManager(memory_store, hasher=hasher)


class FlakyStore:
    """Wraps a store; while ``failing`` is set every call raises ``OSError``.

    ``calls`` counts the calls that reached it, by method name.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = False
        self.calls: dict[str, int] = {}

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.failing:
            raise OSError("key store is down")
        return getattr(self.inner, name)(*args, **kwargs)

    def add(self, record: Any, key_hash: str) -> None:
        self._call("add", record, key_hash)

    def get(self, key_id: str) -> Any:
        return self._call("get", key_id)

    def find_by_prefix(self, prefix: str) -> Any:
        return self._call("find_by_prefix", prefix)

    def list(self, project_id: str, *, include_revoked: bool = False) -> Any:
        return self._call("list", project_id, include_revoked=include_revoked)

    def revoke(self, key_id: str, *, revoked_at: Any, revoked_by: Any) -> Any:
        return self._call(
            "revoke", key_id, revoked_at=revoked_at, revoked_by=revoked_by
        )

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._call("set_hash", key_id, key_hash)


@pytest.fixture
def flaky_store(memory_store: InMemoryKeyStore) -> FlakyStore:
    return FlakyStore(memory_store)


@pytest.fixture
def flaky_keys(flaky_store: FlakyStore, hasher: CountingHasher) -> KeyManager:
    return KeyManager(flaky_store, hasher=hasher)


def run_threads(target: Callable[[int], object], count: int) -> list[BaseException]:
    """Run ``target(n)`` on *count* threads released at once; return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        try:
            barrier.wait()
            target(n)
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def assert_each_key_as_stored(keys: KeyManager, issued: list[Any]) -> None:
    """Every issued key authenticates exactly while its stored record is active."""
    from vemetric_auth import InvalidApiKey

    for item in issued:
        record = keys.get(item.record.id)
        if record.revoked:
            with pytest.raises(InvalidApiKey):
                keys.authenticate(item.key)
        else:
            assert keys.authenticate(item.key) == record
