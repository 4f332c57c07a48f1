"""WebhookDispatcher: a member of the Kafka consumer group that turns events into deliveries, and
a delivery worker that POSTs them to merchants' endpoints.

Consuming records work: for each event and each matching endpoint one `webhook_deliveries`
row (unique per event and endpoint, so a re-published event adds nothing), then the event leaves
`outbox_pending` (dispatched), then the offset is committed — a dispatcher killed mid-batch
leaves the offset uncommitted and the batch is consumed again. Sending happens apart from
consuming, with many deliveries in flight, so a slow or failing endpoint never holds up other
merchants: a failure is scheduled for a later attempt (exponential backoff with jitter) and the
worker moves on. One payment's events reach an endpoint in order: a delivery waits while an
earlier one for the same endpoint and payment is still pending.

Two ways out. Most deliveries leave straight from the batch that recorded them: they are inserted
already leased to this dispatcher and queued in memory per (endpoint, payment) — a `_Chain`, sent
one after another — unless the ledger holds an earlier pending delivery of that payment to that
endpoint that is not in this dispatcher's chain (a failure waiting for its retry, another
dispatcher's lease), or every delivery slot is taken: then the rows go to the claim, which
leases the heads of each (endpoint, payment) queue from the ledger as slots free up. The claim
also takes retries as they fall due, and whatever a dead dispatcher had leased once the lease runs
out. A chain whose delivery fails releases the rest of its queue in the transaction that schedules
the retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import asyncpg
import ray
from aiokafka import AIOKafkaConsumer

from actors.batching import Batcher
from actors.events.http import DeliveryError, WebhookClient
from actors.events.signing import sign
from actors.lifecycle import autostart
from cluster.broker import EVENTS_TOPIC
from cluster.db import as_columns, create_pool

log = logging.getLogger("paygate.webhooks")

CONSUMER_GROUP = "paygate-webhooks"
RESPONSE_PREFIX_CHARS = 200
CLAIM_INTERVAL_S = 0.05
HEAD_WINDOW = 256  # per endpoint; see _claim_due
PRUNE_INTERVAL_S = 5.0
DELIVERED_KEPT = 20_000  # ids of recent deliveries kept (the last several seconds at full load)
# Leased deliveries handed back: due now, for the claim (which still sends only queue heads).
_RELEASE = ("UPDATE webhook_deliveries SET next_attempt_at = now() "
            "WHERE id = ANY($1::bigint[]) AND status = 'pending'")
LEASE_MARGIN_S = 2.0  # a chain sends a delivery only with its timeout and this much of its lease left


@dataclass(frozen=True)
class RetryPolicy:
    backoff_s: float = 60.0  # first retry after about this long, doubling each attempt
    max_backoff_s: float = 6 * 3600.0
    window_s: float = 3 * 24 * 3600.0  # give up (and disable the endpoint) after failing this long
    timeout_s: float = 10.0  # an answer slower than this is a failure
    lease_s: float = 30.0  # a delivery in flight is not picked again before this

    def next_delay(self, attempts: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** max(0, attempts - 1))
        return base * random.uniform(1.0, 1.25)


def _routing(message: Any) -> dict[str, str]:
    """An event's id, type and payload, the id and type from the relay's headers (or the body, for
    messages without them)."""
    headers = {key: value.decode() for key, value in (message.headers or ())}
    payload = message.value.decode()
    if "event_id" in headers and "type" in headers:
        return {"id": headers["event_id"], "type": headers["type"], "payload": payload}
    event = json.loads(payload)
    return {"id": event["id"], "type": event["type"], "payload": payload}


# A delivery as it is sent: its webhook_deliveries columns, the endpoint's url and secret, the
# payload (and, on a chain, `lease_ends`: when the claim may take it, in time.monotonic()).
Delivery = Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Attempt:
    delivery: Delivery
    status: int | None
    error: str | None
    prefix: str | None
    latency_ms: int
    release: Sequence[int] = ()  # leased deliveries queued behind a failure: back to the claim

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(eq=False)
class _Chain:
    """One (endpoint, payment) queue delivered from memory, in event order."""

    queue: deque[Delivery] = field(default_factory=deque)
    known: set[int] = field(default_factory=set)  # every delivery id queued here, sent or not


class WebhookDispatcher:
    def __init__(self, index: int, ledger_dsn: str, bootstrap: str, policy: RetryPolicy,
                 concurrency: int = 256) -> None:
        self.index, self.ledger_dsn, self.bootstrap, self.policy = index, ledger_dsn, bootstrap, policy
        self.concurrency = concurrency
        self.pool: asyncpg.Pool | None = None
        self.http: WebhookClient | None = None
        self.recorder: Batcher[Attempt, None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.counters = {"consumed": 0, "delivered": 0, "failed_attempts": 0, "sent_from_batch": 0, "claimed": 0,
                         "released": 0}
        self.chains: dict[tuple[str, str], _Chain] = {}
        # Deliveries this dispatcher recorded as delivered, newest last (the last DELIVERED_KEPT): a
        # new event's check for earlier pending deliveries of its payment reads a snapshot that may
        # predate the commit of one just delivered here, and that one no longer holds it back.
        self.delivered: dict[int, None] = {}
        self.in_flight: set[asyncio.Task[None]] = set()  # claimed deliveries and chains
        # Set when the claim may find new work (deliveries released to it, a claimed delivery
        # ended, so the next event of its payment may be due): the delivery loop wakes at once
        # instead of at its next poll.
        self.wakeup = asyncio.Event()
        self._starting = asyncio.Lock()
        autostart(self.start, f"webhook dispatcher {index}")

    async def start(self) -> None:
        async with self._starting:
            if self.tasks:
                return
            self.pool = await create_pool(self.ledger_dsn, min_size=2, max_size=8)
            self.http = WebhookClient(self.policy.timeout_s, max_idle_per_origin=self.concurrency)
            self.recorder = Batcher(self._record_attempts, max_items=256, max_in_flight=1)
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._consume_forever()), loop.create_task(self._deliver_forever())]

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def stats(self) -> dict[str, int]:
        return dict(self.counters)

    # ---- consuming: events -> deliveries ------------------------------------------------------
    async def _consume_forever(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(EVENTS_TOPIC, bootstrap_servers=self.bootstrap, group_id=CONSUMER_GROUP,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        client_id=f"dispatcher-{self.index}")
            try:
                await consumer.start()
                while True:
                    batches = await consumer.getmany(timeout_ms=200, max_records=500)
                    messages = [m for batch in batches.values() for m in batch]
                    if messages:
                        await self.record_deliveries([_routing(m) for m in messages])
                        await consumer.commit()
                        self.counters["consumed"] += len(messages)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("webhook consumer: %s; reconnecting", error)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await asyncio.wait_for(consumer.stop(), 5)
                except Exception:
                    log.debug("consumer stop failed", exc_info=True)

    async def record_deliveries(self, events: list[dict[str, Any]]) -> None:
        """One transaction: a delivery per (event, matching endpoint), leased to this dispatcher,
        then the events dispatched. Then the new deliveries join their chains, or are released to
        the claim when an earlier delivery of their payment is pending outside this dispatcher."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            meta = await conn.fetch(
                "SELECT id, merchant_id, object_id, seq FROM outbox_events WHERE id = ANY($1::text[]) ORDER BY seq",
                [e["id"] for e in events])
            merchants = list({r["merchant_id"] for r in meta})
            endpoints = await conn.fetch(
                "SELECT id, merchant_id, enabled_events, url, secret FROM webhook_endpoints "
                "WHERE merchant_id = ANY($1::text[]) AND deleted_at IS NULL AND status = 'enabled'", merchants)
            by_merchant: dict[str, list[asyncpg.Record]] = {}
            for endpoint in endpoints:
                by_merchant.setdefault(endpoint["merchant_id"], []).append(endpoint)
            types = {e["id"]: e["type"] for e in events}
            rows = [(m["id"], ep["id"], m["merchant_id"], m["object_id"], m["seq"])
                    for m in meta for ep in by_merchant.get(m["merchant_id"], [])
                    if "*" in ep["enabled_events"] or types[m["id"]] in ep["enabled_events"]]
            inserted: list[asyncpg.Record] = []
            earlier: list[asyncpg.Record] = []
            lease_ends = time.monotonic() + self.policy.lease_s  # no later than the ledger's lease
            # With every delivery slot taken (slow endpoints), new deliveries wait for the claim,
            # which hands out slots as they free up; consuming goes on meanwhile.
            lease_s = self.policy.lease_s if len(self.in_flight) < self.concurrency else 0.0
            if rows:
                inserted = await conn.fetch(
                    "INSERT INTO webhook_deliveries (event_id, endpoint_id, merchant_id, ordering_key, event_seq, "
                    "next_attempt_at) SELECT x.*, now() + make_interval(secs => $6) "
                    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS x "
                    "ON CONFLICT DO NOTHING RETURNING id, event_id, endpoint_id, ordering_key, event_seq, attempts, "
                    "first_failed_at", *as_columns(rows, 5), lease_s)
            if inserted and lease_s:
                # A statement of its own, after the insert: it sees what a concurrent dispatcher
                # committed while this insert waited on the same (event, endpoint).
                earlier = await conn.fetch(
                    "SELECT id, endpoint_id, ordering_key FROM webhook_deliveries "
                    "WHERE ordering_key = ANY($1::text[]) AND status = 'pending' AND NOT manual "
                    "AND NOT id = ANY($2::bigint[])",
                    list({r["ordering_key"] for r in inserted}), [r["id"] for r in inserted])
            await conn.execute("DELETE FROM outbox_pending WHERE seq = ANY($1::bigint[])", [m["seq"] for m in meta])
        if not lease_s:
            self.wakeup.set()
            return
        payloads = {e["id"]: e["payload"] for e in events}
        by_endpoint = {endpoint["id"]: endpoint for endpoint in endpoints}
        released = self._queue([{**row, "url": by_endpoint[row["endpoint_id"]]["url"],
                                 "secret": by_endpoint[row["endpoint_id"]]["secret"],
                                 "payload": payloads[row["event_id"]], "lease_ends": lease_ends}
                                for row in sorted(inserted, key=lambda r: r["event_seq"])], earlier)
        if released:
            await self.pool.execute(_RELEASE, released)
            self._handed_to_claim(released)

    def _queue(self, deliveries: list[Delivery], earlier: list[asyncpg.Record]) -> list[int]:
        """Each new delivery (in event order) onto its chain — started if need be and a delivery
        slot is free — unless an earlier pending delivery of its (endpoint, payment) is not on that
        chain. What does not go on a chain is returned, for the claim."""
        blockers: dict[tuple[str, str], set[int]] = {}
        for row in earlier:
            blockers.setdefault((row["endpoint_id"], row["ordering_key"]), set()).add(row["id"])
        released: list[int] = []
        for delivery in deliveries:
            key = (delivery["endpoint_id"], delivery["ordering_key"])
            chain = self.chains.get(key)
            pending = blockers.get(key, set()) - (chain.known if chain else set())
            blocked = any(delivery_id not in self.delivered for delivery_id in pending)
            if blocked or (chain is None and len(self.in_flight) >= self.concurrency):
                released.append(delivery["id"])
                continue
            if chain is None:
                chain = self.chains[key] = _Chain()
                self._track(asyncio.get_running_loop().create_task(self._run_chain(key, chain)), wake=False)
            chain.queue.append(delivery)
            chain.known.add(delivery["id"])
        return released

    def _handed_to_claim(self, released: list[int]) -> None:
        self.counters["released"] += len(released)
        self.wakeup.set()

    async def _run_chain(self, key: tuple[str, str], chain: _Chain) -> None:
        """Send a chain's deliveries one after another, each recorded before the next leaves; on a
        failure the chain ends and its queue goes back to the claim, behind the retry."""
        assert self.recorder is not None
        try:
            while chain.queue:
                delivery = chain.queue.popleft()
                if time.monotonic() > delivery["lease_ends"] - self.policy.timeout_s - LEASE_MARGIN_S:
                    # Too little lease left to send and record it before the claim may take it too:
                    # the claim will, once the lease has run out (so will the rest of this queue).
                    break
                attempt = await self._attempt(delivery)
                if not attempt.ok:
                    del self.chains[key]  # from here new deliveries of this payment go to the claim
                    attempt = replace(attempt, release=[d["id"] for d in chain.queue])
                    chain.queue.clear()
                await self.recorder.call(attempt)
                self.counters["sent_from_batch"] += 1
        finally:
            if self.chains.get(key) is chain:
                del self.chains[key]

    # ---- delivering: deliveries -> HTTP -------------------------------------------------------
    async def _deliver_forever(self) -> None:
        last_claim = last_prune = 0.0
        while True:
            try:
                if time.monotonic() - last_prune >= PRUNE_INTERVAL_S:  # idle connections of quiet endpoints
                    assert self.http is not None
                    self.http.prune()
                    last_prune = time.monotonic()
                # Each claim sorts every endpoint's window of pending deliveries: at most
                # CLAIM_INTERVAL_S apart, however busy (so at most concurrency / CLAIM_INTERVAL_S =
                # 5,120 deliveries a second).
                await asyncio.sleep(max(0.0, last_claim + CLAIM_INTERVAL_S - time.monotonic()))
                last_claim = time.monotonic()
                free = self.concurrency - len(self.in_flight)
                due = await self._claim_due(free) if free > 0 else []
                self.counters["claimed"] += len(due)
                for delivery in due:
                    self._track(asyncio.get_running_loop().create_task(self._deliver(delivery)), wake=True)
                if not due:
                    # Retries fall due with time alone, so poll too, but rarely.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), 0.25)
                    self.wakeup.clear()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("webhook delivery loop: %s", error)
                await asyncio.sleep(1.0)

    def _track(self, task: asyncio.Task[None], wake: bool) -> None:
        """Count `task` in flight until it ends. A claimed delivery's end wakes the claim (the
        next of its payment's events may be due); a chain's end does not (it sent its queue, or its
        failure released the rest, which wakes the claim itself)."""
        self.in_flight.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.in_flight.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("webhook delivery: %s", task.exception())
            if wake:
                self.wakeup.set()

        task.add_done_callback(done)

    async def _claim_due(self, limit: int) -> list[asyncpg.Record]:
        """Lease due deliveries that head their (endpoint, payment) queue: one payment's events go
        out one after another, in the order they were made. The UPDATE re-checks the due time
        under the row lock, so two dispatchers never lease the same delivery.

        Heads are looked for among each endpoint's oldest HEAD_WINDOW pending deliveries, not the
        whole backlog (which a busy minute makes tens of thousands of rows long): the window is a
        prefix in event order, so any earlier delivery of the same payment is inside it too, and
        a head found there is the true head. (An endpoint with more than HEAD_WINDOW deliveries
        waiting out retries delays its newer events until those are delivered or given up.)"""
        assert self.pool is not None
        return await self.pool.fetch(
            "WITH windowed AS ("
            "  SELECT d.* FROM webhook_endpoints e CROSS JOIN LATERAL ("
            "    SELECT id, endpoint_id, ordering_key, next_attempt_at, event_seq FROM webhook_deliveries "
            "    WHERE endpoint_id = e.id AND status = 'pending' AND NOT manual "
            "    ORDER BY event_seq LIMIT $3) d "
            "  WHERE e.deleted_at IS NULL AND e.status = 'enabled'), "
            "heads AS ("
            "  SELECT DISTINCT ON (endpoint_id, ordering_key) id, next_attempt_at, event_seq "
            "  FROM windowed ORDER BY endpoint_id, ordering_key, event_seq), "
            "due AS ("
            "  SELECT id, event_seq FROM heads WHERE next_attempt_at <= now() "
            "  UNION ALL SELECT id, event_seq FROM webhook_deliveries "
            "  WHERE status = 'pending' AND manual AND next_attempt_at <= now() "
            "  ORDER BY event_seq LIMIT $1) "
            "UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2) "
            "FROM due, webhook_endpoints w "
            "WHERE d.id = due.id AND d.status = 'pending' AND d.next_attempt_at <= now() "
            "  AND w.id = d.endpoint_id AND w.deleted_at IS NULL AND w.status = 'enabled' "
            "RETURNING d.*, w.url, w.secret, "
            "(SELECT payload::text FROM outbox_events o WHERE o.id = d.event_id) AS payload",
            limit, self.policy.lease_s, HEAD_WINDOW)

    async def _deliver(self, delivery: Delivery) -> None:
        assert self.recorder is not None
        await self.recorder.call(await self._attempt(delivery))

    async def _attempt(self, delivery: Delivery) -> Attempt:
        assert self.http is not None
        body = delivery["payload"].encode()
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Stripe-Signature": sign(body, delivery["secret"])}
        started = time.perf_counter()
        status, error, prefix = None, None, None
        try:
            status, text = await self.http.post(delivery["url"], body, headers)
            prefix = text[:RESPONSE_PREFIX_CHARS]
        except TimeoutError:
            error = f"timed out after {self.policy.timeout_s:.0f}s"
        except (DeliveryError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        return Attempt(delivery, status, error, prefix, int((time.perf_counter() - started) * 1000))

    async def _record_attempts(self, attempts: list[Attempt]) -> list[None]:
        """Every attempt recorded; successes closed and failures rescheduled: one transaction for
        what the delivery tasks finished in the last few milliseconds."""
        assert self.pool is not None
        ok = [a for a in attempts if a.ok]
        failed = [a for a in attempts if not a.ok]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error, response_prefix) "
                "SELECT * FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::text[], $5::text[])",
                *as_columns([(a.delivery["id"], a.status, a.latency_ms,
                            a.error or (None if a.ok else f"HTTP {a.status}"), a.prefix) for a in attempts], 5))
            if ok:
                await conn.execute(
                    "UPDATE webhook_deliveries d SET status = 'succeeded', attempts = d.attempts + 1, "
                    "delivered_at = now(), last_status_code = x.code, last_error = NULL "
                    "FROM unnest($1::bigint[], $2::int[]) AS x(id, code) WHERE d.id = x.id",
                    [a.delivery["id"] for a in ok], [a.status for a in ok])
                # Only a recovering endpoint is written: a row lock taken on every success would
                # serialise all of one endpoint's deliveries.
                await conn.execute("UPDATE webhook_endpoints SET failing_since = NULL "
                                   "WHERE id = ANY($1::text[]) AND failing_since IS NOT NULL",
                                   list({a.delivery["endpoint_id"] for a in ok}))
            for attempt in failed:
                await self._schedule_retry(conn, attempt.delivery, attempt.status,
                                           attempt.error or f"HTTP {attempt.status}")
            released = [i for a in failed for i in a.release]
            if released:  # behind the retry just scheduled: not queue heads, so not claimed before it
                await conn.execute(_RELEASE, released)
        if released:
            self._handed_to_claim(released)
        self._remember_delivered([a.delivery["id"] for a in ok])
        self.counters["delivered"] += len(ok)
        self.counters["failed_attempts"] += len(failed)
        return [None] * len(attempts)

    def _remember_delivered(self, delivery_ids: list[int]) -> None:
        self.delivered.update(dict.fromkeys(delivery_ids))
        for oldest in list(islice(self.delivered, max(0, len(self.delivered) - DELIVERED_KEPT))):
            del self.delivered[oldest]

    async def _schedule_retry(self, conn: asyncpg.Connection, delivery: Delivery, status: int | None,
                              error: str | None) -> None:
        attempts = delivery["attempts"] + 1
        first_failed = delivery["first_failed_at"]
        expired = first_failed is not None and (time.time() - first_failed.timestamp()) >= self.policy.window_s
        if expired:
            await conn.execute(
                "UPDATE webhook_deliveries SET status = 'failed', attempts = $2, last_status_code = $3, "
                "last_error = $4 WHERE id = $1", delivery["id"], attempts, status, error)
            await conn.execute(
                "UPDATE webhook_endpoints SET status = 'disabled' WHERE id = $1 AND failing_since IS NOT NULL "
                "AND failing_since <= now() - make_interval(secs => $2)", delivery["endpoint_id"], self.policy.window_s)
            return
        await conn.execute(
            "UPDATE webhook_deliveries SET attempts = $2, last_status_code = $3, last_error = $4, "
            "first_failed_at = coalesce(first_failed_at, now()), "
            "next_attempt_at = now() + make_interval(secs => $5) WHERE id = $1",
            delivery["id"], attempts, status, error, self.policy.next_delay(attempts))
        await conn.execute("UPDATE webhook_endpoints SET failing_since = now() "
                           "WHERE id = $1 AND failing_since IS NULL", delivery["endpoint_id"])

WebhookDispatcherActor = ray.remote(WebhookDispatcher)
