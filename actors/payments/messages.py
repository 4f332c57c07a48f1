"""Typed messages between the gateway and the payment shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verb = Literal["create", "confirm", "capture", "cancel", "refund"]

# What a payment uses of its PaymentMethod's card (the Charge's card, the risk check): all fixed
# when the card is tokenized.
CARD_FACTS = ("brand", "last4", "exp_month", "exp_year", "fingerprint", "funding", "country")


@dataclass(frozen=True)
class Idempotency:
    key: str
    request_hash: str  # of method, path and the parsed parameters
    method: str
    path: str
    retry: bool = False  # the gateway is re-sending after losing the shard: look for an earlier attempt
    internal: bool = False  # made up by the gateway (the merchant sent no key): never replayed to anyone


@dataclass(frozen=True)
class PaymentCommand:
    """One API call on a PaymentIntent, already validated at the edge."""

    verb: Verb
    merchant_id: str
    payment_id: str | None = None  # None for create
    amount: int | None = None
    currency: str | None = None
    payment_method: str | None = None
    confirm: bool = False
    capture_method: str = "automatic"
    description: str | None = None
    statement_descriptor: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    amount_to_capture: int | None = None
    cancellation_reason: str | None = None
    refund_reason: str | None = None
    risk: dict[str, str] = field(default_factory=dict)
    idempotency: Idempotency | None = None
    # The PaymentMethod's id and card facts (fixed at tokenization) when the gateway has them at
    # hand: the shard then needs no vault call to learn them.
    payment_method_card: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    """What the gateway sends back: status and the exact JSON bytes (stored for replays)."""

    status: int
    body: bytes
    replayed: bool = False
