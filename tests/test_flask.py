from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import CountingHasher, FlakyStore
from flask import Blueprint, Flask, g, request
from werkzeug.test import Client, TestResponse

from vemetric_auth import (
    ApiKeyMiddleware,
    InMemoryKeyStore,
    IssuedKey,
    KeyManager,
    SQLKeyStore,
    StoreUnavailable,
)
from vemetric_auth.flask import VemetricAuth

MISSING = "Missing API key. Use Authorization: Bearer <key>"
MALFORMED = "Malformed Authorization header. Use Bearer <key>"
FORMAT = "Invalid API key format"
INVALID = "Invalid or revoked API key"
UNKNOWN_KEY = "vem_" + "0" * 32
ISSUED = object()  # stands for "Bearer <the issued key>" in the tables below
REVOKED = object()  # stands for "Bearer <a revoked key>"
PREFLIGHT_HEADERS = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "GET",
}


def ok_app(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def build_app(
    keys: KeyManager | None = None, config: dict[str, Any] | None = None
) -> tuple[Flask, VemetricAuth]:
    """An app with a protected /v1/project and an exempt /health."""
    app = Flask(__name__)
    app.config.update(TESTING=True, **(config or {}))
    auth = VemetricAuth(app, keys=keys)

    @app.get("/v1/project")
    def project() -> dict[str, Any]:
        return {
            "project": g.project,
            "project_id": g.project_id,
            "api_key": g.api_key.id,
            "environ": [
                request.environ["vemetric_auth.project_id"],
                request.environ["vemetric_auth.api_key"].id,
            ],
        }

    @app.get("/health")
    @auth.exempt
    def health() -> dict[str, Any]:
        return {"ok": True, "api_key": g.get("api_key")}

    return app, auth


@pytest.fixture
def issued(flaky_keys: KeyManager) -> IssuedKey:
    return flaky_keys.create("proj_1", "test key")


@pytest.fixture
def revoked(flaky_keys: KeyManager) -> IssuedKey:
    issued = flaky_keys.create("proj_1", "revoked key")
    flaky_keys.revoke(issued.record.id)
    return issued


@pytest.fixture
def app(flaky_keys: KeyManager) -> Flask:
    return build_app(flaky_keys)[0]


@pytest.fixture
def middleware(flaky_keys: KeyManager) -> Client:
    return Client(ApiKeyMiddleware(ok_app, flaky_keys))


def answer(response: TestResponse) -> dict[str, Any]:
    """What the contract fixes of an error response."""
    return {
        "status": response.status_code,
        "content_type": response.headers.get("Content-Type"),
        "www_authenticate": response.headers.get("WWW-Authenticate"),
        "retry_after": response.headers.get("Retry-After"),
        "cache_control": response.headers.get("Cache-Control"),
        "body": json.loads(response.data),
    }


def expected_401(message: str, bearer_error: str | None) -> dict[str, Any]:
    challenge = 'Bearer realm="vemetric"'
    if bearer_error is not None:
        challenge += f', error="{bearer_error}"'
    return {
        "status": 401,
        "content_type": "application/json",
        "www_authenticate": challenge,
        "retry_after": None,
        "cache_control": "no-store",
        "body": {"error": {"code": "UNAUTHORIZED", "message": message}},
    }


def authorization(header: object, issued: IssuedKey, revoked: IssuedKey) -> Any:
    if header is ISSUED:
        return {"Authorization": f"Bearer {issued.key}"}
    if header is REVOKED:
        return {"Authorization": f"Bearer {revoked.key}"}
    return {} if header is None else {"Authorization": header}


ERROR_CASES = [
    pytest.param(None, MISSING, None, id="1-no-header"),
    pytest.param("", MISSING, None, id="1-empty"),
    pytest.param(" \t ", MISSING, None, id="1-whitespace"),
    pytest.param("Basic dXNlcjpwYXNz", MALFORMED, "invalid_request", id="2-basic"),
    pytest.param("Bearer", MALFORMED, "invalid_request", id="2-bearer-alone"),
    pytest.param("Bearer vem_short", FORMAT, "invalid_token", id="3-short"),
    pytest.param("bearer " + "VEM_" + "a" * 32, FORMAT, "invalid_token", id="3-upper"),
    pytest.param("Bearer " + UNKNOWN_KEY, INVALID, "invalid_token", id="4-unknown"),
    pytest.param(REVOKED, INVALID, "invalid_token", id="4-revoked"),
]


@pytest.mark.parametrize(("header", "message", "bearer_error"), ERROR_CASES)
def test_errors_are_the_middlewares_responses(
    app: Flask,
    middleware: Client,
    issued: IssuedKey,
    revoked: IssuedKey,
    header: object,
    message: str,
    bearer_error: str | None,
) -> None:
    headers = authorization(header, issued, revoked)
    from_flask = app.test_client().get("/v1/project", headers=headers)
    from_middleware = middleware.get("/v1/project", headers=headers)
    assert answer(from_flask) == answer(from_middleware)
    assert answer(from_flask) == expected_401(message, bearer_error)
    assert from_flask.data == from_middleware.data


@pytest.mark.parametrize(
    "header",
    [pytest.param(ISSUED, id="known-key"), pytest.param(UNKNOWN_KEY, id="unknown")],
)
def test_store_failure_is_the_middlewares_503(
    flaky_keys: KeyManager,
    flaky_store: FlakyStore,
    issued: IssuedKey,
    revoked: IssuedKey,
    header: object,
) -> None:
    # A fresh manager: nothing cached, so the store is asked.
    keys = KeyManager(flaky_store, hasher=CountingHasher())
    app = build_app(keys, {"VEMETRIC_AUTH_RETRY_AFTER": 7})[0]
    middleware = Client(ApiKeyMiddleware(ok_app, keys, retry_after=7))
    flaky_store.failing = True
    if header is UNKNOWN_KEY:
        headers = {"Authorization": f"Bearer {UNKNOWN_KEY}"}
    else:
        headers = authorization(header, issued, revoked)
    from_flask = app.test_client().get("/v1/project", headers=headers)
    from_middleware = middleware.get("/v1/project", headers=headers)
    assert answer(from_flask) == answer(from_middleware)
    assert answer(from_flask) == {
        "status": 503,
        "content_type": "application/json",
        "www_authenticate": None,
        "retry_after": "7",
        "cache_control": "no-store",
        "body": {
            "error": {
                "code": "SERVICE_UNAVAILABLE",
                "message": "Authentication is temporarily unavailable",
            }
        },
    }


def test_success_sets_g_and_the_environ(app: Flask, issued: IssuedKey) -> None:
    response = app.test_client().get(
        "/v1/project", headers={"Authorization": f"Bearer {issued.key}"}
    )
    assert response.status_code == 200
    record = issued.record
    assert response.json == {
        "project": "proj_1",  # no loader: the project id
        "project_id": "proj_1",
        "api_key": record.id,
        "environ": ["proj_1", record.id],
    }


def test_project_loader_result_is_g_project(
    flaky_keys: KeyManager, issued: IssuedKey
) -> None:
    app, auth = build_app(flaky_keys)
    seen: list[str] = []

    @auth.project_loader
    def load(project_id: str) -> dict[str, str]:
        seen.append(project_id)
        return {"id": project_id, "name": "Project One"}

    response = app.test_client().get(
        "/v1/project", headers={"Authorization": f"Bearer {issued.key}"}
    )
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["project"] == {"id": "proj_1", "name": "Project One"}
    assert seen == ["proj_1"]


def test_loader_returning_none_is_case_4(
    flaky_keys: KeyManager, middleware: Client, revoked: IssuedKey, issued: IssuedKey
) -> None:
    app, auth = build_app(flaky_keys)
    auth.project_loader(lambda project_id: None)
    response = app.test_client().get(
        "/v1/project", headers={"Authorization": f"Bearer {issued.key}"}
    )
    revoked_answer = middleware.get(
        "/v1/project", headers={"Authorization": f"Bearer {revoked.key}"}
    )
    assert answer(response) == answer(revoked_answer)
    assert answer(response) == expected_401(INVALID, "invalid_token")


def test_loader_exceptions_propagate_as_the_apps_own(
    flaky_keys: KeyManager, issued: IssuedKey
) -> None:
    app, auth = build_app(flaky_keys)

    @auth.project_loader
    def load(project_id: str) -> Any:
        raise LookupError("projects database is gone")

    headers = {"Authorization": f"Bearer {issued.key}"}
    with pytest.raises(LookupError, match="projects database is gone"):
        app.test_client().get("/v1/project", headers=headers)

    # Without TESTING, the app's own error handling answers: a 500, not a 401.
    app.testing = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/v1/project", headers=headers)
    assert response.status_code == 500


def test_loader_may_answer_503_by_raising_store_unavailable(
    flaky_keys: KeyManager, issued: IssuedKey
) -> None:
    app, auth = build_app(flaky_keys)

    @auth.project_loader
    def load(project_id: str) -> Any:
        raise StoreUnavailable()

    response = app.test_client().get(
        "/v1/project", headers={"Authorization": f"Bearer {issued.key}"}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def wrapped(view: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator of the app's own, made with functools.wraps."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper


def register_exempt(app: Flask, auth: VemetricAuth, order: str) -> None:
    def open_view() -> str:
        return "open"

    if order == "below-route":
        app.get("/open")(auth.exempt(open_view))
    elif order == "above-route":
        auth.exempt(app.get("/open")(open_view))
    elif order == "under-wraps":
        app.get("/open")(wrapped(auth.exempt(open_view)))
    elif order == "add-url-rule":
        app.add_url_rule("/open", view_func=auth.exempt(open_view))
    elif order == "blueprint":
        blueprint = Blueprint("public", __name__)
        blueprint.get("/open")(open_view)
        app.register_blueprint(auth.exempt(blueprint))
    elif order == "nested-blueprint":
        parent = Blueprint("outer", __name__)
        child = Blueprint("inner", __name__)
        child.get("/open")(open_view)
        parent.register_blueprint(child)
        auth.exempt(parent)
        app.register_blueprint(parent)
    elif order == "nested-child-blueprint":
        parent = Blueprint("outer", __name__)
        child = Blueprint("inner", __name__)
        child.get("/open")(open_view)
        parent.register_blueprint(auth.exempt(child))
        app.register_blueprint(parent)
    elif order == "renamed-blueprint":
        blueprint = Blueprint("public", __name__)
        blueprint.get("/open")(open_view)
        app.register_blueprint(auth.exempt(blueprint), name="public_v2")
    elif order == "endpoint-config":
        app.get("/open", endpoint="open_endpoint")(open_view)
    else:
        raise AssertionError(order)


@pytest.mark.parametrize(
    "order",
    [
        pytest.param("below-route", id="exempt-below-route"),
        pytest.param("above-route", id="exempt-above-route"),
        pytest.param("under-wraps", id="exempt-under-a-wraps-decorator"),
        pytest.param("add-url-rule", id="add-url-rule"),
        pytest.param("blueprint", id="blueprint"),
        pytest.param("nested-blueprint", id="nested-blueprint"),
        pytest.param("nested-child-blueprint", id="nested-child-blueprint"),
        pytest.param("renamed-blueprint", id="renamed-blueprint"),
        pytest.param("endpoint-config", id="exempt-endpoints-config"),
    ],
)
def test_exempt_views_pass_without_a_key(keys: KeyManager, order: str) -> None:
    config = {"VEMETRIC_AUTH_EXEMPT_ENDPOINTS": ["open_endpoint"]}
    app, auth = build_app(keys, config)
    register_exempt(app, auth, order)
    client = app.test_client()
    response = client.get("/open")
    assert (response.status_code, response.data) == (200, b"open")
    # Everything else stays protected.
    assert client.get("/v1/project").status_code == 401


def test_an_exempt_blueprint_opens_no_other_blueprint_of_the_same_name(
    keys: KeyManager,
) -> None:
    """One extension, two apps: exempting app A's public "docs" blueprint must
    not open app B's private blueprint that is also called "docs"."""
    auth = VemetricAuth(keys=keys)
    public = Blueprint("docs", __name__)
    public.get("/docs")(lambda: "public")
    private = Blueprint("docs", __name__)
    private.get("/docs")(lambda: "private")
    app_a, app_b = Flask("a"), Flask("b")
    auth.init_app(app_a)
    auth.init_app(app_b)
    app_a.register_blueprint(auth.exempt(public))
    app_b.register_blueprint(private)
    assert app_a.test_client().get("/docs").status_code == 200
    assert app_b.test_client().get("/docs").status_code == 401


def test_exempt_view_gets_no_key_attributes(app: Flask, issued: IssuedKey) -> None:
    client = app.test_client()
    assert client.get("/health").json == {"ok": True, "api_key": None}
    # Even with a key: the exempt view is not authenticated at all.
    response = client.get("/health", headers={"Authorization": f"Bearer {issued.key}"})
    assert response.json == {"ok": True, "api_key": None}


def test_exempt_paths_config(keys: KeyManager) -> None:
    app, _ = build_app(keys, {"VEMETRIC_AUTH_EXEMPT_PATHS": ["/v1/project/public"]})

    @app.get("/v1/project/public")
    def public() -> str:
        return "public"

    client = app.test_client()
    assert client.get("/v1/project/public").status_code == 200
    assert client.get("/v1/project").status_code == 401
    # Exact matches only, as in the middleware.
    assert client.get("/v1/project/public/").status_code == 401


def test_static_files_are_protected_unless_exempted(
    keys: KeyManager, tmp_path: Path
) -> None:
    (tmp_path / "style.css").write_text("body {}")
    for exempt, status in [((), 401), (["static"], 200)]:
        app = Flask(__name__, static_folder=tmp_path, static_url_path="/static")
        app.config["VEMETRIC_AUTH_EXEMPT_ENDPOINTS"] = exempt
        VemetricAuth(app, keys=keys)
        response = app.test_client().get("/static/style.css")
        assert response.status_code == status
        response.close()


@pytest.mark.parametrize(
    ("method", "path", "with_key", "status"),
    [
        pytest.param("GET", "/nowhere", False, 401, id="404-needs-a-key"),
        pytest.param("GET", "/nowhere", True, 404, id="404-with-a-key"),
        pytest.param("POST", "/v1/project", False, 401, id="405-needs-a-key"),
        pytest.param("POST", "/v1/project", True, 405, id="405-with-a-key"),
        pytest.param("GET", "/health/", False, 401, id="unmatched-exempt-lookalike"),
        pytest.param("PREFLIGHT", "/v1/project", False, 200, id="options-passes"),
        pytest.param("PREFLIGHT", "/nowhere", False, 404, id="options-404"),
        pytest.param("OPTIONS", "/v1/project", False, 401, id="plain-options-401"),
        pytest.param("OPTIONS", "/v1/project", True, 200, id="plain-options-key"),
    ],
)
def test_unrouted_requests_and_options(
    app: Flask, issued: IssuedKey, method: str, path: str, with_key: bool, status: int
) -> None:
    headers = {"Authorization": f"Bearer {issued.key}"} if with_key else {}
    if method == "PREFLIGHT":  # a CORS preflight: OPTIONS with both headers
        method = "OPTIONS"
        headers.update(PREFLIGHT_HEADERS)
    response = app.test_client().open(path, method=method, headers=headers)
    assert response.status_code == status


def test_options_can_be_protected(keys: KeyManager) -> None:
    app, _ = build_app(keys, {"VEMETRIC_AUTH_ALLOW_OPTIONS": False})
    response = app.test_client().options("/v1/project")
    assert answer(response) == expected_401(MISSING, None)
    response = app.test_client().options("/v1/project", headers=PREFLIGHT_HEADERS)
    assert answer(response) == expected_401(MISSING, None)


def test_realm_and_retry_after_come_from_the_config(
    flaky_keys: KeyManager, flaky_store: FlakyStore
) -> None:
    config = {"VEMETRIC_AUTH_REALM": "my api", "VEMETRIC_AUTH_RETRY_AFTER": 30}
    app, _ = build_app(flaky_keys, config)
    client = app.test_client()
    response = client.get("/v1/project")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="my api"'
    flaky_store.failing = True
    response = client.get(
        "/v1/project", headers={"Authorization": "Bearer " + UNKNOWN_KEY}
    )
    assert (response.status_code, response.headers["Retry-After"]) == (503, "30")


def test_after_request_functions_see_the_refusals(app: Flask) -> None:
    @app.after_request
    def cors(response: Any) -> Any:
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    response = app.test_client().get("/v1/project")
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_apps_later_before_request_functions_see_only_authenticated_requests(
    app: Flask, issued: IssuedKey
) -> None:
    seen: list[str] = []

    @app.before_request
    def audit() -> None:
        seen.append(g.project_id)

    client = app.test_client()
    assert client.get("/v1/project").status_code == 401
    assert seen == []
    headers = {"Authorization": f"Bearer {issued.key}"}
    assert client.get("/v1/project", headers=headers).status_code == 200
    assert seen == ["proj_1"]


def test_config_defaults_are_set(keys: KeyManager) -> None:
    app, _ = build_app()
    assert {k: v for k, v in app.config.items() if k.startswith("VEMETRIC_AUTH_")} == {
        "VEMETRIC_AUTH_DATABASE_URL": "sqlite:///vemetric_auth.db",
        "VEMETRIC_AUTH_TABLE_NAME": "vemetric_api_keys",
        "VEMETRIC_AUTH_CACHE_TTL": 60.0,
        "VEMETRIC_AUTH_REALM": "vemetric",
        "VEMETRIC_AUTH_RETRY_AFTER": 5,
        "VEMETRIC_AUTH_ALLOW_OPTIONS": True,
        "VEMETRIC_AUTH_EXEMPT_PATHS": (),
        "VEMETRIC_AUTH_EXEMPT_ENDPOINTS": (),
    }


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        pytest.param("VEMETRIC_AUTH_REALM", "", ValueError, id="empty-realm"),
        pytest.param("VEMETRIC_AUTH_REALM", "r\u00e9alm", ValueError, id="realm"),
        pytest.param("VEMETRIC_AUTH_RETRY_AFTER", "5", TypeError, id="retry-str"),
        pytest.param("VEMETRIC_AUTH_RETRY_AFTER", -1, ValueError, id="retry-neg"),
        pytest.param("VEMETRIC_AUTH_ALLOW_OPTIONS", "no", TypeError, id="options"),
        pytest.param("VEMETRIC_AUTH_EXEMPT_PATHS", "/health", TypeError, id="paths"),
        pytest.param("VEMETRIC_AUTH_EXEMPT_ENDPOINTS", [1], TypeError, id="endpoints"),
        pytest.param("VEMETRIC_AUTH_CACHE_TTL", -1, ValueError, id="cache-ttl"),
        pytest.param("VEMETRIC_AUTH_TABLE_NAME", "a b", ValueError, id="table"),
        pytest.param("VEMETRIC_AUTH_DATABASE_URL", "nope", Exception, id="url"),
    ],
)
def test_bad_config_is_refused_at_init_app(key: str, value: Any, error: type) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(error):
        VemetricAuth(app)
    assert "vemetric_auth" not in app.extensions


def test_config_errors_name_the_key() -> None:
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_RETRY_AFTER"] = "5"
    with pytest.raises(TypeError, match="VEMETRIC_AUTH_RETRY_AFTER"):
        VemetricAuth(app)


def test_double_registration_is_refused(keys: KeyManager) -> None:
    app, auth = build_app(keys)
    with pytest.raises(RuntimeError, match="already been registered"):
        auth.init_app(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        VemetricAuth(app, keys=keys)


def test_the_extension_holds_no_app(keys: KeyManager) -> None:
    app, auth = build_app(keys)
    assert app not in vars(auth).values()
    assert not any(isinstance(value, Flask) for value in vars(auth).values())
    state = app.extensions["vemetric_auth"]
    assert state.extension is auth
    assert auth.keys_for(app) is keys


def test_keys_for_an_app_it_does_not_serve(keys: KeyManager) -> None:
    auth = VemetricAuth(keys=keys)
    with pytest.raises(RuntimeError, match="init_app"):
        auth.keys_for(Flask(__name__))
    other_app, _ = build_app(keys)
    with pytest.raises(RuntimeError, match="init_app"):
        auth.keys_for(other_app)


def test_keys_property_is_the_current_apps(keys: KeyManager) -> None:
    app, auth = build_app(keys)
    with app.app_context():
        assert auth.keys is keys


@pytest.fixture
def sql_urls(tmp_path: Path) -> list[str]:
    return [f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db")]


def close_stores(*apps: Flask) -> None:
    for app in apps:
        store = app.extensions["vemetric_auth"].keys.store
        if isinstance(store, SQLKeyStore):
            store.close()


def test_two_apps_one_extension_two_stores(sql_urls: list[str]) -> None:
    auth = VemetricAuth()  # as a module-level extension would be
    apps = []
    for url in sql_urls:
        app = Flask(__name__)
        app.config.update(VEMETRIC_AUTH_DATABASE_URL=url, VEMETRIC_AUTH_CACHE_TTL=5)
        auth.init_app(app)

        @app.get("/whoami")
        def whoami() -> str:
            return str(g.project_id)

        apps.append(app)
    try:
        app_a, app_b = apps
        key_a = auth.keys_for(app_a).create("proj_a", "key of a").key
        key_b = auth.keys_for(app_b).create("proj_b", "key of b").key
        assert auth.keys_for(app_a) is not auth.keys_for(app_b)
        assert auth.keys_for(app_a).cache_ttl == 5

        def get(app: Flask, key: str) -> TestResponse:
            return app.test_client().get(
                "/whoami", headers={"Authorization": f"Bearer {key}"}
            )

        assert get(app_a, key_a).data == b"proj_a"
        assert get(app_b, key_b).data == b"proj_b"
        assert answer(get(app_b, key_a)) == expected_401(INVALID, "invalid_token")
        assert answer(get(app_a, key_b)) == expected_401(INVALID, "invalid_token")
    finally:
        close_stores(*apps)


def test_two_apps_two_extensions(hasher: CountingHasher) -> None:
    keys_a = KeyManager(InMemoryKeyStore(), hasher=hasher)
    keys_b = KeyManager(InMemoryKeyStore(), hasher=hasher)
    app_a, _ = build_app(keys_a)
    app_b, _ = build_app(keys_b, {"VEMETRIC_AUTH_REALM": "b"})
    key_a = keys_a.create("proj_a", "a").key
    headers = {"Authorization": f"Bearer {key_a}"}
    assert app_a.test_client().get("/v1/project", headers=headers).status_code == 200
    refused = app_b.test_client().get("/v1/project", headers=headers)
    assert refused.status_code == 401
    assert (
        refused.headers["WWW-Authenticate"] == 'Bearer realm="b", error="invalid_token"'
    )


def test_without_keys_the_store_is_sql_and_connects_on_first_use(
    tmp_path: Path,
) -> None:
    database = tmp_path / "keys.db"
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_DATABASE_URL"] = f"sqlite:///{database}"
    auth = VemetricAuth(app)
    try:
        store = auth.keys_for(app).store
        assert isinstance(store, SQLKeyStore)
        # Nothing is opened before it is needed: a server may fork first.
        assert not database.exists()
        assert app.test_client().get("/").status_code == 401
        assert not database.exists()  # a missing key never touches the store
        app.test_client().get("/", headers={"Authorization": "Bearer " + UNKNOWN_KEY})
        assert database.exists()
    finally:
        close_stores(app)


def test_key_never_reaches_the_logs(
    flaky_keys: KeyManager, issued: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, auth = build_app(flaky_keys)
    auth.project_loader(lambda project_id: None)
    client = app.test_client()
    client.get("/v1/project", headers={"Authorization": f"Bearer {issued.key}"})
    client.get("/v1/project", headers={"Authorization": f"Bearer {issued.key[:-1]}x"})
    assert caplog.records
    assert issued.key not in caplog.text
    assert issued.key[12:] not in caplog.text
    assert issued.key not in repr(auth) + repr(app.extensions["vemetric_auth"].keys)


# -- flask vemetric-auth --------------------------------------------------------


def test_flask_cli_create_list_revoke(app: Flask, flaky_keys: KeyManager) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=[
            "vemetric-auth",
            "create",
            "--project",
            "proj_9",
            "--name",
            "CI",
            "--json",
        ]
    )
    assert created.exit_code == 0, created.output
    document = json.loads(created.stdout)
    key, record = document["key"], document["record"]
    assert flaky_keys.get(record["id"]).name == "CI"

    headers = {"Authorization": f"Bearer {key}"}
    assert app.test_client().get("/v1/project", headers=headers).status_code == 200

    listed = runner.invoke(args=["vemetric-auth", "list", "--project", "proj_9"])
    assert listed.exit_code == 0
    assert record["id"] in listed.stdout
    assert key not in listed.stdout

    revoked = runner.invoke(
        args=["vemetric-auth", "revoke", record["id"], "--revoked-by", "ops", "--json"]
    )
    assert revoked.exit_code == 0
    assert json.loads(revoked.stdout)["revoked_by"] == "ops"
    assert app.test_client().get("/v1/project", headers=headers).status_code == 401


def test_flask_cli_errors_are_one_line(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["vemetric-auth", "create", "--project", "p"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: Missing option '--name'")
    result = runner.invoke(args=["vemetric-auth", "revoke", "no-such-id"])
    assert (result.exit_code, result.stderr) == (1, "Error: no API key with this id\n")


def test_flask_cli_prints_what_the_standalone_cli_prints(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vemetric_auth.cli import cli

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_DATABASE_URL"] = url
    VemetricAuth(app)
    try:
        created = app.test_cli_runner().invoke(
            args=["vemetric-auth", "create", "--project", "p", "--name", "n"]
        )
        assert created.exit_code == 0
        for args in (["list", "--project", "p"], ["list", "--project", "p", "--json"]):
            from_flask = app.test_cli_runner().invoke(args=["vemetric-auth", *args])
            standalone = CliRunner().invoke(cli, ["--database-url", url, *args])
            assert from_flask.exit_code == standalone.exit_code == 0
            assert from_flask.stdout == standalone.stdout
    finally:
        close_stores(app)


# -- OPTIONS: a preflight never runs a view that handles OPTIONS itself ----------------


def app_with_own_options(keys: KeyManager) -> tuple[Flask, list[str]]:
    """An app whose view answers OPTIONS itself, and a CORS after_request hook."""
    app = Flask(__name__)
    VemetricAuth(app, keys=keys)
    ran: list[str] = []

    @app.route("/v1/things", methods=["GET", "OPTIONS"])
    def things() -> dict[str, Any]:
        ran.append(request.method)
        return {"things": ["private"]}

    @app.after_request
    def cors(response: Any) -> Any:
        response.headers["Access-Control-Allow-Origin"] = "https://app.example"
        return response

    return app, ran


def test_a_view_that_handles_options_never_runs_without_a_key(
    keys: KeyManager,
) -> None:
    app, ran = app_with_own_options(keys)
    client = app.test_client()
    for headers in ({}, {"Origin": "https://app.example"}):
        response = client.options("/v1/things", headers=headers)
        assert answer(response) == expected_401(MISSING, None)
    preflight = client.options("/v1/things", headers=PREFLIGHT_HEADERS)
    assert preflight.status_code == 200
    assert b"private" not in preflight.data
    assert set(preflight.headers["Allow"].split(", ")) >= {"GET", "OPTIONS"}
    # Flask's own answer, through the app's after_request functions.
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert ran == []


def test_a_view_that_handles_options_runs_with_a_key(
    keys: KeyManager,
) -> None:
    app, ran = app_with_own_options(keys)
    issued = keys.create("proj_1", "n")
    response = app.test_client().options(
        "/v1/things", headers={"Authorization": f"Bearer {issued.key}"}
    )
    assert b"private" in response.data
    assert ran == ["OPTIONS"]


def test_a_method_view_with_options_never_runs_on_a_preflight(
    keys: KeyManager,
) -> None:
    from flask.views import MethodView

    ran: list[str] = []

    class Things(MethodView):
        def get(self) -> str:
            return "private"

        def options(self) -> str:
            ran.append("options")
            return "private"

    app = Flask(__name__)
    VemetricAuth(app, keys=keys)
    app.add_url_rule("/v1/things", view_func=Things.as_view("things"))
    client = app.test_client()
    assert client.options("/v1/things").status_code == 401
    preflight = client.options("/v1/things", headers=PREFLIGHT_HEADERS)
    assert preflight.status_code == 200
    assert b"private" not in preflight.data
    assert ran == []


def test_a_preflight_gets_flasks_automatic_answer(keys: KeyManager) -> None:
    app, _ = build_app(keys)
    response = app.test_client().options("/v1/project", headers=PREFLIGHT_HEADERS)
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD", "OPTIONS"}
    assert response.data == b""


@pytest.mark.parametrize("value", [b"Bearer x", 12345], ids=["bytes", "int"])
def test_a_non_str_authorization_in_the_environ_is_a_malformed_header(
    app: Flask, flaky_store: FlakyStore, value: Any
) -> None:
    calls_before = dict(flaky_store.calls)
    response = app.test_client().get(
        "/v1/project", environ_overrides={"HTTP_AUTHORIZATION": value}
    )
    assert answer(response) == expected_401(MALFORMED, "invalid_request")
    assert flaky_store.calls == calls_before


# -- an app factory leaves no thread behind --------------------------------------------


def test_an_app_factory_making_300_apps_leaves_no_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each app gets its own KeyManager from its config; none is closed, yet
    their threads end once idle."""
    import threading
    import time

    from vemetric_auth import _last_use, _workers

    monkeypatch.setattr(_workers.Workers, "idle_timeout", 0.2)
    # Each app's last-use stamps are written 0.2 s after its request, not 60 s.
    monkeypatch.setattr(_last_use.LastUse, "_interval", 0.2)

    def threads() -> set[threading.Thread]:
        return {
            thread
            for thread in threading.enumerate()
            if thread.name.startswith("vemetric-auth-")
        }

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["VEMETRIC_AUTH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'k.db'}"
        VemetricAuth(app)

        @app.get("/v1/project")
        def project() -> str:
            return str(g.project_id)

        return app

    before = threads()
    first = create_app()
    key = first.extensions["vemetric_auth"].keys.create("proj_1", "factory").key
    close_stores(first)
    for _ in range(300):
        app = create_app()
        response = app.test_client().get(
            "/v1/project", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.data == b"proj_1"  # a store thread and an argon2 one
        close_stores(app)
    deadline = time.monotonic() + 10
    while threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads() - before == set()
