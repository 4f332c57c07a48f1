"""Idempotency and races against the real stack: many identical requests with one Idempotency-Key
charge once at the bank and answer with the first response (byte-identical) or a 409; capture and
cancel races settle exactly once at the bank."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import httpx
import pytest
import ray

from actors.payments import idempotency
from actors.payments.messages import Idempotency, PaymentCommand
from actors.payments.shard import shard_index
from actors.registry import shard_name
from cluster.db import create_pool
from cluster.stack import LocalStack, StackInfo
from tests.bank import (
    SLOW_CARD,
    assert_bank_matches_ledger,
    bank_view,
    error_of,
    ledger,
    ledger_entries,
    merchant_authorizations,
    merchant_payments,
    payment_row,
    tokenize,
)
from tests.conftest import Merchant

Request = tuple[str, dict[str, str], dict[str, str]]  # path, form body, headers


async def _burst(base_url: str, key: str, requests: list[Request]) -> list[httpx.Response]:
    """Fire all requests at once (one connection each, released together)."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=base_url, auth=(key, ""), timeout=90, limits=limits) as client:
        gate = asyncio.Event()

        async def one(path: str, body: dict[str, str], headers: dict[str, str]) -> httpx.Response:
            await gate.wait()
            return await client.post(path, data=body, headers=headers)

        tasks = [asyncio.create_task(one(*r)) for r in requests]
        await asyncio.sleep(0.05)
        gate.set()
        return list(await asyncio.gather(*tasks))


def burst(base_url: str, merchant: Merchant, requests: list[Request]) -> list[httpx.Response]:
    return asyncio.run(_burst(base_url, merchant.key, requests))


def _check_one_original(responses: list[httpx.Response], expected_status: int) -> httpx.Response:
    """Exactly one original answer; every other one is its byte-identical replay or a 409."""
    originals = [r for r in responses if r.status_code != 409 and r.headers.get("idempotent-replayed") != "true"]
    assert len(originals) == 1, Counter((r.status_code, r.headers.get("idempotent-replayed")) for r in responses)
    first = originals[0]
    assert first.status_code == expected_status, first.text
    for r in responses:
        if r is first:
            continue
        if r.status_code == 409:
            error = error_of(r)
            assert (error["type"], error["code"]) == ("idempotency_error", "idempotency_key_in_use"), error
        else:
            assert r.headers.get("idempotent-replayed") == "true"
            assert r.status_code == first.status_code
            assert r.content == first.content, "a replay differs from the first response"
    return first


def _authorized(api: httpx.Client, amount: int = 5000) -> dict[str, Any]:
    response = api.post("/v1/payment_intents", data={"amount": str(amount), "currency": "usd",
                                                     "payment_method": "pm_card_visa", "confirm": "true",
                                                     "capture_method": "manual"})
    assert response.status_code == 200, response.text
    pi = response.json()
    assert pi["status"] == "requires_capture"
    return dict(pi)


# ---- create + confirm ------------------------------------------------------------------------------

