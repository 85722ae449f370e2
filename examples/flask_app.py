"""A small Vemetric-like API on Flask: ``GET /v1/project``, the key's project,
and ``GET /v1/key``, the key's own record (expiry and last use).

Projects live in a ``projects`` table of the same database as the keys
(``VEMETRIC_AUTH_DATABASE_URL``, default ``sqlite:///vemetric_auth.db`` in the
working directory). ``python examples/demo.py`` sets everything up and serves
this app; by hand, from the repository root::

    export FLASK_APP=examples/flask_app.py
    flask add-project proj_demo "Demo" demo.example
    flask vemetric-auth create --project proj_demo --name curl
    flask run

    curl -i -H "Authorization: Bearer vem_..." http://127.0.0.1:5000/v1/project
    curl -i -H "Authorization: Bearer vem_..." http://127.0.0.1:5000/v1/key
    curl -i http://127.0.0.1:5000/v1/project         # 401 Missing API key
    curl -i http://127.0.0.1:5000/health             # exempt

A key whose project is deleted from the table is refused as
``Invalid or revoked API key``: the project loader returns ``None``.

The key management pages of :func:`vemetric_auth.flask.key_pages` are mounted
under ``/settings``, behind a minimal login of this app's own (one user,
``demo``, whose password is ``DEMO_PASSWORD``; a real app uses its own
login). With ``export DEMO_PASSWORD=... SECRET_KEY=...`` before ``flask run``,
open http://127.0.0.1:5000/settings/projects/proj_demo/keys and log in.

Each project may make 100 requests a minute, shared by all of its keys, as on
Vemetric's own API: every answer to a key carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``, and the 101st request of
a minute gets ``429`` with ``Retry-After``. The counts live in this process
(``memory://``); with several processes (gunicorn workers) or machines, share
them in Redis (``pip install 'vemetric-auth[redis]'``)::

    export VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI=redis://localhost:6379
    export VEMETRIC_AUTH_RATE_LIMIT="1000/hour"   # another limit; "" for none
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import click
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from flask.cli import with_appcontext
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from vemetric_auth import StoreUnavailable
from vemetric_auth.flask import VemetricAuth, key_pages

#: Requests a minute each project may make, all its keys together: Vemetric's.
RATE_LIMIT = "100/minute"

# The extension holds no app: one instance serves every app create_app makes.
auth = VemetricAuth()
api = Blueprint("api", __name__)
login = Blueprint("login", __name__)
#: The one user of the demo login.
DEMO_USER = "demo"

_metadata = MetaData()
projects_table = Table(
    "projects",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("domain", String(253), nullable=False),
    Column("token", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("first_event_at", String(32), nullable=True),
    Column("has_public_dashboard", Boolean, nullable=False, default=False),
    Column("excluded_ips", JSON, nullable=False, default=list),
    Column("excluded_countries", JSON, nullable=False, default=list),
)


class Projects:
    """The host application's projects, in a table beside the keys."""

    def __init__(self, database_url: str) -> None:
        # Checked before use, so a database restart costs no failed request.
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True)
        _metadata.create_all(self.engine)
        # Hold no connection open: a server that forks (gunicorn --preload)
        # must not share one between processes.
        self.engine.dispose()

    def get(self, project_id: str) -> dict[str, Any] | None:
        """Return the project as the API shows it, or ``None`` if there is none."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(projects_table).where(projects_table.c.id == project_id)
            ).first()
        if row is None:
            return None
        return {
            "id": row.id,
            "name": row.name,
            "domain": row.domain,
            "token": row.token,
            "createdAt": row.created_at,
            "firstEventAt": row.first_event_at,
            "hasPublicDashboard": row.has_public_dashboard,
            "excludedIps": row.excluded_ips,
            "excludedCountries": row.excluded_countries,
        }

    def add(self, project_id: str, name: str, domain: str) -> dict[str, Any]:
        """Create the project unless it exists; return it as stored."""
        existing = self.get(project_id)
        if existing is not None:
            return existing
        with self.engine.begin() as connection:
            connection.execute(
                projects_table.insert().values(
                    id=project_id,
                    name=name,
                    domain=domain,
                    # The public tracking token of a Vemetric project: not a
                    # secret, and nothing like an API key.
                    token=secrets.token_hex(16),
                    created_at=_iso_now(),
                )
            )
        project = self.get(project_id)
        assert project is not None
        return project

    def ids(self) -> list[str]:
        """Return the ids of every project."""
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(projects_table.c.id).order_by(projects_table.c.id)
                ).scalars()
            )

    def delete(self, project_id: str) -> None:
        """Delete the project; its keys are then refused."""
        with self.engine.begin() as connection:
            connection.execute(
                projects_table.delete().where(projects_table.c.id == project_id)
            )


def _iso_now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def projects() -> Projects:
    """The projects of the current app."""
    found: Projects = current_app.extensions["flask_app.projects"]
    return found


@auth.project_loader
def load_project(project_id: str) -> dict[str, Any] | None:
    # None when the project is gone: the key is then refused (401). While the
    # projects database is down, answer 503 as for the key store, not 500.
    try:
        return projects().get(project_id)
    except SQLAlchemyError:
        raise StoreUnavailable() from None


@api.get("/v1/project")
def get_project() -> dict[str, Any]:
    """Vemetric's "Get project": the project of the API key, and only that one."""
    return {"project": g.project}


