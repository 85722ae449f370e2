from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vemetric_auth import display_prefix, generate_key, is_valid_format
from vemetric_auth.keys import ALPHABET

KEY = re.compile(r"vem_[a-z0-9]{32}")


def test_generated_keys_have_the_format() -> None:
    for _ in range(200):
        key = generate_key()
        assert len(key) == 36
        assert KEY.fullmatch(key)
        assert is_valid_format(key)


def test_generated_keys_differ_and_use_the_whole_alphabet() -> None:
    keys = {generate_key() for _ in range(2000)}
    assert len(keys) == 2000
    seen = set("".join(key[4:] for key in keys))
    assert seen == set(ALPHABET)


def test_entropy_is_about_165_bits() -> None:
    assert 32 * math.log2(len(ALPHABET)) == pytest.approx(165.4, abs=0.1)


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param("", id="empty"),
        pytest.param("vem_", id="marker-only"),
        pytest.param("vem_" + "a" * 31, id="35-chars"),
        pytest.param("vem_" + "a" * 33, id="37-chars"),
        pytest.param("VEM_" + "a" * 32, id="upper-marker"),
        pytest.param("vem_" + "A" * 32, id="upper-secret"),
        pytest.param("vem-" + "a" * 32, id="dash"),
        pytest.param("xem_" + "a" * 32, id="other-marker"),
        pytest.param("vem_" + "a" * 31 + "_", id="underscore"),
        pytest.param("vem_" + "a" * 31 + "\n", id="newline"),
        pytest.param(" vem_" + "a" * 31, id="leading-space"),
        pytest.param("vem_" + "a" * 31 + "é", id="latin-1"),
        pytest.param("vem_" + "a" * 31 + "٣", id="unicode-digit"),
        pytest.param(b"vem_" + b"a" * 32, id="bytes"),
        pytest.param(None, id="none"),
    ],
)
def test_is_valid_format_rejects(candidate: object) -> None:
    assert is_valid_format(candidate) is False


@given(st.text(alphabet=ALPHABET, min_size=32, max_size=32))
def test_is_valid_format_accepts_every_key_of_the_alphabet(secret: str) -> None:
    assert is_valid_format("vem_" + secret)


@given(st.text(max_size=40))
def test_is_valid_format_agrees_with_the_definition(candidate: str) -> None:
    assert is_valid_format(candidate) is bool(KEY.fullmatch(candidate))


def test_display_prefix_is_twelve_characters_and_dots() -> None:
    key = "vem_a1b2c3d4" + "e" * 24
    assert display_prefix(key) == "vem_a1b2c3d4..."


def test_display_prefix_refuses_a_non_key_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not an API key") as info:
        display_prefix("vem_" + "Z" * 32)
    assert "Z" * 8 not in str(info.value)
