"""Rate limits over HTTP (SPEC section 8): ApiKeyMiddleware and the Flask extension.

Each contract test runs against both integrations, through werkzeug's test
client, on ``memory://`` with the limiter's clock set by hand; the Redis
tests (two processes sharing counts, Redis killed and restarted under
traffic) run against the session's real ``redis-server``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from flask import Flask, abort, g, request
from servers.redis import RedisServer
from werkzeug.test import Client, TestResponse

from vemetric_auth import (
    ApiKey,
    ApiKeyMiddleware,
    KeyManager,
    SQLKeyStore,
)
from vemetric_auth.flask import VemetricAuth
from vemetric_auth.ratelimit import RateDecision, RateLimiter

# SPEC section 8, written out here rather than imported.
LIMIT = "X-RateLimit-Limit"
REMAINING = "X-RateLimit-Remaining"
RESET = "X-RateLimit-Reset"
RATE_HEADERS = (LIMIT, REMAINING, RESET)
TOO_MANY = {
    "error": {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "Rate limit exceeded. Try again shortly.",
    }
}
TOO_MANY_BYTES = json.dumps(TOO_MANY).encode()

# A moment 15.5 s into a minute (and into a day): 2026-01-01T00:00:15.5Z.
T0 = 1_767_225_600.0
NOW = T0 + 15.5
PREFLIGHT_HEADERS = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "GET",
}


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rate_headers(response: TestResponse) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers if k.startswith("X-RateLimit-")]


# -- the two integrations, behind one interface -------------------------------------


class Api:
    """An integration under test: its client, its limiter, and the requests
    its application (or view) got."""

    def __init__(
        self, client: Client, limiter: RateLimiter | None, calls: list[str]
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.calls = calls

    def get(
        self,
        key: str | None = None,
        path: str = "/v1/project",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        sent = dict(headers or {})
        if key is not None:
            sent.update(bearer(key))
        return self.client.open(path, method=method, headers=sent)


class MakeApi(Protocol):
    def __call__(
        self,
        keys: KeyManager,
        rate_limit: Any = ...,
        *,
        loader: Callable[[str], object] | None = None,
        clock: Clock | None = ...,
        **settings: Any,
    ) -> Api: ...


def wsgi_app(calls: list[str]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: ``/v1/project`` 200, ``/v1/created`` 201 with headers of
    its own, ``/v1/broken`` 500, ``/health`` (exempt) 200, else 404."""

    def app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        calls.append(path)
        if path == "/v1/created":
            start_response(
                "201 Created",
                [
                    ("Content-Type", "application/json"),
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                    ("X-App", "yes"),
                ],
            )
            return [b'{"created": true}']
        if path == "/v1/broken":
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")]
            )
            return [b"broken"]
        if path not in ("/v1/project", "/health"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


def make_wsgi(
    keys: KeyManager,
    rate_limit: Any = "3/minute",
    *,
    loader: Callable[[str], object] | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> Api:
    calls: list[str] = []
    middleware = ApiKeyMiddleware(
        wsgi_app(calls),
        keys,
        exempt_paths=["/health"],
        project_loader=loader,
        rate_limit=rate_limit,
        **{f"rate_limit_{name}": value for name, value in settings.items()},
    )
    limiter = middleware.gate.limiter
    if limiter is not None:
        limiter._clock = clock if clock is not None else Clock()
    return Api(Client(middleware), limiter, calls)


CONFIG_KEYS = {
    "storage": "VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI",
    "storage_options": "VEMETRIC_AUTH_RATE_LIMIT_STORAGE_OPTIONS",
    "by": "VEMETRIC_AUTH_RATE_LIMIT_BY",
    "strategy": "VEMETRIC_AUTH_RATE_LIMIT_STRATEGY",
}


def flask_app(
    keys: KeyManager,
    rate_limit: Any = "3/minute",
    loader: Callable[[str], object] | None = None,
    **settings: Any,
) -> tuple[Flask, VemetricAuth, list[str]]:
    """The Flask twin of :func:`wsgi_app`, with an ``abort(418)`` and an
    exception besides."""
    calls: list[str] = []
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_RATE_LIMIT"] = rate_limit
    for name, value in settings.items():
        app.config[CONFIG_KEYS[name]] = value
    auth = VemetricAuth(app, keys=keys)
    if loader is not None:
        auth.project_loader(loader)

    @app.before_request
    def record() -> None:
        calls.append(request.path)

    @app.get("/v1/project")
    def project() -> str:
        return "hello"

    @app.get("/v1/created")
    def created() -> Any:
        response = app.response_class(
            '{"created": true}', status=201, mimetype="application/json"
        )
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        response.headers["X-App"] = "yes"
        return response

    @app.get("/v1/broken")
    def broken() -> str:
        raise RuntimeError("the view failed")

    @app.get("/v1/teapot")
    def teapot() -> str:
        abort(418)

    @app.get("/health")
    @auth.exempt
    def health() -> str:
        return "ok"

    return app, auth, calls


def make_flask(
    keys: KeyManager,
    rate_limit: Any = "3/minute",
    *,
    loader: Callable[[str], object] | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> Api:
    app, _, calls = flask_app(keys, rate_limit, loader, **settings)
    limiter = app.extensions["vemetric_auth"].gate.limiter
    if limiter is not None:
        limiter._clock = clock if clock is not None else Clock()
    return Api(app.test_client(), limiter, calls)


@pytest.fixture(params=[make_wsgi, make_flask], ids=["wsgi", "flask"])
def make_api(request: pytest.FixtureRequest) -> MakeApi:
    maker: MakeApi = request.param
    return maker


@pytest.fixture
def key(keys: KeyManager) -> str:
    return keys.create("proj_1", "first").key


# -- the headers and the 429 --------------------------------------------------------


def test_the_headers_count_down_then_429(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    api = make_api(keys, "3/minute")
    responses = [api.get(key) for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    reset = str(int(T0) + 60)
    for response, remaining in zip(responses, ["2", "1", "0", "0", "0"], strict=True):
        assert rate_headers(response) == [
            (LIMIT, "3"),
            (REMAINING, remaining),
            (RESET, reset),
        ]
    assert api.calls == ["/v1/project"] * 3  # never called over the limit
    for refused in responses[3:]:
        assert json.loads(refused.data) == TOO_MANY
        assert refused.data == TOO_MANY_BYTES
        assert refused.headers["Retry-After"] == "45"  # ceil(60 - 15.5)
        assert refused.headers["Content-Type"] == "application/json"
        assert refused.headers["Cache-Control"] == "no-store"
        assert refused.headers["Content-Length"] == str(len(TOO_MANY_BYTES))
        assert "WWW-Authenticate" not in refused.headers


def test_retry_after_is_at_least_one_second(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    api = make_api(keys, "1/minute", clock=Clock(T0 + 59.999))
    assert api.get(key).status_code == 200
    refused = api.get(key)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"


def test_a_new_window_allows_again(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    clock = Clock()
    api = make_api(keys, "1/minute", clock=clock)
    assert [api.get(key).status_code for _ in range(2)] == [200, 429]
    clock.now = T0 + 60
    allowed = api.get(key)
    assert allowed.status_code == 200
    assert allowed.headers[RESET] == str(int(T0) + 120)


def test_head_over_the_limit_has_no_body(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    api = make_api(keys, "1/minute")
    assert api.get(key, method="HEAD").status_code == 200
    refused = api.get(key, method="HEAD")
    assert refused.status_code == 429
    assert refused.data == b""
    assert refused.headers["Retry-After"] == "45"
    assert [name for name, _ in rate_headers(refused)] == list(RATE_HEADERS)


def test_the_apps_answer_is_untouched_but_for_the_three_headers(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    limited = make_api(keys, "10/minute").get(key, "/v1/created")
    unlimited = make_api(keys, None).get(key, "/v1/created")
    assert limited.status == unlimited.status
    assert limited.status_code == 201
    assert limited.data == unlimited.data == b'{"created": true}'
    # The app's headers as they were, in their order, then the three.
    assert list(limited.headers) == [
        *unlimited.headers,
        (LIMIT, "10"),
        (REMAINING, "9"),
        (RESET, str(int(T0) + 60)),
    ]
    assert limited.headers.getlist("Set-Cookie") == unlimited.headers.getlist(
        "Set-Cookie"
    )
    assert rate_headers(unlimited) == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/v1/broken", 500, id="app-500"),
        pytest.param("/v1/nowhere", None, id="no-route"),
    ],
)
def test_the_apps_error_answers_carry_the_headers(
    make_api: MakeApi, keys: KeyManager, key: str, path: str, status: int | None
) -> None:
    api = make_api(keys, "5/minute")
    response = api.get(key, path)
    assert response.status_code == (status or response.status_code)
    assert response.status_code >= 400
    assert rate_headers(response) == [
        (LIMIT, "5"),
        (REMAINING, "4"),
        (RESET, str(int(T0) + 60)),
    ]


# -- what is counted, and what is not ------------------------------------------------


def test_refused_keys_are_never_counted(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    revoked = keys.create("proj_1", "revoked")
    keys.revoke(revoked.record.id)
    api = make_api(keys, "3/minute")
    refused = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer vem_short"},
        bearer("vem_" + "0" * 32),
        bearer(key[:-1] + ("a" if key[-1] != "a" else "b")),
        bearer(revoked.key),
    ]
    for _ in range(3):
        for headers in refused:
            response = api.get(headers=headers)
            assert response.status_code == 401
            assert rate_headers(response) == []
            assert "Retry-After" not in response.headers
    assert api.get(key).headers[REMAINING] == "2"


def test_a_project_the_loader_refuses_is_never_counted(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    projects: dict[str, object] = {}
    api = make_api(keys, "3/minute", loader=projects.get)
    for _ in range(5):
        assert api.get(key).status_code == 401
    projects["proj_1"] = {"id": "proj_1"}
    assert api.get(key).headers[REMAINING] == "2"


def test_the_loader_runs_before_the_limit(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    order: list[str] = []

    def loader(project_id: str) -> object:
        order.append("loader")
        return project_id

    def tier(record: ApiKey) -> str:
        order.append("limit")
        return "3/minute"

    api = make_api(keys, tier, loader=loader)
    assert api.get(key).status_code == 200
    assert order == ["loader", "limit"]


def test_exempt_paths_and_preflights_are_never_counted(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    api = make_api(keys, "3/minute")
    for _ in range(5):
        health = api.get(key, "/health")
        assert health.status_code == 200
        assert rate_headers(health) == []
        preflight = api.get(method="OPTIONS", headers=PREFLIGHT_HEADERS)
        assert preflight.status_code == 200
        assert rate_headers(preflight) == []
    assert api.get(key).headers[REMAINING] == "2"


def test_by_project_counts_every_key_of_the_project_together(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    second = keys.create("proj_1", "second").key
    other = keys.create("proj_2", "another project").key
    api = make_api(keys, "3/minute")
    assert [api.get(k).headers[REMAINING] for k in (key, second, key)] == [
        "2",
        "1",
        "0",
    ]
    assert api.get(second).status_code == 429
    assert api.get(other).headers[REMAINING] == "2"


def test_by_key_counts_each_key_on_its_own(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    second = keys.create("proj_1", "second").key
    api = make_api(keys, "2/minute", by="key")
    assert [api.get(key).status_code for _ in range(3)] == [200, 200, 429]
    assert api.get(second).headers[REMAINING] == "1"


def test_tiers_per_project_and_no_limit_for_some(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    pro = keys.create("proj_pro", "pro").key
    internal = keys.create("proj_internal", "internal").key
    tiers = {"proj_1": "1/minute", "proj_pro": "1000/hour"}

    def tier(record: ApiKey) -> str | None:
        return tiers.get(record.project_id)

    api = make_api(keys, tier)
    assert [api.get(key).status_code for _ in range(2)] == [200, 429]
    assert api.get(pro).headers[LIMIT] == "1000"
    for _ in range(5):
        unlimited = api.get(internal)
        assert unlimited.status_code == 200
        assert rate_headers(unlimited) == []


def test_no_limit_unless_configured(
    make_api: MakeApi, keys: KeyManager, key: str
) -> None:
    api = make_api(keys, None)
    assert api.limiter is None
    for _ in range(20):
        response = api.get(key)
        assert response.status_code == 200
        assert rate_headers(response) == []


def test_the_decision_is_in_the_environ(keys: KeyManager, key: str) -> None:
    seen: list[object] = []

    def app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        seen.append(environ.get("vemetric_auth.rate_limit"))
        start_response("200 OK", [])
        return [b""]

    Client(ApiKeyMiddleware(app, keys, rate_limit="5/minute")).get(
        "/", headers=bearer(key)
    )
    Client(ApiKeyMiddleware(app, keys)).get("/", headers=bearer(key))
    decision, unlimited = seen
    assert isinstance(decision, RateDecision)
    assert (decision.allowed, decision.limit, decision.remaining) == (True, 5, 4)
    assert unlimited is None


def test_an_apps_header_list_is_not_changed(keys: KeyManager, key: str) -> None:
    shared = [("Content-Type", "text/plain")]

    def app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        start_response("200 OK", shared)  # the same list every time
        return [b"ok"]

    client = Client(ApiKeyMiddleware(app, keys, rate_limit="5/minute"))
    for remaining in ("4", "3"):
        response = client.get("/", headers=bearer(key))
        assert response.headers[REMAINING] == remaining
        assert len(response.headers.getlist(REMAINING)) == 1
    assert shared == [("Content-Type", "text/plain")]


def test_an_app_that_starts_again_with_exc_info_gets_the_headers(
    keys: KeyManager, key: str
) -> None:
    def app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("failed before the body")
        except RuntimeError:
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain")],
                sys.exc_info(),
            )
        return [b"failed"]

    started: list[tuple[Any, ...]] = []

    def start_response(*args: Any) -> Callable[[bytes], object]:
        started.append(args)
        return lambda data: None

    middleware = ApiKeyMiddleware(app, keys, rate_limit="5/minute")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", **_auth_environ(key)}
    assert list(middleware(environ, start_response)) == [b"failed"]
    assert [args[0] for args in started] == ["200 OK", "500 Internal Server Error"]
    for args in started:
        names = [name for name, _ in args[1]]
        assert names == ["Content-Type", *RATE_HEADERS]
    assert len(started[0]) == 2  # no exc_info: none given
    exc_info = started[1][2]
    assert isinstance(exc_info[1], RuntimeError)


def _auth_environ(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


# -- Flask specifics -------------------------------------------------------------------


def test_flask_abort_and_405_carry_the_headers(keys: KeyManager, key: str) -> None:
    app, _, _ = flask_app(keys, "5/minute")
    client = app.test_client()
    teapot = client.get("/v1/teapot", headers=bearer(key))
    assert teapot.status_code == 418
    assert teapot.headers[REMAINING] == "4"
    wrong_method = client.post("/v1/project", headers=bearer(key))
    assert wrong_method.status_code == 405
    assert wrong_method.headers[REMAINING] == "3"


def test_flask_429_goes_through_the_apps_after_request_once(
    keys: KeyManager, key: str
) -> None:
    app, _, _ = flask_app(keys, "1/minute")
    seen: list[int] = []

    @app.after_request
    def stamp(response: Any) -> Any:
        seen.append(response.status_code)
        response.headers["X-Stamped"] = "yes"
        return response

    client = app.test_client()
    for status in (200, 429):
        response = client.get("/v1/project", headers=bearer(key))
        assert response.status_code == status
        assert response.headers["X-Stamped"] == "yes"
        for name in RATE_HEADERS:
            assert len(response.headers.getlist(name)) == 1
    assert seen == [200, 429]


def test_flask_tier_callable_sees_the_loaded_project(
    keys: KeyManager, key: str
) -> None:
    projects = {"proj_1": {"id": "proj_1", "plan": "free"}}
    plans = {"free": "1/minute", "pro": "100/minute"}

    def tier(record: ApiKey) -> str:
        return plans[g.project["plan"]]

    api = make_flask(keys, tier, loader=projects.get)
    assert [api.get(key).status_code for _ in range(2)] == [200, 429]
    projects["proj_1"]["plan"] = "pro"
    assert api.get(key).headers[LIMIT] == "100"


def test_flask_without_a_limit_registers_no_after_request(keys: KeyManager) -> None:
    app, _, _ = flask_app(keys, None)
    assert app.after_request_funcs.get(None, []) == []


# -- settings ---------------------------------------------------------------------------


BAD_SETTINGS = [
    pytest.param({"rate_limit": "lots"}, ValueError, "rate_limit", id="limit"),
    pytest.param({"rate_limit": "0/minute"}, ValueError, "rate_limit", id="zero"),
    pytest.param({"rate_limit": 100}, TypeError, "rate_limit", id="limit-int"),
    pytest.param({"by": "team"}, ValueError, "by", id="by"),
    pytest.param({"strategy": "leaky"}, ValueError, "strategy", id="strategy"),
    pytest.param({"storage": "ftp://host"}, ValueError, "storage", id="storage"),
    pytest.param({"storage": 6379}, TypeError, "storage", id="storage-int"),
    pytest.param(
        {"storage_options": [("a", 1)]}, TypeError, "storage_options", id="options"
    ),
]
PARAMETERS = {
    "rate_limit": "rate_limit",
    "storage": "rate_limit_storage",
    "storage_options": "rate_limit_storage_options",
    "by": "rate_limit_by",
    "strategy": "rate_limit_strategy",
}


@pytest.mark.parametrize(("settings", "error", "setting"), BAD_SETTINGS)
def test_bad_middleware_settings_name_the_parameter(
    keys: KeyManager, settings: dict[str, Any], error: type[Exception], setting: str
) -> None:
    kwargs = {PARAMETERS[name]: value for name, value in settings.items()}
    kwargs.setdefault("rate_limit", "100/minute")
    with pytest.raises(error, match=f"^{PARAMETERS[setting]}: "):
        ApiKeyMiddleware(wsgi_app([]), keys, **kwargs)


@pytest.mark.parametrize(("settings", "error", "setting"), BAD_SETTINGS)
def test_bad_flask_config_names_the_config_key(
    keys: KeyManager, settings: dict[str, Any], error: type[Exception], setting: str
) -> None:
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_RATE_LIMIT"] = settings.pop("rate_limit", "100/minute")
    for name, value in settings.items():
        app.config[CONFIG_KEYS[name]] = value
    key = (
        "VEMETRIC_AUTH_RATE_LIMIT" if setting == "rate_limit" else CONFIG_KEYS[setting]
    )
    with pytest.raises(error, match=f"^{key}: "):
        VemetricAuth(app, keys=keys)
    assert "vemetric_auth" not in app.extensions  # nothing half-registered


def test_flask_reads_the_config_once(keys: KeyManager, key: str) -> None:
    app, _, _ = flask_app(keys, "1/minute")
    app.config["VEMETRIC_AUTH_RATE_LIMIT"] = "100/minute"
    client = app.test_client()
    assert client.get("/v1/project", headers=bearer(key)).status_code == 200
    assert client.get("/v1/project", headers=bearer(key)).status_code == 429


def test_flask_storage_options_reach_the_storage(keys: KeyManager) -> None:
    app, _, _ = flask_app(
        keys,
        "1/minute",
        storage="redis://127.0.0.1:1/0",
        storage_options={"socket_timeout": 0.05},
    )
    limiter = app.extensions["vemetric_auth"].gate.limiter
    assert limiter._options["socket_timeout"] == 0.05


def test_a_missing_redis_client_names_the_setting_and_the_extra(
    keys: KeyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "redis" else real(name, *args),
    )
    hint = r"pip install 'vemetric-auth\[redis\]'"
    with pytest.raises(ImportError, match=f"^rate_limit_storage: .*{hint}"):
        ApiKeyMiddleware(
            wsgi_app([]), keys, rate_limit="1/second", rate_limit_storage="redis://h"
        )
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_RATE_LIMIT"] = "1/second"
    app.config["VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI"] = "redis://h"
    with pytest.raises(
        ImportError, match=f"^VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI: .*{hint}"
    ):
        VemetricAuth(app, keys=keys)


REFUSE_LIMITS = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "limits":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager

keys = KeyManager(InMemoryKeyStore())
ApiKeyMiddleware(lambda environ, start_response: [], keys)
print("no limit: fine")
ApiKeyMiddleware(lambda environ, start_response: [], keys, rate_limit="1/second")
"""


def test_limits_is_needed_only_with_a_limit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_LIMITS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == "no limit: fine\n"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), done.stderr
    assert "pip install 'vemetric-auth[ratelimit]'" in last


# -- a real Redis -----------------------------------------------------------------------

SHARE_SCRIPT = """
import sys
from werkzeug.test import Client
from vemetric_auth import ApiKeyMiddleware, KeyManager, SQLKeyStore

database_url, redis_url, now, count = sys.argv[1:]
key = sys.stdin.read().strip()
keys = KeyManager(SQLKeyStore(database_url, create_database=False))

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

middleware = ApiKeyMiddleware(
    app, keys, rate_limit="10/day", rate_limit_storage=redis_url
)
middleware.gate.limiter._clock = lambda: float(now)
client = Client(middleware)
for _ in range(int(count)):
    response = client.get("/", headers={"Authorization": "Bearer " + key})
    print(response.status_code, response.headers["X-RateLimit-Remaining"])
"""


@pytest.fixture
def sql_keys(tmp_path: Path, hasher: Any) -> Iterator[tuple[str, KeyManager]]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    keys = KeyManager(SQLKeyStore(url), hasher=hasher)
    yield url, keys
    keys.store.close()  # type: ignore[attr-defined]


@pytest.mark.redis
def test_two_processes_share_counts_through_redis(
    redis_url: str, sql_keys: tuple[str, KeyManager]
) -> None:
    database_url, keys = sql_keys
    first = keys.create("proj_1", "this process").key
    second = keys.create("proj_1", "the other process").key
    now = T0 + 100
    here = make_wsgi(keys, "10/day", storage=redis_url, clock=Clock(now))
    assert [here.get(first).headers[REMAINING] for _ in range(4)] == [
        "9",
        "8",
        "7",
        "6",
    ]
    done = subprocess.run(
        [sys.executable, "-c", SHARE_SCRIPT, database_url, redis_url, repr(now), "4"],
        input=second,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split("\n")[:-1] == ["200 5", "200 4", "200 3", "200 2"]
    assert second not in done.stdout + done.stderr
    answers = [here.get(first) for _ in range(3)]
    assert [(r.status_code, r.headers[REMAINING]) for r in answers] == [
        (200, "1"),
        (200, "0"),
        (429, "0"),
    ]


@pytest.mark.redis
def test_flask_and_the_middleware_share_one_redis(
    redis_url: str, keys: KeyManager, key: str
) -> None:
    clock = Clock(T0 + 100)
    wsgi = make_wsgi(keys, "4/day", storage=redis_url, clock=clock)
    flask = make_flask(keys, "4/day", storage=redis_url, clock=clock)
    statuses = [api.get(key).status_code for api in (wsgi, flask, wsgi, flask, wsgi)]
    assert statuses == [200, 200, 200, 200, 429]


def hammer(
    apis: list[Api], key: str, stop: threading.Event
) -> tuple[Callable[[int], None], list[tuple[int, float]]]:
    """A thread body sending requests until *stop*, and what they got."""
    outcomes: list[tuple[int, float]] = []

    def work(n: int) -> None:
        api = apis[n % len(apis)]
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = api.get(key).status_code
            except Exception:  # what the test must never see
                status = -1
            outcomes.append((status, time.monotonic() - started))
            time.sleep(0.001)

    return work, outcomes


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_under_traffic_then_restarted(
    redis_server: RedisServer,
    redis_url: str,
    keys: KeyManager,
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vemetric_auth")
    clock = Clock(T0 + 10)
    # Two middleware instances: two processes sharing one Redis.
    apis = [make_wsgi(keys, "50/day", storage=redis_url, clock=clock) for _ in "ab"]
    for api in apis:
        assert api.limiter is not None
        api.limiter._retry_interval = 0.3

    stop = threading.Event()
    work, outcomes = hammer(apis, key, stop)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    redis_server.kill()
    time.sleep(0.6)
    stop.set()
    for thread in threads:
        thread.join(10)
    statuses = {status for status, _ in outcomes}
    assert statuses == {200, 429}  # never a 500, never an error
    assert max(elapsed for _, elapsed in outcomes) < 1.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per process, not one per request

    # Still down: each process limits on its own, in memory.
    other = keys.create("proj_2", "while redis is down").key
    strict = make_wsgi(keys, "5/day", storage=redis_url, clock=clock)
    assert [strict.get(other).status_code for _ in range(7)] == [200] * 5 + [429] * 2

    # Back (empty): within the retry interval both count in Redis again.
    redis_server.start()
    time.sleep(0.4)
    for api in apis:
        api.get(key)  # the probe of each
    assert apis[0].get(key).headers[REMAINING] == "47"
    assert apis[1].get(key).headers[REMAINING] == "46"
    back = [
        r
        for r in caplog.records
        if r.levelno == logging.INFO and "answers again" in r.getMessage()
    ]
    assert len(back) == 2


@pytest.mark.redis
def test_a_frozen_redis_never_holds_a_request_for_long(
    redis_server: RedisServer, redis_url: str, keys: KeyManager, key: str
) -> None:
    api = make_wsgi(keys, "3/day", storage=redis_url, clock=Clock(T0 + 10))
    assert api.get(key).status_code == 200
    redis_server.freeze()
    try:
        started = time.monotonic()
        statuses = [api.get(key).status_code for _ in range(4)]
        assert time.monotonic() - started < 1.0  # one socket timeout, 0.2 s
    finally:
        redis_server.thaw()
    assert statuses == [200, 200, 200, 429]


# -- the example API and the demo -------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[tuple[Flask, Any]]:
    """The example API on a fresh SQLite file, its limiter's clock set."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import demo
        import flask_app
    finally:
        sys.path.remove(str(EXAMPLES))
    app = flask_app.create_app(
        {"VEMETRIC_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}"}
    )
    app.extensions["vemetric_auth"].gate.limiter._clock = Clock()
    yield app, demo
    flask_app.auth.keys_for(app).store.close()
    app.extensions["flask_app.projects"].engine.dispose()


def test_the_example_api_allows_100_requests_a_minute_per_project(
    example: tuple[Flask, Any],
) -> None:
    app, demo = example
    made = demo.setup(app)
    keys = app.extensions["vemetric_auth"].keys
    second = keys.create(made.project_id, "another key of the project").key
    client = app.test_client()
    answers = [
        client.get("/v1/project", headers=bearer(made.key if n % 2 else second))
        for n in range(101)
    ]
    assert [r.status_code for r in answers] == [200] * 100 + [429]
    assert answers[0].headers[LIMIT] == "100"
    assert [r.headers[REMAINING] for r in answers[:3]] == ["99", "98", "97"]
    assert answers[-1].json == TOO_MANY
    assert client.get("/health").status_code == 200  # exempt: never limited


@pytest.mark.slow
def test_the_demos_curl_loop_shows_the_count_down_and_the_429(
    example: tuple[Flask, Any],
) -> None:
    import shutil

    from werkzeug.serving import make_server

    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("the demo's loop needs curl and bash")
    app, demo = example
    made = demo.setup(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{server.server_port}"
        assert demo._limit_of(app) == 100
        comment, loop = demo.rate_limit_lines(made, base_url, 100)
        assert comment.startswith("# 100 requests a minute per project")
        assert loop.isprintable()  # printed for a terminal: no raw \r
        done = subprocess.run(
            ["bash", "-c", loop],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    lines = done.stdout.splitlines()
    assert len(lines) == 101
    reset = str(int(T0) + 60)
    assert lines[0] == (
        "HTTP/1.1 200 OK X-RateLimit-Limit: 100 X-RateLimit-Remaining: 99 "
        f"X-RateLimit-Reset: {reset}"
    )
    assert lines[99].startswith("HTTP/1.1 200 OK ")
    assert "X-RateLimit-Remaining: 0 " in lines[99]
    assert lines[100] == (
        "HTTP/1.1 429 Too Many Requests Retry-After: 45 X-RateLimit-Limit: 100 "
        f"X-RateLimit-Remaining: 0 X-RateLimit-Reset: {reset}"
    )