@api.get("/v1/key")
def get_key() -> dict[str, Any]:
    """The API key of the request as the store had it when it was verified:
    its expiry, and its last use (written about once a minute); never the key."""
    record = g.api_key.to_dict()
    return {
        "key": {
            "id": record["id"],
            "name": record["name"],
            "prefix": record["prefix"],
            "createdAt": record["created_at"],
            "expiresAt": record["expires_at"],
            "lastUsedAt": record["last_used_at"],
        }
    }


@api.get("/health")
@auth.exempt
def health() -> dict[str, str]:
    """Liveness check, served without a key."""
    return {"status": "ok"}


# -- a minimal login of the app's own, in front of the key pages ---------------

_LOGIN_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Log in</title>
  {#- The key pages' stylesheet, borrowed: this app has none of its own. #}
  <link rel="stylesheet" href="{{ url_for('vemetric_auth_pages.static', filename='vemetric_auth/pages.css') }}">
</head>
<body class="vemetric-auth">
<main>
{% if user %}
  <h1>Signed in as {{ user }}</h1>
  <ul>
  {% for project in projects %}
    <li><a href="{{ url_for('vemetric_auth_pages.list_keys', project_id=project) }}">API keys of {{ project }}</a></li>
  {% endfor %}
  </ul>
  <form method="post" action="{{ url_for('login.log_out') }}">
    <button class="button" type="submit">Log out</button>
  </form>
{% else %}
  <h1>Log in</h1>
  <form class="card" method="post">
    {% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
    <input type="hidden" name="next" value="{{ next }}">
    <div class="field">
      <label for="username">User name</label>
      <input type="text" id="username" name="username" autocomplete="username" required autofocus>
    </div>
    <div class="field">
      <label for="password">Password</label>
      <input type="password" id="password" name="password" autocomplete="current-password" required>
    </div>
    <div class="actions"><button class="button primary" type="submit">Log in</button></div>
  </form>
{% endif %}
</main>
</body>
</html>
"""


@login.route("/login", methods=["GET", "POST"])
@auth.exempt
def log_in() -> Any:
    """The demo login: user ``demo``, password ``DEMO_PASSWORD``."""
    next_url = _local_path(request.values.get("next", ""))
    error = None
    if request.method == "POST":
        expected = current_app.config.get("DEMO_PASSWORD") or ""
        given = request.form.get("password", "")
        # Compared in constant time, and never with an empty password.
        if (
            expected
            and request.form.get("username") == DEMO_USER
            and hmac.compare_digest(given.encode(), expected.encode())
        ):
            session.clear()
            session["user"] = DEMO_USER
            return redirect(next_url or url_for("login.log_in"), 303)
        error = (
            "Wrong user name or password."
            if expected
            else "Logging in is off: set DEMO_PASSWORD."
        )
    return render_template_string(
        _LOGIN_PAGE,
        user=session.get("user"),
        projects=projects().ids(),
        next=next_url,
        error=error,
    ), (401 if error else 200)


@login.post("/logout")
@auth.exempt
def log_out() -> Any:
    """Forget the user."""
    session.clear()
    return redirect(url_for("login.log_in"), 303)


def _local_path(target: str) -> str:
    # Only a path of this site: never a redirect elsewhere.
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""


def may_manage_keys(project_id: str) -> str | None:
    """The key pages' ``authorize``: the user's name, a login page, or ``None``."""
    user = session.get("user")
    if not isinstance(user, str):
        abort(redirect(url_for("login.log_in", next=request.full_path)))
    # The demo user manages every project there is; a real app asks its own
    # records whether this user may manage this project.
    if projects().get(project_id) is None:
        return None
    return user


def _api_url(project_id: str) -> str:
    return url_for("api.get_project", _external=True)


@click.command("add-project")
@click.argument("project_id")
@click.argument("name")
@click.argument("domain")
@with_appcontext
def add_project_command(project_id: str, name: str, domain: str) -> None:
    """Create a project (if missing) to create keys for."""
    project = projects().add(project_id, name, domain)
    click.echo(f"project {project['id']}: {project['name']} ({project['domain']})")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Return the API app; *config* overrides the defaults and the environment."""
    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_DATABASE_URL"] = os.environ.get(
        "VEMETRIC_AUTH_DATABASE_URL", "sqlite:///vemetric_auth.db"
    )
    app.config["VEMETRIC_AUTH_EXEMPT_ENDPOINTS"] = ["static"]
    # Signs the session of the login and of the key pages' CSRF tokens. Without
    # SECRET_KEY, a new one per process: sessions end when it stops.
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY") or secrets.token_hex(32)
    app.config["DEMO_PASSWORD"] = os.environ.get("DEMO_PASSWORD", "")
    # Vemetric's limit: 100 requests a minute per project. An empty
    # VEMETRIC_AUTH_RATE_LIMIT turns it off.
    app.config["VEMETRIC_AUTH_RATE_LIMIT"] = (
        os.environ.get("VEMETRIC_AUTH_RATE_LIMIT", RATE_LIMIT) or None
    )
    app.config["VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI"] = os.environ.get(
        "VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI", "memory://"
    )
    if config is not None:
        app.config.update(config)
    auth.init_app(app)
    app.extensions["flask_app.projects"] = Projects(
        app.config["VEMETRIC_AUTH_DATABASE_URL"]
    )
    app.register_blueprint(api)
    app.register_blueprint(login)
    app.register_blueprint(
        key_pages(auth, authorize=may_manage_keys, api_url=_api_url),
        url_prefix="/settings",
    )
    app.cli.add_command(add_project_command)
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
