"""The ASGI middleware, ``vemetric_auth.asgi.ApiKeyMiddleware`` (SPEC section 9).

The contract's table runs in ``tests/test_contract.py``; here: what only an
ASGI app has (scope types, websockets, ``request.state``, ``root_path``),
the preflight rule, the event loop never waiting on the store or argon2,
:meth:`KeyManager.cached`, and the middleware under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import CountingHasher, FlakyStore
from contract import (
    CHALLENGES,
    FORMAT,
    INVALID,
    MALFORMED,
    MISSING,
    PREFLIGHT_HEADERS,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_extras import assert_raised, python
from test_traceback_locals import Evidence, Watch
from uvicorn_server import uvicorn_serving

from vemetric_auth import (
    ApiKeyMiddleware as WsgiApiKeyMiddleware,
)
from vemetric_auth import (
    InMemoryKeyStore,
    KeyManager,
    SQLKeyStore,
    StoreUnavailable,
    generate_key,
)
from vemetric_auth._http import ErrorAnswer
from vemetric_auth.asgi import ApiKeyMiddleware
from vemetric_auth.errors import InvalidApiKey, MissingApiKey

Scope = dict[str, Any]
Message = dict[str, Any]


class Recorder:
    """An ASGI app that remembers each scope and answers 200 ``hello``."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def downstream() -> Recorder:
    return Recorder()


@pytest.fixture
def issued(flaky_keys: KeyManager) -> Any:
    return flaky_keys.create("proj_1", "asgi")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + key}


def http_scope(
    path: str = "/v1/project",
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    **more: Any,
) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    scope.update(more)
    return scope


async def drive(
    app: Any, scope: Scope, incoming: list[Message] | None = None
) -> list[Message]:
    """Call *app* once; return the messages it sent."""
    sent: list[Message] = []
    queue = list(incoming or [{"type": "http.request", "body": b""}])

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


def run(app: Any, scope: Scope, incoming: list[Message] | None = None) -> list[Message]:
    return asyncio.run(drive(app, scope, incoming))


def get(app: Any, path: str = "/v1/project", **kwargs: Any) -> httpx.Response:
    return asyncio.run(_request(app, "GET", path, **kwargs))


async def _request(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kwargs)


