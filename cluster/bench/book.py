"""The client's own books: what every 2xx (and expected 402) answer said each payment is now, so
the audit can hold the ledger to it. Where the client cannot know (a request got no answer), the
field is left unknown rather than guessed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Expected:
    merchant_id: str
    status: str | None  # None: a later request got no answer, the final status is unknown
    amount: int
    amount_received: int | None
    amount_refunded: int | None  # None: a refund's outcome is unknown (pending, or no answer)


@dataclass
class Book:
    payments: dict[str, Expected] = field(default_factory=dict)
    unacknowledged_creates: int = 0  # create requests that got no answer: they may exist in the ledger
    idempotency_breaches: list[tuple[str, str]] = field(default_factory=list)  # (payment id or key, message)

    def intent(self, merchant_id: str, obj: dict[str, Any]) -> Expected:
        """Record a PaymentIntent object as the client saw it last."""
        expected = self.payments.get(obj["id"])
        refunded = expected.amount_refunded if expected else 0
        received = int(obj.get("amount_received") or 0)
        self.payments[obj["id"]] = expected = Expected(merchant_id, str(obj["status"]), int(obj["amount"]),
                                                       received, refunded)
        return expected

    def refund(self, payment_id: str, obj: dict[str, Any] | None) -> None:
        expected = self.payments[payment_id]
        if obj is None or obj.get("status") == "pending":
            expected.amount_refunded = None
        elif obj.get("status") == "succeeded" and expected.amount_refunded is not None:
            expected.amount_refunded += int(obj["amount"])

    def lost(self, payment_id: str) -> None:
        """A state-changing request for this payment got no answer: its outcome is unknown."""
        expected = self.payments[payment_id]
        expected.status = expected.amount_received = expected.amount_refunded = None

    def idempotency_breach(self, subject: str, message: str) -> None:
        self.idempotency_breaches.append((subject, message))


def intent_from(body: bytes, status: int) -> dict[str, Any] | None:
    """The PaymentIntent in a 200 answer, or in a 402 decline's `error.payment_intent`."""
    try:
        data = orjson.loads(body)
    except ValueError:
        return None
    if status == 200:
        return data if data.get("object") == "payment_intent" else None
    intent = (data.get("error") or {}).get("payment_intent")
    return intent if isinstance(intent, dict) else None


def error_code(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return "unparsable body"
    return str(error.get("decline_code") or error.get("code") or error.get("type") or "?")
