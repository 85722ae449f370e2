"""Exceptions: one root for what a request can fail with, and the store's."""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthError",
    "DuplicatePrefix",
    "InvalidApiKey",
    "InvalidApiKeyFormat",
    "KeyNotFound",
    "MalformedAuthorizationHeader",
    "MissingApiKey",
    "StoreUnavailable",
]


class AuthError(Exception):
    """Root of the reasons a request is not let through. Never raised directly.

    Each subclass carries the HTTP answer it stands for: :attr:`status`,
    :attr:`code` and :attr:`message` are the values of the response body
    ``{"error": {"code": ..., "message": ...}}``. None of them ever holds a key.
    """

    #: HTTP status of the answer.
    status: ClassVar[int] = 401
    #: ``error.code`` of the JSON body.
    code: ClassVar[str] = "UNAUTHORIZED"
    #: ``error.message`` of the JSON body.
    message: ClassVar[str] = "Unauthorized"
    #: The RFC 6750 ``error`` parameter of ``WWW-Authenticate``, if any.
    bearer_error: ClassVar[str | None] = None

    def __init__(self, message: str | None = None) -> None:
        super().__init__(self.message if message is None else message)


class MissingApiKey(AuthError):
    """No ``Authorization`` header, or one that is empty or only whitespace."""

    message = "Missing API key. Use Authorization: Bearer <key>"


class MalformedAuthorizationHeader(AuthError):
    """The scheme is not ``Bearer``, or ``Bearer`` comes with no token."""

    message = "Malformed Authorization header. Use Bearer <key>"
    bearer_error = "invalid_request"


class InvalidApiKeyFormat(AuthError, ValueError):
    """The token is not ``vem_`` followed by 32 of ``[a-z0-9]``."""

    message = "Invalid API key format"
    bearer_error = "invalid_token"


class InvalidApiKey(AuthError):
    """A well-formed key that is unknown, wrong, revoked, or whose project is gone."""

    message = "Invalid or revoked API key"
    bearer_error = "invalid_token"


class StoreUnavailable(AuthError):
    """The key store failed or could not be reached; nothing was verified.

    Answered with ``503`` and ``Retry-After``, never with ``401`` and never by
    letting the request through.
    """

    status = 503
    code = "SERVICE_UNAVAILABLE"
    message = "Authentication is temporarily unavailable"


class KeyNotFound(LookupError):
    """No key record has the given id.

    The message does not repeat the id: what was given as one may be a key
    pasted in the wrong place.
    """

    def __init__(self, message: str = "no API key with this id") -> None:
        super().__init__(message)


class DuplicatePrefix(ValueError):
    """A key store already holds a key with this display prefix.

    Raised by :meth:`KeyStore.add`, which then stores nothing;
    :meth:`~vemetric_auth.KeyManager.create` draws a new key and tries again.
    """