def assert_401(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {
        "error": {"code": "UNAUTHORIZED", "message": message}
    }
    assert response.headers["www-authenticate"] == CHALLENGES[message]


# -- scopes, state and entries ------------------------------------------------------


def test_lifespan_and_unknown_scope_types_pass_straight_through(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    seen: list[tuple[Scope, Any, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    guarded = ApiKeyMiddleware(app, flaky_keys)
    for kind in ("lifespan", "something.new"):
        scope = {"type": kind, "asgi": {"version": "3.0"}}
        asyncio.run(guarded(scope, receive, send))
        assert seen[-1] == (scope, receive, send)
        assert set(scope) == {"type", "asgi"}  # untouched
    assert flaky_store.calls == {}


def test_a_starlette_lifespan_runs_and_its_state_reaches_the_request(
    flaky_keys: KeyManager, issued: Any
) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"from_lifespan": "kept"}
        events.append("shutdown")

    async def view(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "lifespan": request.state.from_lifespan,
                "project_id": request.state.project_id,
                "project": request.state.project,
                "key": request.state.api_key.id,
            }
        )

    app = Starlette(
        routes=[Route("/v1/project", view)],
        lifespan=lifespan,
        middleware=[Middleware(ApiKeyMiddleware, keys=flaky_keys)],
    )

    async def serve() -> list[Message]:
        # As a server does: the lifespan's startup, a request whose state is
        # a copy of the lifespan's, then the shutdown.
        state: dict[str, Any] = {}
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: list[Message] = []

        async def send(message: Message) -> None:
            outbox.append(message)

        lifespan_scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0"},
            "state": state,
        }
        running = asyncio.ensure_future(app(lifespan_scope, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        while not outbox:
            await asyncio.sleep(0.001)
        assert outbox[0]["type"] == "lifespan.startup.complete"
        headers = [(b"authorization", b"Bearer " + issued.key.encode())]
        sent = await drive(app, http_scope(headers=headers, state=dict(state)))
        await inbox.put({"type": "lifespan.shutdown"})
        await running
        return sent

    sent = asyncio.run(serve())
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {
        "lifespan": "kept",
        "project_id": "proj_1",
        "project": "proj_1",  # the project id, without a loader
        "key": issued.record.id,
    }
    assert events == ["startup", "shutdown"]


def test_success_adds_the_entries_and_the_state_and_nothing_else(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    before = dict(scope)
    messages = run(ApiKeyMiddleware(downstream, flaky_keys), scope)
    assert messages[0]["status"] == 200
    (seen,) = downstream.scopes
    assert seen is scope  # updated in place, as Starlette's router does
    added = {k: v for k, v in seen.items() if k not in before}
    assert added == {
        "vemetric_auth.api_key": issued.record,
        "vemetric_auth.project_id": "proj_1",
        "state": {
            "api_key": issued.record,
            "project_id": "proj_1",
            "project": "proj_1",
        },
    }
    assert {k: v for k, v in seen.items() if k in before} == before


def test_a_servers_state_is_kept_and_completed(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    state = {"db": "pool"}
    scope = http_scope(
        headers=[(b"authorization", b"Bearer " + issued.key.encode())], state=state
    )
    run(ApiKeyMiddleware(downstream, flaky_keys), scope)
    assert scope["state"] is state
    assert state == {
        "db": "pool",
        "api_key": issued.record,
        "project_id": "proj_1",
        "project": "proj_1",
    }


def test_a_refused_request_leaves_the_scope_as_it_was(
    flaky_keys: KeyManager, downstream: Recorder
) -> None:
    scope = http_scope(
        headers=[(b"authorization", b"Bearer " + generate_key().encode())]
    )
    before = dict(scope)
    messages = run(
        ApiKeyMiddleware(downstream, flaky_keys, project_loader=lambda p: None), scope
    )
    assert messages[0]["status"] == 401
    assert scope == before
    assert downstream.scopes == []


def test_the_answers_are_the_wsgi_answers_byte_for_byte(
    flaky_keys: KeyManager, downstream: Recorder
) -> None:
    """The same prebuilt answer, as ASGI messages: status, every header in
    order (names lowercased, as ASGI sends them), body."""
    guarded = ApiKeyMiddleware(downstream, flaky_keys, realm="api", retry_after=7)
    wsgi = WsgiApiKeyMiddleware(lambda e, s: [], flaky_keys, realm="api", retry_after=7)
    for error_type in (MissingApiKey, InvalidApiKey, StoreUnavailable):
        wsgi_answer = wsgi.gate.answer(error_type())
        asgi_answer = guarded.gate.answer(error_type())
        assert asgi_answer.body == wsgi_answer.body
        assert asgi_answer.status_code == int(wsgi_answer.status.split()[0])
        assert asgi_answer.asgi_headers == tuple(
            (name.lower().encode(), value.encode())
            for name, value in wsgi_answer.headers
        )
    messages = run(guarded, http_scope())
    answer = guarded.gate.answer(MissingApiKey())
    assert messages == [
        {
            "type": "http.response.start",
            "status": 401,
            "headers": list(answer.asgi_headers),
        },
        {"type": "http.response.body", "body": answer.body},
    ]


def test_each_answer_sends_new_messages(flaky_keys: KeyManager) -> None:
    """A middleware above may edit the messages in place (Starlette's
    MutableHeaders): the prebuilt answer must not change with them."""
    answer = ErrorAnswer(MissingApiKey(), realm="r", retry_after=1)
    headers_before = answer.asgi_headers

    async def editing_send(message: Message) -> None:
        if "headers" in message:
            message["headers"].append((b"x-added", b"1"))

    async def go() -> None:
        for _ in range(2):
            await answer.asgi(http_scope(), _never, editing_send)

    asyncio.run(go())
    assert answer.asgi_headers == headers_before


async def _never() -> Message:
    raise AssertionError("the answer reads nothing")


# -- headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param(
            [(b"authorization", b"Bearer {key}"), (b"authorization", b"Bearer {key}")],
            FORMAT,
            id="the-same-key-twice",
        ),
        pytest.param(
            [(b"authorization", b"Basic eDp5"), (b"authorization", b"Bearer {key}")],
            MALFORMED,
            id="basic-then-bearer",
        ),
        pytest.param([(b"authorization", "Bearer {key}")], MALFORMED, id="a-str-value"),
        pytest.param(
            [(b"Authorization", b"Bearer {key}")], MISSING, id="uppercase-name"
        ),
    ],
)
def test_headers_no_server_should_send_get_a_documented_answer(
    flaky_keys: KeyManager,
    downstream: Recorder,
    issued: Any,
    headers: list[tuple[bytes, Any]],
    message: str,
) -> None:
    """Repeated headers are joined with commas, as WSGI servers join them; a
    value that is not bytes is a malformed header; header names are read
    lowercased, as ASGI servers send them."""
    filled = [
        (name, value.replace(b"{key}", issued.key.encode()))
        if isinstance(value, bytes)
        else (name, value.replace("{key}", issued.key))
        for name, value in headers
    ]
    messages = run(ApiKeyMiddleware(downstream, flaky_keys), http_scope(headers=filled))
    body = json.loads(messages[1]["body"])
    assert body["error"]["message"] == message
    assert downstream.scopes == []


_fuzz_keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher())
_fuzz_key = _fuzz_keys.create("proj_h", "hypothesis").key
_fuzz_asgi = ApiKeyMiddleware(Recorder(), _fuzz_keys)
_fuzz_wsgi = WsgiApiKeyMiddleware(
    lambda environ, start_response: start_response("200 OK", []) or [b"hello"],
    _fuzz_keys,
)
_near_miss = st.builds(
    lambda i, c: _fuzz_key[:i] + c + _fuzz_key[i + 1 :],
    st.integers(0, 35),
    st.sampled_from("aZ0_ -\t\x00é"),
)
_header_bytes = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda scheme, space, token: (scheme + space + token).encode("latin-1"),
        st.sampled_from(["Bearer", "bearer", "Basic", "", "Bearer Bearer"]),
        st.sampled_from([" ", "\t", "  ", ""]),
        st.one_of(_near_miss, st.just(_fuzz_key), st.text(max_size=40)).map(
            lambda t: t.encode("utf-8").decode("latin-1")
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(_header_bytes)
def test_any_header_gets_the_wsgi_middlewares_answer(value: bytes) -> None:
    """Whatever bytes an ASGI server reads, the answer is the one the WSGI
    middleware gives the same header, read as latin-1 as WSGI servers do."""
    messages = run(_fuzz_asgi, http_scope(headers=[(b"authorization", value)]))
    seen: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/v1/project",
        "HTTP_AUTHORIZATION": value.decode("latin-1"),
    }
    body = b"".join(_fuzz_wsgi(environ, lambda status, headers: seen.append(status)))
    assert messages[0]["status"] == int(seen[0].split()[0])
    assert messages[1]["body"] == body


@pytest.mark.parametrize(
    ("root_path", "path", "exempt"),
    [
        pytest.param("", "/health", True, id="no-root-path"),
        pytest.param("/api", "/api/health", True, id="mounted"),
        pytest.param("/api", "/health", True, id="path-without-root"),
        pytest.param("/api", "/api/v1/project", False, id="other-path"),
        pytest.param("/api", "/apihealth", False, id="not-under-root"),
        pytest.param("", "/health/", False, id="exact-paths-only"),
    ],
)
def test_exempt_paths_are_matched_without_the_root_path(
    flaky_keys: KeyManager,
    downstream: Recorder,
    root_path: str,
    path: str,
    exempt: bool,
) -> None:
    guarded = ApiKeyMiddleware(downstream, flaky_keys, exempt_paths=["/health"])
    messages = run(guarded, http_scope(path, root_path=root_path))
    assert messages[0]["status"] == (200 if exempt else 401)


# -- preflights ---------------------------------------------------------------------

SECRET_BODY = b'{"project": {"id": "proj_1", "revenue": 1234567}}'


def options_scope(**headers: str) -> Scope:
    raw = [
        (k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()
    ]
    return http_scope(method="OPTIONS", headers=raw)


PREFLIGHT = {"origin": "https://app.example", "access_control_request_method": "GET"}


def body_app(
    status: int = 200, extra: list[Message] | None = None
) -> Callable[..., Any]:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(SECRET_BODY)).encode()),
                    (b"access-control-allow-origin", b"https://app.example"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": SECRET_BODY[:10], "more_body": True}
        )
        await send({"type": "http.response.body", "body": SECRET_BODY[10:]})
        for message in extra or []:
            await send(message)

    return app


