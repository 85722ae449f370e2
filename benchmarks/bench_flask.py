"""Per-request cost of VemetricAuth against Flask-HTTPAuth and bare Flask.

The same view on four apps: bare Flask, Flask + VemetricAuth (a cached key),
Flask + Flask-HTTPAuth (``HTTPTokenAuth`` over a plain dict of tokens, no
hashing at all), and Flask wrapped by ApiKeyMiddleware. Each request calls
``app.wsgi_app`` directly with a prebuilt environ, so the figures are the
framework's and the extension's work, not a server's or a test client's.

Run: ``.venv/bin/python benchmarks/bench_flask.py [--quick]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from _timing import interleaved_us
from flask import Flask, g
from flask_httpauth import HTTPTokenAuth
from werkzeug.test import EnvironBuilder

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager
from vemetric_auth.flask import VemetricAuth

PROJECT_ID = "proj_bench"


def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    return None


def bare_app() -> Flask:
    app = Flask("bare")

    @app.get("/v1/project")
    def project() -> dict[str, str]:
        return {"project_id": PROJECT_ID}

    return app


def vemetric_app(keys: KeyManager) -> Flask:
    app = Flask("vemetric")
    VemetricAuth(app, keys=keys)

    @app.get("/v1/project")
    def project() -> dict[str, str]:
        return {"project_id": g.project_id}

    return app


def httpauth_app(key: str) -> Flask:
    app = Flask("httpauth")
    auth = HTTPTokenAuth(scheme="Bearer")
    tokens = {key: PROJECT_ID}

    @auth.verify_token
    def verify_token(token: str) -> str | None:
        return tokens.get(token)

    @app.get("/v1/project")
    @auth.login_required
    def project() -> dict[str, str]:
        return {"project_id": auth.current_user()}

    return app


def middleware_app(keys: KeyManager) -> Flask:
    app = Flask("middleware")

    @app.get("/v1/project")
    def project() -> dict[str, str]:
        from flask import request

        return {"project_id": request.environ["vemetric_auth.project_id"]}

    app.wsgi_app = ApiKeyMiddleware(app.wsgi_app, keys)  # type: ignore[method-assign]
    return app


def request_of(app: Flask, header: str | None) -> Callable[[], object]:
    headers = {} if header is None else {"Authorization": header}
    base = EnvironBuilder(path="/v1/project", headers=headers).get_environ()
    wsgi_app = app.wsgi_app

    def one_request() -> object:
        body = wsgi_app(dict(base), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return body

    return one_request


def status_of(app: Flask, header: str | None) -> str:
    """The status line *app* answers a GET /v1/project with."""
    seen: list[str] = []

    def record_status(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        seen.append(status)

    headers = {} if header is None else {"Authorization": header}
    environ = EnvironBuilder(path="/v1/project", headers=headers).get_environ()
    body = app.wsgi_app(environ, record_status)
    getattr(body, "close", lambda: None)()
    return seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    number, repeat = (1_000, 5) if args.quick else (5_000, 15)

    keys = KeyManager(InMemoryKeyStore())
    key = keys.create(PROJECT_ID, "bench").key
    good = f"Bearer {key}"
    apps = {
        "bare Flask": bare_app(),
        "Flask + VemetricAuth": vemetric_app(keys),
        "Flask + Flask-HTTPAuth": httpauth_app(key),
        "Flask + ApiKeyMiddleware": middleware_app(keys),
    }
    for name, app in apps.items():
        expected = "200 OK"
        assert status_of(app, good) == expected, name  # and the one cold argon2
        if name != "bare Flask":
            assert status_of(app, None).startswith("401"), name

    print(
        f"python {sys.version.split()[0]}; batches of {number} requests, {repeat} rounds"
    )
    print("\n== a valid key (cached), GET /v1/project ==")
    accepted = interleaved_us(
        {name: request_of(app, good) for name, app in apps.items()},
        number=number,
        repeat=repeat,
    )
    bare = accepted["bare Flask"]
    for name, micros in accepted.items():
        print(f"{name:<28}{micros:8.1f} µs/request  {micros / bare:5.2f}x bare Flask")
    ratio = accepted["Flask + VemetricAuth"] / accepted["Flask + Flask-HTTPAuth"]
    print(f"VemetricAuth / Flask-HTTPAuth: {ratio:.2f}")

    print("\n== no Authorization header: refused with 401 ==")
    refusing = {name: app for name, app in apps.items() if name != "bare Flask"}
    refused = interleaved_us(
        {name: request_of(app, None) for name, app in refusing.items()},
        number=number,
        repeat=repeat,
    )
    for name, micros in refused.items():
        print(
            f"{name:<28}{micros:8.1f} µs/request  {micros / bare:5.2f}x bare Flask 200"
        )


if __name__ == "__main__":
    main()
