"""Typed messages between the payment shards (the assessor) and the FraudScorer actors.

Small on purpose: ids, an amount, the card's fingerprint and country and the merchant's risk
signals; never a card number. Every entity a scorer counts is scoped to one merchant and owned by
one scorer of the pool (`owner`), so its velocity windows live in one place.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

from actors.payments.risk import RiskDecision

EntityKind = Literal["card", "ip_address", "email", "device_id"]
Result = Literal["pending", "blocked", "approved", "declined", "failed"]


def entity_key(merchant_id: str, kind: str, value: str) -> str:
    return f"{merchant_id}\x1f{kind}\x1f{value}"


def owner(key: str, scorers: int) -> int:
    """Which scorer of the pool keeps this entity's windows (stable across processes)."""
    return zlib.crc32(key.encode()) % scorers if scorers > 1 else 0


@dataclass(frozen=True)
class ScoreRequest:
    attempt_id: str  # payment id + the authorization's RRN: unique per confirmation attempt
    merchant_id: str
    payment_id: str
    amount: int
    currency: str
    fingerprint: str | None
    card_country: str | None = None
    ip_address: str | None = None
    email: str | None = None
    device_id: str | None = None
    ip_country: str | None = None
    # False: only count the attempt for the entities this scorer owns and return their signals
    # (the card's scorer decides, with these signals passed in `external`).
    decide: bool = True
    external: tuple[tuple[str, int], ...] = ()

    def entities(self) -> list[tuple[EntityKind, str]]:
        pairs: list[tuple[EntityKind, str | None]] = [
            ("card", self.fingerprint), ("ip_address", self.ip_address), ("email", self.email),
            ("device_id", self.device_id)]
        return [(kind, value) for kind, value in pairs if value]


@dataclass(frozen=True)
class OutcomeRecord:
    """What the bank answered for a scored attempt: feeds the decline counters."""

    attempt_id: str
    merchant_id: str
    fingerprint: str | None
    ip_address: str | None
    email: str | None
    device_id: str | None
    result: Result
    primary: bool = True  # sent to the card's scorer, which keeps the attempt's row


@dataclass(frozen=True)
class ScoreResult:
    decision: RiskDecision | None  # None for an observe-only request
    signals: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    elapsed_us: int = 0
