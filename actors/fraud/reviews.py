"""Reviews: a `manual_review` outcome authorizes the payment and opens a Review (Stripe's `prv_…`),
written with its `review.opened` outbox event in the caller's transaction — the approval's.

The decision travels on the charge (`charge.outcome`: type, review id, score, rules), so the hook
needs only the payment row as the approval transition left it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import asyncpg

from actors.payments import store
from actors.payments.render import event_object


def _outcome(row: Mapping[str, Any]) -> dict[str, Any]:
    charge = row["charge"]
    if isinstance(charge, str):
        charge = json.loads(charge)
    return (charge or {}).get("outcome") or {}


def review_object(review_id: str, row: Mapping[str, Any], outcome: Mapping[str, Any], created: int,
                  open_: bool = True) -> dict[str, Any]:
    """Stripe's Review object (plus the risk score and rules that opened it)."""
    return {"id": review_id, "object": "review", "billing_zip": None, "charge": row["latest_charge"],
            "closed_reason": None, "created": created, "ip_address": None, "ip_address_location": None,
            "livemode": False, "open": open_, "opened_reason": "rule", "payment_intent": row["id"],
            "reason": "rule", "session": None, "risk_level": outcome.get("risk_level"),
            "risk_score": outcome.get("risk_score"), "rules": list(outcome.get("rules") or [])}


def needs_review(row: Mapping[str, Any]) -> bool:
    """Whether the charge's outcome (on a row, or on the changes about to be written) asks for a review."""
    return _asks_review(_outcome(row))


def _asks_review(outcome: Mapping[str, Any]) -> bool:
    return outcome.get("type") == "manual_review" and bool(outcome.get("review"))


async def open_if_flagged(conn: asyncpg.Connection, row: Mapping[str, Any]) -> str | None:
    """Open the review the charge's outcome asks for (no-op unless `manual_review`); returns its id."""
    outcome = _outcome(row)
    if not _asks_review(outcome):
        return None
    review_id = outcome["review"]
    created = int(time.time())
    inserted = await conn.fetchval(
        "INSERT INTO risk_reviews (id, merchant_id, payment_id, charge_id, opened_reason, reason, risk_score, "
        "rules, created) VALUES ($1, $2, $3, $4, 'rule', $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING id",
        review_id, row["merchant_id"], row["id"], row["latest_charge"], outcome.get("reason") or "rule",
        int(outcome.get("risk_score") or 0), list(outcome.get("rules") or []), created)
    if inserted is None:  # already opened (a replayed approval): one review, one event
        return str(review_id)
    event = event_object("review.opened", review_object(review_id, row, outcome, created))
    await store.append_outbox(conn, row["merchant_id"], row["id"], [event])
    return str(review_id)

