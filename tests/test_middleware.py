from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from conftest import CountingHasher, FlakyStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, TestResponse

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager, generate_key

MISSING = "Missing API key. Use Authorization: Bearer <key>"
MALFORMED = "Malformed Authorization header. Use Bearer <key>"
FORMAT = "Invalid API key format"
INVALID = "Invalid or revoked API key"

CHALLENGES = {
    MISSING: 'Bearer realm="vemetric"',
    MALFORMED: 'Bearer realm="vemetric", error="invalid_request"',
    FORMAT: 'Bearer realm="vemetric", error="invalid_token"',
    INVALID: 'Bearer realm="vemetric", error="invalid_token"',
}


class Recorder:
    """A WSGI app that remembers the environ of each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        self.calls.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]


@pytest.fixture
def downstream() -> Recorder:
    return Recorder()


@pytest.fixture
def issued(flaky_keys: KeyManager) -> Any:
    return flaky_keys.create("proj_1", "test key")


@pytest.fixture
def client(flaky_keys: KeyManager, downstream: Recorder) -> Client:
    return Client(ApiKeyMiddleware(downstream, flaky_keys, exempt_paths=["/health"]))


def assert_401(response: TestResponse, message: str) -> None:
    assert response.status_code == 401
    assert response.mimetype == "application/json"
    assert json.loads(response.data) == {
        "error": {"code": "UNAUTHORIZED", "message": message}
    }
    assert response.headers["WWW-Authenticate"] == CHALLENGES[message]


PREFLIGHT_HEADERS = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "GET",
}

KEY = "vem_" + "k" * 32  # stands for the issued key in the tables below

HEADER_CASES = [
    # case 1: missing
    pytest.param(None, MISSING, id="no-header"),
    pytest.param("", MISSING, id="empty"),
    pytest.param("   ", MISSING, id="spaces"),
    pytest.param("\t \t", MISSING, id="tabs"),
    # case 2: malformed
    pytest.param("Basic dXNlcjpwYXNz", MALFORMED, id="basic"),
    pytest.param("Bearer", MALFORMED, id="bearer-alone"),
    pytest.param("Bearer    ", MALFORMED, id="bearer-spaces"),
    pytest.param("bearer", MALFORMED, id="bearer-lower-alone"),
    pytest.param("Bearerx " + KEY, MALFORMED, id="longer-scheme"),
    pytest.param("Bear " + KEY, MALFORMED, id="shorter-scheme"),
    pytest.param("Token " + KEY, MALFORMED, id="token-scheme"),
    pytest.param(KEY, MALFORMED, id="key-without-scheme"),
    pytest.param("Bearer:" + KEY, MALFORMED, id="colon"),
    pytest.param("Bearer\x0b" + KEY, MALFORMED, id="vertical-tab"),
    # case 3: format
    pytest.param("Bearer abc", FORMAT, id="short-token"),
    pytest.param("Bearer vem_", FORMAT, id="marker-only"),
    pytest.param("Bearer " + KEY[:-1], FORMAT, id="35-chars"),
    pytest.param("Bearer " + KEY + "k", FORMAT, id="37-chars"),
    pytest.param("Bearer " + KEY.upper(), FORMAT, id="uppercase"),
    pytest.param("Bearer " + KEY + " extra", FORMAT, id="two-tokens"),
    pytest.param("Bearer " + KEY[:-1] + "_", FORMAT, id="underscore"),
    pytest.param("Bearer " + KEY[:-1] + "é", FORMAT, id="latin-1"),
    pytest.param("Bearer Bearer " + KEY, FORMAT, id="scheme-twice"),
    pytest.param("Bearer " + "a" * 1_000_000, FORMAT, id="one-megabyte"),
    # case 4: invalid
    pytest.param("Bearer vem_" + "0" * 32, INVALID, id="unknown-key"),
]


@pytest.mark.parametrize(("header", "message"), HEADER_CASES)
def test_every_row_of_the_contract(
    client: Client,
    downstream: Recorder,
    flaky_store: FlakyStore,
    hasher: CountingHasher,
    header: str | None,
    message: str,
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.get("/v1/project", headers=headers)
    assert_401(response, message)
    assert downstream.calls == []
    if message != INVALID:
        # Cases 1 to 3 touch neither the store nor the hasher.
        assert flaky_store.calls == {}
    assert hasher.verifications == 0


def mutate(key: str) -> str:
    return key[:12] + ("a" if key[12] != "a" else "b") + key[13:]


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda key: "Bearer " + mutate(key), id="wrong-secret"),
        pytest.param(lambda key: "Bearer " + key[:12] + "0" * 24, id="same-prefix"),
    ],
)
def test_wrong_secret_is_case_4(
    client: Client, issued: Any, make_header: Callable[[str], str]
) -> None:
    response = client.get("/", headers={"Authorization": make_header(issued.key)})
    assert_401(response, INVALID)


def test_revoked_key_is_case_4(
    client: Client, flaky_keys: KeyManager, issued: Any
) -> None:
    headers = {"Authorization": "Bearer " + issued.key}
    assert client.get("/", headers=headers).status_code == 200
    flaky_keys.revoke(issued.record.id)
    assert_401(client.get("/", headers=headers), INVALID)


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("Bearer {}", id="canonical"),
        pytest.param("bearer {}", id="lowercase-scheme"),
        pytest.param("BEARER {}", id="uppercase-scheme"),
        pytest.param("bEaReR {}", id="mixed-scheme"),
        pytest.param("  Bearer   {}  ", id="surrounding-spaces"),
        pytest.param("Bearer\t{}\t", id="tabs"),
    ],
)
def test_valid_key_reaches_the_app_with_its_project(
    client: Client, downstream: Recorder, issued: Any, template: str
) -> None:
    response = client.get(
        "/v1/project", headers={"Authorization": template.format(issued.key)}
    )
    assert response.status_code == 200
    assert response.data == b"hello"
    assert len(downstream.calls) == 1
    environ = downstream.calls[0]
    assert environ["vemetric_auth.api_key"] == issued.record
    assert environ["vemetric_auth.project_id"] == "proj_1"


def test_success_leaves_the_rest_of_the_environ_alone(
    flaky_keys: KeyManager, issued: Any
) -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/x",
        "HTTP_AUTHORIZATION": "Bearer " + issued.key,
        "custom": object(),
    }
    before = dict(environ)
    ApiKeyMiddleware(app, flaky_keys)(environ, lambda *a: None)
    assert {k: v for k, v in seen.items() if not k.startswith("vemetric_auth.")} == (
        before
    )
    assert set(seen) - set(before) == {
        "vemetric_auth.api_key",
        "vemetric_auth.project_id",
    }


def test_store_failure_is_503_with_retry_after(
    client: Client, downstream: Recorder, flaky_store: FlakyStore, issued: Any
) -> None:
    flaky_store.failing = True
    response = client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    assert json.loads(response.data) == {
        "error": {
            "code": "SERVICE_UNAVAILABLE",
            "message": "Authentication is temporarily unavailable",
        }
    }
    assert response.headers["Retry-After"] == "5"
    assert "WWW-Authenticate" not in response.headers
    assert downstream.calls == []


def test_store_failure_is_503_for_unknown_keys_too(
    client: Client, flaky_store: FlakyStore
) -> None:
    flaky_store.failing = True
    response = client.get("/", headers={"Authorization": "Bearer " + generate_key()})
    assert response.status_code == 503


def test_options_and_exempt_paths_pass_without_a_key(
    client: Client, downstream: Recorder, flaky_store: FlakyStore
) -> None:
    assert client.options("/v1/project", headers=PREFLIGHT_HEADERS).status_code == 200
    assert_401(client.options("/v1/project"), MISSING)  # not a preflight
    assert client.get("/health").status_code == 200
    assert client.get("/health/").status_code == 401  # exact paths only
    assert len(downstream.calls) == 2
    assert "vemetric_auth.project_id" not in downstream.calls[0]
    assert flaky_store.calls == {}


def test_options_can_be_protected(flaky_keys: KeyManager, downstream: Recorder) -> None:
    client = Client(ApiKeyMiddleware(downstream, flaky_keys, allow_options=False))
    assert_401(client.options("/"), MISSING)
    assert_401(client.options("/", headers=PREFLIGHT_HEADERS), MISSING)


def test_realm_is_configurable_and_quoted(
    flaky_keys: KeyManager, downstream: Recorder
) -> None:
    client = Client(ApiKeyMiddleware(downstream, flaky_keys, realm='my "api"'))
    assert client.get("/").headers["WWW-Authenticate"] == 'Bearer realm="my \\"api\\""'
    header = client.get("/", headers={"Authorization": "Basic x"}).headers
    assert header["WWW-Authenticate"] == (
        'Bearer realm="my \\"api\\"", error="invalid_request"'
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"realm": ""}, id="empty-realm"),
        pytest.param({"realm": "a\nb"}, id="newline-realm"),
        pytest.param({"exempt_paths": "/health"}, id="str-exempt-paths"),
        pytest.param({"retry_after": -1}, id="negative-retry"),
    ],
)
def test_bad_settings_are_refused(
    flaky_keys: KeyManager, downstream: Recorder, kwargs: dict[str, Any]
) -> None:
    with pytest.raises((ValueError, TypeError)):
        ApiKeyMiddleware(downstream, flaky_keys, **kwargs)


def test_head_gets_the_status_and_headers_without_a_body(client: Client) -> None:
    response = client.head("/")
    assert response.status_code == 401
    assert response.data == b""
    assert response.headers["WWW-Authenticate"] == CHALLENGES[MISSING]


def test_streaming_body_and_close_pass_through(
    flaky_keys: KeyManager, issued: Any
) -> None:
    events: list[str] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            events.append("iter")
            yield b"a"
            yield b"b"

        def close(self) -> None:
            events.append("close")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Body:
        start_response("200 OK", [("X-App", "1")])
        return Body()

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    response = client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert response.headers["X-App"] == "1"
    assert response.data == b"ab"
    response.close()
    assert events == ["iter", "close"]


def test_app_exceptions_propagate_untouched(
    flaky_keys: KeyManager, issued: Any
) -> None:
    class Boom(Exception):
        pass

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise Boom("from the app")

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    with pytest.raises(Boom, match="from the app"):
        client.get("/", headers={"Authorization": "Bearer " + issued.key})


def test_app_is_called_exactly_once(
    client: Client, downstream: Recorder, issued: Any
) -> None:
    client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert len(downstream.calls) == 1


# -- hostile input --------------------------------------------------------------

ANSWERS = {MISSING, MALFORMED, FORMAT, INVALID}
_store = InMemoryKeyStore()
_keys = KeyManager(_store, hasher=CountingHasher())
_issued = _keys.create("proj_h", "hypothesis")
_recorder = Recorder()
_client = Client(ApiKeyMiddleware(_recorder, _keys))

latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255))
near_miss = st.builds(
    lambda key, i, c: key[:i] + c + key[i + 1 :],
    st.just(_issued.key),
    st.integers(0, 35),
    st.sampled_from("aZ0_ -\t\x00é"),
)
schemes = st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "", "Bearer Bearer"])
headers = st.one_of(
    latin1,
    st.builds(
        lambda s, sp, t: s + sp + t, schemes, st.sampled_from([" ", "\t", "  "]), latin1
    ),
    st.builds(lambda s, t: s + " " + t, schemes, near_miss),
    st.builds(
        lambda pad1, pad2: pad1 + "Bearer " + _issued.key + pad2,
        st.text(" \t", max_size=3),
        st.text(" \t", max_size=3),
    ),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(headers)
def test_any_header_gets_a_documented_answer(header: str) -> None:
    environ_header = header.encode("latin-1").decode("latin-1")
    # WSGI servers hand the middleware the header value as they read it.
    before = len(_recorder.calls)
    response = _client.get(
        "/", environ_overrides={"HTTP_AUTHORIZATION": environ_header}
    )
    if response.status_code == 200:
        assert len(_recorder.calls) == before + 1
        assert _recorder.calls[-1]["vemetric_auth.project_id"] == "proj_h"
        assert environ_header.strip(" \t").split(None, 1)[1].strip(" \t") == _issued.key
        return
    assert response.status_code == 401
    body = json.loads(response.data)
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert body["error"]["message"] in ANSWERS
    assert response.headers["WWW-Authenticate"] == CHALLENGES[body["error"]["message"]]


@settings(max_examples=500)
@given(st.one_of(st.none(), st.text(), st.builds(lambda t: "Bearer " + t, st.text())))
def test_bearer_token_returns_a_key_or_raises_a_contract_error(
    header: str | None,
) -> None:
    from vemetric_auth import (
        InvalidApiKeyFormat,
        MalformedAuthorizationHeader,
        MissingApiKey,
        is_valid_format,
    )
    from vemetric_auth._http import bearer_token

    try:
        token = bearer_token(header)
    except (MissingApiKey, MalformedAuthorizationHeader, InvalidApiKeyFormat):
        return
    assert is_valid_format(token)
    assert header is not None
    assert token in header


# -- project loader ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("projects", "status"),
    [
        pytest.param({"proj_1": {"name": "Shop"}}, 200, id="project-exists"),
        pytest.param({}, 401, id="project-gone"),
    ],
)
def test_project_loader_puts_the_project_in_the_environ_or_refuses(
    flaky_keys: KeyManager,
    downstream: Recorder,
    issued: Any,
    projects: dict[str, Any],
    status: int,
) -> None:
    client = Client(
        ApiKeyMiddleware(downstream, flaky_keys, project_loader=projects.get)
    )
    response = client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert response.status_code == status
    if status == 401:
        assert_401(response, INVALID)
        assert downstream.calls == []
    else:
        assert downstream.calls[0]["vemetric_auth.project"] == {"name": "Shop"}
        assert downstream.calls[0]["vemetric_auth.project_id"] == "proj_1"


def test_project_loader_may_answer_503(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    from vemetric_auth import StoreUnavailable

    def loader(project_id: str) -> Any:
        raise StoreUnavailable()

    client = Client(ApiKeyMiddleware(downstream, flaky_keys, project_loader=loader))
    response = client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert response.status_code == 503
    assert downstream.calls == []


def test_without_a_loader_no_project_entry_is_added(
    client: Client, downstream: Recorder, issued: Any
) -> None:
    client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert "vemetric_auth.project" not in downstream.calls[0]


def test_the_apps_own_status_and_headers_pass_through(
    flaky_keys: KeyManager, issued: Any
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(
            "418 I'm a teapot", [("Content-Type", "text/x-tea"), ("X-Brew", "green")]
        )
        return [b"short and stout"]

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    response = client.get("/", headers={"Authorization": "Bearer " + issued.key})
    assert response.status == "418 I'm a teapot"
    assert response.headers["Content-Type"] == "text/x-tea"
    assert response.headers["X-Brew"] == "green"
    assert response.data == b"short and stout"
