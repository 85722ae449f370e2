"""No plaintext key in the local variables of a traceback's frames.

Error reporters (Sentry, by default) record the ``repr`` of every local
variable of every frame of a traceback: those of the exceptions the library
raises, and those it logs with ``exc_info``. Each test below drives one way a
key can fail (a store that fails or hangs, a wrong secret, an unknown or
revoked key, a failing creation, argon2 itself failing), then walks every
frame of every such traceback, following ``__cause__`` and ``__context__``,
and looks for the key's secret in the repr of each local.

The frames of this module are left out: they are the caller's, which holds
the key it passes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from argon2 import profiles
from conftest import CountingHasher, FlakyStore
from werkzeug.test import Client

from vemetric_auth import (
    ApiKeyMiddleware,
    AuthError,
    InMemoryKeyStore,
    InvalidApiKey,
    InvalidApiKeyFormat,
    KeyManager,
    StoreUnavailable,
    generate_key,
)

# Cheap argon2 of other parameters than CountingHasher's: a hash made with
# them is rehashed on its first verification.
_OTHER_PARAMETERS = dataclasses.replace(profiles.CHEAPEST, time_cost=2)


class Watch(logging.Handler):
    """Keeps the exceptions of the log records that carry one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.logged: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.logged.append(record.exc_info[1])


@pytest.fixture
def watch() -> Iterator[Watch]:
    logger = logging.getLogger("vemetric_auth")
    handler = Watch()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]


def frames(error: BaseException) -> Iterator[FrameType]:
    for current in chain(error):
        tb = current.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next


def safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a half-built object; its repr is not the key
        return f"<repr failed: {type(exc).__name__}>"


class Evidence:
    """The errors raised by the calls of a test, and the keys to look for."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.raised: list[BaseException] = []
        self.keys: list[str] = []

    def raises(self, expected: type[BaseException], call: Callable[[], object]) -> None:
        with pytest.raises(expected) as info:
            call()
        self.raised.append(info.value)

    def assert_no_key_in_any_frame(self) -> None:
        errors = self.raised + self.watch.logged
        assert errors, "the test drove no error"
        secrets = [key[12:] for key in self.keys]
        leaks = []
        walked = 0
        for error in errors:
            for frame in frames(error):
                if frame.f_code.co_filename == __file__:
                    continue
                walked += 1
                for name, value in frame.f_locals.items():
                    text = safe_repr(value)
                    if any(secret in text for secret in secrets):
                        leaks.append(
                            f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
                            f" local {name!r} of {type(error).__name__}"
                        )
        assert walked, "no frame of the library was walked"
        assert leaks == []


@pytest.fixture
def evidence(watch: Watch) -> Evidence:
    return Evidence(watch)


class HangingStore(InMemoryKeyStore):
    """The methods named in ``hanging`` wait for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging: set[str] = set()
        self.release = threading.Event()

    def _wait(self, name: str) -> None:
        if name in self.hanging:
            self.release.wait(10)

    def add(self, record: Any, key_hash: str) -> None:
        self._wait("add")
        super().add(record, key_hash)

    def find_by_prefix(self, prefix: str) -> Any:
        self._wait("find_by_prefix")
        return super().find_by_prefix(prefix)

    def get(self, key_id: str) -> Any:
        self._wait("get")
        return super().get(key_id)


class FailingHasher(CountingHasher):
    """argon2 that fails (as on an allocation failure) once ``failing`` is set."""

    failing = False

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        if self.failing:
            raise MemoryError("argon2 could not allocate")
        return super().verify(hash, password)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        if self.failing:
            raise MemoryError("argon2 could not allocate")
        return super().hash(password, salt=salt)


def test_store_failures_on_first_use_and_on_recheck(
    evidence: Evidence, flaky_store: FlakyStore
) -> None:
    keys = KeyManager(flaky_store, hasher=CountingHasher(), cache_ttl=0.05)
    fresh = keys.create("p1", "first use")
    cached = keys.create("p1", "recheck")
    evidence.keys += [fresh.key, cached.key]
    keys.authenticate(cached.key)
    time.sleep(0.06)  # stale: its next use reads the record again
    flaky_store.failing = True
    evidence.raises(StoreUnavailable, lambda: keys.authenticate(fresh.key))
    evidence.raises(StoreUnavailable, lambda: keys.authenticate(cached.key))
    evidence.raises(StoreUnavailable, lambda: keys.revoke(fresh.record.id))
    evidence.raises(StoreUnavailable, lambda: keys.get(fresh.record.id))
    evidence.raises(StoreUnavailable, lambda: keys.list("p1"))
    assert len(evidence.watch.logged) == 5
    evidence.assert_no_key_in_any_frame()


