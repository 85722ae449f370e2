"""Rate limits over HTTP (SPEC section 8): the WSGI middleware, the Flask
extension, the ASGI middleware and the FastAPI dependencies.

Each contract test runs against the four integrations (WSGI and Flask
through werkzeug's test client, ASGI and FastAPI through httpx's ASGI
transport), on ``memory://`` with the limiter's clock set by hand; the Redis
tests (processes and integrations sharing counts, Redis killed, frozen and
restarted under traffic) run against the session's real ``redis-server``,
and the ASGI middleware and FastAPI run under uvicorn too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from conftest import CountingHasher
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi import Request as FastAPIRequest
from fastapi import Response as FastAPIResponse
from fastapi.responses import PlainTextResponse
from flask import Flask, abort, g, request
from servers.redis import RedisServer
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from uvicorn_server import uvicorn_serving
from werkzeug.datastructures import Headers
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.test import Client, TestResponse

from vemetric_auth import (
    ApiKey,
    ApiKeyMiddleware,
    KeyManager,
    SQLKeyStore,
)
from vemetric_auth._http import RATE_LIMITED
from vemetric_auth.asgi import ApiKeyMiddleware as AsgiApiKeyMiddleware
from vemetric_auth.fastapi import (
    ApiKeyBearer,
    ProjectBearer,
    RateLimitExceeded,
    RequestRefused,
    add_exception_handlers,
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


def rate_headers(response: TestResponse | Reply) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers if k.startswith("X-RateLimit-")]


# -- the four integrations, behind one interface ------------------------------------


@dataclass
class Reply:
    """An ASGI answer, read as the tests read a werkzeug ``TestResponse``."""

    status_code: int
    status: str
    headers: Headers
    data: bytes


# ASGI sends header names in lowercase (its specification requires it), and
# HTTP compares them without case: the three of SPEC section 8 are spelled
# here as the SPEC spells them, so that one table reads every integration.
_SPEC_NAMES = {name.lower(): name for name in RATE_HEADERS}


class AsgiClient:
    """``open()`` as werkzeug's test client has it, through httpx's ASGI
    transport: one event loop per request, as a test client makes."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def open(self, path: str, *, method: str, headers: dict[str, str]) -> Reply:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as client:
                return await client.request(method, path, headers=headers)

        response = asyncio.run(go())
        return Reply(
            response.status_code,
            f"{response.status_code} {HTTP_STATUS_CODES[response.status_code]}",
            Headers(
                [
                    (_SPEC_NAMES.get(name, name), value)
                    for name, value in response.headers.multi_items()
                ]
            ),
            response.content,
        )


