"""Money: integer minor units and lowercase ISO 4217 codes, with each currency's exponent and
Stripe's minimum charge amounts. Never floats."""

from __future__ import annotations

from dataclasses import dataclass

MAX_AMOUNT = 99_999_999  # Stripe's ceiling: eight digits in minor units


@dataclass(frozen=True)
class Currency:
    code: str
    exponent: int
    minimum: int  # smallest chargeable amount, in minor units


def _c(code: str, exponent: int, minimum: int) -> Currency:
    return Currency(code, exponent, minimum)


CURRENCIES: dict[str, Currency] = {c.code: c for c in (
    _c("usd", 2, 50), _c("eur", 2, 50), _c("gbp", 2, 30), _c("cad", 2, 50), _c("aud", 2, 50),
    _c("chf", 2, 50), _c("sek", 2, 300), _c("nok", 2, 300), _c("dkk", 2, 250), _c("pln", 2, 200),
    _c("czk", 2, 1500), _c("huf", 2, 17500), _c("nzd", 2, 50), _c("sgd", 2, 50), _c("hkd", 2, 400),
    _c("mxn", 2, 1000), _c("brl", 2, 50), _c("inr", 2, 50), _c("jpy", 0, 50), _c("krw", 0, 100),
    _c("vnd", 0, 1), _c("clp", 0, 1), _c("bhd", 3, 50), _c("kwd", 3, 50), _c("jod", 3, 50),
)}


def currency(code: str) -> Currency | None:
    return CURRENCIES.get(code.lower())


def format_amount(amount: int, code: str) -> str:
    """`1234, usd` → `12.34 USD` (for messages; never for arithmetic)."""
    cur = CURRENCIES[code]
    if cur.exponent == 0:
        return f"{amount} {code.upper()}"
    units, minor = divmod(amount, 10**cur.exponent)
    return f"{units}.{minor:0{cur.exponent}d} {code.upper()}"
