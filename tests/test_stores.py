"""The in-memory store against the contract every store passes, and the contract
itself: capabilities, and stores written for the six-method protocol."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from vemetric_auth import (
    ApiKey,
    ChangeFeedKeyStore,
    InMemoryKeyStore,
    InvalidApiKey,
    KeyManager,
    KeyStore,
    RollingKeyStore,
    UsageRecordingKeyStore,
)
from vemetric_auth.testing import CAPABILITIES, KeyStoreContract, make_record


class TestInMemoryKeyStore(KeyStoreContract):
    @pytest.fixture
    def store(self) -> KeyStore:
        return InMemoryKeyStore()


class SixMethodStore:
    """A store written for the protocol of 0.1: the six methods, nothing more."""

    def __init__(self) -> None:
        self._inner = InMemoryKeyStore()

    def add(self, record: ApiKey, key_hash: str) -> None:
        self._inner.add(record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        return self._inner.get(key_id)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        return self._inner.find_by_prefix(prefix)

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        return self._inner.list(project_id, include_revoked=include_revoked)

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        return self._inner.revoke(key_id, revoked_at=revoked_at, revoked_by=revoked_by)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._inner.set_hash(key_id, key_hash)


class TestSixMethodStore(KeyStoreContract):
    """Passes the contract for what it implements; the rest skips."""

    @pytest.fixture
    def store(self) -> KeyStore:
        return SixMethodStore()


def test_the_shipped_memory_store_has_every_capability() -> None:
    store = InMemoryKeyStore()
    assert isinstance(store, KeyStore)
    assert isinstance(store, RollingKeyStore)
    assert isinstance(store, UsageRecordingKeyStore)
    assert isinstance(store, ChangeFeedKeyStore)
    assert set(CAPABILITIES) == {"roll", "record_use", "changes"}


def test_a_six_method_store_is_a_key_store_without_capabilities() -> None:
    store = SixMethodStore()
    assert isinstance(store, KeyStore)
    assert not isinstance(store, RollingKeyStore)
    assert not isinstance(store, UsageRecordingKeyStore)
    assert not isinstance(store, ChangeFeedKeyStore)


def test_a_six_method_store_works_for_what_it_did_before(hasher: Any) -> None:
    keys = KeyManager(SixMethodStore(), hasher=hasher)
    issued = keys.create("proj_1", "old store", created_by="alice")
    gone = keys.create("proj_1", "to revoke")
    assert keys.authenticate(issued.key) == issued.record
    assert {record.id for record in keys.list("proj_1")} == {
        issued.record.id,
        gone.record.id,
    }
    assert keys.get(issued.record.id) == issued.record
    revoked = keys.revoke(gone.record.id, revoked_by="bob")
    assert revoked.revoked_by == "bob"
    with pytest.raises(InvalidApiKey):
        keys.authenticate(gone.key)


def test_repr_shows_the_size_only() -> None:
    store = InMemoryKeyStore()
    store.add(make_record(), "$argon2id$secret-hash")
    assert repr(store) == "<InMemoryKeyStore keys=1>"


def test_contract_fails_for_a_broken_store(pytester: pytest.Pytester) -> None:
    """The contract suite does catch a store that breaks the contract."""
    pytester.makepyfile(
        """
        import pytest
        from vemetric_auth import InMemoryKeyStore
        from vemetric_auth.testing import KeyStoreContract

        class ForgetfulStore(InMemoryKeyStore):
            def list(self, project_id, *, include_revoked=False):
                return super().list(project_id, include_revoked=True)

        class TestForgetful(KeyStoreContract):
            @pytest.fixture
            def store(self):
                return ForgetfulStore()
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1
    assert outcomes["passed"] > 10
    result.stdout.fnmatch_lines(["FAILED *test_list_leaves_out_revoked_unless_asked*"])


_SIX_METHOD_STORE = """
from vemetric_auth import InMemoryKeyStore

class SixMethodStore:
    def __init__(self):
        self._inner = InMemoryKeyStore()

    def __getattr__(self, name):
        if name in ("add", "get", "find_by_prefix", "list", "revoke", "set_hash"):
            return getattr(self._inner, name)
        raise AttributeError(name)
"""


