"""Pure card logic: validation with Stripe's error codes, brand detection, Stripe's test cards.

Nothing here does I/O. Every error message is fixed text: a card number or CVC must never reach an
exception, a repr or a log line, because exceptions travel through Ray to the gateway and its logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from actors.errors import CardError as StripeCardError
from cluster.logs import luhn_valid  # one Luhn check, shared with the log redaction

# A Stripe-compatible card_error: (code, param, message). Messages are Stripe's wording.
_MESSAGES = {
    "invalid_number": "Your card number is invalid.",
    "incorrect_number": "Your card number is incorrect.",
    "invalid_expiry_month": "Your card's expiration month is invalid.",
    "invalid_expiry_year": "Your card's expiration year is invalid.",
    "invalid_cvc": "Your card's security code is invalid.",
}
_PARAMS = {
    "invalid_number": "card[number]",
    "incorrect_number": "card[number]",
    "invalid_expiry_month": "card[exp_month]",
    "invalid_expiry_year": "card[exp_year]",
    "invalid_cvc": "card[cvc]",
}

# How far ahead an expiry year may be before it is "not sensible" (cards are issued for <= ~10 years).
_MAX_YEARS_AHEAD = 50
_ASCII_DIGITS = re.compile(r"[0-9]+")


class CardError(StripeCardError):
    """A Stripe `card_error` (HTTP 402). Carries only the code, the param and fixed text.

    A subclass of the shared `actors.errors.CardError`, so the gateway renders it like any other
    StripeError; constructed as `CardError(code, param, message)` with Stripe's wording by default.
    """

    def __init__(self, code: str, param: str | None = None, message: str | None = None) -> None:
        param = param if param is not None else _PARAMS.get(code)
        message = message if message is not None else _MESSAGES.get(code, "Your card was declined.")
        super().__init__(message, code=code, param=param)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-ful exceptions do not survive pickling by default; Ray pickles them to the caller.
        return (type(self), (self.code, self.param, self.message))

    def __repr__(self) -> str:
        return f"CardError(code={self.code!r}, param={self.param!r})"

    def to_dict(self) -> dict[str, Any]:
        """The body of Stripe's `{"error": {...}}` for this error."""
        return {"type": self.type, "code": self.code, "param": self.param, "message": self.message}


def _fail(code: str) -> CardError:
    return CardError(code, _PARAMS[code], _MESSAGES[code])


# --- brands ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Brand:
    name: str
    lengths: tuple[int, ...]
    cvc_length: int


_VISA = _Brand("visa", (13, 16, 19), 3)
_MASTERCARD = _Brand("mastercard", (16,), 3)
_AMEX = _Brand("amex", (15,), 4)
_DISCOVER = _Brand("discover", (16, 17, 18, 19), 3)


def _brand_of(digits: str) -> _Brand | None:
    """Brand from the leading digits (IIN ranges), or None if we do not accept the brand."""
    if digits.startswith("4"):
        return _VISA
    if digits[:2] in ("34", "37"):
        return _AMEX
    if len(digits) >= 2 and 51 <= int(digits[:2]) <= 55:
        return _MASTERCARD
    if len(digits) >= 4 and 2221 <= int(digits[:4]) <= 2720:
        return _MASTERCARD
    if digits.startswith(("6011", "65")) or (len(digits) >= 3 and 644 <= int(digits[:3]) <= 649):
        return _DISCOVER
    return None


def detect_brand(number: str) -> str | None:
    """Stripe's brand name (`visa`, `mastercard`, `amex`, `discover`) for a digit string, else None."""
    if not _is_ascii_digits(number):
        return None
    brand = _brand_of(number)
    return brand.name if brand else None


def _is_ascii_digits(value: str) -> bool:
    # str.isdigit() accepts non-ASCII digits (fullwidth, superscripts); a PAN is ASCII 0-9 only.
    return bool(_ASCII_DIGITS.fullmatch(value))


# --- Stripe's test cards --------------------------------------------------------------------

# https://docs.stripe.com/testing — PaymentMethod ids usable in test mode without collecting a card.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_mastercard_debit": "5200828282828210",
    "pm_card_mastercard_prepaid": "5105105105105100",
    "pm_card_amex": "378282246310005",
    "pm_card_discover": "6011111111111117",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
}

# Funding type of the test cards that are not credit cards (Stripe reports these; all are US cards).
_TEST_FUNDING = {
    "4000056655665556": "debit",
    "5200828282828210": "debit",
    "5105105105105100": "prepaid",
}
_TEST_PANS = frozenset(TEST_PAYMENT_METHODS.values())