@pytest.mark.parametrize("slow", [False, True], ids=["fast-bank", "slow-bank"])
def test_200_identical_creates_with_one_key_charge_once(base_url: str, merchant: Merchant, api: httpx.Client,
                                                         stack_info: StackInfo, slow: bool) -> None:
    """fast-bank: the first request usually finishes while the others arrive (replays).
    slow-bank: SLOW_CARD keeps the first in flight past the 2 s bank timeout, so the others meet it
    running (409s); it ends reversed at the bank with processing_error."""
    key = f"order-{uuid.uuid4()}"
    pm = tokenize(api, SLOW_CARD) if slow else "pm_card_visa"
    body = {"amount": "4321", "currency": "usd", "payment_method": pm, "confirm": "true",
            "metadata[order]": "o-1"}
    responses = burst(base_url, merchant, [("/v1/payment_intents", body, {"Idempotency-Key": key})] * 200)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 402, 409}, statuses
    first = _check_one_original(responses, 402 if slow else 200)
    assert first.headers.get("idempotency-key") == key
    if slow:
        assert statuses[409] > 0, statuses
        error = error_of(first)
        assert error["code"] == "processing_error"
        pi = error["payment_intent"]
    else:
        pi = first.json()
        assert (pi["status"], pi["amount_received"]) == ("succeeded", 4321)

    payments = merchant_payments(stack_info, merchant.id)
    assert [p["id"] for p in payments] == [pi["id"]], "more than one payment for one idempotency key"
    auths = merchant_authorizations(stack_info, merchant.id)
    assert len(auths) == 1, auths
    assert auths[0].rrn == payments[0]["auth_rrn"]
    _, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.reversed is slow

    # Later retries replay the same bytes; the same key with other parameters is refused.
    later = api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": key})
    assert later.status_code == first.status_code and later.headers["idempotent-replayed"] == "true"
    assert later.content == first.content
    other = api.post("/v1/payment_intents", data={**body, "amount": "4322"}, headers={"Idempotency-Key": key})
    assert other.status_code == 400, other.text
    assert error_of(other)["type"] == "idempotency_error"
    other_path = api.post(f"/v1/payment_intents/{pi['id']}/cancel", headers={"Idempotency-Key": key})
    assert other_path.status_code == 400 and error_of(other_path)["type"] == "idempotency_error", other_path.text
    assert len(merchant_authorizations(stack_info, merchant.id)) == 1
    assert len(merchant_payments(stack_info, merchant.id)) == 1


def test_json_and_form_bodies_with_one_key(api: httpx.Client, merchant: Merchant, stack_info: StackInfo) -> None:
    """Same parameters, other encoding: still the same request (a replay), not a second charge."""
    key = f"enc-{uuid.uuid4()}"
    form = api.post("/v1/payment_intents", data={"amount": "1500", "currency": "usd",
                                                 "payment_method": "pm_card_visa", "confirm": "true"},
                    headers={"Idempotency-Key": key})
    assert form.status_code == 200, form.text
    as_json = api.post("/v1/payment_intents", json={"amount": "1500", "currency": "usd",
                                                    "payment_method": "pm_card_visa", "confirm": "true"},
                       headers={"Idempotency-Key": key})
    assert as_json.status_code == 200, as_json.text
    assert as_json.content == form.content and as_json.headers.get("idempotent-replayed") == "true"
    assert len(merchant_authorizations(stack_info, merchant.id)) == 1


def test_a_decline_is_replayed_not_retried(base_url: str, merchant: Merchant, api: httpx.Client,
                                           stack_info: StackInfo) -> None:
    key = f"decline-{uuid.uuid4()}"
    body = {"amount": "2000", "currency": "usd", "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
            "confirm": "true"}
    responses = burst(base_url, merchant, [("/v1/payment_intents", body, {"Idempotency-Key": key})] * 30)
    first = _check_one_original(responses, 402)
    error = error_of(first)
    assert (error["code"], error["decline_code"]) == ("card_declined", "insufficient_funds")
    payments = merchant_payments(stack_info, merchant.id)
    assert len(payments) == 1 and payments[0]["status"] == "requires_payment_method"
    # One attempt reached the bank: one RRN used, and the bank approved nothing.
    events = [e for e in _events(stack_info, payments[0]["id"]) if e["type"] == "payment_intent.confirm"]
    assert len(events) == 1, events
    assert merchant_authorizations(stack_info, merchant.id) == []


def _events(stack_info: StackInfo, payment_id: str) -> list[dict[str, Any]]:
    return ledger(stack_info, "SELECT type, from_status, to_status FROM payment_events WHERE payment_id = $1 "
                  "ORDER BY id", payment_id)