class Api:
    """An integration under test: its client, its limiter, and the requests
    its application (or view) got."""

    def __init__(
        self,
        client: Client | AsgiClient,
        limiter: RateLimiter | None,
        calls: list[str],
        kind: str = "",
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.calls = calls
        self.kind = kind

    def get(
        self,
        key: str | None = None,
        path: str = "/v1/project",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> Any:
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
    return Api(Client(middleware), limiter, calls, "wsgi")


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
    return Api(app.test_client(), limiter, calls, "flask")


def asgi_app(calls: list[str]) -> Callable[..., Any]:
    """The ASGI twin of :func:`wsgi_app`, the same answers as messages."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        calls.append(path)
        status, headers, body = 200, [(b"content-type", b"text/plain")], b"hello"
        if path == "/v1/created":
            status, body = 201, b'{"created": true}'
            headers = [
                (b"content-type", b"application/json"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
                (b"x-app", b"yes"),
            ]
        elif path == "/v1/broken":
            status, body = 500, b"broken"
        elif path not in ("/v1/project", "/health"):
            status, body = 404, b"not found"
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": body})

    return app


def make_asgi(
    keys: KeyManager,
    rate_limit: Any = "3/minute",
    *,
    loader: Callable[[str], object] | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> Api:
    calls: list[str] = []
    middleware = AsgiApiKeyMiddleware(
        asgi_app(calls),
        keys,
        exempt_paths=["/health"],
        project_loader=loader,
        rate_limit=rate_limit,
        **{f"rate_limit_{name}": value for name, value in settings.items()},
    )
    limiter = middleware.gate.limiter
    if limiter is not None:
        limiter._clock = clock if clock is not None else Clock()
    return Api(AsgiClient(middleware), limiter, calls, "asgi")


class JSONText(FastAPIResponse):
    """A view's ``str``, sent as it is, as JSON."""

    media_type = "application/json"


def fastapi_app(
    keys: KeyManager,
    rate_limit: Any = "3/minute",
    loader: Callable[[str], object] | None = None,
    **settings: Any,
) -> tuple[FastAPI, ApiKeyBearer, list[str]]:
    """The FastAPI twin of :func:`wsgi_app`: the dependency on every route
    of a router, ``/health`` outside it, and a CORS middleware that answers
    preflights.

    The views return values, not responses: FastAPI puts a dependency's
    headers on the response it makes of a value (the ``Response``
    parameter), never on a response a view makes itself.
    """
    calls: list[str] = []
    auth = ApiKeyBearer(
        keys,
        project_loader=loader,
        rate_limit=rate_limit,
        **{f"rate_limit_{name}": value for name, value in settings.items()},
    )
    app = FastAPI(
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=["https://app.example"],
                allow_methods=["GET"],
            )
        ]
    )
    add_exception_handlers(app)
    router = APIRouter(dependencies=[Depends(auth)])

    @router.api_route(
        "/v1/project", methods=["GET", "HEAD"], response_class=PlainTextResponse
    )
    async def project(request: FastAPIRequest) -> str:
        calls.append(request.url.path)
        return "hello"

    @router.get("/v1/created", status_code=201, response_class=JSONText)
    async def created(request: FastAPIRequest, response: FastAPIResponse) -> str:
        calls.append(request.url.path)
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        response.headers["X-App"] = "yes"
        return '{"created": true}'

    @router.get("/v1/broken", response_class=PlainTextResponse)
    async def broken(request: FastAPIRequest, response: FastAPIResponse) -> str:
        calls.append(request.url.path)
        response.status_code = 500
        return "broken"

    @app.get("/health", response_class=PlainTextResponse)
    async def health(request: FastAPIRequest) -> str:
        calls.append(request.url.path)
        return "ok"

    app.include_router(router)
    return app, auth, calls


