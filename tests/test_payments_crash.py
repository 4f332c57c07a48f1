"""Crashes mid-flight against the real stack: kill a PaymentShard actor (`ray.kill`), or SIGKILL the
gateway process, while ~30 authorizations are in flight on it. Afterwards no payment is left in
`processing`, every request maps to at most one payment (exactly one for a keyed request once it
is retried), the bank holds at most one live authorization per payment and none the ledger does not
know, and what the bank captured is what the ledger received.

The load is spread over several merchants that all live on the same shard: the fraud scorer's
per-card velocity rule (3+ attempts a minute on one card per merchant) would otherwise block most
SLOW_CARD attempts of a single merchant before they reach the bank."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import ray

from actors.payments.shard import shard_index
from cluster.stack import LocalStack, StackInfo
from tests.bank import (
    SLOW_CARD,
    assert_bank_matches_ledger,
    error_of,
    ledger,
    merchant_authorizations,
    merchant_payments,
    tokenize,
    wait_until,
)
from tests.conftest import Merchant

SETTLE_TIMEOUT_S = 60
MERCHANTS = 10
PER_MERCHANT = 3  # two on SLOW_CARD, one on pm_card_visa
Outcome = httpx.Response | BaseException


@dataclass(frozen=True)
class Sent:
    index: int
    merchant: Merchant
    delay_s: float
    body: dict[str, str]
    headers: dict[str, str]


def _merchants_on_one_shard(admin: httpx.Client, shards: int, count: int) -> tuple[int, list[Merchant]]:
    by_shard: dict[int, list[Merchant]] = {}
    for _ in range(count * shards * 4):
        response = admin.post("/v1/admin/merchants", data={"name": "crash test"})
        assert response.status_code == 200, response.text
        m = Merchant(response.json()["id"], response.json()["secret_key"])
        by_shard.setdefault(shard_index(m.id, shards), []).append(m)
        for index, group in by_shard.items():
            if len(group) == count:
                return index, group
    raise AssertionError("could not place merchants on one shard")


class Load:
    """Create+confirm requests fired at once from a background thread: the SLOW_CARD ones (the bank
    answers after 3 s, past the 2 s acquirer timeout) stay in flight; the pm_card_visa ones are spread
    over the first ~1 s so fast payments are in every phase when the crash comes. Every other request
    carries an Idempotency-Key; each is tagged metadata[req]=<index>."""

    def __init__(self, base_url: str, merchants: list[tuple[Merchant, str]]) -> None:
        self.base_url = base_url
        run_id = uuid.uuid4().hex[:8]
        self.sent: list[Sent] = []
        for merchant, slow_pm in merchants:
            for j in range(PER_MERCHANT):
                i = len(self.sent)
                fast = j == 0
                body = {"amount": str(1000 + i), "currency": "usd", "confirm": "true",
                        "payment_method": "pm_card_visa" if fast else slow_pm,
                        "capture_method": "manual" if i % 4 == 0 else "automatic", "metadata[req]": str(i)}
                headers = {"Idempotency-Key": f"crash-{run_id}-{i}"} if i % 2 == 0 else {}
                self.sent.append(Sent(i, merchant, 0.1 * (i // PER_MERCHANT) if fast else 0.0, body, headers))
        self.outcomes: list[Outcome] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self, timeout_s: float) -> list[Outcome]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"requests still hanging after {timeout_s}s"
        return self.outcomes

    def _run(self) -> None:
        self.outcomes = asyncio.run(self._fire())

    async def _fire(self) -> list[Outcome]:
        limits = httpx.Limits(max_connections=len(self.sent))
        async with httpx.AsyncClient(base_url=self.base_url, timeout=120, limits=limits) as client:
            async def one(s: Sent) -> httpx.Response:
                await asyncio.sleep(s.delay_s)
                return await client.post("/v1/payment_intents", data=s.body, headers=s.headers,
                                         auth=(s.merchant.key, ""))

            return list(await asyncio.gather(*(one(s) for s in self.sent), return_exceptions=True))


def _processing(stack_info: StackInfo, merchants: list[Merchant]) -> int:
    rows = ledger(stack_info, "SELECT count(*) AS n FROM payment_orders WHERE merchant_id = ANY($1::text[]) "
                  "AND status = 'processing'", [m.id for m in merchants])
    return int(rows[0]["n"])


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    value = row["metadata"]
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _payments_by_request(stack_info: StackInfo, merchants: list[Merchant]) -> dict[int, list[dict[str, Any]]]:
    by_req: dict[int, list[dict[str, Any]]] = {}
    for m in merchants:
        for p in merchant_payments(stack_info, m.id):
            by_req.setdefault(int(_metadata(p)["req"]), []).append(p)
    return by_req


def _retry_with_key(base_url: str, s: Sent) -> httpx.Response:
    """What a merchant does after an unknown outcome: retry with the same key until it is settled."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    with httpx.Client(base_url=base_url, auth=(s.merchant.key, ""), timeout=60) as client:
        while True:
            response = client.post("/v1/payment_intents", data=s.body, headers=s.headers)
            if response.status_code not in (409, 500) or time.monotonic() > deadline:
                return response
            time.sleep(0.5)