def test_a_preflight_gets_the_apps_status_and_headers_never_its_body(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    messages = run(ApiKeyMiddleware(body_app(), flaky_keys), options_scope(**PREFLIGHT))
    assert messages == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"access-control-allow-origin", b"https://app.example"),
                (b"content-length", b"0"),
            ],
        },
        {"type": "http.response.body", "body": b""},
    ]
    assert flaky_store.calls == {}


@pytest.mark.parametrize("status", [204, 304, 101])
def test_a_preflight_answered_without_content_gets_no_content_length(
    flaky_keys: KeyManager, status: int
) -> None:
    messages = run(
        ApiKeyMiddleware(body_app(status), flaky_keys), options_scope(**PREFLIGHT)
    )
    names = [name for name, _ in messages[0]["headers"]]
    assert messages[0]["status"] == status
    assert b"content-length" not in names  # RFC 9110 8.6


def test_a_preflight_drops_trailers_and_files_too(flaky_keys: KeyManager) -> None:
    extra = [
        {"type": "http.response.trailers", "headers": [], "more_trailers": False},
        {"type": "http.response.pathsend", "path": "/etc/passwd"},
    ]
    messages = run(
        ApiKeyMiddleware(body_app(extra=extra), flaky_keys), options_scope(**PREFLIGHT)
    )
    assert [m["type"] for m in messages] == [
        "http.response.start",
        "http.response.body",
    ]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-cors-headers"),
        pytest.param({"origin": "https://app.example"}, id="origin-only"),
        pytest.param({"access_control_request_method": "GET"}, id="method-only"),
    ],
)
def test_any_other_options_request_needs_a_key(
    flaky_keys: KeyManager, issued: Any, headers: dict[str, str]
) -> None:
    guarded = ApiKeyMiddleware(body_app(), flaky_keys)
    messages = run(guarded, options_scope(**headers))
    assert messages[0]["status"] == 401
    assert SECRET_BODY not in b"".join(m.get("body", b"") for m in messages)
    with_key = options_scope(authorization="Bearer " + issued.key, **headers)
    messages = run(guarded, with_key)
    assert b"".join(m.get("body", b"") for m in messages) == SECRET_BODY