def make_fastapi(
    keys: KeyManager,
    rate_limit: Any = "3/minute",
    *,
    loader: Callable[[str], object] | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> Api:
    app, auth, calls = fastapi_app(keys, rate_limit, loader, **settings)
    limiter = auth.gate.limiter
    if limiter is not None:
        limiter._clock = clock if clock is not None else Clock()
    return Api(AsgiClient(app), limiter, calls, "fastapi")


MAKERS = [make_wsgi, make_flask, make_asgi, make_fastapi]
KINDS = ["wsgi", "flask", "asgi", "fastapi"]


@pytest.fixture(params=MAKERS, ids=KINDS)
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
    api = make_api(keys, "10/minute")
    limited = api.get(key, "/v1/created")
    unlimited = make_api(keys, None).get(key, "/v1/created")
    assert limited.status == unlimited.status
    assert limited.status_code == 201
    assert limited.data == unlimited.data == b'{"created": true}'
    three = [(LIMIT, "10"), (REMAINING, "9"), (RESET, str(int(T0) + 60))]
    if api.kind == "fastapi":
        # FastAPI puts the headers of the dependencies (ours, then the
        # view's own Response parameter's) after those of the response it
        # makes: the three come before the view's cookies.
        assert rate_headers(limited) == three
        assert [h for h in limited.headers if h not in three] == list(unlimited.headers)
    else:
        # The app's headers as they were, in their order, then the three.
        assert list(limited.headers) == [*unlimited.headers, *three]
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
    if api.kind == "fastapi" and status is None:
        # No route, no dependency: FastAPI's 404, neither checked nor counted.
        assert response.status_code == 404
        assert rate_headers(response) == []
        assert api.get(key).headers[REMAINING] == "4"
        return
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


def test_the_429_is_the_same_on_every_integration(keys: KeyManager, key: str) -> None:
    """Status, body and headers (names compared without case, as HTTP
    does): the WSGI middleware's answer, byte for byte."""
    refused = {}
    for kind, make in zip(KINDS, MAKERS, strict=True):
        api = make(keys, "1/minute")
        assert api.get(key).status_code == 200
        refused[kind] = api.get(key)

    def seen(response: Any) -> tuple[str, bytes, list[tuple[str, str]]]:
        # But Vary, which the CORS middleware of the FastAPI app adds to
        # every answer.
        headers = sorted(
            (name.lower(), value)
            for name, value in response.headers
            if name.lower() != "vary"
        )
        return response.status, response.data, headers

    expected = seen(refused["wsgi"])
    assert expected[0] == "429 Too Many Requests"
    for kind, response in refused.items():
        assert seen(response) == expected, kind


# -- ASGI specifics --------------------------------------------------------------------


Scope = dict[str, Any]
Message = dict[str, Any]


async def drive(
    app: Any, scope: Scope, incoming: list[Message] | None = None
) -> list[Message]:
    """Call *app* once; return the messages it sent."""
    sent: list[Message] = []
    queue = list(incoming or [{"type": "http.request", "body": b""}])

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


def http_scope(key: str | None, path: str = "/v1/project", **more: Any) -> Scope:
    headers = [] if key is None else [(b"authorization", f"Bearer {key}".encode())]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    scope.update(more)
    return scope


def websocket_scope(key: str | None, *, denial: bool, path: str = "/ws") -> Scope:
    scope = http_scope(key, path, type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    if denial:
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


def asgi_bytes(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in decision.headers]


def test_the_decision_is_in_the_scope(keys: KeyManager, key: str) -> None:
    calls: list[str] = []
    limited = AsgiApiKeyMiddleware(asgi_app(calls), keys, rate_limit="5/minute")
    scope = http_scope(key)
    messages = asyncio.run(drive(limited, scope))
    decision = scope["vemetric_auth.rate_limit"]
    assert isinstance(decision, RateDecision)
    assert (decision.allowed, decision.limit, decision.remaining) == (True, 5, 4)
    assert messages[0]["headers"][-3:] == asgi_bytes(decision)
    unlimited = http_scope(key)
    asyncio.run(drive(AsgiApiKeyMiddleware(asgi_app(calls), keys), unlimited))
    assert "vemetric_auth.rate_limit" not in unlimited


START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}


def test_an_asgi_apps_message_is_not_changed(keys: KeyManager, key: str) -> None:
    """An app may send the same message every time: the headers go in a copy."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"ok"})

    limited = AsgiApiKeyMiddleware(app, keys, rate_limit="5/minute")
    for remaining in (b"4", b"3"):
        start = asyncio.run(drive(limited, http_scope(key)))[0]
        assert start["headers"][0] == (b"content-type", b"text/plain")
        assert [value for name, value in start["headers"][1:]][1] == remaining
        assert len(start["headers"]) == 4
    assert START["headers"] == [(b"content-type", b"text/plain")]


def test_the_body_goes_through_at_once_never_buffered(
    keys: KeyManager, key: str
) -> None:
    """Each message reaches the server when the app sends it: the app sees
    its first chunk sent before it sends the next one."""
    sent: list[Message] = []
    seen_by_app: list[int] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen_by_app.append(len(sent))
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        seen_by_app.append(len(sent))
        await send({"type": "http.response.body", "body": b"two"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    limited = AsgiApiKeyMiddleware(app, keys, rate_limit="5/minute")
    asyncio.run(limited(http_scope(key), receive, send))
    assert seen_by_app == [1, 2]
    assert [m.get("body") for m in sent] == [None, b"one", b"two"]
    assert sent[1]["more_body"] is True


def test_lifespan_passes_through_and_is_never_counted(
    keys: KeyManager, key: str
) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    limited = AsgiApiKeyMiddleware(app, keys, rate_limit="1/minute")
    for _ in range(3):
        asyncio.run(
            limited({"type": "lifespan", "asgi": {"version": "3.0"}}, None, None)
        )  # type: ignore[arg-type]
    assert seen == ["lifespan"] * 3
    scope = http_scope(key)
    asyncio.run(drive(limited, scope))
    assert scope["vemetric_auth.rate_limit"].remaining == 0  # the first count


async def websocket_app(scope: Scope, receive: Any, send: Any) -> None:
    """Accepts with a header of its own, says hello and closes."""
    await receive()
    await send({"type": "websocket.accept", "headers": [(b"x-app", b"yes")]})
    await send({"type": "websocket.send", "text": "hello"})
    await send({"type": "websocket.close", "code": 1000})


CONNECT = [{"type": "websocket.connect"}]


def test_a_websocket_handshake_is_one_request_its_accept_carries_the_headers(
    keys: KeyManager, key: str
) -> None:
    limited = AsgiApiKeyMiddleware(websocket_app, keys, rate_limit="2/minute")
    limited.gate.limiter._clock = Clock()  # type: ignore[union-attr]
    for remaining in (b"1", b"0"):
        scope = websocket_scope(key, denial=True)
        accept, hello, close = asyncio.run(drive(limited, scope, CONNECT))
        assert accept == {
            "type": "websocket.accept",
            "headers": [
                (b"x-app", b"yes"),
                (b"x-ratelimit-limit", b"2"),
                (b"x-ratelimit-remaining", remaining),
                (b"x-ratelimit-reset", str(int(T0) + 60).encode()),
            ],
        }
        assert (hello["text"], close["type"]) == ("hello", "websocket.close")


def test_a_websocket_over_the_limit_is_denied_with_the_429_before_accept(
    keys: KeyManager, key: str
) -> None:
    limited = AsgiApiKeyMiddleware(websocket_app, keys, rate_limit="1/minute")
    limited.gate.limiter._clock = Clock()  # type: ignore[union-attr]
    asyncio.run(drive(limited, websocket_scope(key, denial=True), CONNECT))
    scope = websocket_scope(key, denial=True)
    start, body = asyncio.run(drive(limited, scope, CONNECT))
    decision = scope["vemetric_auth.rate_limit"]
    assert start == {
        "type": "websocket.http.response.start",
        "status": 429,
        "headers": RATE_LIMITED.asgi_headers_for(decision),
    }
    assert body == {"type": "websocket.http.response.body", "body": TOO_MANY_BYTES}
    assert dict(start["headers"])[b"retry-after"] == b"45"
    # Without the denial response: closed, "try again later".
    closed = asyncio.run(drive(limited, websocket_scope(key, denial=False), CONNECT))
    assert closed == [{"type": "websocket.close", "code": 1013}]


def test_an_exempt_websocket_is_never_counted(keys: KeyManager, key: str) -> None:
    limited = AsgiApiKeyMiddleware(
        websocket_app, keys, rate_limit="1/minute", exempt_paths=["/ws"]
    )
    for _ in range(3):
        accept = asyncio.run(
            drive(limited, websocket_scope(None, denial=True), CONNECT)
        )[0]
        assert accept == {"type": "websocket.accept", "headers": [(b"x-app", b"yes")]}


def count_threads(
    limiter: RateLimiter, monkeypatch: pytest.MonkeyPatch
) -> list[threading.Thread]:
    """The threads each count is taken on."""
    threads: list[threading.Thread] = []
    hit = limiter.hit

    def spy(record: ApiKey) -> RateDecision | None:
        threads.append(threading.current_thread())
        return hit(record)

    monkeypatch.setattr(limiter, "hit", spy)
    return threads


def test_memory_counts_on_the_event_loop_with_no_thread_hop(
    keys: KeyManager, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio.to_thread

    keys.authenticate(key)  # cached: the key check takes no thread either
    limited = AsgiApiKeyMiddleware(asgi_app([]), keys, rate_limit="5/minute")
    assert limited.gate.limiter is not None
    threads = count_threads(limited.gate.limiter, monkeypatch)

    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread hop for a count in memory")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)
    start = asyncio.run(drive(limited, http_scope(key)))[0]
    assert start["status"] == 200
    assert threads == [threading.main_thread()]


@pytest.mark.redis
def test_a_network_storage_counts_on_a_worker_thread(
    redis_url: str, keys: KeyManager, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys.authenticate(key)
    limited = AsgiApiKeyMiddleware(
        asgi_app([]), keys, rate_limit="5/minute", rate_limit_storage=redis_url
    )
    assert limited.gate.limiter is not None
    threads = count_threads(limited.gate.limiter, monkeypatch)
    for _ in range(2):
        start = asyncio.run(drive(limited, http_scope(key)))[0]
        assert start["status"] == 200
    assert len(threads) == 2
    assert threading.main_thread() not in threads


@pytest.mark.redis
def test_a_frozen_redis_never_blocks_the_event_loop(
    redis_server: RedisServer, redis_url: str, keys: KeyManager, key: str
) -> None:
    """While a count waits on a frozen Redis (SIGSTOP), for a whole second,
    on a worker thread, the event loop goes on: 50 other requests on it are
    answered at once, and the loop never stalls."""
    unlimited = keys.create("proj_2", "no limit").key
    keys.authenticate(key)
    keys.authenticate(unlimited)
    guarded = AsgiApiKeyMiddleware(
        asgi_app([]),
        keys,
        exempt_paths=["/health"],
        rate_limit=lambda record: "100/day" if record.project_id == "proj_1" else None,
        rate_limit_storage=redis_url,
        # A call waits this long for a frozen Redis: the test's yardstick.
        rate_limit_storage_options={"socket_timeout": 1.0},
    )

    async def go() -> tuple[httpx.Response, list[int], float, float, float]:
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as client:
            # Connected to Redis, and counted there.
            first = await client.get("/v1/project", headers=bearer(key))
            assert first.headers["x-ratelimit-remaining"] == "99"
            redis_server.freeze()
            try:
                gaps: list[float] = []
                ticking = True

                async def tick() -> None:
                    last = time.monotonic()
                    while ticking:
                        await asyncio.sleep(0.005)
                        now = time.monotonic()
                        gaps.append(now - last)
                        last = now

                ticker = asyncio.ensure_future(tick())
                started = time.monotonic()
                stuck = asyncio.ensure_future(
                    client.get("/v1/project", headers=bearer(key))
                )
                await asyncio.sleep(0.05)  # its count waits on Redis
                others = await asyncio.gather(
                    *(client.get("/health") for _ in range(25)),
                    *(
                        client.get("/v1/project", headers=bearer(unlimited))
                        for _ in range(25)
                    ),
                )
                others_done = time.monotonic() - started
                assert not stuck.done()
                limited = await stuck
                stuck_done = time.monotonic() - started
                ticking = False
                await ticker
            finally:
                redis_server.thaw()
        statuses = [response.status_code for response in others]
        return limited, statuses, others_done, stuck_done, max(gaps)

    limited, statuses, others_done, stuck_done, longest_stall = asyncio.run(go())
    assert statuses == [200] * 50
    # A loop that waited on Redis would stall for the whole second: the
    # bounds leave room for a busy machine, and none for that.
    assert others_done < 0.9 <= stuck_done
    assert longest_stall < 0.5
    # Counted in this process's memory once Redis timed out: never an error.
    assert limited.status_code == 200
    assert limited.headers["x-ratelimit-limit"] == "100"


# -- FastAPI specifics -----------------------------------------------------------------


def clocked(*bearers: Any) -> None:
    for dependency in bearers:
        dependency.gate.limiter._clock = Clock()


def test_fastapi_counts_a_request_once_however_many_limits_it_has(
    keys: KeyManager, key: str
) -> None:
    """Two dependencies with a limit on one route: the first counts. The
    ASGI middleware's limit in front: it counts, and adds the headers."""
    first = ApiKeyBearer(keys, rate_limit="5/minute")
    second = ProjectBearer(keys, rate_limit="50/minute")
    clocked(first, second)
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/both")
    async def both(
        key: ApiKey = Depends(first),  # noqa: B008
        project: Any = Depends(second),  # noqa: B008
    ) -> str:
        return str(project)

    client = AsgiClient(app)
    for remaining in ("4", "3"):
        response = client.open("/both", method="GET", headers=bearer(key))
        assert response.headers.getlist(REMAINING) == [remaining]
        assert response.headers.getlist(LIMIT) == ["5"]

    behind = AsgiApiKeyMiddleware(app, keys, rate_limit="2/minute")
    behind.gate.limiter._clock = Clock()  # type: ignore[union-attr]
    client = AsgiClient(behind)
    answers = [client.open("/both", method="GET", headers=bearer(key)) for _ in "abc"]
    assert [r.status_code for r in answers] == [200, 200, 429]
    for response, remaining in zip(answers, ["1", "0", "0"], strict=True):
        assert response.headers.getlist(REMAINING) == [remaining]
        assert response.headers.getlist(LIMIT) == ["2"]
    # The dependencies counted none of them.
    assert (
        AsgiClient(app)
        .open("/both", method="GET", headers=bearer(key))
        .headers[REMAINING]
        == "2"
    )


def test_fastapi_rate_limit_exceeded_carries_the_decision(
    keys: KeyManager, key: str
) -> None:
    auth = ApiKeyBearer(keys, rate_limit="1/minute")
    clocked(auth)
    caught: list[RateLimitExceeded] = []
    app = FastAPI()
    add_exception_handlers(app)

    async def keep(conn: Any, exc: Exception) -> Any:
        assert isinstance(exc, RateLimitExceeded)
        caught.append(exc)
        return Response(status_code=429, headers=dict(exc.decision.headers))

    app.add_exception_handler(RateLimitExceeded, keep)

    @app.get("/x")
    async def view(k: ApiKey = Depends(auth)) -> str:  # noqa: B008
        return "x"

    client = AsgiClient(app)
    assert client.open("/x", method="GET", headers=bearer(key)).status_code == 200
    refused = client.open("/x", method="GET", headers=bearer(key))
    assert refused.status_code == 429
    assert refused.headers[RESET] == str(int(T0) + 60)
    (exceeded,) = caught
    assert str(exceeded) == TOO_MANY["error"]["message"]
    assert exceeded.decision == RateDecision(False, 1, 0, int(T0) + 60, 45)
    assert key[4:] not in repr(vars(exceeded))


def test_fastapi_without_the_handler_a_429_fails_loudly(
    keys: KeyManager, key: str
) -> None:
    """An app that answers the 401s its own way but never called
    add_exception_handlers: the request over the limit is a 500 whose error
    says what to do, never a request let through."""
    auth = ApiKeyBearer(keys, rate_limit="1/minute")
    clocked(auth)
    app = FastAPI()

    async def refuse(conn: Any, exc: Exception) -> Any:
        return Response(status_code=401)

    app.add_exception_handler(RequestRefused, refuse)
    reached: list[str] = []

    @app.get("/x")
    async def view(k: ApiKey = Depends(auth)) -> str:  # noqa: B008
        reached.append("view")
        return "x"

    client = AsgiClient(app)
    assert client.open("/x", method="GET", headers={}).status_code == 401
    assert client.open("/x", method="GET", headers=bearer(key)).status_code == 200
    with pytest.raises(RuntimeError, match=r"add_exception_handlers\(app\)"):
        client.open("/x", method="GET", headers=bearer(key))
    assert reached == ["view"]


def test_fastapi_a_response_the_view_makes_itself_gets_headers_it_copies(
    keys: KeyManager, key: str
) -> None:
    """FastAPI puts a dependency's headers only on the response it makes of
    a view's value; a view that makes its own copies the decision's."""
    auth = ApiKeyBearer(keys, rate_limit="5/minute")
    clocked(auth)
    app = FastAPI(dependencies=[Depends(auth)])
    add_exception_handlers(app)

    @app.get("/own")
    async def own() -> PlainTextResponse:
        return PlainTextResponse("own")

    @app.get("/copied")
    async def copied(request: FastAPIRequest) -> PlainTextResponse:
        decision = request.scope["vemetric_auth.rate_limit"]
        return PlainTextResponse("copied", headers=dict(decision.headers))

    client = AsgiClient(app)
    own_response = client.open("/own", method="GET", headers=bearer(key))
    assert own_response.status_code == 200
    assert rate_headers(own_response) == []  # counted all the same
    copied_response = client.open("/copied", method="GET", headers=bearer(key))
    assert rate_headers(copied_response) == [
        (LIMIT, "5"),
        (REMAINING, "3"),
        (RESET, str(int(T0) + 60)),
    ]


def test_fastapi_the_response_parameter_is_not_in_the_schema(
    keys: KeyManager,
) -> None:
    auth = ApiKeyBearer(keys, rate_limit="5/minute")
    app = FastAPI()

    @app.get("/x")
    async def view(k: ApiKey = Depends(auth)) -> str:  # noqa: B008
        return "x"

    operation = app.openapi()["paths"]["/x"]["get"]
    assert "parameters" not in operation
    assert "requestBody" not in operation
    assert operation["security"] == [{"ApiKeyBearer": []}]


def test_fastapi_a_websocket_over_the_limit_is_denied_with_the_429(
    keys: KeyManager, key: str
) -> None:
    auth = ApiKeyBearer(keys, rate_limit="1/minute")
    clocked(auth)
    app = FastAPI()
    add_exception_handlers(app)

    @app.websocket("/ws")
    async def echo(
        websocket: WebSocket,
        k: ApiKey = Depends(auth),  # noqa: B008
    ) -> None:
        await websocket.accept()
        await websocket.send_text(k.project_id)
        await websocket.close()

    first = asyncio.run(drive(app, websocket_scope(key, denial=True), CONNECT))
    assert [m["type"] for m in first[:2]] == ["websocket.accept", "websocket.send"]
    scope = websocket_scope(key, denial=True)
    start, body = asyncio.run(drive(app, scope, CONNECT))
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 429)
    assert dict(start["headers"])[b"x-ratelimit-remaining"] == b"0"
    assert body["body"] == TOO_MANY_BYTES
    closed = asyncio.run(drive(app, websocket_scope(key, denial=False), CONNECT))
    assert closed == [{"type": "websocket.close", "code": 1013}]


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


