"""Any WSGI application behind ApiKeyMiddleware, keys in a SQLite file.

Create a key, start the app under werkzeug or gunicorn, and call it (from the
repository root, so that both use ``./vemetric_auth.db``; set
``VEMETRIC_AUTH_DATABASE_URL`` to use another store)::

    pip install -e '.[cli]'     # from a clone: SQLKeyStore and the command
    vemetric-auth create --project proj_demo --name "curl test"   # prints vem_...

    python examples/wsgi_app.py            # werkzeug on http://127.0.0.1:8000
    gunicorn -b 127.0.0.1:8000 examples.wsgi_app:app              # or gunicorn

    curl -i -H "Authorization: Bearer vem_..." http://127.0.0.1:8000/v1/whoami
    curl -i http://127.0.0.1:8000/v1/whoami                       # 401, no key
    curl -i http://127.0.0.1:8000/health                          # exempt

The port is ``PORT`` (default 8000) under werkzeug.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from vemetric_auth import ApiKey, ApiKeyMiddleware, KeyManager, SQLKeyStore

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def whoami(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI app: says which project and key a request came with."""
    if environ.get("PATH_INFO") == "/health":
        # Exempt: no key, so no vemetric_auth.* environ entries either.
        return _json(start_response, "200 OK", {"status": "ok"})
    record: ApiKey = environ["vemetric_auth.api_key"]
    return _json(
        start_response,
        "200 OK",
        {
            "project_id": environ["vemetric_auth.project_id"],
            "key": {"id": record.id, "name": record.name, "prefix": record.prefix},
        },
    )


def _json(start_response: StartResponse, status: str, document: object) -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def make_app(database_url: str) -> WSGIApplication:
    """Return :func:`whoami` behind the middleware, keys in *database_url*."""
    # SQLKeyStore connects on first use, in each worker process: safe to
    # build at import time, before gunicorn forks.
    keys = KeyManager(SQLKeyStore(database_url))
    return ApiKeyMiddleware(whoami, keys, exempt_paths=["/health"])


app = make_app(
    os.environ.get("VEMETRIC_AUTH_DATABASE_URL", "sqlite:///vemetric_auth.db")
)


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(os.environ.get("PORT", "8000")), app, threaded=True)
