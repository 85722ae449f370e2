"""The HTTP contract (SPEC section 2) as data, shared by the tests of every
integration: ``tests/test_middleware.py`` (WSGI) and ``tests/test_contract.py``,
which runs the same table against WSGI, Flask, ASGI and FastAPI.

Written out here rather than imported from the package, so that the tests
check the contract and not the implementation.
"""

from __future__ import annotations

import pytest

MISSING = "Missing API key. Use Authorization: Bearer <key>"
MALFORMED = "Malformed Authorization header. Use Bearer <key>"
FORMAT = "Invalid API key format"
INVALID = "Invalid or revoked API key"

CHALLENGES = {
    MISSING: 'Bearer realm="vemetric"',
    MALFORMED: 'Bearer realm="vemetric", error="invalid_request"',
    FORMAT: 'Bearer realm="vemetric", error="invalid_token"',
    INVALID: 'Bearer realm="vemetric", error="invalid_token"',
}

UNAVAILABLE_BODY = {
    "error": {
        "code": "SERVICE_UNAVAILABLE",
        "message": "Authentication is temporarily unavailable",
    }
}

PREFLIGHT_HEADERS = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "GET",
}

KEY = "vem_" + "k" * 32  # stands for the issued key in the tables below

#: Every way a request is refused with a 401: the ``Authorization`` header
#: (``None``: none at all) and the message of its answer.
HEADER_CASES = [
    # case 1: missing
    pytest.param(None, MISSING, id="no-header"),
    pytest.param("", MISSING, id="empty"),
    pytest.param("   ", MISSING, id="spaces"),
    pytest.param("\t \t", MISSING, id="tabs"),
    # case 2: malformed
    pytest.param("Basic dXNlcjpwYXNz", MALFORMED, id="basic"),
    pytest.param("Bearer", MALFORMED, id="bearer-alone"),
    pytest.param("Bearer    ", MALFORMED, id="bearer-spaces"),
    pytest.param("bearer", MALFORMED, id="bearer-lower-alone"),
    pytest.param("Bearerx " + KEY, MALFORMED, id="longer-scheme"),
    pytest.param("Bear " + KEY, MALFORMED, id="shorter-scheme"),
    pytest.param("Token " + KEY, MALFORMED, id="token-scheme"),
    pytest.param(KEY, MALFORMED, id="key-without-scheme"),
    pytest.param("Bearer:" + KEY, MALFORMED, id="colon"),
    pytest.param("Bearer\x0b" + KEY, MALFORMED, id="vertical-tab"),
    # case 3: format
    pytest.param("Bearer abc", FORMAT, id="short-token"),
    pytest.param("Bearer vem_", FORMAT, id="marker-only"),
    pytest.param("Bearer " + KEY[:-1], FORMAT, id="35-chars"),
    pytest.param("Bearer " + KEY + "k", FORMAT, id="37-chars"),
    pytest.param("Bearer " + KEY.upper(), FORMAT, id="uppercase"),
    pytest.param("Bearer " + KEY + " extra", FORMAT, id="two-tokens"),
    pytest.param("Bearer " + KEY[:-1] + "_", FORMAT, id="underscore"),
    pytest.param("Bearer " + KEY[:-1] + "é", FORMAT, id="latin-1"),
    pytest.param("Bearer Bearer " + KEY, FORMAT, id="scheme-twice"),
    pytest.param("Bearer " + "a" * 1_000_000, FORMAT, id="one-megabyte"),
    # case 4: invalid
    pytest.param("Bearer vem_" + "0" * 32, INVALID, id="unknown-key"),
]

#: Ways to send a valid key: each must be let through.
VALID_TEMPLATES = [
    pytest.param("Bearer {}", id="canonical"),
    pytest.param("bearer {}", id="lowercase-scheme"),
    pytest.param("BEARER {}", id="uppercase-scheme"),
    pytest.param("bEaReR {}", id="mixed-scheme"),
    pytest.param("  Bearer   {}  ", id="surrounding-spaces"),
    pytest.param("Bearer\t{}\t", id="tabs"),
]