def asgi_middleware(keys: KeyManager, **kwargs: Any) -> Any:
    return AsgiApiKeyMiddleware(asgi_app([]), keys, **kwargs)


@pytest.mark.parametrize(
    "build",
    [asgi_middleware, ApiKeyBearer, ProjectBearer],
    ids=["asgi", "fastapi-key", "fastapi-project"],
)
@pytest.mark.parametrize(("settings", "error", "setting"), BAD_SETTINGS)
def test_bad_asgi_and_fastapi_settings_name_the_parameter(
    keys: KeyManager,
    build: Callable[..., Any],
    settings: dict[str, Any],
    error: type[Exception],
    setting: str,
) -> None:
    kwargs = {PARAMETERS[name]: value for name, value in settings.items()}
    kwargs.setdefault("rate_limit", "100/minute")
    with pytest.raises(error, match=f"^{PARAMETERS[setting]}: "):
        build(keys, **kwargs)


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


REFUSE_LIMITS_ASGI = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "limits":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
from vemetric_auth import InMemoryKeyStore, KeyManager
from vemetric_auth.asgi import ApiKeyMiddleware
from vemetric_auth.fastapi import ApiKeyBearer

async def app(scope, receive, send):
    pass

keys = KeyManager(InMemoryKeyStore())
ApiKeyMiddleware(app, keys)
ApiKeyBearer(keys)
print("no limit: fine")
if sys.argv[1] == "asgi":
    ApiKeyMiddleware(app, keys, rate_limit="1/second")
