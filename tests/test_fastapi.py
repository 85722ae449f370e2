"""The FastAPI dependencies, ``vemetric_auth.fastapi`` (SPEC section 9).

The contract's table runs in ``tests/test_contract.py``; here: what the
dependencies return, the OpenAPI security scheme, the exception handlers,
websockets, and ``examples/fastapi_app.py`` in process and under uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CountingHasher, FlakyStore
from contract import CHALLENGES, INVALID, MISSING, UNAVAILABLE_BODY
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from starlette.requests import Request
from test_extras import assert_raised, python
from uvicorn_server import uvicorn_serving

from vemetric_auth import ApiKey, KeyManager, SQLKeyStore, generate_key
from vemetric_auth.fastapi import (
    ApiKeyBearer,
    ProjectBearer,
    RequestRefused,
    add_exception_handlers,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import fastapi_app  # noqa: E402

PROJECTS = {"proj_1": {"id": "proj_1", "name": "Shop"}}


async def load_project(project_id: str) -> dict[str, str] | None:
    return PROJECTS.get(project_id)


def request(app: Any, method: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t"
        ) as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


@pytest.fixture
def issued(flaky_keys: KeyManager) -> Any:
    return flaky_keys.create("proj_1", "fastapi")


@pytest.fixture
def app(flaky_keys: KeyManager) -> FastAPI:
    api_key = ApiKeyBearer(flaky_keys)
    project_of = ProjectBearer(flaky_keys, project_loader=load_project)
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/v1/key")
    async def key(key: ApiKey = Depends(api_key)) -> dict[str, str]:  # noqa: B008
        return {"id": key.id, "project_id": key.project_id}

    @app.get("/v1/project")
    async def project(
        request: Request,
        project: Any = Depends(project_of),  # noqa: B008
    ) -> dict[str, Any]:
        return {
            "project": project,
            "state": [
                request.state.api_key.id,
                request.state.project_id,
                request.state.project,
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


# -- what the dependencies give ---------------------------------------------------


def test_the_key_dependency_returns_the_api_key(app: FastAPI, issued: Any) -> None:
    response = request(app, "GET", "/v1/key", issued.key)
    assert response.json() == {"id": issued.record.id, "project_id": "proj_1"}


def test_the_project_dependency_returns_the_loaded_project_and_fills_the_state(
    app: FastAPI, issued: Any
) -> None:
    response = request(app, "GET", "/v1/project", issued.key)
    assert response.json() == {
        "project": PROJECTS["proj_1"],
        "state": [issued.record.id, "proj_1", PROJECTS["proj_1"]],
    }


def test_a_plain_loader_works_too(flaky_keys: KeyManager, issued: Any) -> None:
    project_of = ProjectBearer(flaky_keys, project_loader=PROJECTS.get)
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/p")
    async def view(project: Any = Depends(project_of)) -> Any:  # noqa: B008
        return project

    assert request(app, "GET", "/p", issued.key).json() == PROJECTS["proj_1"]


def test_without_a_loader_the_project_is_the_project_id(
    flaky_keys: KeyManager, issued: Any
) -> None:
    project_of = ProjectBearer(flaky_keys)
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/p")
    async def view(project: Any = Depends(project_of)) -> Any:  # noqa: B008
        return project

    assert request(app, "GET", "/p", issued.key).json() == "proj_1"


def test_a_key_of_a_project_that_is_gone_is_refused_by_the_project_dependency(
    app: FastAPI, flaky_keys: KeyManager
) -> None:
    stranger = flaky_keys.create("proj_gone", "n").key
    response = request(app, "GET", "/v1/project", stranger)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == INVALID
    # The key dependency has no loader: the key itself is valid.
    assert request(app, "GET", "/v1/key", stranger).status_code == 200


# -- refusals: the contract's answers, never {"detail": ...} -------------------------


@pytest.mark.parametrize("path", ["/v1/key", "/v1/project"])
def test_refusals_are_the_contracts_answers(
    app: FastAPI, flaky_store: FlakyStore, issued: Any, path: str
) -> None:
    response = request(app, "GET", path)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "UNAUTHORIZED", "message": MISSING}}
    assert response.headers["www-authenticate"] == CHALLENGES[MISSING]
    assert response.headers["cache-control"] == "no-store"
    assert "detail" not in response.text
    flaky_store.failing = True
    response = request(app, "GET", path, issued.key)
    assert response.status_code == 503
    assert response.json() == UNAVAILABLE_BODY
    assert response.headers["retry-after"] == "5"


def test_realm_and_retry_after_are_the_dependencys(
    flaky_keys: KeyManager, flaky_store: FlakyStore, issued: Any
) -> None:
    api_key = ApiKeyBearer(flaky_keys, realm="shop", retry_after=30)
    app = FastAPI(dependencies=[Depends(api_key)])
    add_exception_handlers(app)

    @app.get("/x")
    async def view() -> str:
        return "x"

    response = request(app, "GET", "/x")
    assert response.headers["www-authenticate"] == 'Bearer realm="shop"'
    flaky_store.failing = True
    assert request(app, "GET", "/x", issued.key).headers["retry-after"] == "30"


def test_app_and_router_dependencies_protect_every_route(
    flaky_keys: KeyManager, issued: Any
) -> None:
    api_key = ApiKeyBearer(flaky_keys)
    router = APIRouter(dependencies=[Depends(api_key)])

    @router.get("/a")
    async def a() -> str:
        return "a"

    app = FastAPI()
    add_exception_handlers(app)
    app.include_router(router)
    assert request(app, "GET", "/a").status_code == 401
    assert request(app, "GET", "/a", issued.key).json() == "a"


def test_without_the_handlers_a_refusal_fails_loudly(flaky_keys: KeyManager) -> None:
    """Never FastAPI's {"detail": ...}, never a request let through: a 500,
    whose error says what to do."""
    api_key = ApiKeyBearer(flaky_keys)
    app = FastAPI()
    reached: list[str] = []

    @app.get("/x")
    async def view(key: ApiKey = Depends(api_key)) -> str:  # noqa: B008
        reached.append("view")
        return "x"

    with pytest.raises(RuntimeError, match=r"add_exception_handlers\(app\)"):
        request(app, "GET", "/x")
    assert reached == []


def test_the_refusal_carries_its_error_and_never_the_key(
    flaky_keys: KeyManager,
) -> None:
    api_key = ApiKeyBearer(flaky_keys)
    key = generate_key()
    caught: list[RequestRefused] = []
    app = FastAPI()

    async def keep(conn: Any, exc: Exception) -> Any:
        assert isinstance(exc, RequestRefused)
        caught.append(exc)
        from starlette.responses import Response

        return Response(status_code=exc.answer.status_code)

    app.add_exception_handler(RequestRefused, keep)

    @app.get("/x")
    async def view(k: ApiKey = Depends(api_key)) -> str:  # noqa: B008
        return "x"

    assert request(app, "GET", "/x", key).status_code == 401
    (refused,) = caught
    assert refused.error.code == "UNAUTHORIZED"
    assert key not in repr(refused) + str(refused) + repr(api_key)
    assert key[12:] not in repr(vars(refused))


# -- the OpenAPI schema ---------------------------------------------------------------


def test_the_schema_declares_one_http_bearer_scheme_for_both_dependencies(
    app: FastAPI,
) -> None:
    schema = app.openapi()
    assert schema["components"]["securitySchemes"] == {
        "ApiKeyBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "vem_ followed by 32 characters of [a-z0-9]",
            "description": (
                "A vemetric-auth API key, sent as `Authorization: Bearer vem_...`."
            ),
        }
    }
    paths = schema["paths"]
    assert paths["/v1/key"]["get"]["security"] == [{"ApiKeyBearer": []}]
    assert paths["/v1/project"]["get"]["security"] == [{"ApiKeyBearer": []}]
    assert "security" not in paths["/health"]["get"]


def test_the_scheme_name_and_description_can_be_chosen(flaky_keys: KeyManager) -> None:
    api_key = ApiKeyBearer(flaky_keys, scheme_name="vemetric", description="Yours.")
    app = FastAPI()

    @app.get("/x")
    async def view(key: ApiKey = Depends(api_key)) -> str:  # noqa: B008
        return "x"

    schemes = app.openapi()["components"]["securitySchemes"]
    assert schemes["vemetric"]["description"] == "Yours."
    assert schemes["vemetric"]["scheme"] == "bearer"


def test_the_docs_authorize_button_sends_the_key_the_dependency_reads(
    app: FastAPI, issued: Any
) -> None:
    """Swagger UI sends `Authorization: Bearer <what the user typed>` for an
    HTTP bearer scheme: the header the dependency reads."""
    scheme = app.openapi()["components"]["securitySchemes"]["ApiKeyBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert request(app, "GET", "/docs").status_code == 200
    assert request(app, "GET", "/v1/key", issued.key).status_code == 200


# -- websockets ---------------------------------------------------------------------


def websocket_app(flaky_keys: KeyManager) -> FastAPI:
    api_key = ApiKeyBearer(flaky_keys)
    app = FastAPI()
    add_exception_handlers(app)

    @app.websocket("/ws")
    async def echo(
        websocket: WebSocket,
        key: ApiKey = Depends(api_key),  # noqa: B008
    ) -> None:
        await websocket.accept()
        await websocket.send_text(key.project_id)
        await websocket.close()

    return app


def drive_websocket(app: Any, key: str | None, *, denial: bool) -> list[dict[str, Any]]:
    headers = [] if key is None else [(b"authorization", f"Bearer {key}".encode())]
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "subprotocols": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "extensions": {"websocket.http.response": {}} if denial else {},
    }
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_websocket_without_a_key_is_denied_before_accept(
    flaky_keys: KeyManager,
) -> None:
    sent = drive_websocket(websocket_app(flaky_keys), None, denial=True)
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[0]["status"] == 401
    assert dict(sent[0]["headers"])[b"www-authenticate"] == CHALLENGES[MISSING].encode()
    assert json.loads(sent[1]["body"])["error"]["message"] == MISSING
    sent = drive_websocket(websocket_app(flaky_keys), None, denial=False)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_a_websocket_with_a_key_is_accepted(
    flaky_keys: KeyManager, issued: Any
) -> None:
    sent = drive_websocket(websocket_app(flaky_keys), issued.key, denial=True)
    assert [m["type"] for m in sent][:2] == ["websocket.accept", "websocket.send"]
    assert sent[1]["text"] == "proj_1"


# -- the fastapi extra ------------------------------------------------------------------


def test_without_fastapi_the_error_names_the_fastapi_extra() -> None:
    done = python({"fastapi"}, "import vemetric_auth.fastapi")
    assert_raised(done, "ImportError", "pip install 'vemetric-auth[fastapi]'")


# -- examples/fastapi_app.py ----------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'example.db'}"


@pytest.fixture
def example(database_url: str) -> Any:
    app = fastapi_app.create_app(database_url)
    yield app
    app.state.keys.close()
    app.state.keys.store.close()
    app.state.projects.engine.dispose()


def test_the_example_answers_with_the_keys_project(
    example: FastAPI, database_url: str
) -> None:
    projects = example.state.projects
    projects.add("4232882524803099", "Vemetric", "vemetric.com")
    keys = KeyManager(SQLKeyStore(database_url), hasher=CountingHasher())
    key = keys.create("4232882524803099", "dashboard").key
    response = request(example, "GET", "/v1/project", key)
    assert response.status_code == 200
    project = response.json()["project"]
    assert (project["id"], project["name"], project["domain"]) == (
        "4232882524803099",
        "Vemetric",
        "vemetric.com",
    )
    assert request(example, "GET", "/v1/project").status_code == 401
    assert request(example, "GET", "/health").json() == {"status": "ok"}
    projects.delete("4232882524803099")
    response = request(example, "GET", "/v1/project", key)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == INVALID
    keys.store.close()  # type: ignore[attr-defined]


def test_the_example_answers_503_while_its_projects_database_is_down(
    example: FastAPI, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    keys = KeyManager(SQLKeyStore(database_url), hasher=CountingHasher())
    key = keys.create("proj_1", "n").key

    def down(project_id: str) -> Any:
        raise OperationalError("SELECT", {}, Exception("the database is down"))

    monkeypatch.setattr(example.state.projects, "get", down)
    response = request(example, "GET", "/v1/project", key)
    assert response.status_code == 503
    assert response.json() == UNAVAILABLE_BODY
    keys.store.close()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_example_under_uvicorn(tmp_path: Path) -> None:
    """Its add-project command, then the app served by uvicorn's factory."""
    env = {
        **os.environ,
        "VEMETRIC_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
    }
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "fastapi_app.py"),
            "add-project",
            "p1",
            "Shop",
            "shop.example",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "project p1: Shop (shop.example)\n")
    store = SQLKeyStore(env["VEMETRIC_AUTH_DATABASE_URL"])
    key = KeyManager(store, hasher=CountingHasher()).create("p1", "uvicorn").key
    store.close()
    with uvicorn_serving(
        tmp_path,
        "fastapi_app:create_app",
        "--factory",
        "--app-dir",
        str(EXAMPLES),
        env=env,
    ) as server:
        status, _, body = server.request(
            "GET", "/v1/project", {"Authorization": f"Bearer {key}"}
        )
        assert status == 200
        assert json.loads(body)["project"]["name"] == "Shop"
        status, headers, body = server.request("GET", "/v1/project")
        assert status == 401
        assert headers["www-authenticate"] == CHALLENGES[MISSING]
        assert "detail" not in body.decode()
        status, _, body = server.request("GET", "/openapi.json")
        assert json.loads(body)["components"]["securitySchemes"]["ApiKeyBearer"]
    assert key not in server.log()