@pytest.mark.parametrize("key", ["gw:order-1", "GW:order-2", "gw:"], ids=["gw-prefix", "upper", "bare-prefix"])
def test_any_merchant_key_is_honoured(api: httpx.Client, merchant: Merchant, stack_info: StackInfo,
                                      key: str) -> None:
    """The merchant picks its keys freely: one that happens to look like the gateway's internal ones
    (`gw:` + request id) must still be stored and replayed, never charge twice."""
    key = f"{key}{uuid.uuid4().hex[:6]}"
    body = {"amount": "1200", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    first = api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    second = api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": key})
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"], "a retry with the same Idempotency-Key charged again"
    assert second.headers.get("idempotent-replayed") == "true" and second.content == first.content
    assert len(merchant_authorizations(stack_info, merchant.id)) == 1


def test_idempotency_key_too_long(api: httpx.Client, merchant: Merchant, stack_info: StackInfo) -> None:
    body = {"amount": "1200", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    response = api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == "Idempotency-Key"
    assert merchant_payments(stack_info, merchant.id) == []
    ok = api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code == 200, ok.text


def test_keys_are_scoped_per_merchant(api: httpx.Client, admin: httpx.Client, base_url: str,
                                      stack_info: StackInfo, merchant: Merchant) -> None:
    key = f"shared-{uuid.uuid4()}"
    body = {"amount": "1100", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    mine = api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": key})
    assert mine.status_code == 200, mine.text
    other = admin.post("/v1/admin/merchants", data={"name": "other"}).json()
    with httpx.Client(base_url=base_url, auth=(other["secret_key"], ""), timeout=60) as other_api:
        theirs = other_api.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": key})
    assert theirs.status_code == 200, theirs.text
    assert theirs.headers.get("idempotent-replayed") is None
    assert theirs.json()["id"] != mine.json()["id"]
    assert len(merchant_authorizations(stack_info, merchant.id)) == 1
    assert len(merchant_authorizations(stack_info, other["id"])) == 1


def test_requests_without_a_key_are_independent(base_url: str, merchant: Merchant, stack_info: StackInfo) -> None:
    body = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    responses = burst(base_url, merchant, [("/v1/payment_intents", body, {})] * 20)
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert all(r.headers.get("idempotent-replayed") is None for r in responses)
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 20
    auths = merchant_authorizations(stack_info, merchant.id)
    assert len(auths) == 20
    assert {a.rrn for a in auths} == {p["auth_rrn"] for p in merchant_payments(stack_info, merchant.id)}
    for pi_id in ids:
        assert_bank_matches_ledger(stack_info, pi_id)


# ---- capture ----------------------------------------------------------------------------------------

def test_50_concurrent_captures_with_one_key_capture_once(base_url: str, merchant: Merchant, api: httpx.Client,
                                                          stack_info: StackInfo) -> None:
    pi = _authorized(api, 6000)
    key = f"cap-{uuid.uuid4()}"
    responses = burst(base_url, merchant, [(f"/v1/payment_intents/{pi['id']}/capture",
                                            {"amount_to_capture": "4000"}, {"Idempotency-Key": key})] * 50)
    first = _check_one_original(responses, 200)
    assert (first.json()["status"], first.json()["amount_received"]) == ("succeeded", 4000)
    _row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.kinds() == ["capture"] and bank.captured == 4000
    assert [e["amount"] for e in ledger_entries(stack_info, pi["id"]) if e["account"] == "acquirer_receivable"] == [
        4000]


def test_concurrent_captures_with_different_keys_capture_once(base_url: str, merchant: Merchant,
                                                              api: httpx.Client, stack_info: StackInfo) -> None:
    pi = _authorized(api, 6000)
    requests: list[Request] = [(f"/v1/payment_intents/{pi['id']}/capture", {"amount_to_capture": str(1000 + i)},
                                {"Idempotency-Key": f"cap-{uuid.uuid4()}"} if i % 2 else {}) for i in range(30)]
    responses = burst(base_url, merchant, requests)
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, Counter(r.status_code for r in responses)
    for r in responses:
        if r.status_code != 200:
            assert r.status_code in (400, 409), r.text
            if r.status_code == 400:
                assert error_of(r)["code"] == "payment_intent_unexpected_state"
    amount = winners[0].json()["amount_received"]
    row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.kinds() == ["capture"] and bank.captured == amount == row["amount_received"]


# ---- cancel ------------------------------------------------------------------------------------------

def test_50_concurrent_cancels_with_one_key_reverse_once(base_url: str, merchant: Merchant, api: httpx.Client,
                                                         stack_info: StackInfo) -> None:
    pi = _authorized(api, 3000)
    key = f"cancel-{uuid.uuid4()}"
    responses = burst(base_url, merchant, [(f"/v1/payment_intents/{pi['id']}/cancel",
                                            {"cancellation_reason": "duplicate"}, {"Idempotency-Key": key})] * 50)
    first = _check_one_original(responses, 200)
    assert first.json()["status"] == "canceled"
    _row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert bank.reversed and bank.kinds() == ["reversal"]


@pytest.mark.parametrize("round_", range(3))
def test_cancel_and_capture_race_settles_once_at_the_bank(base_url: str, merchant: Merchant, api: httpx.Client,
                                                          stack_info: StackInfo, round_: int) -> None:
    pi = _authorized(api, 2500)
    requests: list[Request] = []
    for i in range(24):
        verb = "cancel" if i % 2 == 0 else "capture"
        headers = {"Idempotency-Key": f"race-{uuid.uuid4()}"} if i % 3 else {}
        requests.append((f"/v1/payment_intents/{pi['id']}/{verb}", {}, headers))
    responses = burst(base_url, merchant, requests)
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, Counter((r.status_code, r.text[:80]) for r in responses)
    for r in responses:
        if r.status_code != 200:
            assert r.status_code in (400, 409), r.text
            if r.status_code == 400:
                assert error_of(r)["code"] == "payment_intent_unexpected_state"
    final = winners[0].json()["status"]
    row, bank = assert_bank_matches_ledger(stack_info, pi["id"])
    assert row["status"] == final
    if final == "canceled":
        assert bank.kinds() == ["reversal"] and bank.reversed
    else:
        assert final == "succeeded" and bank.kinds() == ["capture"] and bank.captured == 2500
    assert payment_row(stack_info, pi["id"])["bank_phase"] is None
    assert bank_view(stack_info, row["auth_rrn"]).authorization is not None


def test_the_gateway_re_sending_a_call_whose_answer_it_lost_gets_that_answer(
        live_stack: LocalStack, api: httpx.Client, merchant: Merchant, stack_info: StackInfo) -> None:
    """The merchant sent no key, so the gateway made one up. The shard ran the call, but its answer
    was lost (the shard died after its last write, or the connection did): the gateway sends the
    call again, and gets the first attempt's answer, not a second payment."""
    config = live_stack.resolved
    shard = ray.get_actor(shard_name(shard_index(merchant.id, config.shards)), namespace=config.ray_namespace)
    key = Idempotency(f"{idempotency.INTERNAL_KEY_PREFIX}{uuid.uuid4().hex}", "hash", "POST", "/v1/payment_intents",
                      internal=True)
    cmd = PaymentCommand("create", merchant.id, amount=1300, currency="usd", confirm=True,
                         payment_method=tokenize(api, "4242424242424242"), idempotency=key)
    first = ray.get(shard.execute.remote(cmd), timeout=60)
    again = ray.get(shard.execute.remote(replace(cmd, idempotency=replace(key, retry=True))), timeout=60)
    assert first.status == 200, first.body
    assert (again.status, again.body) == (first.status, first.body)
    assert len(merchant_payments(stack_info, merchant.id)) == 1
    assert len(merchant_authorizations(stack_info, merchant.id)) == 1


def test_gateway_made_keys_are_purged_after_minutes_a_merchants_lookalike_after_a_day(
        merchant: Merchant, stack_info: StackInfo) -> None:
    internal, lookalike = f"gw:{uuid.uuid4().hex}", f"gw:{uuid.uuid4().hex}"

    async def run() -> int:
        pool = await create_pool(stack_info.ledger_dsn, min_size=1, max_size=1)
        try:
            # One transaction: the shards' own purge (every 2 s) cannot delete the key first.
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, request_hash, "
                    "response_code, response_body, internal, created_at) SELECT $1, k, 'POST', "
                    "'/v1/payment_intents', 'h', 200, '{}'::bytea, i, now() - interval '1 hour' "
                    "FROM unnest($2::text[], $3::boolean[]) AS x(k, i)",
                    merchant.id, [internal, lookalike], [True, False])
                return await idempotency.purge_expired(conn, internal_keep_s=1800)
        finally:
            await pool.close()

    assert asyncio.run(run()) >= 1
    left = ledger(stack_info, "SELECT key FROM idempotency_keys WHERE merchant_id = $1 AND key = ANY($2)",
                  merchant.id, [internal, lookalike])
    assert [r["key"] for r in left] == [lookalike]