else:
    ApiKeyBearer(keys, rate_limit="1/second")
"""


@pytest.mark.parametrize("kind", ["asgi", "fastapi"])
def test_limits_is_needed_only_with_a_limit_in_asgi_too(kind: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_LIMITS_ASGI, kind],
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
@pytest.mark.parametrize(
    "make_here",
    [make_wsgi, make_asgi, make_fastapi],
    ids=["wsgi-and-wsgi", "asgi-and-wsgi", "fastapi-and-wsgi"],
)
def test_two_processes_share_counts_through_redis(
    redis_url: str, sql_keys: tuple[str, KeyManager], make_here: MakeApi
) -> None:
    """This process (WSGI, ASGI or FastAPI) and another one running the WSGI
    middleware count the requests of one project together."""
    database_url, keys = sql_keys
    first = keys.create("proj_1", "this process").key
    second = keys.create("proj_1", "the other process").key
    now = T0 + 100
    here = make_here(keys, "10/day", storage=redis_url, clock=Clock(now))
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
def test_the_four_integrations_share_one_redis(
    redis_url: str, keys: KeyManager, key: str
) -> None:
    clock = Clock(T0 + 100)
    apis = [make(keys, "6/day", storage=redis_url, clock=clock) for make in MAKERS]
    answers = [api.get(key) for api in apis + apis]
    assert [r.status_code for r in answers] == [200] * 6 + [429] * 2
    assert [r.headers[REMAINING] for r in answers] == [
        "5",
        "4",
        "3",
        "2",
        "1",
        "0",
        "0",
        "0",
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
    redis_server: RedisServer,
    redis_url: str,
    keys: KeyManager,
    key: str,
    make_api: MakeApi,
) -> None:
    api = make_api(keys, "3/day", storage=redis_url, clock=Clock(T0 + 10))
    assert api.get(key).status_code == 200
    redis_server.freeze()
    try:
        started = time.monotonic()
        statuses = [api.get(key).status_code for _ in range(4)]
        assert time.monotonic() - started < 1.0  # one socket timeout, 0.2 s
    finally:
        redis_server.thaw()
    assert statuses == [200, 200, 200, 429]


# -- under uvicorn ---------------------------------------------------------------------

SERVED_APP = """\\
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from vemetric_auth import ApiKey, KeyManager, SQLKeyStore
from vemetric_auth.asgi import ApiKeyMiddleware
from vemetric_auth.fastapi import ApiKeyBearer, add_exception_handlers

