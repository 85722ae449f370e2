"""WSGI middleware that lets through only requests with a valid API key."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._http import (
    API_KEY_ENVIRON_KEY,
    PREFLIGHT,
    PROJECT_ENVIRON_KEY,
    PROJECT_ID_ENVIRON_KEY,
    RATE_LIMIT_ENVIRON_KEY,
    RATE_LIMITED,
    RequestGate,
    preflight_header,
    rate_limiter,
    with_rate_limit_headers,
)
from .errors import AuthError
from .manager import KeyManager

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .ratelimit import CountBy, Strategy, TierFunction

__all__ = [
    "API_KEY_ENVIRON_KEY",
    "PROJECT_ENVIRON_KEY",
    "PROJECT_ID_ENVIRON_KEY",
    "RATE_LIMIT_ENVIRON_KEY",
    "ApiKeyMiddleware",
]


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every request to a WSGI app.

    A request with a valid, active key reaches the wrapped application with two
    more environ entries: ``vemetric_auth.api_key`` (the
    :class:`~vemetric_auth.ApiKey`) and ``vemetric_auth.project_id``. Any other
    request is answered here: ``401`` with the JSON body and
    ``WWW-Authenticate`` challenge of the HTTP contract, or ``503`` with
    ``Retry-After`` when the key store fails (or the manager is closed).

    An ``HTTP_AUTHORIZATION`` environ entry that is not a ``str`` (``bytes``
    or an ``int`` put there by a faulty middleware upstream) is not read: it
    is answered as a malformed header, ``401`` case 2, never as an error.

    :param app: The WSGI application to wrap.
    :param keys: The :class:`~vemetric_auth.KeyManager` that checks keys.
    :param realm: The realm named in ``WWW-Authenticate``.
    :param exempt_paths: Paths (``PATH_INFO``, matched exactly) served without
        a key, such as a health check.
    :param allow_options: Let CORS preflights through without a key: an
        ``OPTIONS`` request with both ``Origin`` and
        ``Access-Control-Request-Method``. The application is called so that
        it can answer the preflight's CORS headers, but only its status and
        headers go back (``Content-Length`` set to ``0``), never its body. Any
        other ``OPTIONS`` request needs a key, as do preflights when this is
        ``False``.
    :param retry_after: Seconds sent in ``Retry-After`` with a ``503``.
    :param project_loader: Called with the key's project id once the key is
        verified; its result goes in the environ entry
        ``vemetric_auth.project``. ``None`` from it means the project no longer
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
        ``"redis://host:6379"`` (the ``redis`` extra) for several processes
        and machines.
    :param rate_limit_by: ``"project"`` counts the requests of all keys of a
        project together; ``"key"`` counts each key on its own.
    :param rate_limit_strategy: ``"fixed-window"`` (Vemetric's, one storage
        call per request), ``"moving-window"`` or
        ``"sliding-window-counter"``.
    :param rate_limit_storage_options: Keyword arguments for the storage's
        client (see :class:`~vemetric_auth.ratelimit.RateLimiter`).

    With a rate limit, a request with a valid key (and project) is counted
    once it is authenticated; refused keys, exempt paths and preflights are
    never counted. Every answer to a counted request carries
    ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
    (Unix epoch seconds), appended to the application's own headers; the
    decision is in the environ entry ``vemetric_auth.rate_limit``. A request
    over the limit gets ``429`` with ``Retry-After``, those three headers and
    the JSON body ``RATE_LIMIT_EXCEEDED``, and the application is not called.
    When a shared storage fails, each process goes on counting in its own
    memory until it answers again: never an error answer.

    .. code-block:: python

        from vemetric_auth import ApiKeyMiddleware, KeyManager, SQLKeyStore

        keys = KeyManager(SQLKeyStore("sqlite:///vemetric_auth.db"))
        app = ApiKeyMiddleware(
            app,
            keys,
            exempt_paths=["/health"],
            rate_limit="100/minute",
            rate_limit_storage="redis://localhost:6379",
        )

    Security: the application's own status, headers, body and exceptions pass
    through untouched; only the credential check and the rate limit can end a
    request here, and a failing store never lets a request through.

    :raises TypeError, ValueError: an argument is wrong (a rate limit
        setting's message starts with its parameter's name).
    :raises ImportError: a rate limit without ``limits`` installed, or a
        storage whose client library is missing.
    """

    def __init__(
        self,
        app: WSGIApplication,
        keys: KeyManager,
        *,
        realm: str = "vemetric",
        exempt_paths: Iterable[str] = (),
        allow_options: bool = True,
        retry_after: int = 5,
        project_loader: Callable[[str], object] | None = None,
        rate_limit: str | TierFunction | None = None,
        rate_limit_storage: str = "memory://",
        rate_limit_by: CountBy = "project",
        rate_limit_strategy: Strategy = "fixed-window",
        rate_limit_storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.project_loader = project_loader
        self.gate = RequestGate(
            keys,
            realm=realm,
            retry_after=retry_after,
            exempt_paths=exempt_paths,
            allow_options=allow_options,
            limiter=rate_limiter(
                rate_limit,
                storage_uri=rate_limit_storage,
                storage_options=rate_limit_storage_options,
                by=rate_limit_by,
                strategy=rate_limit_strategy,
            ),
        )

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        gate = self.gate
        passage = gate.passage(environ)
        if passage is None:
            try:
                record, _ = gate.authenticate(environ, self.project_loader)
            except AuthError as error:
                return gate.answer(error)(environ, start_response)
            if gate.limiter is not None:
                decision = gate.rate_limit(environ, record)
                if decision is not None:
                    if not decision.allowed:
                        return RATE_LIMITED.serve(decision, environ, start_response)
                    start_response = with_rate_limit_headers(
                        start_response, decision.headers
                    )
        elif passage is PREFLIGHT:
            return _headers_only(self.app, environ, start_response)
        return self.app(environ, start_response)


def _headers_only(
    app: WSGIApplication, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer *app*'s status and CORS headers to a request, never its body.

    The body is not read beyond the first steps an application may need to
    call ``start_response`` (a generator), and is closed. Only the headers
    :func:`~vemetric_auth._http.preflight_header` allows go back, and
    ``Content-Length: 0`` (none on a ``204``): nothing follows the headers.

    :raises RuntimeError: *app* never called ``start_response``.
    """
    started: list[Any] = []

    def capture(
        status: str,
        headers: list[tuple[str, str]],
        exc_info: tuple[type[BaseException], BaseException, TracebackType]
        | tuple[None, None, None]
        | None = None,
    ) -> Callable[[bytes], object]:
        # A later call (with exc_info, after an error) replaces an earlier
        # one: nothing was sent yet.
        started[:] = (status, headers)
        return _discard

    body = app(environ, capture)
    try:
        if not started:
            # A generator may yield empty chunks before it starts its answer
            # (PEP 3333 servers wait for the first non-empty one); a few are
            # stepped over, never the body itself.
            for chunk in itertools.islice(body, _EMPTY_CHUNKS):
                if started or chunk:
                    break
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the application did not call start_response")
    status, headers = started
    headers = [(name, value) for name, value in headers if preflight_header(name)]
    # RFC 9110 8.6: no Content-Length on a 1xx or 204 answer (nor on a 304,
    # where it would describe another response's body).
    if not status.startswith(("1", "204", "304")):
        headers.append(("Content-Length", "0"))
    start_response(status, headers)
    return []


# Empty chunks stepped over before an application's answer has started.
_EMPTY_CHUNKS = 8


def _discard(data: bytes) -> None:
    """The ``write`` callable of an answer whose body is not sent."""
