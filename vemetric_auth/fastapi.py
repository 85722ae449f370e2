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

Rate limits (SPEC section 8) are set on a dependency, with the arguments of
the middleware: ``ApiKeyBearer(keys, rate_limit="100/minute",
rate_limit_storage="redis://...")``. The ``X-RateLimit-*`` headers go on the
response FastAPI makes of what the path operation returns, as any
dependency's headers do (FastAPI's ``Response`` parameter); over the limit
the handler of :func:`add_exception_handlers` answers the ``429``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from ._extras import install_hint

try:
    from fastapi import FastAPI
    from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
    from fastapi.security.base import SecurityBase
    from starlette.requests import HTTPConnection
    from starlette.responses import Response
    from starlette.websockets import WebSocket
except ModuleNotFoundError as error:
    if error.name not in ("fastapi", "starlette", "pydantic"):
        raise  # a broken installation: its own error says more
    raise ImportError(
        f"vemetric_auth.fastapi needs FastAPI: {install_hint('fastapi')}",
        name=error.name,
    ) from None

from ._http import (
    RATE_LIMIT_ENVIRON_KEY,
    RATE_LIMITED,
    ErrorAnswer,
    asgi_rate_limit_headers,
    rate_limiter,
)
from .asgi import Receive, Scope, ScopeGate, Send
from .errors import AuthError
from .keys import KEY_LENGTH
from .manager import KeyManager
from .records import ApiKey

if TYPE_CHECKING:
    from .ratelimit import CountBy, RateDecision, Strategy, TierFunction