def test_preflights_can_be_protected(flaky_keys: KeyManager) -> None:
    guarded = ApiKeyMiddleware(body_app(), flaky_keys, allow_options=False)
    assert run(guarded, options_scope(**PREFLIGHT))[0]["status"] == 401


def test_a_preflight_the_app_never_answers_is_an_error(flaky_keys: KeyManager) -> None:
    async def silent(scope: Scope, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(RuntimeError, match="did not start a response"):
        run(ApiKeyMiddleware(silent, flaky_keys), options_scope(**PREFLIGHT))


def test_the_apps_exception_on_a_preflight_propagates(flaky_keys: KeyManager) -> None:
    async def failing(scope: Scope, receive: Any, send: Any) -> None:
        raise LookupError("the app's own")

    with pytest.raises(LookupError, match="the app's own"):
        run(ApiKeyMiddleware(failing, flaky_keys), options_scope(**PREFLIGHT))


def test_starlettes_cors_middleware_answers_preflights_behind_the_middleware(
    flaky_keys: KeyManager, issued: Any
) -> None:
    async def view(request: Request) -> JSONResponse:
        return JSONResponse({"project_id": request.state.project_id})

    app = Starlette(
        routes=[Route("/v1/project", view)],
        middleware=[
            Middleware(ApiKeyMiddleware, keys=flaky_keys),
            Middleware(
                CORSMiddleware,
                allow_origins=["https://app.example"],
                allow_headers=["Authorization"],
            ),
        ],
    )
    response = asyncio.run(
        _request(app, "OPTIONS", "/v1/project", headers=PREFLIGHT_HEADERS)
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["content-length"] == "0"
    assert response.content == b""
    response = get(app, headers={**bearer(issued.key), "Origin": "https://app.example"})
    assert response.json() == {"project_id": "proj_1"}
    assert response.headers["access-control-allow-origin"] == "https://app.example"


# -- the application's own answers and errors -----------------------------------------


def test_the_apps_messages_pass_through_untouched(
    flaky_keys: KeyManager, issued: Any
) -> None:
    sent = [
        {
            "type": "http.response.start",
            "status": 418,
            "headers": [(b"x-brew", b"green")],
            "trailers": True,
        },
        {"type": "http.response.body", "body": b"short", "more_body": True},
        {"type": "http.response.body", "body": b" and stout"},
        {"type": "http.response.trailers", "headers": [], "more_trailers": False},
    ]

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"tea?"
        for message in sent:
            await send(message)

    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    incoming = [{"type": "http.request", "body": b"tea?"}]
    assert run(ApiKeyMiddleware(app, flaky_keys), scope, incoming) == sent


def test_the_apps_exceptions_propagate_untouched(
    flaky_keys: KeyManager, issued: Any
) -> None:
    class Boom(Exception):
        pass

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        raise Boom("from the app")

    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    with pytest.raises(Boom, match="from the app"):
        run(ApiKeyMiddleware(app, flaky_keys), scope)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"realm": ""}, id="empty-realm"),
        pytest.param({"realm": "a\nb"}, id="newline-realm"),
        pytest.param({"exempt_paths": "/health"}, id="str-exempt-paths"),
        pytest.param({"retry_after": -1}, id="negative-retry"),
        pytest.param({"project_loader": "load"}, id="loader-not-callable"),
    ],
)
def test_bad_settings_are_refused(
    flaky_keys: KeyManager, downstream: Recorder, kwargs: dict[str, Any]
) -> None:
    with pytest.raises((ValueError, TypeError)):
        ApiKeyMiddleware(downstream, flaky_keys, **kwargs)


def test_keys_must_be_a_key_manager(downstream: Recorder) -> None:
    with pytest.raises(TypeError, match="KeyManager"):
        ApiKeyMiddleware(downstream, InMemoryKeyStore())  # type: ignore[arg-type]


# -- websockets ----------------------------------------------------------------------


def websocket_scope(headers: list[tuple[bytes, bytes]], *, denial: bool) -> Scope:
    scope = http_scope("/ws", headers=headers)
    del scope["method"]
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    if denial:
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


