from __future__ import annotations

import ast
import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CountingHasher
from flask import Flask
from werkzeug.serving import make_server

from vemetric_auth import KeyManager, SQLKeyStore
from vemetric_auth.testing import KeyStoreContract

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import custom_store  # noqa: E402
import demo  # noqa: E402
import flask_app  # noqa: E402
import wsgi_app  # noqa: E402

INVALID = "Invalid or revoked API key"


def call(
    port: int, path: str, key: str | None = None, *, timeout: float = 10
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'example.db'}"


@pytest.fixture
def sql_keys(database_url: str) -> Iterator[KeyManager]:
    keys = KeyManager(SQLKeyStore(database_url), hasher=CountingHasher())
    yield keys
    keys.store.close()  # type: ignore[attr-defined]


# -- flask_app.py ---------------------------------------------------------------


@pytest.fixture
def api(database_url: str) -> Iterator[Flask]:
    app = flask_app.create_app({"VEMETRIC_AUTH_DATABASE_URL": database_url})
    yield app
    flask_app.auth.keys_for(app).store.close()  # type: ignore[attr-defined]
    app.extensions["flask_app.projects"].engine.dispose()


def test_flask_app_answers_with_the_keys_project(api: Flask, sql_keys: Any) -> None:
    with api.app_context():
        flask_app.projects().add("4232882524803099", "Vemetric", "vemetric.com")
    key = sql_keys.create("4232882524803099", "dashboard").key
    client = api.test_client()
    response = client.get("/v1/project", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json is not None
    project = response.json["project"]
    assert set(project) == {
        "id",
        "name",
        "domain",
        "token",
        "createdAt",
        "firstEventAt",
        "hasPublicDashboard",
        "excludedIps",
        "excludedCountries",
    }
    assert (project["id"], project["name"], project["domain"]) == (
        "4232882524803099",
        "Vemetric",
        "vemetric.com",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", project["createdAt"])
    assert (project["excludedIps"], project["hasPublicDashboard"]) == ([], False)


def test_flask_app_refuses_keys_of_missing_projects(api: Flask, sql_keys: Any) -> None:
    with api.app_context():
        flask_app.projects().add("proj_gone", "Gone", "gone.example")
    key = sql_keys.create("proj_gone", "orphan").key
    never = sql_keys.create("proj_never", "never existed").key
    client = api.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/project", headers=headers).status_code == 200
    with api.app_context():
        flask_app.projects().delete("proj_gone")
    for refused in (key, never):
        response = client.get(
            "/v1/project", headers={"Authorization": f"Bearer {refused}"}
        )
        assert response.status_code == 401
        assert response.json == {"error": {"code": "UNAUTHORIZED", "message": INVALID}}


def test_flask_app_health_is_exempt_and_the_rest_is_not(api: Flask) -> None:
    client = api.test_client()
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/v1/project").status_code == 401
    assert client.get("/nowhere").status_code == 401


def test_flask_app_commands(api: Flask) -> None:
    runner = api.test_cli_runner()
    added = runner.invoke(args=["add-project", "proj_x", "X", "x.example"])
    assert added.exit_code == 0, added.output
    created = runner.invoke(
        args=[
            "vemetric-auth",
            "create",
            "--project",
            "proj_x",
            "--name",
            "cli",
            "--json",
        ]
    )
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)["key"]
    response = api.test_client().get(
        "/v1/project", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["project"]["id"] == "proj_x"


def test_flask_app_factory_makes_independent_apps(
    tmp_path: Path, database_url: str
) -> None:
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    apps = [
        flask_app.create_app({"VEMETRIC_AUTH_DATABASE_URL": url})
        for url in (database_url, other_url)
    ]
    try:
        for app in apps:
            with app.app_context():
                flask_app.projects().add("proj_1", "One", "one.example")
        key = flask_app.auth.keys_for(apps[0]).create("proj_1", "only in the first").key
        headers = {"Authorization": f"Bearer {key}"}
        assert (
            apps[0].test_client().get("/v1/project", headers=headers).status_code == 200
        )
        assert (
            apps[1].test_client().get("/v1/project", headers=headers).status_code == 401
        )
    finally:
        for app in apps:
            flask_app.auth.keys_for(app).store.close()  # type: ignore[attr-defined]
            app.extensions["flask_app.projects"].engine.dispose()


# -- wsgi_app.py ----------------------------------------------------------------


def test_wsgi_app_under_werkzeugs_server(database_url: str, sql_keys: Any) -> None:
    key = sql_keys.create("proj_w", "werkzeug").key
    application = wsgi_app.make_app(database_url)
    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_port
        status, body = call(port, "/v1/whoami", key)
        assert status == 200
        assert body["project_id"] == "proj_w"
        assert body["key"]["prefix"] == key[:12] + "..."
        assert call(port, "/v1/whoami")[0] == 401
        assert call(port, "/v1/whoami", "vem_" + "0" * 32) == (
            401,
            {"error": {"code": "UNAUTHORIZED", "message": INVALID}},
        )
        assert call(port, "/health") == (200, {"status": "ok"})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        application.keys.store.close()  # type: ignore[attr-defined]


def gunicorn_flags() -> list[str]:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed")
    flags = [str(gunicorn), "--bind", "127.0.0.1:0", "--workers", "2"]
    usage = subprocess.run(
        [str(gunicorn), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    if "--no-control-socket" in usage:
        # Newer gunicorns open a control socket in ~/.gunicorn by default.
        flags.append("--no-control-socket")
    return flags


@pytest.mark.slow
@pytest.mark.parametrize(
    "target",
    [
        pytest.param(["examples.wsgi_app:app"], id="module-path"),
        pytest.param(["--chdir", str(EXAMPLES), "wsgi_app:app"], id="chdir"),
    ],
)
def test_wsgi_app_under_gunicorn(
    target: list[str], database_url: str, sql_keys: Any
) -> None:
    key = sql_keys.create("proj_g", "gunicorn").key
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")}
    env["VEMETRIC_AUTH_DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [*gunicorn_flags(), *target],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = wait_for_gunicorn(process)
        for _ in range(4):  # reach both workers, most likely
            status, body = call(port, "/v1/whoami", key)
            assert (status, body["project_id"]) == (200, "proj_g")
        assert call(port, "/v1/whoami")[0] == 401
        assert call(port, "/health") == (200, {"status": "ok"})
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
            assert process.stderr is not None
            log = process.stderr.read()
            process.stderr.close()
    assert key not in log


def wait_for_gunicorn(process: subprocess.Popen[str], timeout: float = 30) -> int:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
            wait_for_port(port, deadline)
            return port
    raise AssertionError("gunicorn did not start:\n" + "".join(lines))


def wait_for_port(port: int, deadline: float) -> None:
    while True:
        try:
            call(port, "/health", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- custom_store.py ------------------------------------------------------------


class TestJSONFileKeyStore(KeyStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> custom_store.JSONFileKeyStore:
        return custom_store.JSONFileKeyStore(tmp_path / "keys.json")


def test_json_store_survives_a_restart(tmp_path: Path, hasher: CountingHasher) -> None:
    path = tmp_path / "keys.json"
    keys = KeyManager(custom_store.JSONFileKeyStore(path), hasher=hasher)
    issued = keys.create("proj_1", "persisted", created_by="alice")
    gone = keys.create("proj_1", "revoked")
    keys.revoke(gone.record.id, revoked_by="bob")

    reopened = KeyManager(custom_store.JSONFileKeyStore(path), hasher=hasher)
    assert reopened.authenticate(issued.key) == issued.record
    assert reopened.get(gone.record.id).revoked_by == "bob"
    assert issued.key not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_json_store_imports_nothing_private() -> None:
    tree = ast.parse((EXAMPLES / "custom_store.py").read_text())
    imported = [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if node.module.split(".")[0] == "vemetric_auth"
    ]
    assert ("vemetric_auth", "ApiKey") in imported
    for module, name in imported:
        assert not any(part.startswith("_") for part in module.split("."))
        assert not name.startswith("_")


# -- demo.py --------------------------------------------------------------------


def replay(app: Flask, line: str) -> tuple[int, Any]:
    """Run a ``curl -i [-H header] URL`` line of the demo against the app."""
    words = shlex.split(line)
    assert words[:2] == ["curl", "-i"]
    headers = {}
    if words[2] == "-H":
        name, _, value = words[3].partition(": ")
        headers[name] = value
    path = "/" + words[-1].split("/", 3)[3]
    response = app.test_client().get(path, headers=headers)
    return response.status_code, response.json


def test_demo_setup_is_repeatable_and_its_curl_lines_are_right(
    database_url: str,
) -> None:
    app = flask_app.create_app({"VEMETRIC_AUTH_DATABASE_URL": database_url})
    try:
        first = demo.setup(app)
        second = demo.setup(app)  # re-running: a new key, the same project
        assert first.key != second.key
        assert first.key not in repr(first)
        keys = flask_app.auth.keys_for(app)
        active = keys.list(demo.PROJECT_ID)
        assert [record.id for record in active] == [second.key_id, first.key_id]

        lines = demo.curl_lines(second, "http://127.0.0.1:5000")
        commands = [line for line in lines if line.startswith("curl")]
        comments = [line for line in lines if line.startswith("#")]
        assert len(commands) == len(comments) == 6
        answers = [replay(app, command) for command in commands]
        assert [status for status, _ in answers] == [200, 401, 401, 401, 401, 200]
        assert answers[0][1]["project"]["id"] == demo.PROJECT_ID
        messages = [body["error"]["message"] for _, body in answers[1:5]]
        assert messages == [
            "Missing API key. Use Authorization: Bearer <key>",
            "Malformed Authorization header. Use Bearer <key>",
            "Invalid API key format",
            INVALID,
        ]
        for comment, message in zip(comments[1:5], messages, strict=True):
            assert message.split(".")[0] in comment
    finally:
        flask_app.auth.keys_for(app).store.close()  # type: ignore[attr-defined]
        app.extensions["flask_app.projects"].engine.dispose()


@pytest.mark.slow
def test_demo_serves_on_the_given_port(tmp_path: Path) -> None:
    with socket_port() as port:
        pass
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")}
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "demo.py"), str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if line.startswith("Manage keys"):
                break
        key = re.search(r"API key:\s+(vem_[a-z0-9]{32})", "".join(output))
        assert key is not None, "".join(output)
        wait_for_port(port, time.monotonic() + 30)
        status, body = call(port, "/v1/project", key.group(1))
        assert (status, body["project"]["id"]) == (200, "proj_demo")
    finally:
        process.terminate()
        process.wait(timeout=20)
        assert process.stdout is not None
        process.stdout.close()
    assert (tmp_path / "vemetric_auth.db").exists()


def demo_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VEMETRIC_AUTH_") and k != "PORT"
    }


def test_demo_on_a_busy_port_stops_before_it_makes_a_key(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "demo.py"), str(port)],
            cwd=tmp_path,
            env=demo_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert not re.search(r"vem_[a-z0-9]{32}", done.stdout + done.stderr)
    assert done.stderr.startswith(f"Cannot serve on 127.0.0.1:{port}: ")
    assert "No key was made" in done.stderr
    # Not even the key store was made.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_serves_on_a_free_port_when_5000_is_busy(tmp_path: Path) -> None:
    try:
        taken: socket.socket | None = socket.create_server(
            ("127.0.0.1", demo.DEFAULT_PORT)
        )
    except OSError:
        taken = None  # another program holds it: busy all the same
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "demo.py")],
        cwd=tmp_path,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if line.startswith("Serving on"):
                break
        text = "".join(output)
        serving = re.search(r"^Serving on http://127\.0\.0\.1:(\d+) ", text, re.M)
        assert serving is not None, text
        port = int(serving.group(1))
        assert port != demo.DEFAULT_PORT
        assert f"Port {demo.DEFAULT_PORT} is busy: serving on {port} instead." in text
        assert f"http://127.0.0.1:{port}/v1/project" in text  # the curl lines
        key = re.search(r"API key:\s+(vem_[a-z0-9]{32})", text)
        assert key is not None, text
        status, body = call(port, "/v1/project", key.group(1))
        assert (status, body["project"]["id"]) == (200, "proj_demo")
    finally:
        process.terminate()
        process.wait(timeout=20)
        assert process.stdout is not None
        process.stdout.close()
        if taken is not None:
            taken.close()


class socket_port:
    """A free loopback port, found by binding port 0."""

    def __enter__(self) -> int:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        port: int = self._socket.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
