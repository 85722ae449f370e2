"""The in-memory store against the contract every store passes."""

from __future__ import annotations

import pytest

from vemetric_auth import InMemoryKeyStore, KeyStore
from vemetric_auth.testing import KeyStoreContract, make_record


class TestInMemoryKeyStore(KeyStoreContract):
    @pytest.fixture
    def store(self) -> KeyStore:
        return InMemoryKeyStore()


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
