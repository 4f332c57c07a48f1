"""The typed messages that cross the acquirer-adapter boundary, and its errors.

These types know nothing about ISO 8583: another bank protocol would take the same
`AcquirerRequest` and give back the same `AcquirerResponse`. A full card number lives only in
`CardData`, which never prints it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

Kind = Literal["authorize", "purchase", "capture", "refund", "reversal", "echo"]
KINDS: frozenset[str] = frozenset(get_args(Kind))

_STAN = re.compile(r"\d{6}")
_RRN = re.compile(r"[0-9A-Za-z]{12}")
_TRANSMITTED_AT = re.compile(r"\d{10}")
_CURRENCY = re.compile(r"[a-z]{3}")


def mask_pan(pan: str) -> str:
    """First six and last four digits, the rest starred: what may be stored and logged."""
    if len(pan) < 13:
        return "*" * len(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


def format_transmitted_at(dt: datetime) -> str:
    """ISO 8583 field 7 (MMDDhhmmss, UTC). A naive datetime is taken to be UTC already."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime("%m%d%H%M%S")


@dataclass(frozen=True)
class OriginalRef:
    """Points at an earlier transaction that a capture, refund or reversal acts on."""

    stan: str
    rrn: str
    auth_code: str | None
    transmitted_at: str  # MMDDhhmmss of the original; "" if unknown
    kind: Kind = "authorize"  # what the original was: an authorization, or a purchase (captured with it)

    def __post_init__(self) -> None:
        _check(_STAN.fullmatch(self.stan) is not None, "original.stan must be 6 digits")
        _check(_RRN.fullmatch(self.rrn) is not None, "original.rrn must be 12 letters or digits")
        _check(
            self.transmitted_at == "" or _TRANSMITTED_AT.fullmatch(self.transmitted_at) is not None,
            "original.transmitted_at must be MMDDhhmmss or empty",
        )


@dataclass(frozen=True, repr=False)
class CardData:
    """A card as the acquirer needs it. Kept in memory only; repr masks the number, hides the CVC."""

    pan: str
    exp_month: int
    exp_year: int  # four digits, as Stripe sends it
    cvc: str | None

    def __post_init__(self) -> None:
        # Messages name the rule, never the value: these can end up in logs.
        _check(self.pan.isdigit() and 12 <= len(self.pan) <= 19, "card number must be 12-19 digits")
        _check(1 <= self.exp_month <= 12, "exp_month must be 1-12")
        _check(2000 <= self.exp_year <= 2099, "exp_year must be a four-digit year 2000-2099")
        _check(self.cvc is None or (self.cvc.isdigit() and 3 <= len(self.cvc) <= 4), "cvc must be 3-4 digits")

    def __repr__(self) -> str:
        cvc = "None" if self.cvc is None else "'***'"
        return f"CardData(pan='{mask_pan(self.pan)}', exp_month={self.exp_month}, exp_year={self.exp_year}, cvc={cvc})"

    __str__ = __repr__

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)


@dataclass(frozen=True)
class AcquirerRequest:
    """One message to the bank. The caller picks STAN and RRN; reusing an RRN is a retransmission."""

    kind: Kind
    stan: str  # 6 digits, unique among this adapter's requests in flight
    rrn: str  # 12 letters or digits
    amount: int  # minor units
    currency: str  # lowercase ISO 4217 alpha
    merchant_id: str
    card: CardData | None = None
    original: OriginalRef | None = None
    transmitted_at: str = ""  # MMDDhhmmss; the adapter fills it if empty
    capture_rrn: str | None = None  # a purchase: the RRN its capture is known by (settlement, refunds)

    def __post_init__(self) -> None:
        _check(self.kind in KINDS, "kind must be one of " + ", ".join(sorted(KINDS)))
        _check(_STAN.fullmatch(self.stan) is not None, "stan must be 6 digits")
        _check(_RRN.fullmatch(self.rrn) is not None, "rrn must be 12 letters or digits")
        _check(
            isinstance(self.amount, int) and not isinstance(self.amount, bool) and self.amount >= 0,
            "amount must be a non-negative integer in minor units",
        )
        _check(_CURRENCY.fullmatch(self.currency) is not None, "currency must be a lowercase ISO 4217 code")
        _check(
            self.transmitted_at == "" or _TRANSMITTED_AT.fullmatch(self.transmitted_at) is not None,
            "transmitted_at must be MMDDhhmmss or empty",
        )
        _check(self.kind not in ("authorize", "purchase") or self.card is not None, f"a {self.kind} needs card data")
        _check(self.capture_rrn is None or (self.kind == "purchase" and _RRN.fullmatch(self.capture_rrn) is not None),
               "capture_rrn is for a purchase, 12 letters or digits")
        _check(
            self.kind not in ("capture", "refund", "reversal") or self.original is not None,
            f"a {self.kind} needs the original transaction (original=OriginalRef(...))",
        )


@dataclass(frozen=True)
class AcquirerResponse:
    """The bank's answer. `raw` is every decoded field with the PAN masked and no CVC."""

    approved: bool
    response_code: str  # ISO 8583 field 39
    decline_code: str | None  # Stripe's decline_code, e.g. "insufficient_funds"; None when approved
    auth_code: str | None
    stan: str
    rrn: str
    raw: dict[str, str]


class AcquirerError(Exception):
    """Base of the adapter's errors. Carries the ids (never card data) of the request it is about."""

    def __init__(
        self, message: str, stan: str | None = None, rrn: str | None = None, transmitted_at: str | None = None
    ) -> None:
        super().__init__(message)
        self.stan = stan
        self.rrn = rrn
        # The field 7 value actually sent: what a reversal's OriginalRef must quote.
        self.transmitted_at = transmitted_at

    def __reduce__(self) -> tuple[type[AcquirerError], tuple[str, str | None, str | None, str | None]]:
        # Keeps the ids when the error crosses a process boundary (Ray pickles exceptions).
        return (type(self), (str(self.args[0]), self.stan, self.rrn, self.transmitted_at))


class AcquirerTimeout(AcquirerError):
    """The request was (possibly) sent and no answer came in time: the outcome is UNKNOWN.

    Resolve it from durable state (retransmit with the same RRN, or reverse); never guess.
    """


class AcquirerUnavailable(AcquirerError):
    """The request could not be sent at all (no connection): the bank never saw it."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
