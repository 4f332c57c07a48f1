"""actors/payments/refunds.py's statements against the real ledger: a refund's creation and its
outcome are each one statement with everything that rides along (payment event, outbox events,
double entry, the key's recovery point and reply), merged across refunds by the shard's
RowBatcher; an outcome that meets a moved payment or a settled refund writes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import Any

import httpx

from actors.batching import RowBatcher
from actors.ids import new_id
from actors.payments import refunds
from actors.payments.messages import Idempotency, Reply
from banksim.journal import Journal
from cluster.db import create_pool
from cluster.stack import StackInfo
from tests.bank import ledger
from tests.conftest import Merchant


def _captured_payment(api: httpx.Client, amount: int) -> str:
    response = api.post("/v1/payment_intents", data={"amount": str(amount), "currency": "usd",
                                                     "payment_method": "pm_card_visa", "confirm": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    return str(response.json()["id"])


def _new_refund(payment: Any, amount: int) -> dict[str, Any]:
    return {"id": new_id("re"), "merchant_id": payment["merchant_id"], "payment_id": payment["id"],
            "charge_id": payment["latest_charge"], "amount": amount, "currency": payment["currency"],
            "status": "pending", "reason": None, "metadata": {"probe": "yes"}, "stan": "000001",
            "rrn": uuid.uuid4().hex[:12], "created": int(time.time()), "failure_reason": None}


def _refunded_at_the_bank(stack_info: StackInfo, refunded: list[tuple[Any, Any]]) -> None:
    """The bank's side of the refunds these tests book without sending: in its journal, so that the
    session's books and the bank still agree (a later test reconciles every merchant)."""
    journal = Journal(stack_info.bank_journal)
    try:
        with journal.transaction():
            for payment, refund in refunded:
                journal.add_refund(payment["auth_rrn"], refund["rrn"], refund["stan"], payment["auth_rrn"],
                                   refund["amount"])
    finally:
        journal.close()


def _key(path: str) -> Idempotency:
    return Idempotency(f"probe-{uuid.uuid4().hex[:8]}", "hash", "POST", path)


def _history(stack_info: StackInfo, payment_id: str) -> dict[str, Any]:
    [payment] = ledger(stack_info, "SELECT amount_refunded, version FROM payment_orders WHERE id = $1", payment_id)
    return {
        "refunded": payment["amount_refunded"], "version": payment["version"],
        "events": [r["type"] for r in ledger(stack_info, "SELECT type FROM payment_events WHERE payment_id = $1 "
                                                          "ORDER BY id", payment_id)],
        "outbox": [r["type"] for r in ledger(stack_info, "SELECT type FROM outbox_events WHERE object_id = $1 "
                                                         "ORDER BY seq", payment_id)],
        "ledger": [(r["account"], r["amount"]) for r in ledger(
            stack_info, "SELECT account, amount FROM ledger_entries WHERE payment_id = $1 "
                        "AND description LIKE 'refund%' ORDER BY id", payment_id)],
    }


def _stored_reply(stack_info: StackInfo, merchant: Merchant, key: Idempotency) -> tuple[Any, Any]:
    rows = ledger(stack_info, "SELECT response_code, response_body, recovery_point FROM idempotency_keys "
                              "WHERE merchant_id = $1 AND key = $2", merchant.id, key.key)
    return (rows[0]["response_code"], rows[0]["recovery_point"]) if rows else (None, None)


