"""WSGI middleware that lets through only requests with a valid API key."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._http import ErrorAnswer, error_answers, validate_realm
from .errors import AuthError
from .manager import KeyManager

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["API_KEY_ENVIRON_KEY", "PROJECT_ID_ENVIRON_KEY", "ApiKeyMiddleware"]

#: The environ entry holding the request's :class:`~vemetric_auth.ApiKey`.
API_KEY_ENVIRON_KEY = "vemetric_auth.api_key"
#: The environ entry holding the request's project id (str).
PROJECT_ID_ENVIRON_KEY = "vemetric_auth.project_id"


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
    ) -> None:
        if isinstance(exempt_paths, str):
            raise TypeError("exempt_paths must be a collection of paths, not a str")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int):
            raise TypeError("retry_after must be an int")
        if retry_after < 0:
            raise ValueError("retry_after must be 0 or more seconds")
        self.app = app
        self.keys = keys
        self.realm = validate_realm(realm)
        self.exempt_paths = frozenset(exempt_paths)
        self.allow_options = allow_options
        self.retry_after = retry_after
        self._answers = error_answers(realm=self.realm, retry_after=retry_after)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if (self.allow_options and environ.get("REQUEST_METHOD") == "OPTIONS") or (
            self.exempt_paths and environ.get("PATH_INFO", "") in self.exempt_paths
        ):
            return self.app(environ, start_response)
        try:
            record = self.keys.authenticate_header(environ.get("HTTP_AUTHORIZATION"))
        except AuthError as error:
            answer = self._answers.get(type(error))
            if answer is None:  # an AuthError subclass of the application's
                answer = ErrorAnswer(
                    error, realm=self.realm, retry_after=self.retry_after
                )
            return answer(environ, start_response)
        environ[API_KEY_ENVIRON_KEY] = record
        environ[PROJECT_ID_ENVIRON_KEY] = record.project_id
        return self.app(environ, start_response)
