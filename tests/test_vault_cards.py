"""Card validation, brands and Stripe's test cards (pure, no I/O)."""

from __future__ import annotations

import pickle
from datetime import date

import pytest

from actors.errors import CardError as StripeCardError
from actors.vault.cards import (
    TEST_PAYMENT_METHODS,
    CardData,
    CardError,
    detect_brand,
    validate_card,
)
from cluster.logs import luhn_complete

TODAY = date(2026, 5, 15)


def with_check_digit(body: str) -> str:
    """`body` plus the Luhn check digit that makes it valid."""
    return luhn_complete(body)


def card_error(number: object, month: object = 12, year: object = 2030, cvc: object = "123") -> CardError:
    with pytest.raises(CardError) as caught:
        validate_card(number, month, year, cvc, today=TODAY)
    return caught.value


@pytest.mark.parametrize(
    ("alias", "brand", "funding"),
    [
        ("pm_card_visa", "visa", "credit"),
        ("pm_card_visa_debit", "visa", "debit"),
        ("pm_card_mastercard", "mastercard", "credit"),
        ("pm_card_mastercard_debit", "mastercard", "debit"),
        ("pm_card_mastercard_prepaid", "mastercard", "prepaid"),
        ("pm_card_amex", "amex", "credit"),
        ("pm_card_discover", "discover", "credit"),
    ],
)
def test_stripe_test_cards_validate_with_brand_and_funding(alias: str, brand: str, funding: str) -> None:
    pan = TEST_PAYMENT_METHODS[alias]
    cvc = "1234" if brand == "amex" else "123"
    card = validate_card(pan, 12, 2030, cvc, today=TODAY)
    assert (card.brand, card.funding, card.country, card.last4) == (brand, funding, "US", pan[-4:])


def test_every_test_payment_method_is_a_valid_card() -> None:
    assert len(TEST_PAYMENT_METHODS) == 14
    for pan in TEST_PAYMENT_METHODS.values():
        assert validate_card(pan, 1, 2030, today=TODAY).pan == pan
    assert TEST_PAYMENT_METHODS["pm_card_chargeDeclinedInsufficientFunds"] == "4000000000009995"
    assert TEST_PAYMENT_METHODS["pm_card_chargeDeclinedProcessingError"] == "4000000000000119"


@pytest.mark.parametrize(
    ("body", "brand"),
    [
        ("422222222222", "visa"),  # 13 digits
        ("424242424242424242", "visa"),  # 19 digits
        ("222100000000000", "mastercard"),  # 2-series low edge
        ("272099999999999", "mastercard"),  # 2-series high edge
        ("510000000000000", "mastercard"),
        ("550000000000000", "mastercard"),
        ("34000000000000", "amex"),
        ("601100000000000", "discover"),
        ("644000000000000", "discover"),
        ("649000000000000", "discover"),
        ("650000000000000", "discover"),
        ("650000000000000000", "discover"),  # 19 digits
    ],
)
def test_brand_ranges_and_lengths(body: str, brand: str) -> None:
    number = with_check_digit(body)
    assert detect_brand(number) == brand
    assert validate_card(number, 12, 2030, today=TODAY).brand == brand


@pytest.mark.parametrize(
    "body",
    [
        "353011133330000",  # JCB: a real card, but a brand we do not accept
        "3056930902590",  # Diners
        "222000000000000",  # just below Mastercard 2-series
        "272100000000000",  # just above
        "560000000000000",
        "643000000000000",
        "42424242424242",  # visa, 15 digits
        "5555555555554",  # mastercard, 14 digits
        "3782822463100",  # amex, 14 digits
    ],
)
def test_unknown_brand_or_wrong_length_is_invalid_number(body: str) -> None:
    error = card_error(with_check_digit(body))
    assert (error.code, error.param) == ("invalid_number", "card[number]")
    assert error.message == "Your card number is invalid."


@pytest.mark.parametrize(
    "number", ["", None, "4242 4242 4242 4242", "4242-4242-4242-4242", "424242424242424x", "\uff14" * 16, 4.2, True]
)
def test_non_digits_are_invalid_number(number: object) -> None:
    assert card_error(number).code == "invalid_number"


def test_luhn_failure_is_incorrect_number() -> None:
    error = card_error("4242424242424241")
    assert (error.code, error.param, error.message) == (
        "incorrect_number", "card[number]", "Your card number is incorrect."
    )


def test_integer_number_is_accepted() -> None:
    assert validate_card(4242424242424242, 12, 2030, today=TODAY).pan == "4242424242424242"


