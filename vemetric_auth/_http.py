"""The HTTP contract, shared by the WSGI and ASGI middlewares and the Flask
and FastAPI integrations.

Who passes without a key, reading the ``Authorization`` header into a key,
turning an :class:`~vemetric_auth.AuthError` into its JSON response, and the
rate limit of authenticated requests (its ``429`` and its headers on every
other answer) happen here and nowhere else. A request walks straight down
from here: :class:`RequestGate` → :meth:`KeyManager.authenticate
<vemetric_auth.KeyManager.authenticate>` → its cache → the store and argon2;
then, with a limit, :meth:`RequestGate.rate_limit` → the
:class:`~vemetric_auth.ratelimit.RateLimiter`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Response

from .errors import (
    AuthError,
    InvalidApiKey,
    InvalidApiKeyFormat,
    MalformedAuthorizationHeader,
    MissingApiKey,
    StoreUnavailable,
)
from .keys import KEY_LENGTH, is_valid_format

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .manager import KeyManager
    from .ratelimit import RateDecision, RateLimiter
    from .records import ApiKey

logger = logging.getLogger("vemetric_auth")

__all__ = [
    "API_KEY_ENVIRON_KEY",
    "EXEMPT",
    "PREFLIGHT",
    "PROJECT_ENVIRON_KEY",
    "PROJECT_ID_ENVIRON_KEY",
    "RATE_LIMITED",
    "RATE_LIMIT_ENVIRON_KEY",
    "ErrorAnswer",
    "RateLimitedAnswer",
    "RequestGate",
    "asgi_rate_limit_headers",
    "bearer_token",
    "error_answers",
    "rate_limiter",
    "validate_paths",
    "validate_realm",
    "validate_retry_after",
    "with_rate_limit_headers",
]

#: The environ entry holding the request's :class:`~vemetric_auth.ApiKey`.
API_KEY_ENVIRON_KEY = "vemetric_auth.api_key"
#: The environ entry holding the request's project id (str).
PROJECT_ID_ENVIRON_KEY = "vemetric_auth.project_id"
#: The environ entry holding what ``project_loader`` returned, when one is given.
PROJECT_ENVIRON_KEY = "vemetric_auth.project"
#: The environ entry holding the request's
#: :class:`~vemetric_auth.ratelimit.RateDecision`, when a rate limit applies.
RATE_LIMIT_ENVIRON_KEY = "vemetric_auth.rate_limit"

#: :meth:`RequestGate.passage` of a request to an exempt path.
EXEMPT: Final = "exempt"
#: :meth:`RequestGate.passage` of a CORS preflight, when preflights may pass.
PREFLIGHT: Final = "preflight"

# What an application's answer to a preflight without a key may carry back:
# its CORS headers, what caches need to keep them apart, and the answer's own
# type. Everything else (validators, sizes, cookies, the application's data
# headers) would tell an unauthenticated client about a protected resource.
_PREFLIGHT_HEADERS = frozenset({"allow", "vary", "date", "content-type"})


def preflight_header(name: str) -> bool:
    """Whether the header *name* of an application's answer to a CORS
    preflight may go back to a client that sent no key."""
    lowered = name.lower()
    return lowered.startswith("access-control-") or lowered in _PREFLIGHT_HEADERS


# RFC 9110 whitespace (SP and HTAB) around and inside the credentials.
_OWS = " \t"
_OWS_RUN = re.compile(r"[ \t]*").match
_SCHEME = "bearer"
_REALM = re.compile(r"[\x20-\x7e]*")
_CANONICAL = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] (vem_[a-z0-9]{32})").fullmatch


def bearer_token(header: object) -> str:
    """Return the API key an ``Authorization`` header value carries.

    Checks run in the order of the HTTP contract and stop at the first
    failure, and nothing here touches a store or a hasher. The work does not
    grow with the header's length, except over whitespace around the scheme
    and the token, which is skipped at C speed (about 2 ms for a megabyte).

    *header* is the environ's ``HTTP_AUTHORIZATION``, a ``str`` from any
    WSGI server. Anything else there (``bytes``, an ``int``: a middleware
    upstream that wrote it wrongly) is not a header this can read, and is
    answered as a malformed one, never with an error of its own.

    werkzeug's ``Authorization.from_header`` is not used here: it copies the
    rest of the header, parses ``=`` as parameters and does not trim leading
    whitespace, which would give other answers than the contract's.

    :raises MissingApiKey: no header, or only spaces and tabs.
    :raises MalformedAuthorizationHeader: the scheme is not ``Bearer``
        (any case), nothing follows it, or *header* is not a ``str``.
    :raises InvalidApiKeyFormat: the token is not of the key format.
    """
    if type(header) is str:
        # The usual header, "Bearer <key>", in one C call of bounded cost.
        match = _CANONICAL(header)
        if match is not None:
            return match.group(1)
    return _parse(header)


def _parse(header: object) -> str:
    """:func:`bearer_token` for any header: padded, odd or wrong."""
    if header is None:
        raise MissingApiKey()
    if not isinstance(header, str):
        raise MalformedAuthorizationHeader()
    # Look at whitespace only where there is some, so that a long header
    # without padding costs no more than a short one.
    # (_OWS_RUN matches everywhere, if only the empty string.)
    start = _OWS_RUN(header).end() if header[:1] in _OWS else 0  # type: ignore[union-attr]
    if start == len(header):
        raise MissingApiKey()
    end = len(header.rstrip(_OWS)) if header[-1] in _OWS else len(header)
    scheme = header[start : start + 6]
    if (
        end - start <= 6
        or not scheme.isascii()
        or scheme.lower() != _SCHEME
        or header[start + 6] not in _OWS
    ):
        raise MalformedAuthorizationHeader()
    # end points past a non-space character, so a token follows the spaces.
    token_start = _OWS_RUN(header, start + 7, end).end()  # type: ignore[union-attr]
    if end - token_start != KEY_LENGTH:
        raise InvalidApiKeyFormat()
    token = header[token_start:end]
    if not is_valid_format(token):
        raise InvalidApiKeyFormat()
    return token


def validate_realm(realm: str) -> str:
    """Return *realm* if it can stand in a quoted ``WWW-Authenticate`` value.

    :raises ValueError: for an empty realm or one with characters outside
        printable ASCII.
    """
    if not isinstance(realm, str) or not realm or not _REALM.fullmatch(realm):
        raise ValueError("realm must be a non-empty string of printable ASCII")
    return realm


def validate_retry_after(retry_after: int) -> int:
    """Return *retry_after* if it is a whole number of seconds, 0 or more.

    :raises TypeError, ValueError: it is not.
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, int):
        raise TypeError("retry_after must be an int")
    if retry_after < 0:
        raise ValueError("retry_after must be 0 or more seconds")
    return retry_after


