"""Events and webhooks against the real stack: transactional outbox → Kafka → dispatcher actors →
a real HTTP receiver that verifies every signature with the official stripe SDK."""

from __future__ import annotations

import asyncio
import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from actors.events.dispatcher import open_files_needed
from actors.payments import store
from actors.registry import dispatcher_name
from cluster.db import create_pool
from cluster.stack import LocalStack, StackInfo
from tests.bank import ledger, wait_until
from tests.conftest import Merchant
from tests.webhook_receiver import Receiver

# A card payment's events, in order. No `payment_intent.processing`: as in Stripe, a card goes from
# confirmation straight to its outcome (the tests that check the order check its absence too).
PAYMENT_EVENTS = ["payment_intent.created", "payment_intent.succeeded", "charge.succeeded"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _endpoint(api: httpx.Client, receiver: Receiver, path: str, events: list[str] | None = None) -> dict[str, Any]:
    response = api.post("/v1/webhook_endpoints", data={"url": receiver.base_url + path,
                                                       "enabled_events[]": events or ["*"]})
    assert response.status_code == 200, response.text
    endpoint = response.json()
    assert endpoint["secret"].startswith("whsec_")
    receiver.secrets[path] = endpoint["secret"]
    return endpoint


async def _pay_many(base_url: str, key: str, count: int, concurrency: int = 24) -> list[str]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, auth=(key, ""), timeout=60) as client:
        async def one() -> str:
            async with semaphore:
                response = await client.post("/v1/payment_intents", data={
                    "amount": "1000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
                assert response.status_code == 200, response.text
                return str(response.json()["id"])
        return await asyncio.gather(*[one() for _ in range(count)])


def _pay(base_url: str, merchant: Merchant, count: int) -> list[str]:
    return asyncio.run(_pay_many(base_url, merchant.key, count))


def _by_payment(events: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        obj = event["data"]["object"]
        grouped[obj.get("payment_intent") or obj["id"]].append(event)
    return grouped


async def _undispatched(dsn: str, merchant_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM outbox_pending p JOIN outbox_events o ON o.id = p.event_id "
            "WHERE o.merchant_id = $1", merchant_id))
    finally:
        await conn.close()


def _orphans(stack_info: StackInfo) -> list[Any]:
    """Attempts without their delivery and deliveries without their endpoint: none, although the
    delivery log has no foreign keys (ledger migration 0021)."""
    return ledger(stack_info, "SELECT 'attempt' AS kind, a.id::text FROM webhook_attempts a WHERE NOT EXISTS "
                  "(SELECT 1 FROM webhook_deliveries d WHERE d.id = a.delivery_id) UNION ALL "
                  "SELECT 'delivery', d.id::text FROM webhook_deliveries d WHERE NOT EXISTS "
                  "(SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id)")


def _all_delivered(receiver: Receiver, path: str, payments: list[str], timeout: float = 120) -> dict[str, list[Any]]:
    expected = set(payments)

    def done(events: list[Any]) -> bool:
        grouped = _by_payment(events)
        return expected <= set(grouped) and all(
            {e["type"] for e in grouped[p]} >= set(PAYMENT_EVENTS) for p in expected)

    return _by_payment(receiver.wait_for(path, done, timeout))


def test_every_event_of_1000_payments_arrives_in_order(api: httpx.Client, base_url: str, merchant: Merchant,
                                                       receiver: Receiver, stack_info: StackInfo) -> None:
    _endpoint(api, receiver, "/all")
    started = time.monotonic()
    payments = _pay(base_url, merchant, 1000)
    grouped = _all_delivered(receiver, "/all", payments, timeout=180)
    elapsed = time.monotonic() - started
    missing = [p for p in payments if {e["type"] for e in grouped.get(p, [])} < set(PAYMENT_EVENTS)]
    assert not missing, f"{len(missing)} payments are missing events"
    for payment in payments:
        unique = list(dict.fromkeys(e["id"] for e in grouped[payment]))
        order = [next(e["type"] for e in grouped[payment] if e["id"] == i) for i in unique]
        assert order == PAYMENT_EVENTS, (payment, order)
    assert receiver.bad_signatures == 0
    total = sum(len(v) for v in grouped.values())
    print(f"\n{total} events from 1000 payments delivered in {elapsed:.1f}s ({total / elapsed:.0f} events/s)")
    assert asyncio.run(_undispatched(stack_info.ledger_dsn, merchant.id)) == 0


def test_an_event_is_queued_with_its_insert_and_leaves_the_queue_once_dispatched(
        api: httpx.Client, base_url: str, merchant: Merchant, receiver: Receiver, stack_info: StackInfo) -> None:
    """Any writer's outbox row is queued in its own transaction (the table's trigger, not each
    writer) and leaves the queue once a dispatcher has recorded its delivery."""
    _endpoint(api, receiver, "/queued")
    [payment] = _pay(base_url, merchant, 1)
    event = {"id": f"evt_probe{time.time_ns()}", "object": "event", "type": "payment_intent.processing",
             "created": int(time.time()), "data": {"object": {"id": payment, "object": "payment_intent"}}}

    async def write_then_watch() -> tuple[Any, int]:
        pool = await create_pool(stack_info.ledger_dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await store.append_outbox(conn, merchant.id, payment, [event])
                queued = await conn.fetchrow(
                    "SELECT p.published_at, p.publish_count FROM outbox_pending p "
                    "JOIN outbox_events o ON o.seq = p.seq WHERE o.id = $1", event["id"])
            deliveries = 0
            for _ in range(120):
                deliveries = await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1",
                                                 event["id"])
                if deliveries and not await pool.fetchval(
                        "SELECT count(*) FROM outbox_pending WHERE event_id = $1", event["id"]):
                    break
                await asyncio.sleep(0.25)
            return queued, deliveries
        finally:
            await pool.close()

    queued, deliveries = asyncio.run(write_then_watch())
    assert queued is not None and queued["published_at"] is None and queued["publish_count"] == 0
    assert deliveries == 1
    assert asyncio.run(_undispatched(stack_info.ledger_dsn, merchant.id)) == 0
    arrived = receiver.wait_for("/queued", lambda events: event["id"] in {e["id"] for e in events}, 60)
    assert event["id"] in {e["id"] for e in arrived}


def test_a_delivery_answered_at_once_is_written_once_with_its_attempt(
        api: httpx.Client, base_url: str, merchant: Merchant, receiver: Receiver, stack_info: StackInfo) -> None:
    """A delivery sent from memory reaches the ledger in one write, delivered, in the transaction
    that records its attempt: never pending first, never updated after."""
    endpoint = _endpoint(api, receiver, "/once")
    payments = _pay(base_url, merchant, 5)
    _all_delivered(receiver, "/once", payments, timeout=60)
    rows = wait_until(lambda: ledger(
        stack_info, "SELECT d.status, d.attempts, d.last_status_code, d.delivered_at IS NOT NULL AS delivered, "
        "d.first_failed_at, a.status_code, "
        "d.created_at = a.attempted_at AND d.delivered_at = a.attempted_at AS one_write, "
        "(SELECT count(*) FROM webhook_attempts x WHERE x.delivery_id = d.id) AS attempts_recorded "
        "FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id WHERE d.endpoint_id = $1",
        endpoint["id"]), 30, what="the deliveries to be written")
    assert len(rows) == len(payments) * len(PAYMENT_EVENTS)
    assert all((r["status"], r["attempts"], r["last_status_code"], r["delivered"], r["first_failed_at"],
                r["status_code"], r["one_write"], r["attempts_recorded"]) == ("succeeded", 1, 200, True, None,
                                                                             200, True, 1) for r in rows), rows
    assert asyncio.run(_undispatched(stack_info.ledger_dsn, merchant.id)) == 0


def test_a_copy_published_again_sends_only_the_deliveries_not_written(
        api: httpx.Client, base_url: str, merchant: Merchant, receiver: Receiver, stack_info: StackInfo) -> None:
    """A dispatcher that dies holding deliveries in memory leaves their event queued, and the relay
    publishes it again: the copy goes to the endpoints whose delivery was lost, not to the others."""
    _endpoint(api, receiver, "/kept")
    lost = _endpoint(api, receiver, "/lost")
    [payment] = _pay(base_url, merchant, 1)
    for path in ("/kept", "/lost"):
        _all_delivered(receiver, path, [payment], timeout=60)
    [event] = ledger(stack_info, "SELECT id, seq FROM outbox_events WHERE object_id = $1 AND type = $2",
                     payment, PAYMENT_EVENTS[0])

    async def lose_one_delivery() -> None:
        conn = await asyncpg.connect(stack_info.ledger_dsn)
        try:
            async with conn.transaction():  # as if the dispatcher had died before writing it
                await conn.execute("DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM "
                                   "webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2)",
                                   event["id"], lost["id"])
                await conn.execute("DELETE FROM webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2",
                                   event["id"], lost["id"])
                await conn.execute("INSERT INTO outbox_pending (seq, event_id, object_id, published_at, "
                                   "publish_count) VALUES ($1, $2, $3, now() - interval '1 hour', 1)",
                                   event["seq"], event["id"], payment)
        finally:
            await conn.close()

    asyncio.run(lose_one_delivery())
    again = receiver.wait_for("/lost", lambda events: [e["id"] for e in events].count(event["id"]) == 2, 60)
    assert [e["id"] for e in again].count(event["id"]) == 2
    wait_until(lambda: asyncio.run(_undispatched(stack_info.ledger_dsn, merchant.id)) == 0, 30,
               what="the event to leave the queue")
    time.sleep(1.0)  # anything sent to /kept would have arrived with the copy to /lost
    assert [e["id"] for e in receiver.events("/kept")].count(event["id"]) == 1
    assert len(ledger(stack_info, "SELECT 1 FROM webhook_deliveries WHERE event_id = $1", event["id"])) == 2


def test_a_card_confirmed_apart_goes_straight_to_its_outcome_events(api: httpx.Client) -> None:
    created = api.post("/v1/payment_intents", data={"amount": 2100, "currency": "usd",
                                                     "payment_method": "pm_card_visa"})
    assert created.status_code == 200 and created.json()["status"] == "requires_confirmation", created.text
    payment = created.json()["id"]
    confirmed = api.post(f"/v1/payment_intents/{payment}/confirm")
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
    listed = api.get("/v1/events", params={"limit": 100}).json()["data"]  # newest first
    mine = [e["type"] for e in reversed(listed)
            if payment in (e["data"]["object"]["id"], e["data"]["object"].get("payment_intent"))]
    # The outcome's two events share a statement and a `created` second: the list does not order them.
    assert mine[0] == PAYMENT_EVENTS[0] and sorted(mine[1:]) == sorted(PAYMENT_EVENTS[1:]), mine


def test_events_api_and_endpoint_management(api: httpx.Client, base_url: str, merchant: Merchant,
                                            receiver: Receiver, admin: httpx.Client) -> None:
    endpoint = _endpoint(api, receiver, "/typed", ["payment_intent.succeeded"])
    [payment] = _pay(base_url, merchant, 1)
    events = receiver.wait_for("/typed", lambda e: len(e) >= 1, 30)
    assert [e["type"] for e in events] == ["payment_intent.succeeded"]
    listed = api.get("/v1/events", params={"type": "payment_intent.succeeded"}).json()
    assert [e["id"] for e in listed["data"]] == [events[0]["id"]]
    fetched = api.get(f"/v1/events/{events[0]['id']}").json()
    assert fetched["data"]["object"]["id"] == payment and fetched["data"]["object"]["status"] == "succeeded"
    all_events = api.get("/v1/events", params={"limit": 100}).json()["data"]
    assert {e["type"] for e in all_events} >= set(PAYMENT_EVENTS)
    assert "secret" not in api.get(f"/v1/webhook_endpoints/{endpoint['id']}").json()
    assert [e["id"] for e in api.get("/v1/webhook_endpoints").json()["data"]] == [endpoint["id"]]
    bad = api.post("/v1/webhook_endpoints", data={"url": "ftp://x", "enabled_events[]": "*"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "url"
    bad_type = api.post("/v1/webhook_endpoints", data={"url": "http://x", "enabled_events[]": "nope.nope"})
    assert bad_type.status_code == 400 and bad_type.json()["error"]["param"] == "enabled_events[0]"
    resent = api.post(f"/v1/webhook_endpoints/{endpoint['id']}/resend/{events[0]['id']}")
    assert resent.status_code == 200, resent.text
    again = receiver.wait_for("/typed", lambda e: len(e) >= 2, 30)
    assert [e["id"] for e in again] == [events[0]["id"]] * 2
    other = admin.post("/v1/admin/merchants", data={"name": "other"}).json()
    with httpx.Client(base_url=base_url, auth=(other["secret_key"], "")) as client:
        assert client.get(f"/v1/events/{events[0]['id']}").status_code == 404
        assert client.get(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 404
    deleted = api.delete(f"/v1/webhook_endpoints/{endpoint['id']}").json()
    assert deleted == {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}
    assert api.get(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 404


def _charge_events(api: httpx.Client, event_type: str) -> dict[str, dict[str, Any]]:
    """The merchant's `event_type` events by the payment their charge belongs to."""
    listed = api.get("/v1/events", params={"type": event_type, "limit": 100}).json()["data"]
    assert all(e["data"]["object"]["object"] == "charge" for e in listed), listed
    return {e["data"]["object"]["payment_intent"]: e for e in listed}


def test_charge_events_carry_the_charge_as_stripe_does(api: httpx.Client) -> None:
    card = {"currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
    auto = api.post("/v1/payment_intents", data={**card, "amount": "1500"}).json()
    manual = api.post("/v1/payment_intents", data={**card, "amount": "2500", "capture_method": "manual"}).json()
    captured = api.post(f"/v1/payment_intents/{manual['id']}/capture", data={"amount_to_capture": "2000"}).json()
    assert (auto["status"], captured["status"]) == ("succeeded", "succeeded")

    succeeded, later = _charge_events(api, "charge.succeeded"), _charge_events(api, "charge.captured")
    # Captured with its authorization: `charge.succeeded`; captured afterwards: `charge.captured`.
    assert auto["id"] in succeeded and auto["id"] not in later
    assert manual["id"] in later
    for event, payment, amount in ((succeeded[auto["id"]], auto, 1500), (later[manual["id"]], captured, 2000)):
        charge = event["data"]["object"]
        assert charge["id"] == payment["latest_charge"] and charge["id"].startswith("ch_")
        assert (charge["status"], charge["captured"], charge["paid"]) == ("succeeded", True, True)
        assert (charge["amount"], charge["amount_captured"]) == (payment["amount"], amount)
    pi_events = api.get("/v1/events", params={"type": "payment_intent.succeeded", "limit": 100}).json()["data"]
    assert {e["data"]["object"]["object"] for e in pi_events} == {"payment_intent"}


def test_failing_receiver_gets_the_same_event_on_the_4th_attempt(api: httpx.Client, base_url: str, merchant: Merchant,
                                                                  receiver: Receiver, stack_info: StackInfo) -> None:
    receiver.behaviours["/flaky"] = lambda n: 500 if n <= 3 else 200
    endpoint = _endpoint(api, receiver, "/flaky", ["payment_intent.succeeded"])
    [payment] = _pay(base_url, merchant, 1)
    events = receiver.wait_for("/flaky", lambda e: len(e) >= 1, 60)
    assert [e["data"]["object"]["id"] for e in events] == [payment]
    assert receiver.attempts["/flaky"] == 4
    # Every attempt is recorded with its status, latency and the start of the answer.
    [delivery] = wait_until(lambda: ledger(
        stack_info, "SELECT id, status, attempts, last_status_code, last_error, delivered_at FROM webhook_deliveries "
        "WHERE endpoint_id = $1 AND status <> 'pending'", endpoint["id"]), 30, what="the delivery to be closed")
    attempts = ledger(stack_info, "SELECT status_code, latency_ms, error, response_prefix FROM webhook_attempts "
                      "WHERE delivery_id = $1 ORDER BY id", delivery["id"])
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 4, 200)
    assert delivery["last_error"] is None and delivery["delivered_at"] is not None
    assert [(a["status_code"], a["error"], a["response_prefix"]) for a in attempts] == [
        (500, "HTTP 500", "ok"), (500, "HTTP 500", "ok"), (500, "HTTP 500", "ok"), (200, None, "ok")]
    assert all(0 <= a["latency_ms"] < 10_000 for a in attempts)
    assert _orphans(stack_info) == []


def test_a_receiver_that_never_answers_does_not_delay_others(api: httpx.Client, base_url: str, merchant: Merchant,
                                                             receiver: Receiver, admin: httpx.Client) -> None:
    receiver.behaviours["/hangs"] = lambda n: None
    _endpoint(api, receiver, "/hangs")
    _pay(base_url, merchant, 20)  # 80 deliveries to an endpoint that never answers
    other = admin.post("/v1/admin/merchants", data={"name": "prompt"}).json()
    with httpx.Client(base_url=base_url, auth=(other["secret_key"], "")) as client:
        _endpoint(client, receiver, "/prompt", ["payment_intent.succeeded"])
        started = time.monotonic()
        payment = client.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd",
                                                           "payment_method": "pm_card_visa", "confirm": "true"}).json()
    events = receiver.wait_for("/prompt", lambda e: len(e) >= 1, 30)
    lag = time.monotonic() - started
    assert [e["data"]["object"]["id"] for e in events] == [payment["id"]]
    assert lag < 5, f"delivery to a healthy endpoint took {lag:.1f}s"


def test_broker_down_during_traffic_loses_nothing(live_stack: LocalStack, api: httpx.Client, base_url: str,
                                                  merchant: Merchant, receiver: Receiver,
                                                  stack_info: StackInfo) -> None:
    _endpoint(api, receiver, "/outage")
    before = _pay(base_url, merchant, 30)
    assert live_stack.broker is not None and live_stack.broker.process is not None
    live_stack.broker.process.kill()  # in-memory broker: whatever it held is gone
    try:
        during = _pay(base_url, merchant, 30)  # payments keep working; events wait in the outbox
        time.sleep(2)
    finally:
        live_stack.start_broker_again()
    after = _pay(base_url, merchant, 30)
    grouped = _all_delivered(receiver, "/outage", before + during + after, timeout=120)
    assert all({e["type"] for e in grouped[p]} >= set(PAYMENT_EVENTS) for p in before + during + after)
    deadline = time.monotonic() + 30
    while asyncio.run(_undispatched(stack_info.ledger_dsn, merchant.id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert asyncio.run(_undispatched(stack_info.ledger_dsn, merchant.id)) == 0


def test_killing_a_dispatcher_mid_batch_loses_nothing(api: httpx.Client, base_url: str, merchant: Merchant,
                                                      receiver: Receiver, stack_info: StackInfo) -> None:
    _endpoint(api, receiver, "/killed")

    async def traffic_and_kill() -> list[str]:
        task = asyncio.create_task(_pay_many(base_url, merchant.key, 200))
        await asyncio.sleep(1.0)
        ray.kill(ray.get_actor(dispatcher_name(0), namespace="paygate"), no_restart=False)
        return await task

    payments = asyncio.run(traffic_and_kill())
    grouped = _all_delivered(receiver, "/killed", payments, timeout=120)
    missing = [p for p in payments if {e["type"] for e in grouped.get(p, [])} < set(PAYMENT_EVENTS)]
    assert not missing
    assert _orphans(stack_info) == []


def _dispatcher_counters() -> dict[str, int]:
    """The dispatcher's counters once it answers: the test before kills it, and its events can all
    be delivered while Ray is still restarting it."""
    dispatcher = ray.get_actor(dispatcher_name(0), namespace="paygate")
    deadline = time.monotonic() + 120
    while True:
        try:
            stats = ray.get(dispatcher.stats.remote(), timeout=60)
            return {key: int(value) for key, value in stats.items()}
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_the_dispatcher_runs_with_its_configured_slots_and_the_files_they_need(live_stack: LocalStack) -> None:
    counters = _dispatcher_counters()
    slots = live_stack.config.webhook_slots
    assert counters["slots"] == slots
    wanted = min(open_files_needed(slots), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    assert counters["open_files_limit"] >= wanted


def test_new_events_leave_from_the_batch_that_recorded_them(api: httpx.Client, base_url: str,
                                                            merchant: Merchant, receiver: Receiver) -> None:
    _endpoint(api, receiver, "/batch")
    before = _dispatcher_counters()
    payments = _pay(base_url, merchant, 100)
    grouped = _all_delivered(receiver, "/batch", payments)
    assert all([e["type"] for e in grouped[p]] == PAYMENT_EVENTS for p in payments)
    after = _dispatcher_counters()
    from_batch, claimed = (after[k] - before[k] for k in ("sent_from_batch", "claimed"))
    print(f"\n{from_batch + claimed} deliveries: {from_batch} sent from the consumed batch, {claimed} claimed")
    assert from_batch >= 300, (from_batch, claimed)


def test_a_failing_event_holds_back_the_rest_of_its_payment(api: httpx.Client, base_url: str,
                                                            merchant: Merchant, receiver: Receiver) -> None:
    receiver.behaviours["/held"] = lambda n: 500 if n <= 2 else 200
    _endpoint(api, receiver, "/held")
    before = _dispatcher_counters()
    [payment] = _pay(base_url, merchant, 1)
    events = receiver.wait_for("/held", lambda e: len(e) >= len(PAYMENT_EVENTS), 60)
    assert [e["type"] for e in events] == PAYMENT_EVENTS
    assert {e["data"]["object"].get("payment_intent") or e["data"]["object"]["id"] for e in events} == {payment}
    # Two failures of the first event, then each event once: nothing was sent ahead of it.
    assert receiver.attempts["/held"] == 2 + len(PAYMENT_EVENTS)
    after = _dispatcher_counters()
    assert after["released"] > before["released"]  # the rest of its batch went back to the claim
