"""`/v1/payment_methods` against the real stack: tokenizing Stripe's brand test cards, Stripe's exact
card errors and `param`s, merchant isolation, fingerprints, and form and JSON bodies.

Every response is also checked for the card number and CVC: neither may come back, not even in an
error."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Merchant

NOW = datetime.now(UTC)
GOOD_YEAR = NOW.year + 3


def card_form(number: str, cvc: str | None = None, exp_month: int | str = 12,
              exp_year: int | str = GOOD_YEAR, **extra: str) -> dict[str, str]:
    """A form body for POST /v1/payment_methods (Stripe's bracket notation)."""
    form = {"type": "card", "card[number]": number, "card[exp_month]": str(exp_month),
            "card[exp_year]": str(exp_year), **extra}
    if cvc is not None:
        form["card[cvc]"] = cvc
    return form


def leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, scalar) pair in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from leaves(v, key)
    else:
        yield key, node


def assert_no_card_data(response: httpx.Response, number: str, cvc: str | None) -> None:
    """Neither the number (with or without separators) nor the CVC, as a value or a key, in the body."""
    digits = "".join(ch for ch in number if ch.isdigit())
    assert number not in response.text and (len(digits) < 12 or digits not in response.text)
    for key, value in leaves(response.json()):
        assert key not in ("number", "cvc"), f"response has a {key!r} field"
        if cvc is not None:
            assert str(value) != cvc, f"the CVC is the value of {key!r}"


def assert_card_error(response: httpx.Response, code: str, param: str) -> None:
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("card_error", code, param), error
    assert error["message"]


def assert_invalid_request(response: httpx.Response, status: int, code: str, param: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param), error


# ---- the brand test cards ----------------------------------------------------------------------

BRAND_CARDS = [  # (number, cvc, brand, funding)
    ("4242424242424242", "737", "visa", "credit"),
    ("4000056655665556", "737", "visa", "debit"),
    ("5555555555554444", "737", "mastercard", "credit"),
    ("2223003122003222", "737", "mastercard", "unknown"),
    ("378282246310005", "9173", "amex", "credit"),
    ("6011111111111117", "737", "discover", "credit"),
]


@pytest.mark.parametrize(("number", "cvc", "brand", "funding"), BRAND_CARDS, ids=[f"{c[2]}-{c[0][-4:]}"
                                                                                 for c in BRAND_CARDS])