@pytest.mark.parametrize("month", [0, 13, "00", "13", "ab", None, "", -1, "123", True])
def test_bad_month(month: object) -> None:
    error = card_error("4242424242424242", month=month)
    assert (error.code, error.param) == ("invalid_expiry_month", "card[exp_month]")
    assert error.message == "Your card's expiration month is invalid."


@pytest.mark.parametrize("year", [2025, "25", "2025", 1999, "203", 2077, "20301", None, "", "x", 5])
def test_bad_year(year: object) -> None:
    error = card_error("4242424242424242", year=year)
    assert (error.code, error.param) == ("invalid_expiry_year", "card[exp_year]")
    assert error.message == "Your card's expiration year is invalid."


@pytest.mark.parametrize(("year", "expected"), [("30", 2030), (30, 2030), ("2030", 2030), ("26", 2026)])
def test_two_and_four_digit_years(year: object, expected: int) -> None:
    assert validate_card("4242424242424242", "08", year, today=TODAY).exp_year == expected


def test_expiry_in_this_year() -> None:
    assert validate_card("4242424242424242", 5, 2026, today=TODAY).exp_month == 5  # valid to month end
    error = card_error("4242424242424242", month=4, year=2026)
    assert (error.code, error.param) == ("invalid_expiry_month", "card[exp_month]")


@pytest.mark.parametrize(
    ("number", "cvc"),
    [
        ("4242424242424242", "12"),
        ("4242424242424242", "1234"),
        ("4242424242424242", "12a"),
        ("4242424242424242", ""),
        ("4242424242424242", "\uff11\uff12\uff13"),  # fullwidth digits
        ("378282246310005", "123"),
        ("378282246310005", "12345"),
    ],
)
def test_bad_cvc(number: str, cvc: str) -> None:
    error = card_error(number, cvc=cvc)
    assert (error.code, error.param) == ("invalid_cvc", "card[cvc]")
    assert error.message == "Your card's security code is invalid."


def test_cvc_is_optional_and_amex_takes_four() -> None:
    assert validate_card("4242424242424242", 12, 2030, None, today=TODAY).cvc is None
    assert validate_card("378282246310005", 12, 2030, "0123", today=TODAY).cvc == "0123"
    assert validate_card("4242424242424242", 12, 2030, "012", today=TODAY).cvc == "012"


def test_errors_come_in_stripes_order() -> None:
    assert card_error("4242424242424241", month=13, year=1, cvc="x").code == "incorrect_number"
    assert card_error("4242424242424242", month=13, year=1, cvc="x").code == "invalid_expiry_month"
    assert card_error("4242424242424242", month=1, year=1, cvc="x").code == "invalid_expiry_year"


def test_nothing_sensitive_in_errors_or_reprs() -> None:
    pan, cvc = "4000056655665556", "987"
    for error in (card_error(pan[:-1] + "7", cvc=cvc), card_error(pan, cvc="98x"), card_error(pan, month=0)):
        for text in (str(error), repr(error), str(error.to_dict()), str(error.args)):
            assert pan not in text and pan[:-1] not in text and "98" not in text
        assert error.__cause__ is None and error.__context__ is None
    card = validate_card(pan, 12, 2030, cvc, today=TODAY)
    assert pan not in repr(card) and cvc not in repr(card) and "5556" in repr(card)


def test_card_error_pickles_and_renders_like_stripe() -> None:
    error = card_error("4242424242424241")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, CardError)
    assert copy.to_dict() == {
        "type": "card_error", "code": "incorrect_number", "param": "card[number]",
        "message": "Your card number is incorrect.",
    }


def test_card_data_is_a_dict_with_a_masked_repr() -> None:
    data = CardData(pan="4242424242424242", exp_month=12, exp_year=2030, cvc="321")
    assert data["pan"] == "4242424242424242" and dict(data)["cvc"] == "321"
    for text in (repr(data), str(data), f"{data}", repr([data])):
        assert "424242424242" not in text and "321" not in text
    copy = pickle.loads(pickle.dumps(data))
    assert copy == data and isinstance(copy, CardData)
    assert (copy.pan, copy.exp_month, copy.exp_year, copy.cvc) == ("4242424242424242", 12, 2030, "321")


def test_card_error_is_the_shared_stripe_card_error() -> None:
    error = card_error("4242424242424241")
    assert isinstance(error, StripeCardError) and error.status == 402
    assert error.body()["error"]["code"] == "incorrect_number"
    assert error.body()["error"]["param"] == "card[number]"
    assert error.body()["error"]["type"] == "card_error"