CONNECT = [{"type": "websocket.connect"}]


def test_a_websocket_without_a_key_is_denied_with_the_http_answer(
    flaky_keys: KeyManager, downstream: Recorder
) -> None:
    guarded = ApiKeyMiddleware(downstream, flaky_keys)
    messages = run(guarded, websocket_scope([], denial=True), CONNECT)
    answer = guarded.gate.answer(MissingApiKey())
    assert messages == [
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": list(answer.asgi_headers),
        },
        {"type": "websocket.http.response.body", "body": answer.body},
    ]
    assert downstream.scopes == []


@pytest.mark.parametrize(
    ("failing", "code"),
    [
        pytest.param(False, 1008, id="401-policy"),
        pytest.param(True, 1013, id="503-later"),
    ],
)
def test_without_the_denial_extension_a_websocket_is_closed_before_accept(
    flaky_keys: KeyManager,
    flaky_store: FlakyStore,
    downstream: Recorder,
    failing: bool,
    code: int,
) -> None:
    flaky_store.failing = failing
    headers = [(b"authorization", b"Bearer " + generate_key().encode())]
    messages = run(
        ApiKeyMiddleware(downstream, flaky_keys), websocket_scope(headers, denial=False)
    )
    assert messages == [{"type": "websocket.close", "code": code}]
    assert downstream.scopes == []


