"""ASGI middleware that lets through only requests with a valid API key.

The HTTP contract of :class:`vemetric_auth.ApiKeyMiddleware` for asyncio
(and trio) applications: the same parser, the same answers byte for byte,
the same :class:`~vemetric_auth.KeyManager`, its cache and its store. A key
the manager verified lately is answered on the event loop, with no thread
hop; a store read or an argon2 run goes to a worker thread, so a slow store
or a cold key never holds up the other requests.

.. code-block:: python

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from vemetric_auth import KeyManager, SQLKeyStore
    from vemetric_auth.asgi import ApiKeyMiddleware

    keys = KeyManager(SQLKeyStore("sqlite:///vemetric_auth.db"))
    app = Starlette(
        routes=[...],
        middleware=[Middleware(ApiKeyMiddleware, keys=keys, exempt_paths=["/health"])],
    )
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from ._extras import install_hint

try:
    import anyio
    import anyio.to_thread
except ModuleNotFoundError as error:
    if error.name != "anyio":
        raise  # a broken installation: its own error says more
    raise ImportError(
        f"vemetric_auth.asgi needs anyio: {install_hint('asgi')}", name=error.name
    ) from None

from ._http import (
    API_KEY_ENVIRON_KEY,
    PREFLIGHT,
    PROJECT_ENVIRON_KEY,
    PROJECT_ID_ENVIRON_KEY,
    RATE_LIMIT_ENVIRON_KEY,
    RATE_LIMITED,
    ErrorAnswer,
    RequestGate,
    asgi_rate_limit_headers,
    bearer_token,
    preflight_header,
    rate_limiter,
)
from ._secret import Secret
from .errors import AuthError, StoreUnavailable
from .manager import KeyManager
from .records import ApiKey

if TYPE_CHECKING:
    from .ratelimit import CountBy, RateDecision, RateLimiter, Strategy, TierFunction

__all__ = [
    "API_KEY_SCOPE_KEY",
    "PROJECT_ID_SCOPE_KEY",
    "PROJECT_SCOPE_KEY",
    "RATE_LIMIT_SCOPE_KEY",
    "ApiKeyMiddleware",
]

logger = logging.getLogger("vemetric_auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope entry holding the request's :class:`~vemetric_auth.ApiKey`.
API_KEY_SCOPE_KEY = API_KEY_ENVIRON_KEY
#: The scope entry holding the request's project id (str).
PROJECT_ID_SCOPE_KEY = PROJECT_ID_ENVIRON_KEY
#: The scope entry holding what ``project_loader`` returned, when one is given.
PROJECT_SCOPE_KEY = PROJECT_ENVIRON_KEY
#: The scope entry holding the request's
#: :class:`~vemetric_auth.ratelimit.RateDecision`, when a rate limit applies.
RATE_LIMIT_SCOPE_KEY = RATE_LIMIT_ENVIRON_KEY

#: How many key checks (and synchronous project loaders) may wait on worker
#: threads at once, per middleware. They mostly wait on the manager's own
#: argon2 and store threads, which bound the actual work.
_THREADS = 40

# The messages that start an answer: the rate limit headers go in them.
_ANSWER_STARTS = frozenset(
    ("http.response.start", "websocket.accept", "websocket.http.response.start")
)

# The request headers the gate reads, under their WSGI environ names.
_GATE_HEADERS = {
    b"authorization": "HTTP_AUTHORIZATION",
    b"origin": "HTTP_ORIGIN",
    b"access-control-request-method": "HTTP_ACCESS_CONTROL_REQUEST_METHOD",
}


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every request to an ASGI app.

    A pure ASGI middleware (no ``BaseHTTPMiddleware``): it sees ``http`` and
    ``websocket`` connections, and passes ``lifespan`` (and any other scope
    type) straight through.

    A request with a valid, active key reaches the wrapped application with
    more scope entries: ``vemetric_auth.api_key`` (the
    :class:`~vemetric_auth.ApiKey`) and ``vemetric_auth.project_id``, plus
    ``vemetric_auth.project`` with a *project_loader*; Starlette's (and
    FastAPI's) ``request.state`` shows them as ``api_key``, ``project_id``
    and ``project`` (the loader's result, or the project id without one).
    Any other request is answered here, with the WSGI middleware's answers
    byte for byte: ``401`` with the JSON body and ``WWW-Authenticate``
    challenge of the HTTP contract, or ``503`` with ``Retry-After`` when the
    key store fails (or the manager is closed). A ``HEAD`` request gets them
    without a body.

    A ``websocket`` handshake needs a key like any request and is refused
    before it is accepted: with the same ``401`` or ``503`` response where
    the server supports the ASGI denial response (uvicorn, hypercorn), else
    closed, which the server answers ``403``.

    Duplicate ``Authorization`` headers are joined with commas, as WSGI
    servers join them, which makes them a malformed header or an ill-formed
    key: the middleware never picks one of them.

    A key this process verified within the manager's ``cache_ttl`` is
    answered on the event loop. Any other is checked on a worker thread (at
    most 40 at once per middleware; a request that waits longer than the
    manager's ``store_timeout`` for one gets the ``503``), so the event loop
    never waits on the store or on argon2.

    :param app: The ASGI application to wrap.
    :param keys: The :class:`~vemetric_auth.KeyManager` that checks keys.
    :param realm: The realm named in ``WWW-Authenticate``.
    :param exempt_paths: Paths served without a key, such as a health check,
        matched exactly against the request's path (``scope["path"]``
        without the ``root_path`` it is mounted at).
    :param allow_options: Let CORS preflights through without a key: an
        ``OPTIONS`` request with both ``Origin`` and
        ``Access-Control-Request-Method``. The application is called so that
        it (or a CORS middleware inside) can answer the preflight's CORS
        headers, but only its status and headers go back (``Content-Length``
        set to ``0``), never its body. Any other ``OPTIONS`` request needs a
        key, as do preflights when this is ``False``.
    :param retry_after: Seconds sent in ``Retry-After`` with a ``503``.
    :param project_loader: Called with the key's project id once the key is
        verified; its result goes in the scope entry ``vemetric_auth.project``
        and in ``request.state.project``. An ``async`` function is awaited on
        the event loop; a plain function runs on a worker thread, since it
        may query a database. ``None`` from it means the project no longer
        exists, and the request is refused as with an invalid key (``401``,
        case 4). An :class:`~vemetric_auth.AuthError` it raises is answered
        as such (``StoreUnavailable``: ``503``); other exceptions propagate.
    :param rate_limit: Limit the requests of each project (SPEC section 8):
        a limit in the notation of the ``limits`` library, such as
        ``"100/minute"`` (Vemetric's), or a callable that takes the request's
        :class:`~vemetric_auth.ApiKey` and returns such a string, or ``None``
        for no limit (tiers per project). ``None``, the default: no limit.
        Needs the ``ratelimit`` extra.
    :param rate_limit_storage: Where the counts live, as a ``limits``
        storage URI: ``"memory://"`` (this process) or a shared one such as
        ``"redis://host:6379"`` (the ``redis`` extra), shared with every
        process and machine given the same URI, WSGI ones included.
    :param rate_limit_by: ``"project"`` counts the requests of all keys of a
        project together; ``"key"`` counts each key on its own.
    :param rate_limit_strategy: ``"fixed-window"`` (Vemetric's, one storage
        call per request), ``"moving-window"`` or
        ``"sliding-window-counter"``.
    :param rate_limit_storage_options: Keyword arguments for the storage's
        client (see :class:`~vemetric_auth.ratelimit.RateLimiter`).

    With a rate limit, the answers are the WSGI middleware's: a request with
    a valid key (and project) is counted once it is authenticated; refused
    keys, exempt paths, preflights and ``lifespan`` are never counted. The
    three ``X-RateLimit-*`` headers are appended to the headers of the
    application's ``http.response.start`` (its body is never buffered), and
    the decision is in the scope entry ``vemetric_auth.rate_limit``. Over
    the limit the application is not called and the answer is the ``429``
    with ``Retry-After``, the three headers and the JSON body
    ``RATE_LIMIT_EXCEEDED``.

    A ``websocket`` handshake is one request: counted once, its
    ``websocket.accept`` (or the application's own denial response) carries
    the three headers, and over the limit it is refused before it is
    accepted, with the ``429`` where the server supports the ASGI denial
    response, else closed with code 1013 ("try again later"). The messages
    of an open websocket are not counted.

    With ``memory://`` the count is taken on the event loop (about a
    microsecond, no I/O); with any other storage, whose calls wait on the
    network, on a worker thread (at most 40 at once per middleware), so a
    slow or frozen Redis never holds up the loop. A tier callable runs
    where the count is taken: keep it free of I/O with ``memory://``.

    .. code-block:: python

        from vemetric_auth import KeyManager, SQLKeyStore
        from vemetric_auth.asgi import ApiKeyMiddleware

        keys = KeyManager(SQLKeyStore("sqlite:///vemetric_auth.db"))
        app = ApiKeyMiddleware(
            app,
            keys,
            exempt_paths=["/health"],
            rate_limit="100/minute",
            rate_limit_storage="redis://localhost:6379",
        )

    Security: the application's own messages and exceptions pass through
    untouched; only the credential check and the rate limit can end a
    request here, and a failing store never lets a request through. The
    scope is updated in place (as Starlette's router does), so middlewares
    around this one also see the entries it adds, after the call.

    :raises TypeError, ValueError: an argument is wrong (a rate limit
        setting's message starts with its parameter's name).
    :raises ImportError: a rate limit without ``limits`` installed, or a
        storage whose client library is missing.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyManager,
        *,
        realm: str = "vemetric",
        exempt_paths: Iterable[str] = (),
        allow_options: bool = True,
        retry_after: int = 5,
        project_loader: Callable[[str], Any] | None = None,
        rate_limit: str | TierFunction | None = None,
        rate_limit_storage: str = "memory://",
        rate_limit_by: CountBy = "project",
        rate_limit_strategy: Strategy = "fixed-window",
        rate_limit_storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.project_loader = project_loader
        self.gate = ScopeGate(
            keys,
            realm=realm,
            retry_after=retry_after,
            exempt_paths=exempt_paths,
            allow_options=allow_options,
            project_loader=project_loader,
            limiter=rate_limiter(
                rate_limit,
                storage_uri=rate_limit_storage,
                storage_options=rate_limit_storage_options,
                by=rate_limit_by,
                strategy=rate_limit_strategy,
            ),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # lifespan, and the unknown
            await self.app(scope, receive, send)
            return
        gate = self.gate
        view = environ_view(scope)
        passage = gate.passage(view)
        if passage is None:
            try:
                if not gate.admit_cached(scope, view):
                    await gate.authenticate(scope, view)
            except AuthError as error:
                await gate.answer(error).asgi(scope, receive, send)
                return
            if gate.limiter is not None:
                record = scope[API_KEY_SCOPE_KEY]
                if gate.counts_on_loop:
                    # No coroutine for a count of a microsecond in memory.
                    decision = gate.gate.rate_limit(scope, record)
                else:
                    decision = await gate.rate_limit(scope, record)
                if decision is not None:
                    if not decision.allowed:
                        await RATE_LIMITED.asgi(decision, scope, receive, send)
                        return
                    send = _with_rate_limit_headers(send, decision)
        elif passage is PREFLIGHT:
            await _headers_only(self.app, scope, receive, send)
            return
        await self.app(scope, receive, send)


class ScopeGate:
    """The request gate of :mod:`vemetric_auth._http`, asked from an event loop.

    Shared by :class:`ApiKeyMiddleware` and the FastAPI dependencies: who
    passes without a key is :attr:`gate`'s :meth:`~RequestGate.passage` of
    the scope's :func:`environ_view`; :meth:`authenticate` checks the key
    and :meth:`rate_limit` counts the request, without blocking the loop.
    """

    __slots__ = (
        "_limit_threads",
        "_load_async",
        "_slots",
        "_threads",
        "counts_on_loop",
        "gate",
        "keys",
        "limiter",
        "project_loader",
    )

    def __init__(
        self,
        keys: KeyManager,
        *,
        realm: str,
        retry_after: int,
        exempt_paths: Iterable[str],
        allow_options: bool,
        project_loader: Callable[[str], Any] | None,
        limiter: RateLimiter | None = None,
    ) -> None:
        if not isinstance(keys, KeyManager):
            raise TypeError("keys must be a vemetric_auth.KeyManager")
        if project_loader is not None and not callable(project_loader):
            raise TypeError("project_loader must be callable")
        self.gate = RequestGate(
            keys,
            realm=realm,
            retry_after=retry_after,
            exempt_paths=exempt_paths,
            allow_options=allow_options,
            limiter=limiter,
        )
        self.keys = keys
        self.project_loader = project_loader
        #: The rate limiter of authenticated requests, or ``None``.
        self.limiter = limiter
        #: Whether the limiter counts on the event loop: ``memory://``, with
        #: no I/O, in about a microsecond (less than a thread hop); any other
        #: storage waits on the network, and counts on a worker thread.
        self.counts_on_loop = limiter is None or _counts_in_memory(limiter)
        self._load_async = _is_async_callable(project_loader)
        # Made outside any event loop (anyio 4.2 or later binds them on first
        # use), so a middleware can be built at import time.
        # _slots bounds the wait for a thread; _threads, as large, is what
        # anyio's run_sync takes (it would wait without a bound).
        self._slots = anyio.Semaphore(_THREADS)
        self._threads = anyio.CapacityLimiter(_THREADS)
        # Counts have threads of their own: a storage outage must not take
        # those of the key checks (each count is bounded by the storage's
        # timeouts, so the wait for one is too).
        self._limit_threads = anyio.CapacityLimiter(_THREADS)

    def passage(self, view: dict[str, Any]) -> str | None:
        """Say how a request passes without a key, if it does: the
        :meth:`RequestGate.passage` of its :func:`environ_view`."""
        return self.gate.passage(view)

    def answer(self, error: AuthError) -> ErrorAnswer:
        """Return the answer to *error* (see :meth:`RequestGate.answer`)."""
        return self.gate.answer(error)

    async def authenticate(
        self, scope: Scope, view: dict[str, Any] | None = None
    ) -> tuple[ApiKey, object]:
        """Check the key of a request; return its record and its project.

        The ``Authorization`` header is read from the scope (or from *view*,
        its :func:`environ_view` when the caller has it). On success the
        scope gets the entries ``vemetric_auth.api_key``,
        ``vemetric_auth.project_id`` (and ``vemetric_auth.project`` with a
        loader), and ``scope["state"]`` (Starlette's ``request.state``)
        ``api_key``, ``project_id`` and ``project``; on failure the scope is
        left as it was.

        :raises AuthError: the request may not pass; :meth:`answer` it.
        """
        if view is None:
            view = environ_view(scope)
        found = _cached_or_secret(self.keys, view.get("HTTP_AUTHORIZATION"))
        if isinstance(found, Secret):
            # The cold path: the store and argon2, on a thread. The key goes
            # hidden, so that no frame of an error's traceback holds it.
            record: ApiKey = await self._on_thread(_authenticate, self.keys, found)
        else:
            record = found
        loader = self.project_loader
        if loader is None:
            project: object = record.project_id
        else:
            if self._load_async:
                project = await loader(record.project_id)
            else:
                project = await self._on_thread(loader, record.project_id)
            project = self.gate.found_project(record, project)
        self._admit(scope, record, project)
        return record, project

    def admit_cached(self, scope: Scope, view: dict[str, Any]) -> bool:
        """Let a request pass if that needs nothing but the event loop: its
        key fresh in the manager's cache, and no project loader.

        :return: ``True``: the scope is filled as by :meth:`authenticate`;
            ``False``: the request needs :meth:`authenticate`.
        :raises AuthError: the header is missing, malformed or carries no key
            of the format (cases 1 to 3).
        """
        if self.project_loader is not None:
            return False
        record = self.keys.cached(bearer_token(view.get("HTTP_AUTHORIZATION")))
        if record is None:
            return False
        self._admit(scope, record, record.project_id)
        return True

    async def rate_limit(self, scope: Scope, record: ApiKey) -> RateDecision | None:
        """Count an authenticated request against its rate limit.

        Call it once per request, after :meth:`authenticate` (or
        :meth:`admit_cached`), never for a request that passes without a
        key. The count is taken on the event loop for ``memory://``, on a
        worker thread for any other storage.

        :return: ``None`` when no limit applies; otherwise the decision,
            also put in the scope entry ``vemetric_auth.rate_limit`` (see
            :meth:`RequestGate.rate_limit`).
        """
        if self.counts_on_loop:
            return self.gate.rate_limit(scope, record)
        limiter: RateLimiter = self.limiter  # type: ignore[assignment]
        decision: RateDecision | None = await anyio.to_thread.run_sync(
            limiter.hit, record, limiter=self._limit_threads
        )
        if decision is not None:
            scope[RATE_LIMIT_ENVIRON_KEY] = decision
        return decision

    def _admit(self, scope: Scope, record: ApiKey, project: object) -> None:
        if self.project_loader is not None:
            scope[PROJECT_SCOPE_KEY] = project
        scope[API_KEY_SCOPE_KEY] = record
        scope[PROJECT_ID_SCOPE_KEY] = record.project_id
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["api_key"] = record
        state["project_id"] = record.project_id
        state["project"] = project

    async def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Return ``fn(*args)``, run on a worker thread.

        :raises StoreUnavailable: no thread was free within the manager's
            ``store_timeout``.
        """
        acquired = False
        with anyio.move_on_after(self.keys.store_timeout):
            await self._slots.acquire()
            acquired = True
        if not acquired:
            logger.warning(
                "no thread free for a key check within %s seconds, answering 503",
                self.keys.store_timeout,
            )
            raise StoreUnavailable()
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
        finally:
            self._slots.release()


def _cached_or_secret(keys: KeyManager, header: object) -> ApiKey | Secret:
    """The record of the key *header* carries if the manager has it fresh,
    else the key itself, hidden.

    :raises AuthError: the header is missing, malformed or carries no key
        of the format (cases 1 to 3): no store, no argon2.
    """
    token = bearer_token(header)
    record = keys.cached(token)
    if record is not None:
        return record
    return Secret(token)


def _counts_in_memory(limiter: RateLimiter) -> bool:
    """Whether *limiter* counts in this process's memory, with no I/O."""
    return limiter._scheme == "memory"


def _with_rate_limit_headers(send: Send, decision: RateDecision) -> Send:
    """Return a ``send`` that adds *decision*'s ``X-RateLimit-*`` headers to
    the message that starts the application's answer (``http.response.start``,
    or a websocket's ``websocket.accept`` or denial response).

    The message goes on as a copy with a new header list (an application may
    send the same message every time), the application's headers first, in
    their order; every other message, the body's included, goes through
    untouched and at once.
    """
    headers = asgi_rate_limit_headers(decision)

    async def send_limited(message: Message) -> None:
        if message["type"] in _ANSWER_STARTS:
            message = {
                **message,
                "headers": [*(message.get("headers") or ()), *headers],
            }
        await send(message)

    return send_limited


def _authenticate(keys: KeyManager, secret: Secret) -> ApiKey:
    """:meth:`KeyManager.authenticate` of a key of the format, on a thread."""
    return keys._authenticate_token(secret.value)


def environ_view(scope: Scope) -> dict[str, Any]:
    """Return the entries of a WSGI environ the request gate reads, from an
    ASGI ``http`` or ``websocket`` scope.

    ``REQUEST_METHOD`` (``GET`` for a websocket handshake), ``PATH_INFO``
    (the path without ``root_path``), and the ``Authorization``, ``Origin``
    and ``Access-Control-Request-Method`` headers when present, decoded
    from latin-1 as WSGI servers do, repeated ones joined with commas as
    they join them. A header value that is not ``bytes``, as the ASGI
    specification requires, is not read: the gate answers it as a malformed
    header, never with an error.
    """
    view: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "PATH_INFO": _route_path(scope),
    }
    for name, value in scope.get("headers") or ():
        key = _GATE_HEADERS.get(name)
        if key is None:
            continue
        # Not bytes (a str included): the gate answers it as a malformed
        # header, as the WSGI middleware answers a non-str environ value.
        text: object = value.decode("latin-1") if type(value) is bytes else (value,)
        if key in view:
            before = view[key]
            both_str = type(before) is str and type(text) is str
            text = f"{before},{text}" if both_str else (before, text)
        view[key] = text
    return view