def _check_the_books(stack_info: StackInfo, merchants: list[Merchant]) -> dict[int, dict[str, Any]]:
    by_req = _payments_by_request(stack_info, merchants)
    duplicates = {i: [p["id"] for p in ps] for i, ps in by_req.items() if len(ps) > 1}
    assert not duplicates, f"one request made several payments: {duplicates}"
    for m in merchants:
        payments = merchant_payments(stack_info, m.id)
        for p in payments:
            assert_bank_matches_ledger(stack_info, p["id"])
        known = {p["auth_rrn"] for p in payments}
        for auth in merchant_authorizations(stack_info, m.id):
            assert auth.rrn in known or auth.state == "reversed", f"live authorization the ledger lacks: {auth}"
    return {i: ps[0] for i, ps in by_req.items()}


def _crash_mid_flight(stack_info: StackInfo, base_url: str, merchants: list[Merchant],
                      crash: Callable[[], None], responses_required: bool) -> None:
    prepared = []
    for m in merchants:
        with httpx.Client(base_url=base_url, auth=(m.key, ""), timeout=60) as client:
            prepared.append((m, tokenize(client, SLOW_CARD)))
    load = Load(base_url, prepared).start()
    wait_until(lambda: _processing(stack_info, merchants) >= 10, 15, 0.05, "10 authorizations in flight")
    crash()
    outcomes = load.join(timeout_s=150)

    # 1. Nothing stays in processing.
    wait_until(lambda: _processing(stack_info, merchants) == 0, SETTLE_TIMEOUT_S, 0.5,
               "no payment left in processing")
    # 2. Bank and ledger agree; no request made two payments.
    final = _check_the_books(stack_info, merchants)
    assert len(final) >= 10, f"only {len(final)} of {len(load.sent)} requests made a payment"

    # 3. What each caller was told agrees with the final state.
    for s, outcome in zip(load.sent, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            assert not responses_required, f"request {s.index} failed: {outcome!r}"
            continue
        assert outcome.status_code in (200, 402, 500), (s.index, outcome.status_code, outcome.text)
        if outcome.status_code == 500:
            assert error_of(outcome)["type"] == "api_error", outcome.text
            continue
        row = final.get(s.index)
        assert row is not None, f"request {s.index} answered {outcome.status_code} but made no payment"
        if outcome.status_code == 200:
            assert outcome.json()["id"] == row["id"]
            assert outcome.json()["status"] == row["status"] in ("succeeded", "requires_capture"), (
                s.index, outcome.json()["status"], row["status"])
        else:
            assert error_of(outcome)["payment_intent"]["id"] == row["id"]
            assert row["status"] == "requires_payment_method", (s.index, row["status"])

    # 4. Keyed requests: a retry with the same key gets the settled answer, on the same payment.
    for s, outcome in zip(load.sent, outcomes, strict=True):
        if "Idempotency-Key" not in s.headers:
            continue
        retry = _retry_with_key(base_url, s)
        assert retry.status_code in (200, 402), (s.index, retry.status_code, retry.text)
        retried = retry.json()["id"] if retry.status_code == 200 else error_of(retry)["payment_intent"]["id"]
        if s.index in final:
            assert retried == final[s.index]["id"], f"request {s.index}: the retry made a second payment"
        if isinstance(outcome, httpx.Response) and outcome.status_code in (200, 402):
            assert retry.content == outcome.content, f"request {s.index}: the replay differs from the answer"
    _check_the_books(stack_info, merchants)


def _still_works(base_url: str, stack_info: StackInfo, merchant: Merchant) -> None:
    with httpx.Client(base_url=base_url, auth=(merchant.key, ""), timeout=60) as client:
        fresh = client.post("/v1/payment_intents", data={"amount": "999", "currency": "usd",
                                                         "payment_method": "pm_card_visa", "confirm": "true"})
    assert fresh.status_code == 200 and fresh.json()["status"] == "succeeded", fresh.text
    assert_bank_matches_ledger(stack_info, fresh.json()["id"])


def test_kill_payment_shard_mid_flight(live_stack: LocalStack, stack_info: StackInfo, base_url: str,
                                       admin: httpx.Client) -> None:
    config = live_stack.resolved
    index, merchants = _merchants_on_one_shard(admin, config.shards, MERCHANTS)
    shard = ray.get_actor(f"payment-shard-{index}", namespace=config.ray_namespace)
    assert live_stack.gateway is not None
    log_path = live_stack.gateway.log_path
    died_before = log_path.read_text(errors="replace").count("answering from durable state")

    _crash_mid_flight(stack_info, base_url, merchants, lambda: ray.kill(shard, no_restart=False),
                      responses_required=True)
    # The kill really hit calls in flight: the gateway saw them die and answered from durable state.
    died = log_path.read_text(errors="replace").count("answering from durable state") - died_before
    assert died >= 10, f"only {died} shard calls died with the shard"
    _still_works(base_url, stack_info, merchants[0])


def test_kill_gateway_mid_flight(live_stack: LocalStack, stack_info: StackInfo, base_url: str,
                                 admin: httpx.Client) -> None:
    _, merchants = _merchants_on_one_shard(admin, live_stack.resolved.shards, MERCHANTS)

    def crash() -> None:
        live_stack.restart_gateway(kill=True)

    _crash_mid_flight(stack_info, base_url, merchants, crash, responses_required=False)
    _still_works(base_url, stack_info, merchants[0])


def test_load_shape_is_what_the_crash_tests_assume(stack_info: StackInfo, base_url: str,
                                                   admin: httpx.Client, live_stack: LocalStack) -> None:
    """Without a crash the same load settles by itself: SLOW_CARD attempts time out and are reversed
    (402 processing_error), the fast ones succeed; this pins what the crash tests compare against."""
    _, merchants = _merchants_on_one_shard(admin, live_stack.resolved.shards, MERCHANTS)
    prepared = []
    for m in merchants:
        with httpx.Client(base_url=base_url, auth=(m.key, ""), timeout=60) as client:
            prepared.append((m, tokenize(client, SLOW_CARD)))
    load = Load(base_url, prepared).start()
    outcomes = load.join(timeout_s=60)
    codes = Counter(o.status_code if isinstance(o, httpx.Response) else type(o).__name__ for o in outcomes)
    assert codes == Counter({402: 2 * MERCHANTS, 200: MERCHANTS}), codes
    for _s, o in zip(load.sent, outcomes, strict=True):
        assert isinstance(o, httpx.Response)
        if o.status_code == 402:
            assert error_of(o)["code"] == "processing_error", o.text
    assert _processing(stack_info, merchants) == 0
    final = _check_the_books(stack_info, merchants)
    assert len(final) == len(load.sent)
