"""gateway/params.py: Stripe's form encoding (bracket notation) and JSON bodies, as one nested dict."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl

import pytest

from gateway.errors import InvalidRequest
from gateway.params import FORM, parse_body, parse_form


def test_plain_keys_are_unquoted_as_parse_qsl_does() -> None:
    rng = random.Random(11)
    pieces = ["a", "b", "key", "0x", "v", "+", "%20", "%2B", "%26", "%3D", "%C3%A9", "%FF", "%zz", "%", "é", ""]
    for _ in range(5_000):
        pairs = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(0, 4))]
        body = "&".join(f"k{i}{key}={value}" for i, (key, value) in enumerate(zip(pairs, reversed(pairs), strict=True)))
        assert parse_form(body) == dict(parse_qsl(body, keep_blank_values=True)), body


def test_brackets_escaped_or_not_make_hashes_and_arrays() -> None:
    body = ("type=card&card%5Bnumber%5D=4242424242424242&card[exp_month]=12&card%5bcvc%5d=123"
            "&expand[]=a&expand%5B%5D=b&metadata[order]=x+y")
    assert parse_form(body) == {
        "type": "card", "card": {"number": "4242424242424242", "exp_month": "12", "cvc": "123"},
        "expand": ["a", "b"], "metadata": {"order": "x y"},
    }


def test_blank_values_and_empty_pairs() -> None:
    assert parse_form("a=&b&&c=1&") == {"a": "", "b": "", "c": "1"}
    assert parse_form("") == {}


def test_indexed_hashes_become_lists_but_metadata_keeps_its_keys() -> None:
    body = "items[1][price]=p2&items[0][price]=p1&metadata[0]=zero&metadata[1]=one"
    assert parse_form(body) == {"items": [{"price": "p1"}, {"price": "p2"}],
                                "metadata": {"0": "zero", "1": "one"}}


def test_a_key_of_unicode_digits_is_a_key_not_an_index() -> None:
    # `²` is a digit to str.isdigit() but no number to int(): this used to escape as a 500.
    assert parse_form("x[1%C2%B2]=a&y[%D9%A3]=b") == {"x": {"1²": "a"}, "y": {"٣": "b"}}


@pytest.mark.parametrize(("body", "message"), [
    ("card=1&card[number]=2", "both a value and a hash"),
    ("card[number]=2&card=1", "both a value and a hash"),
    ("=1", "Invalid parameter name"),
    ("a]=1", "Invalid parameter name"),
    ("a[b][c][d][e][f]=1", "nested too deeply"),
    ("a[]=1&a[][b]=2", "Invalid array parameter"),
])
def test_malformed_keys_are_invalid_requests(body: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_form(body)


def test_bodies_by_content_type() -> None:
    assert parse_body("application/json; charset=utf-8", b'{"amount": 5}') == {"amount": 5}
    assert parse_body(FORM, b"amount=5&d=%C3%A9") == {"amount": "5", "d": "é"}
    assert parse_body(FORM, b"") == {}
    with pytest.raises(InvalidRequest, match="UTF-8"):
        parse_body(FORM, b"d=\xff")
    with pytest.raises(InvalidRequest, match="must be an object"):
        parse_body("application/json", b"[1]")