keys = KeyManager(SQLKeyStore("sqlite:///keys.db"))
# A year: no window ends while the test runs.
LIMIT = "2/year"


async def hello(request):
    return PlainTextResponse("hello " + request.state.project_id)


async def echo(websocket):
    await websocket.accept()
    await websocket.send_text("hello " + websocket.state.project_id)
    await websocket.close()


starlette = ApiKeyMiddleware(
    Starlette(routes=[Route("/v1/project", hello), WebSocketRoute("/ws", echo)]),
    keys,
    rate_limit=LIMIT,
)

app = FastAPI()
add_exception_handlers(app)
api_key = ApiKeyBearer(keys, rate_limit=LIMIT)


@app.get("/v1/key")
async def key(key: ApiKey = Depends(api_key)):
    return {"project_id": key.project_id}


@app.get("/health")
async def health():
    return {"status": "ok"}


app.mount("/starlette", starlette)
"""


@pytest.mark.slow
def test_under_uvicorn(tmp_path: Path) -> None:
    """Over real HTTP: the ASGI middleware's and the FastAPI dependency's
    counts, headers and 429, and a websocket handshake counted, its accept
    carrying the headers, then refused with the 429."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    (tmp_path / "app.py").write_text(SERVED_APP, encoding="utf-8")
    store = SQLKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    made = KeyManager(store, hasher=CountingHasher())
    http_key, ws_key, fastapi_key = (
        made.create(project_id, "uvicorn").key for project_id in ("p1", "p2", "p3")
    )
    store.close()
    with uvicorn_serving(tmp_path) as server:
        for path, key in (
            ("/starlette/v1/project", http_key),
            ("/v1/key", fastapi_key),
        ):
            answers = [server.request("GET", path, bearer(key)) for _ in range(3)]
            assert [status for status, _, _ in answers] == [200, 200, 429]
            assert [h["x-ratelimit-remaining"] for _, h, _ in answers] == [
                "1",
                "0",
                "0",
            ]
            assert {h["x-ratelimit-limit"] for _, h, _ in answers} == {"2"}
            _, headers, body = answers[2]
            assert body == TOO_MANY_BYTES
            assert headers["content-type"] == "application/json"
            assert int(headers["retry-after"]) >= 1
            assert headers["x-ratelimit-reset"] == answers[0][1]["x-ratelimit-reset"]

        url = f"ws://127.0.0.1:{server.port}/starlette/ws"
        for remaining in ("1", "0"):
            with connect(url, additional_headers=bearer(ws_key), open_timeout=10) as ws:
                assert ws.response is not None
                assert ws.response.headers["X-RateLimit-Remaining"] == remaining
                assert ws.response.headers["X-RateLimit-Limit"] == "2"
                assert ws.recv(timeout=10) == "hello p2"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=bearer(ws_key), open_timeout=10)
        assert refused.value.response.status_code == 429
        assert refused.value.response.body == TOO_MANY_BYTES
        assert refused.value.response.headers["X-RateLimit-Remaining"] == "0"
    log = server.log()
    for key in (http_key, ws_key, fastapi_key):
        assert key not in log


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
