from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from conftest import CountingHasher, FlakyStore
from contract import (
    CHALLENGES,
    FORMAT,
    HEADER_CASES,
    INVALID,
    MALFORMED,
    MISSING,
    PREFLIGHT_HEADERS,
    VALID_TEMPLATES,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, TestResponse

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager, generate_key


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


@pytest.mark.parametrize("template", VALID_TEMPLATES)
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


# -- OPTIONS: only CORS preflights pass without a key, and never with a body -----------

SECRET_BODY = b'{"project": {"id": "proj_1", "revenue": 1234567}}'


def json_app(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """A bare WSGI JSON API that answers every method, OPTIONS included."""
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(SECRET_BODY))),
            ("Access-Control-Allow-Origin", "https://app.example"),
            ("Access-Control-Allow-Headers", "Authorization"),
        ],
    )
    return [SECRET_BODY]


def test_a_preflight_gets_the_apps_status_and_headers_never_its_body(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    client = Client(ApiKeyMiddleware(json_app, flaky_keys))
    response = client.options("/v1/project", headers=PREFLIGHT_HEADERS)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization"
    assert response.headers["Content-Length"] == "0"
    assert response.data == b""
    assert flaky_store.calls == {}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-cors-headers"),
        pytest.param({"Origin": "https://app.example"}, id="origin-only"),
        pytest.param({"Access-Control-Request-Method": "GET"}, id="method-only"),
    ],
)
def test_any_other_options_request_needs_a_key(
    flaky_keys: KeyManager, issued: Any, headers: dict[str, str]
) -> None:
    client = Client(ApiKeyMiddleware(json_app, flaky_keys))
    response = client.options("/v1/project", headers=headers)
    assert_401(response, MISSING)
    assert SECRET_BODY not in response.data
    with_key = {"Authorization": "Bearer " + issued.key, **headers}
    assert client.options("/v1/project", headers=with_key).data == SECRET_BODY


def test_a_preflight_reads_no_more_of_the_body_and_closes_it(
    flaky_keys: KeyManager,
) -> None:
    """An app that calls start_response on its body's first step (a generator)
    is stepped once, then closed."""
    produced: list[int] = []
    closed: list[bool] = []

    def app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        try:
            start_response("204 No Content", [("Allow", "GET, OPTIONS")])
            produced.append(1)
            yield b"first"
            produced.append(2)
            yield b"second"
        finally:
            closed.append(True)

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    response = client.options("/", headers=PREFLIGHT_HEADERS)
    assert response.status == "204 No Content"
    assert response.headers["Allow"] == "GET, OPTIONS"
    assert "Content-Length" not in response.headers  # RFC 9110 8.6
    assert response.data == b""
    assert produced == [1]
    assert closed == [True]


def test_a_preflight_closes_a_body_with_a_close_method(flaky_keys: KeyManager) -> None:
    class Body:
        closed = False

        def __iter__(self) -> Iterator[bytes]:
            raise AssertionError("the body of a preflight is never read")

        def close(self) -> None:
            Body.closed = True

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    response = Client(ApiKeyMiddleware(app, flaky_keys)).options(
        "/", headers=PREFLIGHT_HEADERS
    )
    assert response.status_code == 200
    assert response.data == b""
    assert Body.closed


def test_the_apps_exception_on_a_preflight_propagates(flaky_keys: KeyManager) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        raise LookupError("the app's own")

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    with pytest.raises(LookupError, match="the app's own"):
        client.options("/", headers=PREFLIGHT_HEADERS)


def test_shared_data_middleware_serves_no_protected_file_on_options(
    flaky_keys: KeyManager, issued: Any, tmp_path: Any
) -> None:
    from werkzeug.middleware.shared_data import SharedDataMiddleware

    (tmp_path / "report.csv").write_bytes(b"customer,revenue\nacme,1234567\n")

    def not_found(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        start_response("404 Not Found", [])
        return [b""]

    files = SharedDataMiddleware(not_found, {"/files": str(tmp_path)})
    client = Client(ApiKeyMiddleware(files, flaky_keys))
    for headers in ({}, {"Origin": "https://evil.example"}):
        response = client.options("/files/report.csv", headers=headers)
        assert_401(response, MISSING)
        assert b"acme" not in response.data
    response = client.options("/files/report.csv", headers=PREFLIGHT_HEADERS)
    assert b"acme" not in response.data
    assert response.headers["Content-Length"] == "0"
    response.close()
    response = client.get(
        "/files/report.csv", headers={"Authorization": "Bearer " + issued.key}
    )
    assert b"acme" in response.data
    response.close()


# -- a header that is not a str -------------------------------------------------------


def call_with_environ(app: Any, **entries: Any) -> tuple[str, dict[str, str], bytes]:
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path="/v1/project").get_environ()
    environ.update(entries)
    seen: list[Any] = []

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        seen.extend([status, dict(headers)])

    body = b"".join(app(environ, start_response))
    return seen[0], seen[1], body


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("bytes", id="bytes"),
        pytest.param(12345, id="int"),
        pytest.param(["Bearer"], id="list"),
    ],
)
def test_a_non_str_authorization_in_the_environ_is_a_malformed_header(
    flaky_keys: KeyManager,
    flaky_store: FlakyStore,
    downstream: Recorder,
    issued: Any,
    value: Any,
) -> None:
    """A buggy middleware upstream put something else than a str there: the
    documented answer is case 2, never a 500."""
    if value == "bytes":
        value = ("Bearer " + issued.key).encode()  # a valid key, yet not read
    calls_before = dict(flaky_store.calls)
    app = ApiKeyMiddleware(downstream, flaky_keys)
    status, headers, body = call_with_environ(app, HTTP_AUTHORIZATION=value)
    assert status == "401 Unauthorized"
    assert json.loads(body) == {"error": {"code": "UNAUTHORIZED", "message": MALFORMED}}
    assert headers["WWW-Authenticate"] == CHALLENGES[MALFORMED]
    assert downstream.calls == []
    assert flaky_store.calls == calls_before


