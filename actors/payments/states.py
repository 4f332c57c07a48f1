"""The PaymentIntent state machine: one table, checked in one place.

Stripe's names. `processing` is where an acquirer call is in flight; a decline or a fraud block
returns the intent to `requires_payment_method` with `last_payment_error` set.
"""

from __future__ import annotations

from typing import Literal

Status = Literal["requires_payment_method", "requires_confirmation", "processing", "requires_capture",
                 "succeeded", "canceled"]
Action = Literal["attach_payment_method", "confirm", "bank_approved", "bank_declined", "captured",
                 "capture", "capture_failed", "cancel", "canceled"]

# (from status, action) -> to status
TRANSITIONS: dict[tuple[str, str], Status] = {
    ("requires_payment_method", "attach_payment_method"): "requires_confirmation",
    ("requires_confirmation", "attach_payment_method"): "requires_confirmation",
    ("requires_payment_method", "confirm"): "processing",
    ("requires_confirmation", "confirm"): "processing",
    ("processing", "bank_approved"): "requires_capture",
    ("processing", "captured"): "succeeded",
    ("processing", "bank_declined"): "requires_payment_method",
    ("processing", "capture_failed"): "requires_capture",
    ("processing", "canceled"): "canceled",
    ("requires_capture", "capture"): "processing",
    ("requires_payment_method", "cancel"): "canceled",
    ("requires_confirmation", "cancel"): "canceled",
    ("requires_capture", "cancel"): "processing",
}

TERMINAL: frozenset[str] = frozenset({"succeeded", "canceled"})


class IllegalTransition(Exception):
    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"cannot {action} a PaymentIntent in status {status}")
        self.status = status
        self.action = action


def next_status(status: str, action: Action) -> Status:
    """The status after `action`, or IllegalTransition: never a silent no-op."""
    try:
        return TRANSITIONS[(status, action)]
    except KeyError:
        raise IllegalTransition(status, action) from None
