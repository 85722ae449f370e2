"""The HTTP contract, shared by the WSGI middleware and the Flask extension.

Reading the ``Authorization`` header into a key, and turning an
:class:`~vemetric_auth.AuthError` into its JSON response, happen here and
nowhere else.
"""

from __future__ import annotations

import json
import re
from typing import NoReturn

from werkzeug.wrappers import Response

from .errors import (
    AuthError,
    InvalidApiKeyFormat,
    MalformedAuthorizationHeader,
    MissingApiKey,
)
from .keys import KEY_LENGTH, is_valid_format

__all__ = ["bearer_token", "error_response", "validate_realm"]

# RFC 9110 whitespace (SP and HTAB) around and inside the credentials.
_OWS = " \t"
_OWS_RUN = re.compile(r"[ \t]*")
_SCHEME = "bearer"
_REALM = re.compile(r"[\x20-\x7e]*")
_WELL_FORMED = re.compile(
    r"[ \t]*[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+(vem_[a-z0-9]{32})[ \t]*"
).fullmatch


def bearer_token(header: str | None) -> str:
    """Return the API key an ``Authorization`` header value carries.

    Checks run in the order of the HTTP contract and stop at the first
    failure. The work done does not grow with the header's length (beyond
    whitespace around it), so a header of a megabyte costs what one of 40
    characters does, and nothing here touches a store or a hasher.

    werkzeug's ``Authorization.from_header`` is not used here: it copies the
    rest of the header, parses ``=`` as parameters and does not trim leading
    whitespace, which would give other answers than the contract's.

    :raises MissingApiKey: no header, or only whitespace.
    :raises MalformedAuthorizationHeader: the scheme is not ``Bearer``
        (any case), or nothing follows it.
    :raises InvalidApiKeyFormat: the token is not of the key format.
    """
    if header is not None:
        # The common case, a well-formed header, in one C call.
        match = _WELL_FORMED(header)
        if match is not None:
            return match.group(1)
    _raise_for(header)


def _raise_for(header: str | None) -> NoReturn:
    """Raise the contract's error for a header that is not a well-formed one."""
    if header is None:
        raise MissingApiKey()
    # strip() gives back the same object when there is nothing to trim.
    value = header.strip(_OWS)
    if not value:
        raise MissingApiKey()
    scheme = value[:6]
    if (
        len(value) == 6
        or not scheme.isascii()
        or scheme.lower() != _SCHEME
        or value[6] not in _OWS
    ):
        raise MalformedAuthorizationHeader()
    # value ends in a non-space character, so a token follows the spaces.
    start = _OWS_RUN.match(value, 7).end()  # type: ignore[union-attr]
    if len(value) - start != KEY_LENGTH or not is_valid_format(value[start:]):
        raise InvalidApiKeyFormat()
    # A header passing every check above is one _WELL_FORMED accepts; should
    # the two ever disagree, the answer is still a refusal, never a 500.
    raise MalformedAuthorizationHeader()  # pragma: no cover


def validate_realm(realm: str) -> str:
    """Return *realm* if it can stand in a quoted ``WWW-Authenticate`` value.

    :raises ValueError: for an empty realm or one with characters outside
        printable ASCII.
    """
    if not isinstance(realm, str) or not realm or not _REALM.fullmatch(realm):
        raise ValueError("realm must be a non-empty string of printable ASCII")
    return realm


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def error_response(error: AuthError, *, realm: str, retry_after: int) -> Response:
    """Return a new response for *error*: its JSON body and RFC 6750 headers.

    A new object each time, so a framework may add headers to it freely.
    """
    body = json.dumps({"error": {"code": error.code, "message": error.message}})
    response = Response(body, status=error.status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    if error.status == 401:
        challenge = f"Bearer realm={_quote(realm)}"
        if error.bearer_error is not None:
            challenge += f", error={_quote(error.bearer_error)}"
        response.headers["WWW-Authenticate"] = challenge
    else:
        response.headers["Retry-After"] = str(retry_after)
    return response