def test_wrong_secrets_unknown_revoked_and_malformed_keys(
    evidence: Evidence, keys: KeyManager
) -> None:
    issued = keys.create("p1", "n")
    revoked = keys.create("p1", "revoked")
    keys.revoke(revoked.record.id)
    wrong = issued.key[:12] + generate_key()[12:]
    unknown = generate_key()
    evidence.keys += [issued.key, revoked.key, wrong, unknown]
    evidence.raises(InvalidApiKey, lambda: keys.authenticate(wrong))
    evidence.raises(InvalidApiKey, lambda: keys.authenticate(unknown))
    evidence.raises(InvalidApiKey, lambda: keys.authenticate(revoked.key))
    evidence.raises(InvalidApiKeyFormat, lambda: keys.authenticate(" " + issued.key))
    evidence.raises(InvalidApiKeyFormat, lambda: keys.authenticate(issued.key + "0"))
    evidence.assert_no_key_in_any_frame()


def test_a_failing_creation(
    evidence: Evidence, flaky_store: FlakyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = generate_key()
    evidence.keys.append(known)
    monkeypatch.setattr("vemetric_auth.manager.generate_key", lambda: known)
    keys = KeyManager(flaky_store, hasher=CountingHasher())
    flaky_store.failing = True
    evidence.raises(StoreUnavailable, lambda: keys.create("p1", "n"))
    assert evidence.watch.logged
    evidence.assert_no_key_in_any_frame()


def test_timeouts_of_a_hung_store(
    evidence: Evidence, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HangingStore()
    # outage_grace=0: the stale key fails too, rather than being served.
    keys = KeyManager(
        store, hasher=CountingHasher(), store_timeout=0.1, cache_ttl=0, outage_grace=0
    )
    issued = keys.create("p1", "n")
    cached = keys.create("p1", "cached")
    keys.authenticate(cached.key)
    known = generate_key()
    monkeypatch.setattr("vemetric_auth.manager.generate_key", lambda: known)
    evidence.keys += [issued.key, cached.key, known]
    store.hanging = {"add", "find_by_prefix", "get"}
    try:
        evidence.raises(StoreUnavailable, lambda: keys.authenticate(issued.key))
        evidence.raises(StoreUnavailable, lambda: keys.authenticate(cached.key))
        evidence.raises(StoreUnavailable, lambda: keys.create("p1", "hung"))
    finally:
        store.release.set()
    assert len(evidence.watch.logged) == 3
    evidence.assert_no_key_in_any_frame()


def test_argon2_failing_and_a_failing_rehash_write(
    evidence: Evidence, flaky_store: FlakyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = FailingHasher()
    keys = KeyManager(flaky_store, hasher=hasher)
    issued = keys.create("p1", "n")
    known = generate_key()
    monkeypatch.setattr("vemetric_auth.manager.generate_key", lambda: known)
    evidence.keys += [issued.key, known]
    hasher.failing = True
    evidence.raises(StoreUnavailable, lambda: keys.authenticate(issued.key))
    evidence.raises(StoreUnavailable, lambda: keys.create("p1", "m"))
    hasher.failing = False
    # A hash of other parameters is rehashed on success; its write fails.
    rehashing = KeyManager(flaky_store, hasher=CountingHasher(_OTHER_PARAMETERS))
    original_set_hash = flaky_store.set_hash

    def failing_set_hash(key_id: str, key_hash: str) -> None:
        raise OSError("the write failed")

    flaky_store.set_hash = failing_set_hash  # type: ignore[method-assign]
    try:
        assert rehashing.authenticate(issued.key) == issued.record
    finally:
        flaky_store.set_hash = original_set_hash  # type: ignore[method-assign]
    assert evidence.watch.logged  # the failed rehash write
    evidence.assert_no_key_in_any_frame()


def test_a_closed_manager(evidence: Evidence, keys: KeyManager) -> None:
    issued = keys.create("p1", "n")
    evidence.keys.append(issued.key)
    keys.authenticate(issued.key)
    keys.close()
    evidence.raises(StoreUnavailable, lambda: keys.authenticate(issued.key))
    evidence.raises(StoreUnavailable, lambda: keys.authenticate(generate_key()))
    evidence.assert_no_key_in_any_frame()


def test_requests_through_the_middleware(
    evidence: Evidence, flaky_store: FlakyStore
) -> None:
    """What the HTTP layer answers is not raised; what the manager logs is walked."""
    keys = KeyManager(flaky_store, hasher=CountingHasher())
    issued = keys.create("p1", "n")
    evidence.keys.append(issued.key)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [])
        return [b"ok"]

    client = Client(ApiKeyMiddleware(app, keys))
    headers = {"Authorization": f"Bearer {issued.key}"}
    flaky_store.failing = True
    assert client.get("/", headers=headers).status_code == 503
    flaky_store.failing = False
    assert client.get("/", headers=headers).status_code == 200
    assert evidence.watch.logged
    evidence.assert_no_key_in_any_frame()


def test_the_walk_finds_a_key_a_frame_holds(watch: Watch) -> None:
    """The check itself: a frame outside this module that holds a key is found."""
    key = generate_key()
    evidence = Evidence(watch)
    evidence.keys.append(key)

    def holder(plaintext: str) -> None:
        raise AuthError()

    holder.__code__ = holder.__code__.replace(co_filename="elsewhere.py")
    evidence.raises(AuthError, lambda: holder(key))
    with pytest.raises(AssertionError, match="plaintext"):
        evidence.assert_no_key_in_any_frame()