def validate_paths(paths: Iterable[str]) -> frozenset[str]:
    """Return the exempt *paths* as a set.

    :raises TypeError: a lone string (it would be taken for a collection of
        one-letter paths), or items that are not strings.
    """
    if isinstance(paths, str) or not isinstance(paths, Iterable):
        raise TypeError("exempt paths must be a collection of strings, not a str")
    found = frozenset(paths)
    if not all(isinstance(path, str) for path in found):
        raise TypeError("exempt paths must be strings")
    return found


class RequestGate:
    """The HTTP contract of one integration: who passes without a key, the
    credential check of those who may not, and the answers to their failures.

    :class:`~vemetric_auth.ApiKeyMiddleware` and the Flask extension each keep
    one, and ask it the same two questions: :meth:`passage`, then
    :meth:`authenticate`.
    """

    __slots__ = (
        "_answers",
        "allow_options",
        "exempt_paths",
        "keys",
        "limiter",
        "realm",
        "retry_after",
    )

    def __init__(
        self,
        keys: KeyManager,
        *,
        realm: str,
        retry_after: int,
        exempt_paths: Iterable[str],
        allow_options: bool,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.keys = keys
        self.realm = validate_realm(realm)
        self.retry_after = validate_retry_after(retry_after)
        self.exempt_paths = validate_paths(exempt_paths)
        self.allow_options = bool(allow_options)
        #: The rate limiter of authenticated requests (see :func:`rate_limiter`),
        #: or ``None`` for no limit.
        self.limiter = limiter
        self._answers = error_answers(realm=self.realm, retry_after=self.retry_after)

    def passage(self, environ: WSGIEnvironment) -> str | None:
        """Say how a request passes without a key, if it does.

        :return: :data:`EXEMPT` for a request to an exempt path (matched
            exactly against ``PATH_INFO``), which reaches the application as
            it is; :data:`PREFLIGHT` for a CORS preflight (``OPTIONS`` with
            both ``Origin`` and ``Access-Control-Request-Method``) when
            preflights may pass, whose answer must not carry the
            application's body; ``None`` for every other request, which
            needs a key, ``OPTIONS`` included.
        """
        if self.exempt_paths and environ.get("PATH_INFO", "") in self.exempt_paths:
            return EXEMPT
        if (
            environ.get("REQUEST_METHOD") == "OPTIONS"
            and self.allow_options
            and "HTTP_ORIGIN" in environ
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        ):
            return PREFLIGHT
        return None

    def authenticate(
        self,
        environ: WSGIEnvironment,
        project_loader: Callable[[str], object] | None = None,
    ) -> tuple[ApiKey, object]:
        """Check the key of a request; return its record and its project.

        The request's ``Authorization`` header is read here (see
        :func:`bearer_token`), the key checked by the :class:`KeyManager`, and
        the project is ``project_loader(record.project_id)``, or the project
        id without a loader. On success the environ gets the entries
        :data:`API_KEY_ENVIRON_KEY` and :data:`PROJECT_ID_ENVIRON_KEY`, and
        :data:`PROJECT_ENVIRON_KEY` with a loader; on failure it is left as
        it was.

        :raises AuthError: the request may not pass; :meth:`answer` it.
            ``None`` from the loader (the project no longer exists) refuses
            the key like a revoked one (:class:`InvalidApiKey`). What else the
            loader raises propagates.
        """
        # bearer_token checked the key's format: the manager need not again.
        record = self.keys._authenticate_token(
            bearer_token(environ.get("HTTP_AUTHORIZATION"))
        )
        if project_loader is None:
            project: object = record.project_id
        else:
            project = self.found_project(record, project_loader(record.project_id))
            environ[PROJECT_ENVIRON_KEY] = project
        environ[API_KEY_ENVIRON_KEY] = record
        environ[PROJECT_ID_ENVIRON_KEY] = record.project_id
        return record, project

    def rate_limit(
        self, environ: MutableMapping[str, Any], record: ApiKey
    ) -> RateDecision | None:
        """Count an authenticated request against its rate limit.

        Call it once per request, after :meth:`authenticate` (refused keys
        are never counted), and never for exempt requests or preflights.

        :return: ``None`` when no limit applies (none configured, or the tier
            callable gave none); otherwise the decision, also put in the
            environ (or ASGI scope) entry :data:`RATE_LIMIT_ENVIRON_KEY`. When
            it is not ``allowed``, answer :data:`RATE_LIMITED` and do not call
            the application; else the application's answer gets the
            decision's headers (:func:`with_rate_limit_headers`).

        A failing shared storage never raises here (see
        :class:`~vemetric_auth.ratelimit.RateLimiter`); a tier callable's own
        exceptions propagate.
        """
        limiter = self.limiter
        if limiter is None:
            return None
        decision = limiter.hit(record)
        if decision is not None:
            environ[RATE_LIMIT_ENVIRON_KEY] = decision
        return decision

    def found_project(self, record: ApiKey, project: object) -> object:
        """Return *project*, what the project loader gave for *record*.

        :raises InvalidApiKey: the loader gave ``None``: the project no longer
            exists, and its keys are refused like revoked ones.
        """
        if project is None:
            logger.info(
                "rejected key %s (%s): project %s not found",
                record.id,
                record.prefix,
                record.project_id,
            )
            raise InvalidApiKey()
        return project

    def answer(self, error: AuthError) -> ErrorAnswer:
        """Return the answer to *error*, built once for the contract's errors."""
        answer = self._answers.get(type(error))
        if answer is None:  # an AuthError subclass of the application's
            answer = ErrorAnswer(error, realm=self.realm, retry_after=self.retry_after)
        return answer


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ErrorAnswer:
    """The contract's answer to one kind of failure, as a small WSGI app (and,
    through :meth:`asgi`, an ASGI one).

    Built once per error class, realm and ``Retry-After``, so a flood of bad
    requests costs a ``start_response`` call each, not a response object.
    """

    __slots__ = ("asgi_headers", "body", "headers", "status", "status_code")

    def __init__(self, error: AuthError, *, realm: str, retry_after: int) -> None:
        body = json.dumps({"error": {"code": error.code, "message": error.message}})
        self.body = body.encode()
        self.status = f"{error.status} {HTTP_STATUS_CODES[error.status]}"
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
        ]
        if error.status == 401:
            challenge = f"Bearer realm={_quote(realm)}"
            if error.bearer_error is not None:
                challenge += f", error={_quote(error.bearer_error)}"
            headers.append(("WWW-Authenticate", challenge))
        else:
            headers.append(("Retry-After", str(retry_after)))
        self.headers = tuple(headers)
        self.status_code = error.status
        # The same headers as ASGI sends them: lowercase names, bytes.
        self.asgi_headers = tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers
        )

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        start_response(self.status, list(self.headers))
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []
        return [self.body]

    def response(self) -> Response:
        """Return the answer as a new werkzeug response a framework may modify."""
        return Response(self.body, status=self.status, headers=list(self.headers))

    async def asgi(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """Send the answer as an ASGI application would.

        An ``http`` request gets the status, the headers and, unless it is a
        ``HEAD``, the body: byte for byte the WSGI answer's. A ``websocket``
        handshake is refused before it is accepted: with this same HTTP
        response where the server offers the ``websocket.http.response``
        extension, else with a ``websocket.close`` (code 1013, "try again
        later", for a 503; 1008, "policy violation", for a 401), which the
        server answers with a ``403``.
        """
        # New header lists each time: a middleware above may add headers to
        # them (Starlette's MutableHeaders edits in place).
        await _send_answer(
            scope,
            send,
            self.status_code,
            list(self.asgi_headers),
            self.body,
            close_code=1013 if self.status_code == 503 else 1008,
        )


async def _send_answer(
    scope: MutableMapping[str, Any],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    status_code: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    close_code: int,
) -> None:
    """Send a prebuilt answer to an ASGI ``http`` request (no body to
    ``HEAD``) or, before it is accepted, to a ``websocket`` handshake: as
    the ASGI denial response where the server offers it, else as a
    ``websocket.close`` with *close_code*."""
    # New messages each time, for the same reason as the header lists.
    if scope["type"] == "websocket":
        if "websocket.http.response" in (scope.get("extensions") or ()):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status_code,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": close_code})
        return
    await send(
        {"type": "http.response.start", "status": status_code, "headers": headers}
    )
    if scope.get("method") == "HEAD":
        body = b""
    await send({"type": "http.response.body", "body": body})


def error_answers(
    *, realm: str, retry_after: int
) -> dict[type[AuthError], ErrorAnswer]:
    """Return the answers to every request error, for one realm and Retry-After."""
    return {
        error_type: ErrorAnswer(error_type(), realm=realm, retry_after=retry_after)
        for error_type in (
            MissingApiKey,
            MalformedAuthorizationHeader,
            InvalidApiKeyFormat,
            InvalidApiKey,
            StoreUnavailable,
        )
    }


class RateLimitedAnswer:
    """The ``429`` of a request over its rate limit (SPEC section 8).

    Its status, body and fixed headers are built once; each answer adds the
    ``Retry-After`` and ``X-RateLimit-*`` headers of its decision. Served as a
    WSGI application (:meth:`serve`), a werkzeug response (:meth:`response`)
    or an ASGI one (:meth:`asgi`), byte for byte the same answer.
    """

    __slots__ = ("asgi_headers", "body", "headers", "status", "status_code")

    #: The ``code`` of the JSON error.
    code: Final = "RATE_LIMIT_EXCEEDED"
    #: The ``message`` of the JSON error.
    message: Final = "Rate limit exceeded. Try again shortly."

    def __init__(self) -> None:
        body = json.dumps({"error": {"code": self.code, "message": self.message}})
        self.body = body.encode()
        self.status = f"429 {HTTP_STATUS_CODES[429]}"
        self.headers = (
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
        )
        self.status_code = 429
        # The same headers as ASGI sends them: lowercase names, bytes.
        self.asgi_headers = tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.headers
        )

    def headers_for(self, decision: RateDecision) -> list[tuple[str, str]]:
        """Return every header of the answer to *decision*, as a new list."""
        return [
            *self.headers,
            ("Retry-After", str(decision.retry_after)),
            *decision.headers,
        ]

    def serve(
        self,
        decision: RateDecision,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Answer the request of *decision* as a WSGI application would
        (no body to ``HEAD``)."""
        start_response(self.status, self.headers_for(decision))
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []
        return [self.body]

    def response(self, decision: RateDecision) -> Response:
        """Return the answer as a new werkzeug response a framework may modify."""
        return Response(
            self.body, status=self.status, headers=self.headers_for(decision)
        )

    def asgi_headers_for(self, decision: RateDecision) -> list[tuple[bytes, bytes]]:
        """Return every header of the answer to *decision* as ASGI sends
        them (lowercase names, bytes), as a new list."""
        return [
            *self.asgi_headers,
            (b"retry-after", b"%d" % decision.retry_after),
            *asgi_rate_limit_headers(decision),
        ]

    async def asgi(
        self,
        decision: RateDecision,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """Answer the request of *decision* as an ASGI application would.

        An ``http`` request gets the status, the headers and, unless it is a
        ``HEAD``, the body, as :meth:`serve` gives them. A ``websocket``
        handshake over the limit is refused before it is accepted: with this
        same ``429`` where the server offers the ``websocket.http.response``
        extension, else with a ``websocket.close`` of code 1013 ("try again
        later"), which the server answers with a ``403``.
        """
        await _send_answer(
            scope,
            send,
            self.status_code,
            self.asgi_headers_for(decision),
            self.body,
            close_code=1013,
        )


#: The one ``429`` answer: it depends on nothing configured.
RATE_LIMITED: Final = RateLimitedAnswer()


def asgi_rate_limit_headers(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    """Return the ``X-RateLimit-*`` headers of *decision* as ASGI sends them
    (lowercase names, bytes), as a new list: :attr:`RateDecision.headers
    <vemetric_auth.ratelimit.RateDecision.headers>` for an ASGI message."""
    limit, remaining, reset = _asgi_rate_limit_names()
    return [
        (limit, b"%d" % decision.limit),
        (remaining, b"%d" % decision.remaining),
        (reset, b"%d" % decision.reset),
    ]


@functools.cache
def _asgi_rate_limit_names() -> tuple[bytes, bytes, bytes]:
    # Named once, in the ratelimit module, which is imported (with the
    # limits library) only once a limit is used: by then, here.
    from .ratelimit import LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER

    return (
        LIMIT_HEADER.lower().encode("latin-1"),
        REMAINING_HEADER.lower().encode("latin-1"),
        RESET_HEADER.lower().encode("latin-1"),
    )


def with_rate_limit_headers(
    start_response: StartResponse, headers: list[tuple[str, str]]
) -> StartResponse:
    """Return a ``start_response`` that adds *headers* to the application's.

    The application's status, headers and body go through untouched, in a
    new list (an application may pass the same list every time): only the
    ``X-RateLimit-*`` headers are appended, after the application's own. An
    application that sets headers of the same names gets both.
    """

    def start_limited(
        status: str,
        response_headers: list[tuple[str, str]],
        exc_info: tuple[type[BaseException], BaseException, TracebackType]
        | tuple[None, None, None]
        | None = None,
    ) -> Callable[[bytes], object]:
        if exc_info is None:
            return start_response(status, [*response_headers, *headers])
        return start_response(status, [*response_headers, *headers], exc_info)

    return start_limited


# How each RateLimiter argument is named in the messages of rate_limiter():
# ApiKeyMiddleware's own parameters.
_PARAMETER_NAMES: Final = {
    "rate_limit": "rate_limit",
    "storage_uri": "rate_limit_storage",
    "storage_options": "rate_limit_storage_options",
    "by": "rate_limit_by",
    "strategy": "rate_limit_strategy",
}


def rate_limiter(
    rate_limit: object,
    *,
    storage_uri: object = "memory://",
    storage_options: object = None,
    by: object = "project",
    strategy: object = "fixed-window",
    names: Mapping[str, str] = _PARAMETER_NAMES,
) -> RateLimiter | None:
    """Return the :class:`~vemetric_auth.ratelimit.RateLimiter` of an
    integration's settings, or ``None`` when *rate_limit* is ``None`` (the
    other settings are then not used).

    The ``ratelimit`` module, and so the ``limits`` library, is imported only
    when a limit is given.

    :param names: How the integration calls each argument of
        :class:`~vemetric_auth.ratelimit.RateLimiter` (keys ``rate_limit``,
        ``storage_uri``, ``storage_options``, ``by``, ``strategy``), for the
        messages: by default ``ApiKeyMiddleware``'s parameter names; the Flask
        extension passes its config keys.
    :raises TypeError, ValueError: a setting is wrong; the message starts
        with its name.
    :raises ImportError: ``limits``, or the storage's client library, is
        missing; the message says what to install.
    """
    if rate_limit is None:
        return None
    from . import ratelimit  # the limits library: only when it is used

    def check(argument: str, validate: Callable[..., object], *args: object) -> None:
        try:
            validate(*args)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{names[argument]}: {error}") from None
        except ImportError as error:
            raise ImportError(f"{names[argument]}: {error}", name=error.name) from None

    check("by", ratelimit._check_by, by)
    check("strategy", ratelimit._check_strategy, strategy)
    check("rate_limit", ratelimit._check_rate_limit, rate_limit, by)
    check("storage_uri", ratelimit._check_storage_uri, storage_uri)
    check("storage_options", ratelimit._check_storage_options, storage_options)
    # Checked: what is left to fail is the storage's client refusing the URI
    # or the options.
    blamed = names["storage_uri"]
    if storage_options:
        blamed += f" or {names['storage_options']}"
    try:
        return ratelimit.RateLimiter(
            rate_limit,  # type: ignore[arg-type]
            storage_uri=storage_uri,  # type: ignore[arg-type]
            storage_options=storage_options,  # type: ignore[arg-type]
            by=by,  # type: ignore[arg-type]
            strategy=strategy,  # type: ignore[arg-type]
        )
    except (TypeError, ValueError) as error:
        raise type(error)(f"{blamed}: {error}") from None