def card_funding_and_country(pan: str) -> tuple[str, str | None]:
    """(funding, country) as Stripe reports them. Without a BIN table, other cards are 'unknown'."""
    if pan in _TEST_PANS:
        return _TEST_FUNDING.get(pan, "credit"), "US"
    return "unknown", None


# --- validation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ValidCard:
    """A validated card. `pan` and `cvc` are hidden from repr; `last4` is the only digits shown."""

    pan: str = field(repr=False)
    exp_month: int
    exp_year: int
    cvc: str | None = field(repr=False)
    brand: str

    @property
    def last4(self) -> str:
        return self.pan[-4:]

    @property
    def funding(self) -> str:
        return card_funding_and_country(self.pan)[0]

    @property
    def country(self) -> str | None:
        return card_funding_and_country(self.pan)[1]

    def __repr__(self) -> str:
        expiry = f"{self.exp_month:02d}/{self.exp_year}"
        return f"ValidCard(brand={self.brand!r}, last4={self.last4!r}, exp={expiry!r})"


def _as_text(value: object) -> str | None:
    """Form bodies give strings, JSON may give ints; anything else (bool, float, None) is invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    if isinstance(value, str):
        return value.strip()
    return None


def _check_number(number: object) -> tuple[str, _Brand]:
    digits = _as_text(number)
    if not digits or not _is_ascii_digits(digits):
        raise _fail("invalid_number")
    brand = _brand_of(digits)
    if brand is None or len(digits) not in brand.lengths:
        raise _fail("invalid_number")
    if not luhn_valid(digits):
        raise _fail("incorrect_number")
    return digits, brand


def _small_int(value: object, max_digits: int) -> int | None:
    text = _as_text(value)
    if not text or len(text) > max_digits or not _is_ascii_digits(text):
        return None
    return int(text)


def _check_expiry(exp_month: object, exp_year: object, today: date) -> tuple[int, int]:
    month = _small_int(exp_month, 2)
    if month is None or not 1 <= month <= 12:
        raise _fail("invalid_expiry_month")
    year_text = _as_text(exp_year) or ""
    year = _small_int(exp_year, 4)
    if year is None or len(year_text) not in (2, 4):
        raise _fail("invalid_expiry_year")
    if len(year_text) == 2:
        year += 2000  # Stripe reads a 2-digit year as 20YY
    if year < today.year or year > today.year + _MAX_YEARS_AHEAD:
        raise _fail("invalid_expiry_year")
    if year == today.year and month < today.month:
        raise _fail("invalid_expiry_month")  # a card is valid through the end of its month
    return month, year


def _check_cvc(cvc: object, brand: _Brand) -> str | None:
    if cvc is None:
        return None  # optional in Stripe's API; cvc_check is then null
    text = _as_text(cvc)
    if text is None or len(text) != brand.cvc_length or not _is_ascii_digits(text):
        raise _fail("invalid_cvc")
    return text


def validate_card(
    number: object, exp_month: object, exp_year: object, cvc: object = None, today: date | None = None
) -> ValidCard:
    """Check a card as Stripe does, in Stripe's order (number, expiry, CVC); raise CardError."""
    today = today or datetime.now(UTC).date()
    pan, brand = _check_number(number)
    month, year = _check_expiry(exp_month, exp_year, today)
    checked_cvc = _check_cvc(cvc, brand)
    return ValidCard(pan=pan, exp_month=month, exp_year=year, cvc=checked_cvc, brand=brand.name)


class CardData(dict[str, Any]):
    """What detokenize returns: a dict {pan, exp_month, exp_year, cvc} whose repr is masked.

    A dict so it pickles through Ray and reads like one, with the same names as attributes too
    (`card.pan`), as the acquirer link's own CardData has. The masked repr keeps the number out of
    logs and tracebacks even when someone prints it.
    """

    @property
    def pan(self) -> str:
        return str(self["pan"])

    @property
    def exp_month(self) -> int:
        return int(self["exp_month"])

    @property
    def exp_year(self) -> int:
        return int(self["exp_year"])

    @property
    def cvc(self) -> str | None:
        value = self.get("cvc")
        return None if value is None else str(value)

    def __repr__(self) -> str:
        pan = str(self.get("pan") or "")
        return (
            f"CardData(pan='{'*' * max(len(pan) - 4, 0)}{pan[-4:]}', exp_month={self.get('exp_month')!r}, "
            f"exp_year={self.get('exp_year')!r}, cvc={'***' if self.get('cvc') else None})"
        )

    __str__ = __repr__
