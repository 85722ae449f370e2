"""The ``Authorization`` header parser, ``vemetric_auth._http.bearer_token``.

Each row of the HTTP contract (SPEC section 2, cases 1 to 3) by example, then
two properties over any string: the parser answers a key or one of the three
errors, and the very answer of a plain reading of the contract.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vemetric_auth import (
    AuthError,
    InvalidApiKeyFormat,
    MalformedAuthorizationHeader,
    MissingApiKey,
    is_valid_format,
)
from vemetric_auth._http import bearer_token

KEY = "vem_" + "k1" * 16
MB = 1_000_000

MISSING = MissingApiKey
MALFORMED = MalformedAuthorizationHeader
FORMAT = InvalidApiKeyFormat

CASES = [
    # case 1: missing
    pytest.param(None, MISSING, id="missing-no-header"),
    pytest.param("", MISSING, id="missing-empty"),
    pytest.param(" ", MISSING, id="whitespace-one-space"),
    pytest.param("\t", MISSING, id="whitespace-one-tab"),
    pytest.param(" \t \t ", MISSING, id="whitespace-spaces-and-tabs"),
    # case 2: the scheme is not Bearer
    pytest.param("Basic dXNlcjpwYXNz", MALFORMED, id="wrong-scheme-basic"),
    pytest.param("Token " + KEY, MALFORMED, id="wrong-scheme-token"),
    pytest.param("Bearerx " + KEY, MALFORMED, id="wrong-scheme-longer"),
    pytest.param("Bear " + KEY, MALFORMED, id="wrong-scheme-shorter"),
    pytest.param(KEY, MALFORMED, id="wrong-scheme-none-key-alone"),
    pytest.param("Bearer:" + KEY, MALFORMED, id="wrong-scheme-colon"),
    pytest.param("Bearer" + KEY, MALFORMED, id="wrong-scheme-no-space"),
    pytest.param("Bearer=" + KEY, MALFORMED, id="wrong-scheme-equals"),
    pytest.param("Bearer\x0b" + KEY, MALFORMED, id="wrong-scheme-vertical-tab"),
    pytest.param("Bearer\n" + KEY, MALFORMED, id="wrong-scheme-newline"),
    pytest.param("Bearer\u00a0" + KEY, MALFORMED, id="wrong-scheme-no-break-space"),
    pytest.param("Bearer\u3000" + KEY, MALFORMED, id="wrong-scheme-ideographic-space"),
    pytest.param("\u0412earer " + KEY, MALFORMED, id="wrong-scheme-cyrillic-ve"),
    pytest.param("B\u0435arer " + KEY, MALFORMED, id="wrong-scheme-cyrillic-ie"),
    pytest.param("\x00Bearer " + KEY, MALFORMED, id="wrong-scheme-leading-nul"),
    pytest.param("\nBearer " + KEY, MALFORMED, id="wrong-scheme-leading-newline"),
    # case 2: Bearer with no token after it
    pytest.param("Bearer", MALFORMED, id="no-token"),
    pytest.param("bearer", MALFORMED, id="no-token-lower"),
    pytest.param("Bearer ", MALFORMED, id="no-token-space"),
    pytest.param("Bearer \t  \t", MALFORMED, id="no-token-spaces-and-tabs"),
    pytest.param("  Bearer  ", MALFORMED, id="no-token-padded"),
    # the scheme in any case, the token as it is
    pytest.param("Bearer " + KEY, KEY, id="scheme-canonical"),
    pytest.param("bearer " + KEY, KEY, id="scheme-lower"),
    pytest.param("BEARER " + KEY, KEY, id="scheme-upper"),
    pytest.param("bEaReR " + KEY, KEY, id="scheme-mixed"),
    # padded tokens: spaces and tabs around the credentials and between
    pytest.param("  Bearer " + KEY, KEY, id="padded-before"),
    pytest.param("Bearer " + KEY + "   ", KEY, id="padded-after"),
    pytest.param("Bearer     " + KEY, KEY, id="padded-between"),
    pytest.param("   Bearer   " + KEY + "   ", KEY, id="padded-everywhere"),
    pytest.param("Bearer\t" + KEY, KEY, id="tabs-between"),
    pytest.param("\tBearer\t" + KEY + "\t", KEY, id="tabs-everywhere"),
    pytest.param(" \t Bearer \t " + KEY + " \t ", KEY, id="tabs-and-spaces"),
    # case 3: the token is not of the key format
    pytest.param("Bearer abc", FORMAT, id="format-short"),
    pytest.param("Bearer vem_", FORMAT, id="format-marker-only"),
    pytest.param("Bearer " + KEY[:-1], FORMAT, id="format-35-chars"),
    pytest.param("Bearer " + KEY + "k", FORMAT, id="format-37-chars"),
    pytest.param("Bearer " + KEY.upper(), FORMAT, id="format-uppercase"),
    pytest.param("Bearer " + KEY + " " + KEY, FORMAT, id="format-two-tokens"),
    pytest.param("Bearer Bearer " + KEY, FORMAT, id="format-scheme-twice"),
    pytest.param(
        "Bearer " + KEY[:20] + " " + KEY[21:], FORMAT, id="format-inner-space"
    ),
    pytest.param("Bearer " + KEY + "\n", FORMAT, id="format-trailing-newline"),
    pytest.param("Bearer " + KEY + "\r", FORMAT, id="format-trailing-cr"),
    pytest.param("Bearer " + KEY + "\x00", FORMAT, id="format-trailing-nul"),
    pytest.param("Bearer " + KEY + "\u00a0", FORMAT, id="format-trailing-nbsp"),
    pytest.param("Bearer '" + KEY + "'", FORMAT, id="format-quoted"),
    # near-miss keys: one character off the format
    pytest.param("Bearer vem-" + KEY[4:], FORMAT, id="near-miss-dash"),
    pytest.param("Bearer Vem_" + KEY[4:], FORMAT, id="near-miss-capital-v"),
    pytest.param("Bearer vex_" + KEY[4:], FORMAT, id="near-miss-marker"),
    pytest.param("Bearer " + KEY[:-1] + "_", FORMAT, id="near-miss-underscore"),
    pytest.param("Bearer " + KEY[:-1] + "K", FORMAT, id="near-miss-capital"),
    pytest.param("Bearer " + KEY[:-1] + "é", FORMAT, id="near-miss-latin-1"),
    pytest.param("Bearer " + KEY[:-1] + "\uff11", FORMAT, id="near-miss-fullwidth-1"),
    pytest.param("Bearer " + KEY[:-1] + "\u0661", FORMAT, id="near-miss-arabic-1"),
    pytest.param("Bearer " + KEY[:-1] + "\u0131", FORMAT, id="near-miss-dotless-i"),
    pytest.param("Bearer " + KEY[:-1] + "\u212a", FORMAT, id="near-miss-kelvin"),
    # long headers: the same answers, whatever the length
    pytest.param(" " * MB, MISSING, id="long-spaces"),
    pytest.param("\t" * MB, MISSING, id="long-tabs"),
    pytest.param("x" * MB, MALFORMED, id="long-no-scheme"),
    pytest.param("Basic " + "a" * MB, MALFORMED, id="long-wrong-scheme"),
    pytest.param("Bearer" + " " * MB, MALFORMED, id="long-no-token"),
    pytest.param("Bearer " + "a" * MB, FORMAT, id="long-token"),
    pytest.param("Bearer " + KEY + "a" * MB, FORMAT, id="long-key-and-more"),
    pytest.param("Bearer " + KEY + " " * MB + "a", FORMAT, id="long-second-token"),
    pytest.param(" " * MB + "Bearer " + KEY, KEY, id="long-padding-before"),
    pytest.param("Bearer " + " " * MB + KEY, KEY, id="long-padding-between"),
    pytest.param("Bearer " + KEY + "\t" * MB, KEY, id="long-padding-after"),
]


@pytest.mark.parametrize(("header", "expected"), CASES)
def test_every_case_of_the_contract(
    header: str | None, expected: str | type[AuthError]
) -> None:
    if isinstance(expected, str):
        assert bearer_token(header) == expected
    else:
        with pytest.raises(AuthError) as raised:
            bearer_token(header)
        assert type(raised.value) is expected


def contract(header: str | None) -> str | type[AuthError]:
    """The answer the HTTP contract gives, read as plainly as it is written."""
    if header is None:
        return MissingApiKey
    credentials = header.strip(" \t")
    if not credentials:
        return MissingApiKey
    scheme, *rest = re.split(r"[ \t]+", credentials, maxsplit=1)
    if not (scheme.isascii() and scheme.lower() == "bearer") or not rest:
        return MalformedAuthorizationHeader
    token = rest[0]
    if re.fullmatch(r"vem_[a-z0-9]{32}", token, flags=re.ASCII) is None:
        return InvalidApiKeyFormat
    return token


def answer(header: str | None) -> str | type[AuthError]:
    try:
        return bearer_token(header)
    except (MissingApiKey, MalformedAuthorizationHeader, InvalidApiKeyFormat) as exc:
        return type(exc)


_OWS = st.text(alphabet=" \t", max_size=4)
_KEYS = st.from_regex(r"vem_[a-z0-9]{32}", fullmatch=True)
_SCHEMES = st.one_of(
    st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR", "Basic", "Bear", ""]),
    st.text(max_size=8),
)
_TOKENS = st.one_of(
    _KEYS,
    # A key with one character replaced, inserted or removed.
    st.builds(
        lambda key, at, char, how: (
            key[:at] + char + key[at + (how != "insert") :]
            if how != "remove"
            else key[:at] + key[at + 1 :]
        ),
        _KEYS,
        st.integers(0, 35),
        st.characters(),
        st.sampled_from(["replace", "insert", "remove"]),
    ),
    st.text(),
)
#: Headers made like the real ones: padding, a scheme, a separator, a token.
_HEADERS = st.builds(
    lambda *parts: "".join(parts),
    _OWS,
    _SCHEMES,
    st.one_of(_OWS, st.sampled_from([":", "=", "\x0b", "\n", "\u00a0", ", "])),
    _TOKENS,
    _OWS,
)
#: Any string at all, and headers close to the real ones.
_ANY = st.one_of(st.none(), st.text(), _HEADERS)


@settings(max_examples=1000)
@given(_ANY)
def test_any_string_gives_a_key_or_one_of_the_three_errors(header: str | None) -> None:
    try:
        token = bearer_token(header)
    except (MissingApiKey, MalformedAuthorizationHeader, InvalidApiKeyFormat):
        return
    assert is_valid_format(token)
    assert header is not None
    assert token in header


@settings(max_examples=1000)
@given(_ANY)
def test_any_string_gets_the_answer_of_the_contract(header: str | None) -> None:
    assert answer(header) == contract(header)
