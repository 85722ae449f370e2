from __future__ import annotations

import dataclasses
import pickle
from datetime import datetime, timedelta, timezone

import pytest

from vemetric_auth import (
    ApiKey,
    AuthError,
    InvalidApiKey,
    InvalidApiKeyFormat,
    IssuedKey,
    KeyNotFound,
    MalformedAuthorizationHeader,
    MissingApiKey,
    StoreUnavailable,
    generate_key,
)

WHEN = datetime(2026, 11, 27, 6, 0, 0, 123456, tzinfo=timezone.utc)


def make(**changes: object) -> ApiKey:
    record = ApiKey(
        id="k1", project_id="p1", name="n", prefix="vem_abcdefgh...", created_at=WHEN
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_records_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make().name = "other"  # type: ignore[misc]


def test_revoked_follows_revoked_at() -> None:
    assert make().revoked is False
    assert make(revoked_at=WHEN).revoked is True


def test_to_dict_uses_field_names_and_iso_utc() -> None:
    record = make(created_by="alice", revoked_at=WHEN, revoked_by="bob")
    assert record.to_dict() == {
        "id": "k1",
        "project_id": "p1",
        "name": "n",
        "prefix": "vem_abcdefgh...",
        "created_at": "2026-11-27T06:00:00.123456+00:00",
        "created_by": "alice",
        "revoked_at": "2026-11-27T06:00:00.123456+00:00",
        "revoked_by": "bob",
        "expires_at": None,
        "last_used_at": None,
    }


def test_new_fields_come_last_and_default_to_none() -> None:
    names = [field.name for field in dataclasses.fields(ApiKey)]
    assert names[-2:] == ["expires_at", "last_used_at"]
    # A record built by position, as code written for 0.1 does, still works.
    record = ApiKey("k1", "p1", "n", "vem_abcdefgh...", WHEN, "a", None, None)
    assert (record.expires_at, record.last_used_at) == (None, None)


def test_to_dict_gives_expiry_and_last_use_in_iso_utc() -> None:
    record = make(
        expires_at=datetime(2027, 1, 1, tzinfo=timezone.utc),
        last_used_at=WHEN,
    )
    data = record.to_dict()
    assert data["expires_at"] == "2027-01-01T00:00:00+00:00"
    assert data["last_used_at"] == "2026-11-27T06:00:00.123456+00:00"


NOW = datetime.now(timezone.utc)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("changes", "expired", "active"),
    [
        pytest.param({}, False, True, id="no-expiry"),
        pytest.param({"expires_at": NOW + HOUR}, False, True, id="expires-later"),
        pytest.param({"expires_at": NOW - HOUR}, True, False, id="expired"),
        pytest.param({"revoked_at": WHEN}, False, False, id="revoked"),
        pytest.param(
            {"revoked_at": WHEN, "expires_at": NOW - HOUR},
            True,
            False,
            id="revoked-and-expired",
        ),
        pytest.param(
            {"revoked_at": WHEN, "expires_at": NOW + HOUR},
            False,
            False,
            id="revoked-before-expiry",
        ),
    ],
)
def test_expired_and_active_as_of_now(
    changes: dict[str, object], expired: bool, active: bool
) -> None:
    record = make(**changes)
    assert (record.expired, record.active) == (expired, active)


def test_a_key_is_expired_from_the_instant_it_expires() -> None:
    assert make(expires_at=datetime.now(timezone.utc)).expired is True
    assert make(expires_at=datetime.now(timezone.utc) + HOUR).expired is False


def test_last_use_does_not_change_activity() -> None:
    assert make(last_used_at=WHEN).active is True


def test_issued_key_hides_the_key_from_repr_and_str() -> None:
    key = generate_key()
    issued = IssuedKey(key=key, record=make())
    assert issued.key == key
    assert key not in repr(issued)
    assert key not in str(issued)
    assert key[4:] not in f"{issued!r} {issued}"


def test_issued_key_refuses_pickling() -> None:
    issued = IssuedKey(key=generate_key(), record=make())
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(issued)


@pytest.mark.parametrize(
    ("error", "status", "code", "message"),
    [
        pytest.param(
            MissingApiKey,
            401,
            "UNAUTHORIZED",
            "Missing API key. Use Authorization: Bearer <key>",
            id="missing",
        ),
        pytest.param(
            MalformedAuthorizationHeader,
            401,
            "UNAUTHORIZED",
            "Malformed Authorization header. Use Bearer <key>",
            id="malformed",
        ),
        pytest.param(
            InvalidApiKeyFormat,
            401,
            "UNAUTHORIZED",
            "Invalid API key format",
            id="format",
        ),
        pytest.param(
            InvalidApiKey, 401, "UNAUTHORIZED", "Invalid or revoked API key", id="key"
        ),
        pytest.param(
            StoreUnavailable,
            503,
            "SERVICE_UNAVAILABLE",
            "Authentication is temporarily unavailable",
            id="store",
        ),
    ],
)
def test_errors_carry_their_http_answer(
    error: type[AuthError], status: int, code: str, message: str
) -> None:
    raised = error()
    assert isinstance(raised, AuthError)
    assert (raised.status, raised.code, raised.message) == (status, code, message)
    assert str(raised) == message


def test_error_hierarchy() -> None:
    assert issubclass(InvalidApiKeyFormat, ValueError)
    assert issubclass(KeyNotFound, LookupError)
    assert not issubclass(KeyNotFound, AuthError)
