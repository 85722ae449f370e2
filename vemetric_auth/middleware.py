"""WSGI middleware that lets through only requests with a valid API key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ._http import RequestGate
from .errors import AuthError
from .manager import KeyManager

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "API_KEY_ENVIRON_KEY",
    "PROJECT_ENVIRON_KEY",
    "PROJECT_ID_ENVIRON_KEY",
    "ApiKeyMiddleware",
]

#: The environ entry holding the request's :class:`~vemetric_auth.ApiKey`.
API_KEY_ENVIRON_KEY = "vemetric_auth.api_key"
#: The environ entry holding the request's project id (str).
PROJECT_ID_ENVIRON_KEY = "vemetric_auth.project_id"
#: The environ entry holding what ``project_loader`` returned, when one is given.
PROJECT_ENVIRON_KEY = "vemetric_auth.project"


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every request to a WSGI app.

    A request with a valid, active key reaches the wrapped application with two
    more environ entries: ``vemetric_auth.api_key`` (the
    :class:`~vemetric_auth.ApiKey`) and ``vemetric_auth.project_id``. Any other
    request is answered here: ``401`` with the JSON body and
    ``WWW-Authenticate`` challenge of the HTTP contract, or ``503`` with
    ``Retry-After`` when the key store fails.

    :param app: The WSGI application to wrap.
    :param keys: The :class:`~vemetric_auth.KeyManager` that checks keys.
    :param realm: The realm named in ``WWW-Authenticate``.
    :param exempt_paths: Paths (``PATH_INFO``, matched exactly) served without
        a key, such as a health check.
    :param allow_options: Let ``OPTIONS`` requests (CORS preflight) through
        without a key.
    :param retry_after: Seconds sent in ``Retry-After`` with a ``503``.
    :param project_loader: Called with the key's project id once the key is
        verified; its result goes in the environ entry
        ``vemetric_auth.project``. ``None`` from it means the project no longer
        exists, and the request is refused as with an invalid key (``401``,
        case 4). An :class:`~vemetric_auth.AuthError` it raises is answered
        as such (``StoreUnavailable``: ``503``); other exceptions propagate.

    .. code-block:: python

        from vemetric_auth import ApiKeyMiddleware, KeyManager, SQLKeyStore

        keys = KeyManager(SQLKeyStore("sqlite:///vemetric_auth.db"))
        app = ApiKeyMiddleware(app, keys, exempt_paths=["/health"])

    Security: the application's own status, headers, body and exceptions pass
    through untouched; only the credential check can end a request here, and
    a failing store never lets a request through.
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
        )

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        gate = self.gate
        if gate.passes_without_key(environ):
            return self.app(environ, start_response)
        try:
            record = self.keys.authenticate_header(environ.get("HTTP_AUTHORIZATION"))
            if self.project_loader is not None:
                environ[PROJECT_ENVIRON_KEY] = gate.load_project(
                    record, self.project_loader
                )
        except AuthError as error:
            return gate.answer(error)(environ, start_response)
        environ[API_KEY_ENVIRON_KEY] = record
        environ[PROJECT_ID_ENVIRON_KEY] = record.project_id
        return self.app(environ, start_response)
