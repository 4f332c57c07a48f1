"""Refunds against the real stack: concurrency never refunds more than was captured, a bank that
hangs never refunds twice, and the stripe SDK's refund calls work."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import stripe

from banksim.journal import Journal
from cluster.stack import LocalStack, StackInfo
from tests.bank import ledger
from tests.conftest import Merchant


def _captured_payment(api: httpx.Client, amount: int) -> dict[str, Any]:
    response = api.post("/v1/payment_intents", data={"amount": str(amount), "currency": "usd",
                                                     "payment_method": "pm_card_visa", "confirm": "true"})
    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["status"] == "succeeded" and payment["amount_received"] == amount
    return payment


def _auth_rrn(stack_info: StackInfo, payment_id: str) -> str:
    rows = ledger(stack_info, "SELECT auth_rrn FROM payment_orders WHERE id = $1", payment_id)
    return str(rows[0]["auth_rrn"])


def _bank_refunded(stack_info: StackInfo, payment_id: str) -> int:
    journal = Journal(stack_info.bank_journal)
    try:
        auth = journal.by_rrn(_auth_rrn(stack_info, payment_id))
        assert auth is not None
        return auth.refunded_amount
    finally:
        journal.close()


def _ledger_refunded(stack_info: StackInfo, payment_id: str) -> tuple[int, int]:
    """(amount_refunded on the payment, refunds booked in ledger_entries)."""
    payment = ledger(stack_info, "SELECT amount_refunded FROM payment_orders WHERE id = $1", payment_id)
    booked = ledger(stack_info, "SELECT coalesce(sum(amount), 0)::bigint AS s FROM ledger_entries "
                    "WHERE payment_id = $1 AND account = 'merchant_balance' AND description LIKE 'refund%'", payment_id)
    return int(payment[0]["amount_refunded"]), int(booked[0]["s"])


async def _concurrent(base_url: str, key: str, bodies: list[dict[str, str]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, auth=(key, ""), timeout=60,
                                 limits=httpx.Limits(max_connections=100)) as client:
        return await asyncio.gather(*[client.post("/v1/refunds", data=body) for body in bodies])


def test_partial_and_full_refund_update_the_payment(api: httpx.Client, stack_info: StackInfo) -> None:
    payment = _captured_payment(api, 5000)
    first = api.post("/v1/refunds", data={"payment_intent": payment["id"], "amount": "1200",
                                          "reason": "requested_by_customer", "metadata[ticket]": "T-1"})
    assert first.status_code == 200, first.text
    refund = first.json()
    assert (refund["object"], refund["status"], refund["amount"], refund["reason"]) == (
        "refund", "succeeded", 1200, "requested_by_customer")
    assert refund["id"].startswith("re_") and refund["metadata"] == {"ticket": "T-1"}
    rest = api.post("/v1/refunds", data={"payment_intent": payment["id"]}).json()
    assert rest["amount"] == 3800 and rest["status"] == "succeeded"
    again = api.post("/v1/refunds", data={"payment_intent": payment["id"], "amount": "1"})
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "charge_already_refunded"
    charge = api.get(f"/v1/payment_intents/{payment['id']}", params={"expand[]": "latest_charge"}).json()
    assert charge["latest_charge"]["amount_refunded"] == 5000 and charge["latest_charge"]["refunded"] is True
    listed = api.get("/v1/refunds", params={"payment_intent": payment["id"]}).json()
    assert [r["id"] for r in listed["data"]] == [rest["id"], refund["id"]]
    assert api.get(f"/v1/refunds/{refund['id']}").json()["amount"] == 1200
    assert _bank_refunded(stack_info, payment["id"]) == 5000
    assert _ledger_refunded(stack_info, payment["id"]) == (5000, 5000)


def test_refund_errors(api: httpx.Client, base_url: str, merchant: Merchant, admin: httpx.Client) -> None:
    payment = _captured_payment(api, 1000)
    too_much = api.post("/v1/refunds", data={"payment_intent": payment["id"], "amount": "1001"})
    assert too_much.status_code == 400
    assert (too_much.json()["error"]["code"], too_much.json()["error"]["param"]) == ("amount_too_large", "amount")
    manual = api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "confirm": "true",
                                                   "payment_method": "pm_card_visa", "capture_method": "manual"}).json()
    uncaptured = api.post("/v1/refunds", data={"payment_intent": manual["id"]})
    assert uncaptured.status_code == 400 and uncaptured.json()["error"]["code"] == "charge_not_refundable"
    api.post(f"/v1/payment_intents/{manual['id']}/cancel")
    canceled = api.post("/v1/refunds", data={"payment_intent": manual["id"]})
    assert canceled.status_code == 400 and canceled.json()["error"]["code"] == "charge_not_refundable"
    missing = api.post("/v1/refunds", data={"amount": "10"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "payment_intent"
    bad_reason = api.post("/v1/refunds", data={"payment_intent": payment["id"], "reason": "bored"})
    assert bad_reason.status_code == 400 and bad_reason.json()["error"]["param"] == "reason"
    other = admin.post("/v1/admin/merchants", data={"name": "other"}).json()
    with httpx.Client(base_url=base_url, auth=(other["secret_key"], "")) as client:
        assert client.post("/v1/refunds", data={"payment_intent": payment["id"]}).status_code == 404
        refund = api.post("/v1/refunds", data={"payment_intent": payment["id"], "amount": "10"}).json()
        assert client.get(f"/v1/refunds/{refund['id']}").status_code == 404


def test_100_concurrent_one_unit_refunds_of_a_50_unit_payment(api: httpx.Client, base_url: str,
                                                              merchant: Merchant, stack_info: StackInfo) -> None:
    payment = _captured_payment(api, 50)
    bodies = [{"payment_intent": payment["id"], "amount": "1"}] * 100
    responses = asyncio.run(_concurrent(base_url, merchant.key, bodies))
    succeeded = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code == 400]
    assert len(succeeded) == 50 and len(rejected) == 50, [r.status_code for r in responses]
    assert all(r.json()["status"] == "succeeded" for r in succeeded)
    assert {r.json()["error"]["code"] for r in rejected} <= {"charge_already_refunded", "amount_too_large"}
    assert _bank_refunded(stack_info, payment["id"]) == 50
    assert _ledger_refunded(stack_info, payment["id"]) == (50, 50)


def test_full_and_partial_refund_race_never_exceeds_captured(api: httpx.Client, base_url: str,
                                                             merchant: Merchant, stack_info: StackInfo) -> None:
    for _ in range(5):
        payment = _captured_payment(api, 3000)
        bodies = [{"payment_intent": payment["id"]}, {"payment_intent": payment["id"], "amount": "1000"},
                  {"payment_intent": payment["id"]}, {"payment_intent": payment["id"], "amount": "2500"}]
        responses = asyncio.run(_concurrent(base_url, merchant.key, bodies))
        refunded = sum(r.json()["amount"] for r in responses if r.status_code == 200)
        assert refunded <= 3000
        assert all(r.status_code in (200, 400) for r in responses)
        assert _bank_refunded(stack_info, payment["id"]) == refunded
        assert _ledger_refunded(stack_info, payment["id"]) == (refunded, refunded)


def test_bank_hanging_on_a_refund_never_refunds_twice(live_stack: LocalStack, api: httpx.Client,
                                                      stack_info: StackInfo) -> None:
    payment = _captured_payment(api, 4000)
    assert live_stack.banksim is not None and live_stack.banksim.pid is not None
    os.kill(live_stack.banksim.pid, signal.SIGSTOP)  # the bank hangs: requests are sent, nothing answers
    try:
        response = api.post("/v1/refunds", data={"payment_intent": payment["id"], "amount": "1500"},
                            headers={"Idempotency-Key": f"hang-{payment['id']}"})
    finally:
        os.kill(live_stack.banksim.pid, signal.SIGCONT)
    assert response.status_code == 200, response.text
    refund = response.json()
    assert refund["status"] == "pending"
    # While pending the amount stays reserved: another full refund only gets what is left.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = api.get(f"/v1/refunds/{refund['id']}").json()["status"]
        if status != "pending":
            break
        time.sleep(0.5)
    assert status == "succeeded"
    assert _bank_refunded(stack_info, payment["id"]) == 1500
    assert _ledger_refunded(stack_info, payment["id"]) == (1500, 1500)
    journal = Journal(stack_info.bank_journal)
    try:
        refunds_at_bank = [op for op in journal.operations(_auth_rrn(stack_info, payment["id"])) if op.kind == "refund"]
    finally:
        journal.close()
    assert len(refunds_at_bank) == 1


def test_stripe_sdk_refunds(base_url: str, merchant: Merchant, api: httpx.Client) -> None:
    payment = _captured_payment(api, 2500)
    client = stripe.StripeClient(merchant.key, base_addresses={"api": base_url}, max_network_retries=0)
    created = client.v1.refunds.create({"payment_intent": payment["id"], "amount": 700, "reason": "duplicate"})
    assert (created.status, created.amount, created.payment_intent) == ("succeeded", 700, payment["id"])
    fetched = client.v1.refunds.retrieve(created.id)
    assert fetched.id == created.id and fetched.reason == "duplicate"
    listed = client.v1.refunds.list({"payment_intent": payment["id"], "limit": 10})
    assert [r.id for r in listed.data] == [created.id]
    try:
        client.v1.refunds.create({"payment_intent": payment["id"], "amount": 5000})
        raise AssertionError("an over-refund must fail")
    except stripe.InvalidRequestError as error:
        assert error.code == "amount_too_large"
