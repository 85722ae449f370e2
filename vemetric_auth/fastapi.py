"""FastAPI integration: dependencies that require an API key, and the
contract's answers to those that lack one.

.. code-block:: python

    from fastapi import Depends, FastAPI
    from vemetric_auth import ApiKey, KeyManager, SQLKeyStore
    from vemetric_auth.fastapi import ApiKeyBearer, ProjectBearer, add_exception_handlers

    keys = KeyManager(SQLKeyStore("sqlite:///vemetric_auth.db"))
    api_key = ApiKeyBearer(keys)
    project = ProjectBearer(keys, project_loader=load_project)

    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/v1/project")
    async def get_project(project: dict = Depends(project)):
        return {"project": project}

    @app.get("/v1/key")
    async def get_key(key: ApiKey = Depends(api_key)):
        return {"prefix": key.prefix}

The key check is the one of :class:`vemetric_auth.asgi.ApiKeyMiddleware` (the
same gate, answered on the event loop for a cached key, on a worker thread
otherwise), and a refused request gets its answers byte for byte, never
FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._extras import install_hint

try:
    from fastapi import FastAPI
    from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
    from fastapi.security.base import SecurityBase
    from starlette.requests import HTTPConnection
    from starlette.websockets import WebSocket
except ModuleNotFoundError as error:
    if error.name not in ("fastapi", "starlette", "pydantic"):
        raise  # a broken installation: its own error says more
    raise ImportError(
        f"vemetric_auth.fastapi needs FastAPI: {install_hint('fastapi')}",
        name=error.name,
    ) from None

from ._http import ErrorAnswer
from .asgi import Receive, Scope, ScopeGate, Send
from .errors import AuthError
from .keys import KEY_LENGTH
from .manager import KeyManager
from .records import ApiKey

__all__ = [
    "ApiKeyBearer",
    "ProjectBearer",
    "RequestRefused",
    "add_exception_handlers",
]

#: The name of the security scheme both dependencies declare by default:
#: one entry, one Authorize button, in the interactive docs.
SCHEME_NAME = "ApiKeyBearer"
_BEARER_FORMAT = f"vem_ followed by {KEY_LENGTH - 4} characters of [a-z0-9]"
_DESCRIPTION = "A vemetric-auth API key, sent as `Authorization: Bearer vem_...`."


class RequestRefused(Exception):
    """A request the dependencies refuse, answered by the handler that
    :func:`add_exception_handlers` installs.

    :attr:`error` is the :class:`~vemetric_auth.AuthError` of the refusal.
    """

    def __init__(self, error: AuthError, answer: ErrorAnswer) -> None:
        super().__init__(error.message)
        self.error = error
        self.answer = answer


class _Bearer(SecurityBase):
    """What both dependencies share: the gate and the OpenAPI scheme."""

    def __init__(
        self,
        keys: KeyManager,
        *,
        project_loader: Callable[[str], Any] | None = None,
        realm: str = "vemetric",
        retry_after: int = 5,
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.gate = ScopeGate(
            keys,
            realm=realm,
            retry_after=retry_after,
            exempt_paths=(),
            allow_options=False,
            project_loader=project_loader,
        )
        self.keys = keys
        self.model = HTTPBearerModel(
            bearerFormat=_BEARER_FORMAT,
            description=_DESCRIPTION if description is None else description,
        )
        self.scheme_name = SCHEME_NAME if scheme_name is None else scheme_name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} keys={self.keys!r}>"

    async def _check(self, conn: HTTPConnection) -> tuple[ApiKey, object]:
        try:
            return await self.gate.authenticate(conn.scope)
        except AuthError as error:
            _require_handler(conn)
            raise RequestRefused(error, self.gate.answer(error)) from None


class ApiKeyBearer(_Bearer):
    """A dependency that returns the request's :class:`~vemetric_auth.ApiKey`.

    Like FastAPI's ``HTTPBearer``, an instance is both the dependency and the
    OpenAPI security scheme (HTTP bearer): the interactive docs' Authorize
    button sends the key. ``key: ApiKey = Depends(api_key)`` in a path
    operation, or ``dependencies=[Depends(api_key)]`` on a router or an app
    to protect every route in it.

    A refused request raises :class:`RequestRefused`, which the handler of
    :func:`add_exception_handlers` answers with the HTTP contract's ``401``
    or ``503``. Call that once per app: without it a refusal is a ``500``
    (never a request let through).

    On success the scope gets the entries of
    :class:`~vemetric_auth.asgi.ApiKeyMiddleware`, and ``request.state`` its
    ``api_key``, ``project_id`` and ``project``.

    :param keys: The :class:`~vemetric_auth.KeyManager` that checks keys.
    :param project_loader: As for :class:`ProjectBearer`: with it, a key
        whose project is gone is refused here too.
    :param realm: The realm named in ``WWW-Authenticate``.
    :param retry_after: Seconds sent in ``Retry-After`` with a ``503``.
    :param scheme_name: The security scheme's name in the OpenAPI schema;
        ``"ApiKeyBearer"``, shared by both dependencies.
    :param description: The security scheme's description.
    """

    async def __call__(self, conn: HTTPConnection) -> ApiKey:
        return (await self._check(conn))[0]


class ProjectBearer(_Bearer):
    """A dependency that returns the project of the request's key.

    The project is what *project_loader* returns for the key's project id
    (or the project id, without a loader). ``None`` from it (the project no
    longer exists) refuses the key like a revoked one (``401``, case 4); an
    :class:`~vemetric_auth.AuthError` it raises is answered as such
    (``StoreUnavailable``: ``503``). An ``async`` loader is awaited; a plain
    function runs on a worker thread. Otherwise as :class:`ApiKeyBearer`.
    """

    async def __call__(self, conn: HTTPConnection) -> Any:
        return (await self._check(conn))[1]


def add_exception_handlers(app: FastAPI) -> None:
    """Answer the requests the dependencies refuse with the HTTP contract's
    status, headers and body (a ``HEAD`` without the body; a websocket
    handshake refused as the ASGI middleware refuses it).

    Call it once, before the app serves; calling it again changes nothing.
    """
    app.add_exception_handler(RequestRefused, _answer_refused)


async def _answer_refused(conn: HTTPConnection, exc: Exception) -> Any:
    """The exception handler: the refusal's answer, as the response of an
    ``http`` request, or sent at once to a websocket handshake."""
    assert isinstance(exc, RequestRefused)
    if isinstance(conn, WebSocket):
        # A websocket's exception handler answers by itself.
        await exc.answer.asgi(conn.scope, conn.receive, conn.send)
        return None
    return _Answer(exc.answer)


class _Answer:
    """An :class:`ErrorAnswer` as the response an exception handler returns:
    an ASGI application sending the prebuilt answer."""

    __slots__ = ("answer",)

    def __init__(self, answer: ErrorAnswer) -> None:
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer.asgi(scope, receive, send)


def _require_handler(conn: HTTPConnection) -> None:
    """Fail loudly, with what to do, when the app cannot answer a refusal.

    :raises RuntimeError: no handler for :class:`RequestRefused` on the app.
    """
    app = conn.scope.get("app")
    handlers = getattr(app, "exception_handlers", None)
    if handlers is not None and RequestRefused not in handlers:
        raise RuntimeError(
            "vemetric_auth.fastapi: call add_exception_handlers(app) so that "
            "refused requests get the HTTP contract's answers"
        )
