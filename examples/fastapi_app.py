"""A small Vemetric-like API on FastAPI: ``GET /v1/project``, the key's project.

The FastAPI twin of ``examples/flask_app.py``: projects live in the same
``projects`` table, in the same database as the keys
(``VEMETRIC_AUTH_DATABASE_URL``, default ``sqlite:///vemetric_auth.db`` in the
working directory), so either app serves the projects and keys of the other.
From the repository root::

    python examples/fastapi_app.py add-project proj_demo "Demo" demo.example
    vemetric-auth create --project proj_demo --name curl
    python examples/fastapi_app.py       # or: uvicorn --app-dir examples --factory fastapi_app:create_app

    curl -i -H "Authorization: Bearer vem_..." http://127.0.0.1:8000/v1/project
    curl -i http://127.0.0.1:8000/v1/project         # 401 Missing API key
    curl -i http://127.0.0.1:8000/health             # no key needed

http://127.0.0.1:8000/docs shows the API; its Authorize button takes the key.
A key whose project is deleted from the table is refused as
``Invalid or revoked API key``: the project loader returns ``None``.
"""

# No `from __future__ import annotations`: FastAPI reads the annotations of
# the routes made inside create_app, which name its local dependencies.

import argparse
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, FastAPI
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

from vemetric_auth import KeyManager, SQLKeyStore, StoreUnavailable
from vemetric_auth.fastapi import ProjectBearer, add_exception_handlers

DEFAULT_DATABASE_URL = "sqlite:///vemetric_auth.db"

_metadata = MetaData()
# The table of examples/flask_app.py, column for column.
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
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True)
        _metadata.create_all(self.engine)

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
        now = datetime.now(timezone.utc)
        with self.engine.begin() as connection:
            connection.execute(
                projects_table.insert().values(
                    id=project_id,
                    name=name,
                    domain=domain,
                    # The public tracking token of a Vemetric project: not a
                    # secret, and nothing like an API key.
                    token=secrets.token_hex(16),
                    created_at=now.strftime("%Y-%m-%dT%H:%M:%S.")
                    + f"{now.microsecond // 1000:03d}Z",
                )
            )
        project = self.get(project_id)
        assert project is not None
        return project

    def delete(self, project_id: str) -> None:
        """Delete the project; its keys are then refused."""
        with self.engine.begin() as connection:
            connection.execute(
                projects_table.delete().where(projects_table.c.id == project_id)
            )


def create_app(database_url: str | None = None) -> FastAPI:
    """Return the API app over *database_url* (else the environment's)."""
    if database_url is None:
        database_url = os.environ.get(
            "VEMETRIC_AUTH_DATABASE_URL", DEFAULT_DATABASE_URL
        )
    keys = KeyManager(SQLKeyStore(database_url))
    projects = Projects(database_url)

    def load_project(project_id: str) -> dict[str, Any] | None:
        # A plain function: it runs on a worker thread, off the event loop.
        # None when the project is gone: the key is then refused (401). While
        # the projects database is down, answer 503 as for the key store.
        try:
            return projects.get(project_id)
        except SQLAlchemyError:
            raise StoreUnavailable() from None

    project_of_key = ProjectBearer(keys, project_loader=load_project)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Stop the manager's threads; let the databases go.
        keys.close()
        keys.store.close()  # type: ignore[attr-defined]
        projects.engine.dispose()

    app = FastAPI(title="Vemetric-like API", lifespan=lifespan)
    add_exception_handlers(app)
    app.state.keys = keys
    app.state.projects = projects

    @app.get("/v1/project")
    async def get_project(
        project: Annotated[dict[str, Any], Depends(project_of_key)],
    ) -> dict[str, Any]:
        """Vemetric's "Get project": the project of the API key, and only that one."""
        return {"project": project}

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness check, served without a key."""
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    """``add-project ID NAME DOMAIN``, or serve the app (``--port``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    add = commands.add_parser("add-project", help="create a project to make keys for")
    add.add_argument("project_id")
    add.add_argument("name")
    add.add_argument("domain")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    url = os.environ.get("VEMETRIC_AUTH_DATABASE_URL", DEFAULT_DATABASE_URL)
    if args.command == "add-project":
        project = Projects(url).add(args.project_id, args.name, args.domain)
        print(f"project {project['id']}: {project['name']} ({project['domain']})")
        return
    import uvicorn

    uvicorn.run(create_app(url), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