@pytest.mark.parametrize("value", [b"Bearer x", 0, 1.5, object()])
def test_bearer_token_answers_a_non_str_as_malformed(value: object) -> None:
    from vemetric_auth import MalformedAuthorizationHeader
    from vemetric_auth._http import bearer_token

    with pytest.raises(MalformedAuthorizationHeader):
        bearer_token(value)


# -- the request gate -----------------------------------------------------------------


def test_the_environ_keys_live_with_the_gate_and_the_middleware_re_exports_them() -> (
    None
):
    from vemetric_auth import _http, middleware

    for name, value in [
        ("API_KEY_ENVIRON_KEY", "vemetric_auth.api_key"),
        ("PROJECT_ID_ENVIRON_KEY", "vemetric_auth.project_id"),
        ("PROJECT_ENVIRON_KEY", "vemetric_auth.project"),
    ]:
        assert getattr(_http, name) == value
        assert getattr(middleware, name) is getattr(_http, name)
        assert name in middleware.__all__


def test_the_gate_returns_the_key_and_project_and_fills_the_environ(
    flaky_keys: KeyManager, issued: Any
) -> None:
    from vemetric_auth import InvalidApiKey
    from vemetric_auth._http import RequestGate

    gate = RequestGate(
        flaky_keys, realm="r", retry_after=1, exempt_paths=(), allow_options=True
    )
    environ = {"HTTP_AUTHORIZATION": "Bearer " + issued.key}
    assert gate.authenticate(environ) == (issued.record, "proj_1")
    assert environ["vemetric_auth.api_key"] == issued.record
    assert environ["vemetric_auth.project_id"] == "proj_1"
    assert "vemetric_auth.project" not in environ
    environ = {"HTTP_AUTHORIZATION": "Bearer " + issued.key}
    project = {"name": "Shop"}
    assert gate.authenticate(environ, {"proj_1": project}.get) == (
        issued.record,
        project,
    )
    assert environ["vemetric_auth.project"] is project
    environ = {"HTTP_AUTHORIZATION": "Bearer " + issued.key}
    with pytest.raises(InvalidApiKey):
        gate.authenticate(environ, {}.get)
    assert set(environ) == {"HTTP_AUTHORIZATION"}  # left as it was


def test_a_preflight_answers_only_the_apps_cors_headers(flaky_keys: KeyManager) -> None:
    """Validators, sizes and the app's own data headers would tell a client
    without a key about a protected resource: only CORS headers go back."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response(
            "200 OK",
            [
                ("Access-Control-Allow-Origin", "https://app.example"),
                ("access-control-allow-methods", "GET"),
                ("Vary", "Origin"),
                ("Allow", "GET, OPTIONS"),
                ("ETag", '"report-30-1700000000"'),
                ("Last-Modified", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("X-Total-Count", "48213"),
                ("Link", '</v1/items?page=2>; rel="next"'),
                ("Content-Type", "application/json"),
                ("Set-Cookie", "session=abc"),
            ],
        )
        return [SECRET_BODY]

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    response = client.options("/v1/items", headers=PREFLIGHT_HEADERS)
    assert response.status_code == 200
    assert sorted(name.lower() for name, _ in response.headers.items()) == [
        "access-control-allow-methods",
        "access-control-allow-origin",
        "allow",
        "content-length",
        "content-type",
        "vary",
    ]
    assert response.headers["Content-Length"] == "0"
    assert response.data == b""


def test_a_preflight_steps_over_empty_chunks_before_the_answer_starts(
    flaky_keys: KeyManager,
) -> None:
    """A generator that yields b"" before calling start_response (as PEP 3333
    lets servers expect) still gets its status and headers answered."""

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        yield b""
        yield b""
        start_response("204 No Content", [("Access-Control-Allow-Origin", "*")])
        yield SECRET_BODY

    client = Client(ApiKeyMiddleware(app, flaky_keys))
    response = client.options("/v1/items", headers=PREFLIGHT_HEADERS)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.data == b""