def test_tokenize_brand_test_cards(api: httpx.Client, number: str, cvc: str, brand: str, funding: str) -> None:
    response = api.post("/v1/payment_methods", data=card_form(number, cvc, exp_month=7))
    assert response.status_code == 200, response.text
    pm = response.json()
    assert pm["object"] == "payment_method" and pm["type"] == "card" and pm["id"].startswith("pm_")
    card = pm["card"]
    assert (card["brand"], card["last4"], card["exp_month"], card["exp_year"]) == (brand, number[-4:], 7, GOOD_YEAR)
    assert card["funding"] == funding
    assert isinstance(card["fingerprint"], str) and len(card["fingerprint"]) == 16
    assert card["checks"]["cvc_check"] == "unchecked"  # given, not yet verified by an authorization
    assert pm["livemode"] is False and pm["customer"] is None
    assert_no_card_data(response, number, cvc)

    fetched = api.get(f"/v1/payment_methods/{pm['id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == pm
    assert_no_card_data(fetched, number, cvc)


def test_without_cvc_the_check_is_null(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", data=card_form("4242424242424242"))
    assert response.status_code == 200, response.text
    assert response.json()["card"]["checks"]["cvc_check"] is None


def test_billing_details_and_metadata_round_trip(api: httpx.Client) -> None:
    form = card_form("5555555555554444", "737", **{
        "billing_details[name]": "Jenny Rosen", "billing_details[address][postal_code]": "94107",
        "metadata[order]": "1234"})
    response = api.post("/v1/payment_methods", data=form)
    assert response.status_code == 200, response.text
    pm = response.json()
    assert pm["billing_details"]["name"] == "Jenny Rosen"
    assert pm["billing_details"]["address"]["postal_code"] == "94107"
    assert pm["card"]["checks"]["address_postal_code_check"] == "unchecked"
    assert pm["metadata"] == {"order": "1234"}


def test_two_digit_expiry_year_reads_as_20yy(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", data=card_form("4242424242424242", exp_year=str(GOOD_YEAR)[-2:]))
    assert response.status_code == 200, response.text
    assert response.json()["card"]["exp_year"] == GOOD_YEAR


# ---- card errors: Stripe's code, type card_error, HTTP 402, the param ---------------------------

BAD_NUMBERS = [  # (number, code): brand and length are checked before Luhn, as Stripe does
    ("4242424242424241", "incorrect_number"),    # Luhn fails
    ("5555555555554445", "incorrect_number"),
    ("424242424242", "invalid_number"),          # 12 digits: no Visa is that short
    ("42424242424242424", "invalid_number"),     # 17 digits: not a Visa length
    ("3782822463100050", "invalid_number"),      # Amex with 16 digits
    ("1234567812345670", "invalid_number"),      # passes Luhn, no brand we accept
    ("9999999999999995", "invalid_number"),
    ("4242 4242 4242 4242", "invalid_number"),   # only digits are a number
    ("4242abcd42424242", "invalid_number"),
]


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    """Test ids without the card numbers: the merchant fixture names its merchant after the test id."""
    return [f"{index}-{second}" for index, (_, second) in enumerate(cases)]


@pytest.mark.parametrize(("number", "code"), BAD_NUMBERS, ids=_ids(BAD_NUMBERS))
def test_bad_numbers(api: httpx.Client, number: str, code: str) -> None:
    response = api.post("/v1/payment_methods", data=card_form(number, "737"))
    assert_card_error(response, code, "card[number]")
    assert_no_card_data(response, number, "737")


def _past_month() -> tuple[int, int]:
    if NOW.month == 1:
        pytest.skip("in January no month of this year is in the past")
    return NOW.month - 1, NOW.year


@pytest.mark.parametrize(("exp_month", "exp_year", "code", "param"), [
    (12, NOW.year - 1, "invalid_expiry_year", "card[exp_year]"),
    (1, 2001, "invalid_expiry_year", "card[exp_year]"),
    (12, NOW.year + 60, "invalid_expiry_year", "card[exp_year]"),
    (12, "20x9", "invalid_expiry_year", "card[exp_year]"),
    (13, GOOD_YEAR, "invalid_expiry_month", "card[exp_month]"),
    (0, GOOD_YEAR, "invalid_expiry_month", "card[exp_month]"),
    ("ab", GOOD_YEAR, "invalid_expiry_month", "card[exp_month]"),
])
def test_bad_expiry(api: httpx.Client, exp_month: int | str, exp_year: int | str, code: str, param: str) -> None:
    response = api.post("/v1/payment_methods", data=card_form("4242424242424242", "737", exp_month, exp_year))
    assert_card_error(response, code, param)


def test_expiry_month_in_the_past_this_year(api: httpx.Client) -> None:
    month, year = _past_month()
    response = api.post("/v1/payment_methods", data=card_form("4242424242424242", "737", month, year))
    assert_card_error(response, "invalid_expiry_month", "card[exp_month]")


def test_this_month_is_still_valid(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", data=card_form("4242424242424242", "737", NOW.month, NOW.year))
    assert response.status_code == 200, response.text


BAD_CVCS = [
    ("4242424242424242", "9173"),     # Visa: 3 digits
    ("4242424242424242", "73"),
    ("5555555555554444", "9173"),     # Mastercard: 3 digits
    ("6011111111111117", "12a"),
    ("378282246310005", "737"),       # Amex: 4 digits
    ("378282246310005", "91735"),
]


@pytest.mark.parametrize(("number", "cvc"), BAD_CVCS, ids=["visa-4-digits", "visa-2-digits", "mastercard-4-digits",
                                                         "discover-not-digits", "amex-3-digits", "amex-5-digits"])
def test_bad_cvc_by_brand(api: httpx.Client, number: str, cvc: str) -> None:
    response = api.post("/v1/payment_methods", data=card_form(number, cvc))
    assert_card_error(response, "invalid_cvc", "card[cvc]")
    assert_no_card_data(response, number, cvc)


def test_number_is_checked_before_expiry_and_cvc(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", data=card_form("4242424242424241", "1", 13, 1999))
    assert_card_error(response, "incorrect_number", "card[number]")


# ---- request errors: 400, the missing or unknown param ------------------------------------------

@pytest.mark.parametrize("missing", ["card[number]", "card[exp_month]", "card[exp_year]", "type"])
def test_missing_params(api: httpx.Client, missing: str) -> None:
    form = card_form("4242424242424242", "737")
    del form[missing]
    response = api.post("/v1/payment_methods", data=form)
    assert_invalid_request(response, 400, "parameter_missing", missing)
    assert_no_card_data(response, "4242424242424242", "737")


def test_missing_card(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", data={"type": "card"})
    assert_invalid_request(response, 400, "parameter_missing", "card")


def test_unknown_card_field(api: httpx.Client) -> None:
    form = card_form("4242424242424242", "737", **{"card[pin]": "1234"})
    response = api.post("/v1/payment_methods", data=form)
    assert_invalid_request(response, 400, "parameter_unknown", "card[pin]")
    assert_no_card_data(response, "4242424242424242", "737")


def test_no_api_key_is_401(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/payment_methods", data=card_form("4242424242424242", "737"))
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


# ---- ownership and fingerprints -----------------------------------------------------------------

@pytest.fixture
def other_api(admin: httpx.Client, base_url: str) -> Iterator[httpx.Client]:
    """A second merchant's client."""
    created = admin.post("/v1/admin/merchants", data={"name": "other merchant"})
    assert created.status_code == 200, created.text
    other = Merchant(created.json()["id"], created.json()["secret_key"])
    with httpx.Client(base_url=base_url, auth=(other.key, ""), timeout=60) as client:
        yield client


def _tokenize(client: httpx.Client, number: str, cvc: str | None = "737") -> dict[str, Any]:
    response = client.post("/v1/payment_methods", data=card_form(number, cvc))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_another_merchants_payment_method_is_404(api: httpx.Client, other_api: httpx.Client) -> None:
    pm = _tokenize(api, "4242424242424242")
    response = other_api.get(f"/v1/payment_methods/{pm['id']}")
    assert_invalid_request(response, 404, "resource_missing", "id")
    assert api.get(f"/v1/payment_methods/{pm['id']}").status_code == 200


def test_another_merchants_payment_method_cannot_be_charged(api: httpx.Client, other_api: httpx.Client) -> None:
    pm = _tokenize(api, "4242424242424242")
    response = other_api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd",
                                                           "payment_method": pm["id"], "confirm": "true"})
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("resource_missing", "payment_method")


def test_unknown_payment_method_is_404(api: httpx.Client) -> None:
    response = api.get("/v1/payment_methods/pm_doesnotexist000000000")
    assert_invalid_request(response, 404, "resource_missing", "id")


def test_same_card_twice_same_fingerprint_different_ids(api: httpx.Client) -> None:
    first = _tokenize(api, "5555555555554444")
    second = _tokenize(api, "5555555555554444", cvc=None)
    other_card = _tokenize(api, "4242424242424242")
    assert first["id"] != second["id"]
    assert first["card"]["fingerprint"] == second["card"]["fingerprint"]
    assert other_card["card"]["fingerprint"] != first["card"]["fingerprint"]


def test_fingerprint_does_not_depend_on_expiry(api: httpx.Client) -> None:
    first = api.post("/v1/payment_methods", data=card_form("6011111111111117", exp_month=1)).json()
    second = api.post("/v1/payment_methods", data=card_form("6011111111111117", exp_month=2,
                                                            exp_year=GOOD_YEAR + 1)).json()
    assert first["card"]["fingerprint"] == second["card"]["fingerprint"]


def test_fingerprint_is_per_vault_not_per_merchant(api: httpx.Client, other_api: httpx.Client) -> None:
    """What we document (actors/vault/crypto.py): one HMAC key per vault, so the same card has the same
    fingerprint for every merchant of this gateway (Stripe's differ per account). Ids stay distinct."""
    mine = _tokenize(api, "378282246310005", cvc="9173")
    theirs = _tokenize(other_api, "378282246310005", cvc="9173")
    assert mine["id"] != theirs["id"]
    assert mine["card"]["fingerprint"] == theirs["card"]["fingerprint"]


# ---- JSON bodies --------------------------------------------------------------------------------

def _json_card(number: str, cvc: str | None = "737", **card: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"number": number, "exp_month": 7, "exp_year": GOOD_YEAR, **card}
    if cvc is not None:
        body["cvc"] = cvc
    return {"type": "card", "card": body}


def test_json_body(api: httpx.Client) -> None:
    body = {**_json_card("378282246310005", "9173"), "metadata": {"order": "77"},
            "billing_details": {"email": "jenny@example.com"}}
    response = api.post("/v1/payment_methods", json=body)
    assert response.status_code == 200, response.text
    pm = response.json()
    assert (pm["card"]["brand"], pm["card"]["last4"], pm["card"]["exp_month"]) == ("amex", "0005", 7)
    assert pm["metadata"] == {"order": "77"} and pm["billing_details"]["email"] == "jenny@example.com"
    assert_no_card_data(response, "378282246310005", "9173")
    form_pm = _tokenize(api, "378282246310005", cvc="9173")
    assert form_pm["card"]["fingerprint"] == pm["card"]["fingerprint"]


def test_json_body_with_string_values(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", json=_json_card("4242424242424242", exp_month="07",
                                                               exp_year=str(GOOD_YEAR)))
    assert response.status_code == 200, response.text
    assert response.json()["card"]["exp_month"] == 7


@pytest.mark.parametrize(("card", "code", "param"), [
    ({"number": "4242424242424241"}, "incorrect_number", "card[number]"),
    ({"number": 4242424242424242, "exp_month": 13}, "invalid_expiry_month", "card[exp_month]"),
    ({"number": "4242424242424242", "exp_year": NOW.year - 1}, "invalid_expiry_year", "card[exp_year]"),
    ({"number": "378282246310005", "cvc": "737"}, "invalid_cvc", "card[cvc]"),
    ({"number": "4242424242424242", "exp_month": True}, "invalid_expiry_month", "card[exp_month]"),
])
def test_json_card_errors(api: httpx.Client, card: dict[str, Any], code: str, param: str) -> None:
    body = _json_card(**{"number": card.pop("number"), **card})
    response = api.post("/v1/payment_methods", json=body)
    assert_card_error(response, code, param)
    assert_no_card_data(response, str(body["card"]["number"]), None)


def test_json_missing_number(api: httpx.Client) -> None:
    response = api.post("/v1/payment_methods", json={"type": "card", "card": {"exp_month": 7, "exp_year": GOOD_YEAR}})
    assert_invalid_request(response, 400, "parameter_missing", "card[number]")