def test_refunds_merged_in_one_batch_each_write_their_own_and_a_stale_one_nothing(
        api: httpx.Client, merchant: Merchant, stack_info: StackInfo) -> None:
    """Four refunds created together, then booked together: one execution each, every payment gets
    its own events, entries, key; the one booked against a stale payment version writes nothing."""
    payment_ids = [_captured_payment(api, 2000) for _ in range(4)]
    stale = payment_ids[1]
    keys = {p: _key("/v1/refunds") for p in payment_ids}

    async def run() -> dict[str, Any]:
        pool = await create_pool(stack_info.ledger_dsn, min_size=2, max_size=4)
        try:
            rows = RowBatcher(pool)
            payments = {p: await pool.fetchrow("SELECT * FROM payment_orders WHERE id = $1", p) for p in payment_ids}
            created = await asyncio.gather(*[
                refunds.create_refund(rows, _new_refund(payments[p], 500), payments[p], keys[p]) for p in payment_ids])
            _refunded_at_the_bank(stack_info, [(payments[p], r) for p, r in zip(payment_ids, created, strict=True)
                                               if p != stale])
            booked = await asyncio.gather(*[
                refunds.book_refund(rows, refund, {**payments[p], "version": payments[p]["version"] - (p == stale)},
                                    {"39": "00"}, (keys[p], Reply(200, b'{"probe":true}')))
                for p, refund in zip(payment_ids, created, strict=True)])
            again = await refunds.book_refund(pool, created[0], payments[payment_ids[0]], {"39": "00"})
            return {"created": dict(zip(payment_ids, created, strict=True)),
                    "booked": dict(zip(payment_ids, booked, strict=True)), "again": again}
        finally:
            await pool.close()

    result = asyncio.run(run())
    assert result["again"] is None  # no longer pending: booking twice writes nothing
    together = ledger(stack_info, "SELECT DISTINCT xmin::text AS xid FROM refunds WHERE payment_id = ANY($1)",
                      [p for p in payment_ids if p != stale])
    assert len(together) == 1  # the three booked went in one statement
    for payment_id in payment_ids:
        refund = result["created"][payment_id]
        [row] = ledger(stack_info, "SELECT status, amount FROM refunds WHERE id = $1", refund["id"])
        written = _history(stack_info, payment_id)
        if payment_id == stale:
            assert result["booked"][payment_id] is None and row["status"] == "pending"
            assert written["refunded"] == 0 and written["ledger"] == []
            assert written["events"][-1] == "refund.created" and written["outbox"][-1] == "refund.created"
            assert _stored_reply(stack_info, merchant, keys[payment_id]) == (None, refund["id"])
            continue
        assert result["booked"][payment_id]["status"] == "succeeded" and row["status"] == "succeeded"
        assert written["refunded"] == 500
        assert written["events"][-2:] == ["refund.created", "refund.succeeded"], written["events"]
        assert written["outbox"][-3:] == ["refund.created", "refund.updated", "charge.refunded"]
        assert written["ledger"] == [("merchant_balance", 500), ("acquirer_receivable", -500)]
        assert _stored_reply(stack_info, merchant, keys[payment_id]) == (200, refund["id"])


def test_a_refund_the_bank_declines_fails_with_its_event(api: httpx.Client, stack_info: StackInfo) -> None:
    """The bank's books say the charge was already refunded (outside paygate): it declines (13,
    invalid amount), and the refund is `failed` (`declined`, one of Stripe's failure reasons), the
    payment untouched, `refund.failed` in the outbox."""
    payment_id = _captured_payment(api, 3000)
    [payment] = ledger(stack_info, "SELECT auth_rrn FROM payment_orders WHERE id = $1", payment_id)
    with sqlite3.connect(stack_info.bank_journal) as journal:
        journal.execute("UPDATE authorizations SET refunded_amount = captured_amount WHERE rrn = ?",
                        (payment["auth_rrn"],))
    response = api.post("/v1/refunds", data={"payment_intent": payment_id, "amount": "1000"})
    assert response.status_code == 200, response.text
    refund = response.json()
    assert (refund["status"], refund["failure_reason"], refund["amount"]) == ("failed", "declined", 1000)
    assert api.get(f"/v1/refunds/{refund['id']}").json() == refund
    written = _history(stack_info, payment_id)
    assert written["refunded"] == 0 and written["ledger"] == []
    assert written["events"][-2:] == ["refund.created", "refund.failed"]
    assert written["outbox"][-2:] == ["refund.created", "refund.failed"]
    # Nothing is reserved by a failed refund: the whole charge can still be refunded in the ledger.
    again = api.post("/v1/refunds", data={"payment_intent": payment_id, "amount": "3000"})
    assert again.status_code == 200 and again.json()["status"] == "failed"


def test_failure_reasons_are_stripes() -> None:
    assert refunds.failure_reason("stolen_card") == "lost_or_stolen_card"
    assert refunds.failure_reason("expired_card") == "expired_or_canceled_card"
    assert refunds.failure_reason("insufficient_funds") == "insufficient_funds"
    assert refunds.failure_reason("invalid_amount") == "declined"
    assert refunds.failure_reason(None) == "unknown"