def test_a_six_method_store_passes_with_the_capability_tests_skipped(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        _SIX_METHOD_STORE
        + """
import pytest
from vemetric_auth.testing import KeyStoreContract

class TestSixMethods(KeyStoreContract):
    @pytest.fixture
    def store(self):
        return SixMethodStore()
"""
    )
    result = pytester.runpytest("-q", "-rs", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes
    assert "error" not in outcomes
    assert outcomes["passed"] > 15
    assert outcomes["skipped"] > 15
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * the store lacks the 'roll' capability (RollingKeyStore)",
            "SKIPPED * the store lacks the 'record_use' capability "
            "(UsageRecordingKeyStore)",
            "SKIPPED * the store lacks the 'changes' capability (ChangeFeedKeyStore)",
        ],
        consecutive=False,
    )


def test_declared_capabilities_decide_which_tests_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
import pytest
from vemetric_auth import InMemoryKeyStore
from vemetric_auth.testing import KeyStoreContract

class TestOnlyRolling(KeyStoreContract):
    capabilities = frozenset({"roll"})

    @pytest.fixture
    def store(self):
        return InMemoryKeyStore()
"""
    )
    result = pytester.runpytest("-q", "-rs", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes
    assert outcomes["skipped"] > 3
    result.stdout.fnmatch_lines(["SKIPPED * lacks the 'record_use' capability *"])
    result.stdout.no_fnmatch_line("SKIPPED * lacks the 'roll' capability *")


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        pytest.param(
            'frozenset({"roll"})',
            "*declares 'roll' but lacks the methods of RollingKeyStore*",
            id="missing",
        ),
        pytest.param(
            'frozenset({"rolling"})', "*unknown capabilities ?'rolling'?*", id="typo"
        ),
    ],
)
def test_a_store_lacking_a_declared_capability_fails(
    pytester: pytest.Pytester, declared: str, message: str
) -> None:
    pytester.makepyfile(
        _SIX_METHOD_STORE
        + f"""
import pytest
from vemetric_auth.testing import KeyStoreContract

class TestClaimsTooMuch(KeyStoreContract):
    capabilities = {declared}

    @pytest.fixture
    def store(self):
        return SixMethodStore()
"""
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= 1
    result.stdout.fnmatch_lines(
        [message, "FAILED *test_declared_capabilities_are_implemented*"],
        consecutive=False,
    )


def test_the_contract_catches_a_feed_that_misses_a_change(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import dataclasses
        import pytest
        from vemetric_auth import InMemoryKeyStore
        from vemetric_auth.testing import KeyStoreContract

        class LossyFeed(InMemoryKeyStore):
            def changes_since(self, cursor):
                changes = super().changes_since(cursor)
                return dataclasses.replace(changes, key_ids=changes.key_ids[1:])

        class TestLossyFeed(KeyStoreContract):
            @pytest.fixture
            def store(self):
                return LossyFeed()
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= 3
    result.stdout.fnmatch_lines(
        [
            "FAILED *test_a_revocation_is_read_once_after_the_cursor*",
            "FAILED *test_a_reader_polling_while_many_threads_revoke_misses_none*",
        ],
        consecutive=False,
    )


def test_a_feed_without_listen_is_not_the_capability(
    pytester: pytest.Pytester,
) -> None:
    # listen() is part of the protocol: a store that can not push returns None.
    pytester.makepyfile(
        _SIX_METHOD_STORE
        + """
import pytest
from vemetric_auth.testing import KeyStoreContract

class PollOnly(SixMethodStore):
    def changes_since(self, cursor):
        return self._inner.changes_since(cursor)

class TestPollOnly(KeyStoreContract):
    capabilities = frozenset({"changes"})

    @pytest.fixture
    def store(self):
        return PollOnly()
"""
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "*declares 'changes' but lacks the methods of ChangeFeedKeyStore*",
            "FAILED *test_declared_capabilities_are_implemented*",
        ],
        consecutive=False,
    )
