"""The HTTP contract's table (``tests/contract.py``) against every integration.

The same cases run on the WSGI middleware, the Flask extension, the ASGI
middleware and the FastAPI dependency, each in front of an application
that records what it was given; every answer is compared with the contract
and, byte for byte, with the answers of the other integrations.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import CountingHasher, FlakyStore
from contract import (
    CHALLENGES,
    HEADER_CASES,
    INVALID,
    MISSING,
    PREFLIGHT_HEADERS,
    UNAVAILABLE_BODY,
    VALID_TEMPLATES,
)
from fastapi import Depends, FastAPI
from flask import Flask, g
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from werkzeug.test import Client

from vemetric_auth import ApiKeyMiddleware, KeyManager, StoreUnavailable
from vemetric_auth.asgi import ApiKeyMiddleware as AsgiApiKeyMiddleware
from vemetric_auth.fastapi import ProjectBearer, add_exception_handlers
from vemetric_auth.flask import VemetricAuth

INTEGRATIONS = ["wsgi", "flask", "asgi", "fastapi"]
PATH = "/v1/project"
Loader = Callable[[str], Any]


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(found) <= 1, (name, found)
        return found[0] if found else None

    def same_as(self) -> tuple[int, bytes, dict[str, str | None]]:
        """What must be equal between integrations."""
        names = ["Content-Type", "Content-Length", "Cache-Control"]
        names += ["WWW-Authenticate", "Retry-After"]
        return self.status, self.body, {name: self.header(name) for name in names}


@dataclass
class Served:
    """An integration in front of an app that records what each request saw:
    the key, the project id and the project (``None`` where it saw none)."""

    kind: str
    send: Callable[[str, str, list[tuple[str, str]]], Answer]
    reached: list[tuple[Any, Any, Any]] = field(default_factory=list)

    def request(
        self,
        header: str | None = None,
        *,
        method: str = "GET",
        path: str = PATH,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Answer:
        sent = list(headers)
        if header is not None:
            sent.append(("Authorization", header))
        return self.send(method, path, sent)


# -- the four integrations, each with an app at PATH and an exempt /health ------


def wsgi(keys: KeyManager, loader: Loader | None) -> Served:
    served = Served("wsgi", lambda *a: Answer(0, [], b""))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        served.reached.append(
            (
                environ.get("vemetric_auth.api_key"),
                environ.get("vemetric_auth.project_id"),
                environ.get("vemetric_auth.project"),
            )
        )
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    client = Client(
        ApiKeyMiddleware(app, keys, exempt_paths=["/health"], project_loader=loader)
    )

    def send(method: str, path: str, headers: list[tuple[str, str]]) -> Answer:
        environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers}
        response = client.open(path, method=method, environ_overrides=environ)
        return Answer(response.status_code, list(response.headers), response.data)

    served.send = send
    return served


def flask(keys: KeyManager, loader: Loader | None) -> Served:
    served = Served("flask", lambda *a: Answer(0, [], b""))
    app = Flask("contract")
    app.config["VEMETRIC_AUTH_EXEMPT_PATHS"] = ["/health"]
    auth = VemetricAuth(app, keys=keys)
    if loader is not None:
        auth.project_loader(loader)

    @app.get(PATH)
    @app.get("/health")
    def view() -> str:
        project = g.get("project") if loader is not None else None
        served.reached.append((g.get("api_key"), g.get("project_id"), project))
        return "hello"

    client = app.test_client()

    def send(method: str, path: str, headers: list[tuple[str, str]]) -> Answer:
        environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers}
        response = client.open(path, method=method, environ_overrides=environ)
        return Answer(response.status_code, list(response.headers), response.data)

    served.send = send
    return served


def asgi_send(app: Any) -> Callable[[str, str, list[tuple[str, str]]], Answer]:
    """Requests through httpx's ASGI transport; headers sent as latin-1, as
    a server reads them off the wire."""

    def send(method: str, path: str, headers: list[tuple[str, str]]) -> Answer:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

        async def go() -> Answer:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as client:
                response = await client.request(method, path, headers=raw)
                return Answer(
                    response.status_code,
                    list(response.headers.multi_items()),
                    response.content,
                )

        return asyncio.run(go())

    return send


def asgi(keys: KeyManager, loader: Loader | None) -> Served:
    served = Served("asgi", lambda *a: Answer(0, [], b""))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = scope.get("state", {})
        served.reached.append(
            (
                scope.get("vemetric_auth.api_key"),
                scope.get("vemetric_auth.project_id"),
                scope.get("vemetric_auth.project"),
            )
        )
        # request.state mirrors the scope entries (the project id stands for
        # the project without a loader).
        if "vemetric_auth.api_key" in scope:
            assert state["api_key"] is scope["vemetric_auth.api_key"]
            assert state["project_id"] == scope["vemetric_auth.project_id"]
            expected = scope.get("vemetric_auth.project", state["project_id"])
            assert state["project"] == expected
        else:
            assert "api_key" not in state
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"hello"})

    guarded = AsgiApiKeyMiddleware(
        app, keys, exempt_paths=["/health"], project_loader=loader
    )
    served.send = asgi_send(guarded)
    return served


def fastapi(keys: KeyManager, loader: Loader | None) -> Served:
    served = Served("fastapi", lambda *a: Answer(0, [], b""))
    project_of = ProjectBearer(keys, project_loader=loader)
    app = FastAPI()
    add_exception_handlers(app)

    @app.api_route(PATH, methods=["GET", "HEAD"])
    async def view(
        request: Request,
        project: Any = Depends(project_of),  # noqa: B008 (a local: no Annotated)
    ) -> PlainTextResponse:
        state = request.state
        loaded = project if loader is not None else None
        served.reached.append((state.api_key, state.project_id, loaded))
        return PlainTextResponse("hello")

    @app.get("/health")
    async def health() -> PlainTextResponse:
        served.reached.append((None, None, None))
        return PlainTextResponse("hello")

    served.send = asgi_send(app)
    return served


BUILDERS: dict[str, Callable[[KeyManager, Loader | None], Served]] = {
    "wsgi": wsgi,
    "flask": flask,
    "asgi": asgi,
    "fastapi": fastapi,
}


@pytest.fixture(params=INTEGRATIONS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(kind: str, flaky_keys: KeyManager) -> Served:
    return BUILDERS[kind](flaky_keys, None)


@pytest.fixture
def issued(flaky_keys: KeyManager) -> Any:
    return flaky_keys.create("proj_1", "contract")


def assert_401(answer: Answer, message: str) -> None:
    assert answer.status == 401
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Cache-Control") == "no-store"
    assert json.loads(answer.body) == {
        "error": {"code": "UNAUTHORIZED", "message": message}
    }
    assert answer.header("Content-Length") == str(len(answer.body))
    assert answer.header("WWW-Authenticate") == CHALLENGES[message]
    assert answer.header("Retry-After") is None


# -- the table ----------------------------------------------------------------------


@pytest.mark.parametrize(("header", "message"), HEADER_CASES)
def test_every_row_of_the_contract(
    served: Served,
    flaky_store: FlakyStore,
    hasher: CountingHasher,
    header: str | None,
    message: str,
) -> None:
    assert_401(served.request(header), message)
    assert served.reached == []
    if message != INVALID:
        # Cases 1 to 3 touch neither the store nor the hasher.
        assert flaky_store.calls == {}
    assert hasher.verifications == 0


@pytest.mark.parametrize(("header", "message"), HEADER_CASES)
def test_every_integration_answers_byte_for_byte_alike(
    flaky_keys: KeyManager, header: str | None, message: str
) -> None:
    answers = {
        kind: build(flaky_keys, None).request(header)
        for kind, build in BUILDERS.items()
    }
    expected = answers["wsgi"].same_as()
    for kind, answer in answers.items():
        assert answer.same_as() == expected, kind


@pytest.mark.parametrize("template", VALID_TEMPLATES)
def test_a_valid_key_reaches_the_app_with_its_project(
    served: Served, issued: Any, template: str
) -> None:
    answer = served.request(template.format(issued.key))
    assert (answer.status, answer.body) == (200, b"hello")
    assert served.reached == [(issued.record, "proj_1", None)]


def test_a_wrong_secret_and_a_revoked_key_are_case_4(
    served: Served, flaky_keys: KeyManager, issued: Any
) -> None:
    wrong = issued.key[:12] + ("a" if issued.key[12] != "a" else "b") + issued.key[13:]
    assert_401(served.request("Bearer " + wrong), INVALID)
    assert served.request("Bearer " + issued.key).status == 200
    flaky_keys.revoke(issued.record.id)
    assert_401(served.request("Bearer " + issued.key), INVALID)
    assert len(served.reached) == 1


def test_a_store_failure_is_503_with_retry_after(
    served: Served, flaky_store: FlakyStore, issued: Any
) -> None:
    flaky_store.failing = True
    answer = served.request("Bearer " + issued.key)
    assert answer.status == 503
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Cache-Control") == "no-store"
    assert json.loads(answer.body) == UNAVAILABLE_BODY
    assert answer.header("Retry-After") == "5"
    assert answer.header("WWW-Authenticate") is None
    assert served.reached == []


@pytest.mark.parametrize(
    "header",
    [pytest.param(None, id="missing"), pytest.param("Bearer x", id="format")],
)
def test_head_gets_the_status_and_headers_without_a_body(
    served: Served, header: str | None
) -> None:
    get = served.request(header)
    head = served.request(header, method="HEAD")
    assert head.status == 401
    assert head.body == b""
    assert head.header("WWW-Authenticate") == get.header("WWW-Authenticate")
    assert head.header("Content-Length") == get.header("Content-Length")


def test_an_exempt_path_passes_without_a_key(
    served: Served, flaky_store: FlakyStore
) -> None:
    answer = served.request(path="/health")
    assert (answer.status, answer.body) == (200, b"hello")
    assert served.reached == [(None, None, None)]
    assert flaky_store.calls == {}


@pytest.mark.parametrize(
    ("projects", "status"),
    [
        pytest.param({"proj_1": {"name": "Shop"}}, 200, id="project-exists"),
        pytest.param({}, 401, id="project-gone"),
    ],
)
def test_the_project_loader_gives_the_project_or_refuses(
    kind: str,
    flaky_keys: KeyManager,
    issued: Any,
    projects: dict[str, Any],
    status: int,
) -> None:
    served = BUILDERS[kind](flaky_keys, projects.get)
    answer = served.request("Bearer " + issued.key)
    assert answer.status == status
    if status == 401:
        assert_401(answer, INVALID)
        assert served.reached == []
    else:
        assert served.reached == [(issued.record, "proj_1", {"name": "Shop"})]


def test_a_loader_raising_store_unavailable_is_503(
    kind: str, flaky_keys: KeyManager, issued: Any
) -> None:
    def loader(project_id: str) -> Any:
        raise StoreUnavailable()

    served = BUILDERS[kind](flaky_keys, loader)
    answer = served.request("Bearer " + issued.key)
    assert answer.status == 503
    assert json.loads(answer.body) == UNAVAILABLE_BODY
    assert served.reached == []


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_preflight_gets_the_apps_status_and_headers_never_its_body(
    kind: str, flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    served = BUILDERS[kind](flaky_keys, None)
    answer = served.request(headers=PREFLIGHT_HEADERS.items(), method="OPTIONS")
    assert answer.status == 200
    assert answer.body == b""
    assert answer.header("Content-Length") == "0"
    assert served.reached == [(None, None, None)]
    assert flaky_store.calls == {}
    # Not a preflight: a key is needed.
    origin_only = [("Origin", "https://app.example")]
    assert_401(served.request(headers=origin_only, method="OPTIONS"), MISSING)