def _route_path(scope: Scope) -> str:
    """The path an application routes on: ``scope["path"]`` without the
    ``root_path`` it is mounted at (ASGI servers put both in ``path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        if len(path) == len(root):
            return ""
        if path[len(root)] == "/":
            return path[len(root) :]
    return path


def _is_async_callable(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (an object's async __call__)
    )


async def _headers_only(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer *app*'s status and headers to a request, never its body.

    Only the headers :func:`~vemetric_auth._http.preflight_header` allows go
    back. The response ends with them: ``Content-Length`` becomes ``0`` (or
    goes, on a ``1xx``, ``204`` or ``304``), an empty body follows at once,
    and every later message of *app* (its body, trailers, a file) is dropped.

    :raises RuntimeError: *app* returned without starting a response.
    """
    started = False

    async def send_headers(message: Message) -> None:
        nonlocal started
        if message["type"] != "http.response.start" or started:
            return
        started = True
        status = message["status"]
        headers = [
            (name, value)
            for name, value in message.get("headers") or ()
            if preflight_header(name.decode("latin-1"))
        ]
        # RFC 9110 8.6: no Content-Length on a 1xx or 204 answer (nor on a
        # 304, where it would describe another response's body).
        if not (100 <= status < 200 or status in (204, 304)):
            headers.append((b"content-length", b"0"))
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": b""})

    await app(scope, receive, send_headers)
    if not started:
        raise RuntimeError("the application did not start a response")