def test_a_websocket_with_a_key_reaches_the_app_with_its_project(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    headers = [(b"authorization", b"Bearer " + issued.key.encode())]
    messages = run(
        ApiKeyMiddleware(downstream, flaky_keys),
        websocket_scope(headers, denial=True),
        CONNECT,
    )
    assert messages[0] == {"type": "websocket.accept"}
    assert downstream.scopes[0]["vemetric_auth.project_id"] == "proj_1"
    assert downstream.scopes[0]["state"]["api_key"] == issued.record


def test_an_exempt_websocket_path_passes(
    flaky_keys: KeyManager, downstream: Recorder
) -> None:
    guarded = ApiKeyMiddleware(downstream, flaky_keys, exempt_paths=["/ws"])
    messages = run(guarded, websocket_scope([], denial=True), CONNECT)
    assert messages[0] == {"type": "websocket.accept"}


# -- the project loader -------------------------------------------------------------


def test_an_async_loader_is_awaited_on_the_loop(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    threads: list[threading.Thread] = []

    async def load(project_id: str) -> dict[str, str]:
        threads.append(threading.current_thread())
        await anyio.sleep(0)
        return {"id": project_id}

    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    run(ApiKeyMiddleware(downstream, flaky_keys, project_loader=load), scope)
    assert threads == [threading.main_thread()]
    assert scope["vemetric_auth.project"] == {"id": "proj_1"}
    assert scope["state"]["project"] == {"id": "proj_1"}


def test_a_plain_loader_runs_on_a_worker_thread(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    threads: list[threading.Thread] = []

    def load(project_id: str) -> dict[str, str]:
        threads.append(threading.current_thread())
        return {"id": project_id}

    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    run(ApiKeyMiddleware(downstream, flaky_keys, project_loader=load), scope)
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()
    assert scope["vemetric_auth.project"] == {"id": "proj_1"}


def test_an_object_with_an_async_call_is_an_async_loader(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    class Projects:
        async def __call__(self, project_id: str) -> str:
            return "loaded " + project_id

    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    run(ApiKeyMiddleware(downstream, flaky_keys, project_loader=Projects()), scope)
    assert scope["vemetric_auth.project"] == "loaded proj_1"


def test_a_loaders_own_exception_propagates(
    flaky_keys: KeyManager, downstream: Recorder, issued: Any
) -> None:
    async def load(project_id: str) -> Any:
        raise LookupError("the projects table is gone")

    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    with pytest.raises(LookupError, match="projects table"):
        run(ApiKeyMiddleware(downstream, flaky_keys, project_loader=load), scope)


# -- the event loop never waits on the store or argon2 --------------------------------


class SlowStore(InMemoryKeyStore):
    """A store whose lookups by prefix take ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.entered = threading.Event()

    def find_by_prefix(self, prefix: str) -> Any:
        self.entered.set()
        time.sleep(self.delay)
        return super().find_by_prefix(prefix)


def test_cached_keys_are_answered_while_a_request_waits_on_the_store() -> None:
    """While one request waits on a store that takes 200 ms, 50 other
    requests with a cached key are answered at once."""
    store = SlowStore(0.0)
    keys = KeyManager(store, hasher=CountingHasher())
    cached = keys.create("proj_1", "cached")
    cold = keys.create("proj_2", "cold")
    keys.authenticate(cached.key)
    store.delay = 0.2
    app = ApiKeyMiddleware(Recorder(), keys)

    async def go() -> tuple[float, float, list[int], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t"
        ) as client:
            started = time.monotonic()
            slow = asyncio.ensure_future(client.get("/", headers=bearer(cold.key)))
            while not store.entered.is_set():
                await asyncio.sleep(0.001)
            responses = await asyncio.gather(
                *(client.get("/", headers=bearer(cached.key)) for _ in range(50))
            )
            fast_done = time.monotonic() - started
            assert not slow.done()
            cold_status = (await slow).status_code
            return (
                fast_done,
                time.monotonic() - started,
                [r.status_code for r in responses],
                cold_status,
            )

    fast_done, slow_done, statuses, cold_status = asyncio.run(go())
    assert statuses == [200] * 50
    assert cold_status == 200
    assert fast_done < 0.2 <= slow_done
    keys.close()


def test_a_cached_key_takes_no_thread(
    flaky_keys: KeyManager,
    downstream: Recorder,
    issued: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flaky_keys.authenticate(issued.key)

    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a thread hop for a cached key")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)
    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    assert run(ApiKeyMiddleware(downstream, flaky_keys), scope)[0]["status"] == 200


def test_a_cold_key_is_checked_on_a_worker_thread(
    flaky_keys: KeyManager,
    downstream: Recorder,
    issued: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[threading.Thread] = []
    authenticate = flaky_keys._authenticate_token

    def spy(key: str) -> Any:
        threads.append(threading.current_thread())
        return authenticate(key)

    monkeypatch.setattr(flaky_keys, "_authenticate_token", spy)
    scope = http_scope(headers=[(b"authorization", b"Bearer " + issued.key.encode())])
    assert run(ApiKeyMiddleware(downstream, flaky_keys), scope)[0]["status"] == 200
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()


def test_waiting_for_a_thread_is_bounded_by_the_store_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every thread taken by a hung store, a request waits at most
    store_timeout for one, then gets the 503."""
    monkeypatch.setattr("vemetric_auth.asgi._THREADS", 1)
    release = threading.Event()

    class HungStore(InMemoryKeyStore):
        def find_by_prefix(self, prefix: str) -> Any:
            release.wait(10)
            return super().find_by_prefix(prefix)

    keys = KeyManager(HungStore(), hasher=CountingHasher(), store_timeout=0.3)
    app = ApiKeyMiddleware(Recorder(), keys)

    async def go() -> list[tuple[int, float]]:
        started = time.monotonic()

        async def one() -> tuple[int, float]:
            response = await _request(app, "GET", "/", headers=bearer(generate_key()))
            return response.status_code, time.monotonic() - started

        return list(await asyncio.gather(one(), one()))

    try:
        answers = asyncio.run(go())
    finally:
        release.set()
        keys.close()
    assert [status for status, _ in answers] == [503, 503]
    assert all(elapsed < 2 for _, elapsed in answers)


def test_store_failures_logged_through_the_middleware_hold_no_key(
    flaky_store: FlakyStore,
) -> None:
    import logging

    watch = Watch()
    logger = logging.getLogger("vemetric_auth")
    logger.addHandler(watch)
    evidence = Evidence(watch)
    try:
        keys = KeyManager(flaky_store, hasher=CountingHasher())
        issued = keys.create("p1", "n")
        evidence.keys.append(issued.key)
        scope = http_scope(
            headers=[(b"authorization", b"Bearer " + issued.key.encode())]
        )
        flaky_store.failing = True
        assert run(ApiKeyMiddleware(Recorder(), keys), scope)[0]["status"] == 503
        assert watch.logged
        evidence.assert_no_key_in_any_frame()
    finally:
        logger.removeHandler(watch)


# -- KeyManager.cached ----------------------------------------------------------------


def test_cached_answers_a_fresh_key_without_the_store_or_argon2(
    flaky_keys: KeyManager, flaky_store: FlakyStore, hasher: CountingHasher
) -> None:
    issued = flaky_keys.create("proj_1", "n")
    assert flaky_keys.cached(issued.key) is None  # never verified here
    flaky_keys.authenticate(issued.key)
    calls, verifications = dict(flaky_store.calls), hasher.verifications
    flaky_store.failing = True
    assert flaky_keys.cached(issued.key) == issued.record
    assert (flaky_store.calls, hasher.verifications) == (calls, verifications)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("vem_short", id="short"),
        pytest.param("vem_" + "\udcff" * 32, id="surrogates"),
        pytest.param(None, id="not-a-str"),
    ],
)
def test_cached_says_none_of_what_is_not_a_key(
    flaky_keys: KeyManager, key: Any
) -> None:
    assert flaky_keys.cached(key) is None


def test_cached_says_none_of_a_near_miss_of_a_cached_key(
    flaky_keys: KeyManager,
) -> None:
    issued = flaky_keys.create("p", "n")
    flaky_keys.authenticate(issued.key)

    class Text(str):
        pass

    for near in (issued.key.upper(), " " + issued.key[1:], issued.key[:-1] + "é"):
        assert len(near) == len(issued.key)
        assert flaky_keys.cached(near) is None
    assert flaky_keys.cached(Text(issued.key)) is None  # only a str is a key
    assert flaky_keys.cached(issued.key) == issued.record


def test_cached_says_none_once_a_key_is_stale_revoked_or_the_manager_closed(
    memory_store: InMemoryKeyStore,
) -> None:
    keys = KeyManager(memory_store, hasher=CountingHasher(), cache_ttl=0.05)
    stale = keys.create("p", "stale")
    revoked = keys.create("p", "revoked")
    closed = keys.create("p", "closed")
    for issued in (stale, revoked, closed):
        keys.authenticate(issued.key)
        assert keys.cached(issued.key) is not None
    keys.revoke(revoked.record.id)
    assert keys.cached(revoked.key) is None
    time.sleep(0.06)
    assert keys.cached(stale.key) is None
    keys.authenticate(closed.key)
    keys.close()
    assert keys.cached(closed.key) is None


# -- the asgi extra --------------------------------------------------------------------


def test_without_anyio_the_error_names_the_asgi_extra() -> None:
    done = python({"anyio"}, "import vemetric_auth.asgi")
    assert_raised(done, "ImportError", "pip install 'vemetric-auth[asgi]'")


def test_the_core_imports_no_asgi_module() -> None:
    done = python(
        {"anyio", "starlette", "fastapi"},
        "import vemetric_auth, vemetric_auth.middleware; print('ok')",
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_the_asgi_extra_brings_anyio() -> None:
    from test_extras import extras

    declared = extras()
    assert "anyio" in declared["asgi"]
    assert {"fastapi", "anyio"} <= set(declared["fastapi"])


# -- under uvicorn ---------------------------------------------------------------------

SERVED_APP = """\
import contextlib, os, time

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from vemetric_auth import KeyManager, SQLKeyStore
from vemetric_auth.asgi import ApiKeyMiddleware


class SlowStore(SQLKeyStore):
    def find_by_prefix(self, prefix):
        time.sleep(float(os.environ.get("SLOW_LOOKUPS", "0")))
        return super().find_by_prefix(prefix)


keys = KeyManager(SlowStore("sqlite:///keys.db"))


@contextlib.asynccontextmanager
async def lifespan(app):
    open("started", "w").close()
    yield {"from_lifespan": "kept"}
    open("stopped", "w").close()


async def project(request):
    return JSONResponse(
        {
            "project_id": request.state.project_id,
            "key_id": request.state.api_key.id,
            "lifespan": request.state.from_lifespan,
        }
    )


async def health(request):
    return PlainTextResponse("ok")


async def echo(websocket):
    await websocket.accept()
    await websocket.send_text("hello " + websocket.state.project_id)
    await websocket.close()


app = Starlette(
    routes=[
        Route("/v1/project", project),
        Route("/health", health),
        WebSocketRoute("/ws", echo),
    ],
    lifespan=lifespan,
    middleware=[
        Middleware(ApiKeyMiddleware, keys=keys, exempt_paths=["/health"]),
        Middleware(CORSMiddleware, allow_origins=["https://app.example"]),
    ],
)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(SERVED_APP, encoding="utf-8")
    return tmp_path


def make_key(directory: Path, project_id: str) -> Any:
    store = SQLKeyStore(f"sqlite:///{directory / 'keys.db'}")
    try:
        return KeyManager(store, hasher=CountingHasher()).create(project_id, "uvicorn")
    finally:
        store.close()


@pytest.mark.slow
def test_under_uvicorn(app_dir: Path) -> None:
    """Over real HTTP: the contract's answers byte for byte, HEAD, a CORS
    preflight, websockets refused before accept or let in, the lifespan."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    issued = make_key(app_dir, "proj_1")
    wsgi_answer = ErrorAnswer(MissingApiKey(), realm="vemetric", retry_after=5)
    with uvicorn_serving(app_dir) as server:
        assert (app_dir / "started").exists()
        status, headers, body = server.request("GET", "/v1/project")
        assert (status, body) == (401, wsgi_answer.body)
        for name, value in wsgi_answer.headers:
            assert headers[name.lower()] == value
        status, headers, body = server.request("HEAD", "/v1/project")
        assert (status, body) == (401, b"")
        assert headers["content-length"] == str(len(wsgi_answer.body))
        status, _, body = server.request("GET", "/v1/project", bearer(issued.key))
        assert status == 200
        assert json.loads(body) == {
            "project_id": "proj_1",
            "key_id": issued.record.id,
            "lifespan": "kept",
        }
        status, headers, body = server.request(
            "OPTIONS", "/v1/project", PREFLIGHT_HEADERS
        )
        assert (status, body) == (200, b"")
        assert headers["access-control-allow-origin"] == "https://app.example"

        url = f"ws://127.0.0.1:{server.port}/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, open_timeout=10).close()
        assert refused.value.response.status_code == 401
        assert refused.value.response.body == wsgi_answer.body
        assert (
            refused.value.response.headers["WWW-Authenticate"] == (CHALLENGES[MISSING])
        )
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=bearer(generate_key()), open_timeout=10)
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["error"]["message"] == INVALID
        with connect(url, additional_headers=bearer(issued.key), open_timeout=10) as ws:
            assert ws.recv(timeout=10) == "hello proj_1"
    assert (app_dir / "stopped").exists()
    assert issued.key not in server.log()


@pytest.mark.slow
def test_under_uvicorn_cached_keys_do_not_wait_for_a_slow_store(
    app_dir: Path,
) -> None:
    """While one request waits on a store that takes a second, 50 requests
    with a cached key, on connections opened beforehand, are all answered
    first. (The 200 ms of the in-process test would measure the client's
    and the server's own throughput on a busy two-core machine: 50 requests
    through pure-Python HTTP on both sides take about that long.)"""
    cached = make_key(app_dir, "proj_1")
    cold = make_key(app_dir, "proj_2")
    env = {**os.environ, "SLOW_LOOKUPS": "1.0"}
    with uvicorn_serving(app_dir, env=env) as server:
        base = f"http://127.0.0.1:{server.port}"

        async def go() -> tuple[list[float], float]:
            limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
            async with httpx.AsyncClient(
                base_url=base, limits=limits, timeout=10
            ) as client:
                # Verify the cached key, and open the connections beforehand.
                await client.get("/v1/project", headers=bearer(cached.key))
                warm = await asyncio.gather(*(client.get("/health") for _ in range(51)))
                assert {r.status_code for r in warm} == {200}
                started = time.monotonic()

                async def timed(key: str) -> float:
                    response = await client.get("/v1/project", headers=bearer(key))
                    assert response.status_code == 200
                    return time.monotonic() - started

                slow = asyncio.ensure_future(timed(cold.key))
                await asyncio.sleep(0.02)  # the cold request reaches the store
                fast = await asyncio.gather(*(timed(cached.key) for _ in range(50)))
                return fast, await slow

        fast, slow = asyncio.run(go())
    assert slow >= 1.0
    assert max(fast) < slow


def test_no_key_in_any_log_record_or_repr(
    flaky_keys: KeyManager, flaky_store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Every outcome through the middleware, every logger at DEBUG: the log
    records, their exceptions and the reprs of what the middleware holds
    never show a key."""
    import logging
    import traceback

    issued = flaky_keys.create("proj_1", "logs")
    unknown = generate_key()
    wrong = issued.key[:12] + ("a" if issued.key[12] != "a" else "b") + issued.key[13:]
    guarded = ApiKeyMiddleware(Recorder(), flaky_keys, project_loader=lambda p: None)
    plain = ApiKeyMiddleware(Recorder(), flaky_keys)
    caplog.set_level(logging.DEBUG)
    for app in (guarded, plain):
        for key in (issued.key, unknown, wrong, issued.key + " extra"):
            run(
                app, http_scope(headers=[(b"authorization", b"Bearer " + key.encode())])
            )
    flaky_store.failing = True
    run(plain, http_scope(headers=[(b"authorization", b"Bearer " + unknown.encode())]))
    texts = [record.getMessage() for record in caplog.records]
    texts += [
        "".join(traceback.format_exception(*record.exc_info))
        for record in caplog.records
        if record.exc_info
    ]
    texts += [repr(guarded), repr(guarded.gate), repr(flaky_keys)]
    assert caplog.records
    for secret in (issued.key, unknown, wrong):
        assert not [text for text in texts if secret[12:] in text]


def test_a_preflight_answers_only_the_apps_cors_headers(flaky_keys: KeyManager) -> None:
    """As in WSGI: validators, sizes, cookies and data headers of a protected
    resource never reach a client without a key."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"access-control-allow-origin", b"https://app.example"),
                    (b"Vary", b"Origin"),
                    (b"etag", b'"report-30-1700000000"'),
                    (b"x-total-count", b"48213"),
                    (b"set-cookie", b"session=abc"),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": SECRET_BODY})

    messages = run(ApiKeyMiddleware(app, flaky_keys), options_scope(**PREFLIGHT))
    assert messages[0]["headers"] == [
        (b"access-control-allow-origin", b"https://app.example"),
        (b"Vary", b"Origin"),
        (b"content-type", b"application/json"),
        (b"content-length", b"0"),
    ]
    assert messages[1] == {"type": "http.response.body", "body": b""}