__all__ = [
    "ApiKeyBearer",
    "ProjectBearer",
    "RateLimitExceeded",
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


class RateLimitExceeded(Exception):
    """A request over its rate limit, answered ``429`` by the handler that
    :func:`add_exception_handlers` installs.

    :attr:`decision` is the :class:`~vemetric_auth.ratelimit.RateDecision`
    of the request: its ``retry_after`` and the values of its
    ``X-RateLimit-*`` headers.
    """

    def __init__(self, decision: RateDecision) -> None:
        super().__init__(RATE_LIMITED.message)
        self.decision = decision


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
        rate_limit: str | TierFunction | None = None,
        rate_limit_storage: str = "memory://",
        rate_limit_by: CountBy = "project",
        rate_limit_strategy: Strategy = "fixed-window",
        rate_limit_storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.gate = ScopeGate(
            keys,
            realm=realm,
            retry_after=retry_after,
            exempt_paths=(),
            allow_options=False,
            project_loader=project_loader,
            limiter=rate_limiter(
                rate_limit,
                storage_uri=rate_limit_storage,
                storage_options=rate_limit_storage_options,
                by=rate_limit_by,
                strategy=rate_limit_strategy,
            ),
        )
        self.keys = keys
        self.model = HTTPBearerModel(
            bearerFormat=_BEARER_FORMAT,
            description=_DESCRIPTION if description is None else description,
        )
        self.scheme_name = SCHEME_NAME if scheme_name is None else scheme_name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} keys={self.keys!r}>"

    async def _check(
        self, conn: HTTPConnection, response: Response
    ) -> tuple[ApiKey, object]:
        gate = self.gate
        try:
            found = await gate.authenticate(conn.scope)
        except AuthError as error:
            _require_handler(conn, RequestRefused)
            raise RequestRefused(error, gate.answer(error)) from None
        scope = conn.scope
        # Counted once per request: by the first dependency with a limit, or
        # by the ASGI middleware in front (which adds its headers itself).
        if gate.limiter is not None and RATE_LIMIT_ENVIRON_KEY not in scope:
            decision = await gate.rate_limit(scope, found[0])
            if decision is not None:
                if not decision.allowed:
                    _require_handler(conn, RateLimitExceeded)
                    raise RateLimitExceeded(decision)
                # FastAPI copies them onto the response it makes.
                response.headers.raw.extend(asgi_rate_limit_headers(decision))
        return found


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
    :param rate_limit: Limit the requests of each project (SPEC section 8),
        as ``rate_limit`` of :class:`vemetric_auth.asgi.ApiKeyMiddleware`:
        ``"100/minute"``, or a callable taking the
        :class:`~vemetric_auth.ApiKey` for tiers. ``None``: no limit.
    :param rate_limit_storage: ``"memory://"`` (this process) or a shared
        ``limits`` storage URI such as ``"redis://host:6379"``.
    :param rate_limit_by: ``"project"`` or ``"key"``.
    :param rate_limit_strategy: ``"fixed-window"``, ``"moving-window"`` or
        ``"sliding-window-counter"``.
    :param rate_limit_storage_options: Keyword arguments for the storage's
        client.

    With a rate limit, a request is counted once its key (and project) is
    found valid: refused keys are never counted, nor are routes without the
    dependency. A request is counted once, however many dependencies with a
    limit it has (the first one's counts) or with the ASGI middleware's
    limit in front (the middleware's counts). The three ``X-RateLimit-*``
    headers go on the response FastAPI makes of what the path operation
    returns, whatever its status (through FastAPI's ``Response``
    parameter, as the headers any dependency sets); a path operation that
    returns a ``Response`` itself, and an exception handler's answer, do not
    get them from FastAPI: copy them from ``RateDecision.headers``, found in
    ``request.scope["vemetric_auth.rate_limit"]``, or use the ASGI
    middleware's limit, which adds them to every answer. Over the limit the
    path operation does not run: :class:`RateLimitExceeded` is raised, and
    answered ``429`` with ``Retry-After``, the three headers and the JSON
    body ``RATE_LIMIT_EXCEEDED``. A websocket handshake counts as one request
    and, over the limit, is refused as the ASGI middleware refuses it (its
    ``websocket.accept`` carries no headers).

    :raises TypeError, ValueError: an argument is wrong (a rate limit
        setting's message starts with its parameter's name).
    :raises ImportError: a rate limit without ``limits`` installed.
    """

    async def __call__(self, conn: HTTPConnection, response: Response) -> ApiKey:
        return (await self._check(conn, response))[0]


class ProjectBearer(_Bearer):
    """A dependency that returns the project of the request's key.

    The project is what *project_loader* returns for the key's project id
    (or the project id, without a loader). ``None`` from it (the project no
    longer exists) refuses the key like a revoked one (``401``, case 4); an
    :class:`~vemetric_auth.AuthError` it raises is answered as such
    (``StoreUnavailable``: ``503``). An ``async`` loader is awaited; a plain
    function runs on a worker thread. Otherwise as :class:`ApiKeyBearer`,
    rate limits included.
    """

    async def __call__(self, conn: HTTPConnection, response: Response) -> Any:
        return (await self._check(conn, response))[1]


def add_exception_handlers(app: FastAPI) -> None:
    """Answer the requests the dependencies refuse with the HTTP contract's
    status, headers and body (a ``HEAD`` without the body; a websocket
    handshake refused as the ASGI middleware refuses it): the ``401`` and
    ``503`` of :class:`RequestRefused`, and the ``429`` of
    :class:`RateLimitExceeded`.

    Call it once, before the app serves; calling it again changes nothing.
    """
    app.add_exception_handler(RequestRefused, _answer_refused)
    app.add_exception_handler(RateLimitExceeded, _answer_refused)


# An answer as an ASGI application: ErrorAnswer.asgi, or RATE_LIMITED.asgi
# bound to a decision.
_Asgi = Callable[[Scope, Receive, Send], Any]


async def _answer_refused(conn: HTTPConnection, exc: Exception) -> Any:
    """The exception handler: the refusal's answer, as the response of an
    ``http`` request, or sent at once to a websocket handshake."""
    if isinstance(exc, RateLimitExceeded):
        answer: _Asgi = partial(RATE_LIMITED.asgi, exc.decision)
    else:
        assert isinstance(exc, RequestRefused)
        answer = exc.answer.asgi
    if isinstance(conn, WebSocket):
        # A websocket's exception handler answers by itself.
        await answer(conn.scope, conn.receive, conn.send)
        return None
    return _Answer(answer)


class _Answer:
    """A prebuilt answer as the response an exception handler returns: an
    ASGI application sending it."""

    __slots__ = ("answer",)

    def __init__(self, answer: _Asgi) -> None:
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.answer(scope, receive, send)


def _require_handler(conn: HTTPConnection, refusal: type[Exception]) -> None:
    """Fail loudly, with what to do, when the app cannot answer a refusal.

    :raises RuntimeError: no handler for *refusal* on the app.
    """
    app = conn.scope.get("app")
    handlers = getattr(app, "exception_handlers", None)
    if handlers is not None and refusal not in handlers:
        raise RuntimeError(
            "vemetric_auth.fastapi: call add_exception_handlers(app) so that "
            "refused requests get the HTTP contract's answers"
        )
