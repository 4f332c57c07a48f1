"""WebhookDispatcher: a member of the Kafka consumer group that turns events into deliveries, and
a delivery worker that POSTs them to merchants' endpoints.

Most deliveries leave from memory and reach the ledger once, with the outcome of their first
attempt. A consumed event's deliveries (one per matching endpoint) are queued per (endpoint,
payment) — a `_Chain`, sent one after another, in event order — and each is written to
`webhook_deliveries` when its first attempt ends: delivered, or pending with its retry scheduled.
The transaction that writes an event's last delivery also takes the event out of
`outbox_pending`; until then the relay publishes it again every `republish_after_s`, so a
dispatcher that dies with deliveries in memory loses none, and the copy of an event published
again skips the deliveries already written. (Written once instead of three times — pending, then
delivered, and its attempt apart — a delivery cost the ledger's PostgreSQL 7-23% less CPU per
payment in twelve paired bench runs.) The Kafka offset is committed once a batch is routed.

A delivery goes to the ledger's claim instead, written pending and due at once, when the ledger
holds an earlier pending delivery of its payment to that endpoint (a failure waiting for its retry,
another dispatcher's), or every delivery slot is taken (slow endpoints): the claim leases the heads
of each (endpoint, payment) queue from the ledger as slots free up. It also takes retries as they
fall due, and whatever a dead dispatcher had leased once the lease runs out. A chain whose delivery
fails hands the rest of its queue to the claim in the transaction that schedules the retry, so a
slow or failing endpoint never holds up other merchants, and one payment's events reach an
endpoint in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import resource
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import ray
from aiokafka import AIOKafkaConsumer

from actors.batching import Batcher
from actors.events.http import DeliveryError, WebhookClient
from actors.events.signing import sign
from actors.lifecycle import autostart
from cluster.broker import EVENTS_TOPIC, PUBLICATION_HEADER
from cluster.db import as_columns, create_pool
from cluster.procs import raise_open_file_limit

log = logging.getLogger("paygate.webhooks")

CONSUMER_GROUP = "paygate-webhooks"
RESPONSE_PREFIX_CHARS = 200
CLAIM_INTERVAL_S = 0.05
HEAD_WINDOW = 256  # per endpoint; see _claim_due
PRUNE_INTERVAL_S = 5.0
HOLD_MARGIN_S = 2.0  # see _run_chain

# Deliveries written once, with their first attempt's outcome: delivered, or pending with the retry
# scheduled (`delay`, first failure now); or handed to the claim unsent (pending, due now).
_WRITE_DELIVERIES = (
    "INSERT INTO webhook_deliveries (event_id, endpoint_id, merchant_id, ordering_key, event_seq, status, attempts, "
    "next_attempt_at, first_failed_at, last_status_code, last_error, delivered_at) "
    "SELECT x.event_id, x.endpoint_id, x.merchant_id, x.ordering_key, x.event_seq, x.status, x.attempts, "
    "now() + make_interval(secs => x.delay), CASE WHEN x.status = 'pending' AND x.attempts > 0 THEN now() END, "
    "x.code, x.error, CASE WHEN x.status = 'succeeded' THEN now() END "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::integer[], "
    "$8::float8[], $9::integer[], $10::text[]) "
    "AS x(event_id, endpoint_id, merchant_id, ordering_key, event_seq, status, attempts, delay, code, error) "
    "ON CONFLICT DO NOTHING RETURNING id, event_id, endpoint_id")


def open_files_needed(slots: int) -> int:
    """A socket per delivery in flight, as many kept alive, and room for the rest of the process:
    more than the usual soft limit of 1,024."""
    return slots * 2 + 256


@dataclass(frozen=True)
class RetryPolicy:
    backoff_s: float = 60.0  # first retry after about this long, doubling each attempt
    max_backoff_s: float = 6 * 3600.0
    window_s: float = 3 * 24 * 3600.0  # give up (and disable the endpoint) after failing this long
    timeout_s: float = 10.0  # an answer slower than this is a failure
    lease_s: float = 30.0  # a claimed delivery in flight is not picked again before this

    def next_delay(self, attempts: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** max(0, attempts - 1))
        return base * random.uniform(1.0, 1.25)


def _routing(message: Any) -> dict[str, Any]:
    """An event's id, type and payload, the id and type from the relay's headers (or the body, for
    messages without them), and whether this copy may be a second publication of the event."""
    headers = {key: value.decode() for key, value in (message.headers or ())}
    payload = message.value.decode()
    if "event_id" in headers and "type" in headers:
        event_id, event_type = headers["event_id"], headers["type"]
    else:
        event = json.loads(payload)
        event_id, event_type = event["id"], event["type"]
    return {"id": event_id, "type": event_type, "payload": payload,
            "republished": headers.get(PUBLICATION_HEADER) != "1"}


# A delivery as it is sent: its webhook_deliveries columns (a delivery from memory has no `id` yet,
# and `queued_at`, in time.monotonic()), the endpoint's url and secret, the payload.
Delivery = Mapping[str, Any]


@dataclass(eq=False)
class _Chain:
    """One (endpoint, payment) queue delivered from memory, in event order."""

    key: tuple[str, str]
    queue: deque[Delivery] = field(default_factory=deque)


@dataclass
class _Held:
    """An event with deliveries in memory: its outbox seq, and how many of them are not written yet."""

    seq: int
    unwritten: int


@dataclass(frozen=True, eq=False)
class Attempt:
    delivery: Delivery
    status: int | None
    error: str | None
    prefix: str | None
    latency_ms: int
    chain: _Chain | None = None  # a failure's chain: the rest of its queue goes to the claim with it

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookDispatcher:
    def __init__(self, index: int, ledger_dsn: str, bootstrap: str, policy: RetryPolicy,
                 concurrency: int = 1024) -> None:
        self.index, self.ledger_dsn, self.bootstrap, self.policy = index, ledger_dsn, bootstrap, policy
        self.concurrency = concurrency
        self.pool: asyncpg.Pool | None = None
        self.http: WebhookClient | None = None
        # Attempts to write, and chains handing their queue to the claim (see _run_chain).
        self.recorder: Batcher[Attempt | _Chain, None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.counters = {"consumed": 0, "delivered": 0, "failed_attempts": 0, "sent_from_batch": 0, "claimed": 0,
                         "released": 0}
        self.chains: dict[tuple[str, str], _Chain] = {}
        # Events with deliveries in memory, by id. The write of the last takes the event out of
        # outbox_pending; a copy published again meanwhile is skipped.
        self.held: dict[str, _Held] = {}
        # Routing a batch and writing attempts take turns, so routing reads the ledger as of this
        # dispatcher's last write: a chain that failed hands its queue to the claim with the failure,
        # and a batch routed meanwhile either sees the chain (and joins its queue) or, after the
        # write, the failure pending in the ledger; a claimed delivery closed here is not pending.
        self.turns = asyncio.Lock()
        self.in_flight: set[asyncio.Task[None]] = set()  # claimed deliveries and chains
        self.writes: set[asyncio.Future[None]] = set()  # deliveries received, being written
        # Set when the claim may find new work (deliveries handed to it, a claimed delivery ended,
        # so the next event of its payment may be due): the delivery loop wakes at once instead of
        # at its next poll.
        self.wakeup = asyncio.Event()
        self._starting = asyncio.Lock()
        autostart(self.start, f"webhook dispatcher {index}")

    async def start(self) -> None:
        async with self._starting:
            if self.tasks:
                return
            wanted = open_files_needed(self.concurrency)
            if raise_open_file_limit(wanted) < wanted:
                log.warning("open-file limit below the %d that %d delivery slots may need", wanted, self.concurrency)
            self.pool = await create_pool(self.ledger_dsn, min_size=2, max_size=8)
            self.http = WebhookClient(self.policy.timeout_s, max_idle_per_origin=self.concurrency)
            self.recorder = Batcher(self._record_attempts, max_items=256, max_in_flight=1)
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._consume_forever()), loop.create_task(self._deliver_forever())]

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def stats(self) -> dict[str, int]:
        return {**self.counters, "slots": self.concurrency,
                "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}

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
        """Route a consumed batch, in one transaction: a delivery per (event, matching endpoint) not
        written yet, onto its chain or written pending for the claim; an event with none left in
        memory leaves outbox_pending."""
        assert self.pool is not None
        routed: list[str] = []
        async with self.turns:
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    deliveries, meta = await self._new_deliveries(conn, [e for e in events if e["id"] not in self.held])
                    earlier = await conn.fetch(
                        "SELECT endpoint_id, ordering_key FROM webhook_deliveries "
                        "WHERE ordering_key = ANY($1::text[]) AND status = 'pending' AND NOT manual",
                        list({d["ordering_key"] for d in deliveries})) if deliveries else []
                    queued, to_claim = self._queue(deliveries, earlier)
                    in_memory = Counter(d["event_id"] for d in queued)
                    routed = list(in_memory)
                    for event in meta:
                        if event["id"] in in_memory:
                            self.held[event["id"]] = _Held(event["seq"], in_memory[event["id"]])
                    if to_claim:
                        await conn.execute(_WRITE_DELIVERIES, *_delivery_columns(_for_the_claim(to_claim)))
                    await conn.execute("DELETE FROM outbox_pending WHERE seq = ANY($1::bigint[])",
                                       [m["seq"] for m in meta if m["id"] not in in_memory])
            except BaseException:
                self._forget(routed)  # its chains still send; the event's next publication routes the rest
                raise
        if to_claim:
            self._handed_to_claim(len(to_claim))

    async def _new_deliveries(self, conn: asyncpg.Connection,
                              events: list[dict[str, Any]]) -> tuple[list[Delivery], list[asyncpg.Record]]:
        """The deliveries `events` call for (in event order) that are not written yet, and the
        events still queued in outbox_pending (an event already dispatched has none left)."""
        meta = await conn.fetch(
            "SELECT o.id, o.merchant_id, o.object_id, o.seq FROM outbox_events o "
            "JOIN outbox_pending p ON p.seq = o.seq WHERE o.id = ANY($1::text[]) ORDER BY o.seq",
            [e["id"] for e in events])
        endpoints = await conn.fetch(
            "SELECT id, merchant_id, enabled_events, url, secret FROM webhook_endpoints "
            "WHERE merchant_id = ANY($1::text[]) AND deleted_at IS NULL AND status = 'enabled'",
            list({r["merchant_id"] for r in meta}))
        by_merchant: dict[str, list[asyncpg.Record]] = {}
        for endpoint in endpoints:
            by_merchant.setdefault(endpoint["merchant_id"], []).append(endpoint)
        by_id = {e["id"]: e for e in events}
        queued_at = time.monotonic()
        deliveries: list[Delivery] = [
            {"event_id": m["id"], "endpoint_id": ep["id"], "merchant_id": m["merchant_id"],
             "ordering_key": m["object_id"], "event_seq": m["seq"], "attempts": 0, "first_failed_at": None,
             "url": ep["url"], "secret": ep["secret"], "payload": by_id[m["id"]]["payload"], "queued_at": queued_at}
            for m in meta for ep in by_merchant.get(m["merchant_id"], [])
            if "*" in ep["enabled_events"] or by_id[m["id"]]["type"] in ep["enabled_events"]]
        again = [e["id"] for e in events if e["republished"]]
        if again and deliveries:  # a copy published again: some of its deliveries may be written already
            written = {(r["event_id"], r["endpoint_id"]) for r in await conn.fetch(
                "SELECT event_id, endpoint_id FROM webhook_deliveries WHERE event_id = ANY($1::text[]) AND NOT manual",
                again)}
            deliveries = [d for d in deliveries if (d["event_id"], d["endpoint_id"]) not in written]
        return deliveries, meta

    def _queue(self, deliveries: list[Delivery],
               earlier: list[asyncpg.Record]) -> tuple[list[Delivery], list[Delivery]]:
        """Each new delivery (in event order) onto its (endpoint, payment) chain — started if need be,
        when no earlier delivery of that pair is pending in the ledger and a delivery slot is free.
        Returns what went onto chains and what goes to the claim."""
        blockers = {(row["endpoint_id"], row["ordering_key"]) for row in earlier}
        queued: list[Delivery] = []
        to_claim: list[Delivery] = []
        for delivery in deliveries:
            key = (delivery["endpoint_id"], delivery["ordering_key"])
            chain = self.chains.get(key)
            if chain is None:
                if key in blockers or len(self.in_flight) >= self.concurrency:
                    to_claim.append(delivery)
                    continue
                chain = self.chains[key] = _Chain(key)
                self._track(asyncio.get_running_loop().create_task(self._run_chain(key, chain)), wake=False)
            chain.queue.append(delivery)
            queued.append(delivery)
        return queued, to_claim

    def _write_soon(self, attempt: Attempt) -> None:
        assert self.recorder is not None
        write = self.recorder.submit(attempt)
        self.writes.add(write)
        write.add_done_callback(self._written)

    def _written(self, write: asyncio.Future[None]) -> None:
        self.writes.discard(write)
        if not write.cancelled() and write.exception() is not None:  # its event is published again
            log.warning("webhook delivery not written: %s", write.exception())

    def _handed_to_claim(self, count: int) -> None:
        self.counters["released"] += count
        self.wakeup.set()

    def _forget(self, event_ids: Iterable[str]) -> None:
        """Stop holding these events: their deliveries left in memory are lost (a write failed), so
        the next publication of each event routes them again."""
        for event_id in event_ids:
            self.held.pop(event_id, None)

    async def _run_chain(self, key: tuple[str, str], chain: _Chain) -> None:
        """Send a chain's deliveries one after another, each once the one before was received; on a
        failure the chain ends when the failure is written, and its queue goes to the claim behind
        the retry."""
        assert self.recorder is not None
        # A delivery waits here no longer than a claimed one could be leased and sent.
        hold_s = self.policy.lease_s - self.policy.timeout_s - HOLD_MARGIN_S
        try:
            while chain.queue:
                if time.monotonic() - chain.queue[0]["queued_at"] > hold_s:
                    await self.recorder.call(chain)  # behind a slow endpoint: the claim takes the rest
                    break
                attempt = await self._attempt(chain.queue.popleft())
                self.counters["sent_from_batch"] += 1
                if attempt.ok:  # received: the payment's next event may leave before this is written
                    self._write_soon(attempt)
                else:
                    await self.recorder.call(replace(attempt, chain=chain))
        finally:
            self._forget(d["event_id"] for d in chain.queue)  # left unwritten only if a write failed
            chain.queue.clear()
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
                # CLAIM_INTERVAL_S apart, however busy (so at most concurrency / CLAIM_INTERVAL_S
                # deliveries a second: 20,480 with the default slots).
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

    async def _record_attempts(self, items: list[Attempt | _Chain]) -> list[None]:
        """One transaction for what the delivery tasks finished in the last few milliseconds: claimed
        deliveries closed or rescheduled; deliveries from memory written with their outcome, and the
        queues of failed or slow chains written for the claim; every attempt recorded; and the events
        whose last delivery in memory this was taken out of outbox_pending."""
        assert self.pool is not None
        async with self.turns:
            handed: list[Delivery] = []
            for item in items:
                chain = item if isinstance(item, _Chain) else None if item.ok else item.chain
                if chain is not None:
                    handed += chain.queue
                    chain.queue.clear()
                    if self.chains.get(chain.key) is chain:
                        del self.chains[chain.key]  # from here the payment's new deliveries see the ledger
            attempts = [item for item in items if isinstance(item, Attempt)]
            claimed = [a for a in attempts if a.delivery.get("id") is not None]
            fresh = [a for a in attempts if a.delivery.get("id") is None]
            written = Counter(d["event_id"] for d in [*(a.delivery for a in fresh), *handed])
            dispatched = [held.seq for event_id, count in written.items()
                          if (held := self.held.get(event_id)) is not None and held.unwritten <= count]
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    if claimed:
                        await self._close_claimed(conn, claimed)
                    if fresh or handed:
                        await self._write_fresh(conn, fresh, handed)
                    if dispatched:
                        await conn.execute("DELETE FROM outbox_pending WHERE seq = ANY($1::bigint[])", dispatched)
            except BaseException:
                self._forget(written)
                raise
            for event_id, count in written.items():
                held = self.held.get(event_id)
                if held is not None:
                    held.unwritten -= count
                    if held.unwritten <= 0:
                        del self.held[event_id]
        if handed:
            self._handed_to_claim(len(handed))
        ok = [a for a in attempts if a.ok]
        self.counters["delivered"] += len(ok)
        self.counters["failed_attempts"] += len(attempts) - len(ok)
        return [None] * len(items)

    async def _write_fresh(self, conn: asyncpg.Connection, fresh: list[Attempt], handed: list[Delivery]) -> None:
        rows = [(a.delivery, "succeeded", 1, 0.0, a.status, None) if a.ok else
                (a.delivery, "pending", 1, self.policy.next_delay(1), a.status, _error(a)) for a in fresh]
        rows += _for_the_claim(handed)
        ids = {(r["event_id"], r["endpoint_id"]): r["id"]
               for r in await conn.fetch(_WRITE_DELIVERIES, *_delivery_columns(rows))}
        # A delivery written already (the event's copy published again went elsewhere) keeps its own.
        mine = [(ids[key], a) for a in fresh if (key := (a.delivery["event_id"], a.delivery["endpoint_id"])) in ids]
        await _insert_attempts(conn, mine)
        await _endpoints_answered(conn, [a for _, a in mine])

    async def _close_claimed(self, conn: asyncpg.Connection, attempts: list[Attempt]) -> None:
        await _insert_attempts(conn, [(a.delivery["id"], a) for a in attempts])
        ok = [a for a in attempts if a.ok]
        if ok:
            await conn.execute(
                "UPDATE webhook_deliveries d SET status = 'succeeded', attempts = d.attempts + 1, "
                "delivered_at = now(), last_status_code = x.code, last_error = NULL "
                "FROM unnest($1::bigint[], $2::int[]) AS x(id, code) WHERE d.id = x.id",
                [a.delivery["id"] for a in ok], [a.status for a in ok])
        for attempt in attempts:
            if not attempt.ok:
                await self._schedule_retry(conn, attempt.delivery, attempt.status, _error(attempt))
        await _endpoints_answered(conn, attempts)

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


def _error(attempt: Attempt) -> str | None:
    return None if attempt.ok else attempt.error or f"HTTP {attempt.status}"


def _for_the_claim(deliveries: Iterable[Delivery]) -> list[tuple[Delivery, str, int, float, None, None]]:
    """Rows for _delivery_columns: unsent, pending and due now, for the claim to lease."""
    return [(d, "pending", 0, 0.0, None, None) for d in deliveries]


def _delivery_columns(rows: Sequence[tuple[Delivery, str, int, float, int | None, str | None]]) -> list[list[Any]]:
    """_WRITE_DELIVERIES' parameters: rows of (delivery, status, attempts, delay, code, error)."""
    return as_columns([(d["event_id"], d["endpoint_id"], d["merchant_id"], d["ordering_key"], d["event_seq"],
                        status, attempts, delay, code, error)
                       for d, status, attempts, delay, code, error in rows], 10)


async def _insert_attempts(conn: asyncpg.Connection, attempts: list[tuple[int, Attempt]]) -> None:
    if attempts:
        await conn.execute(
            "INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error, response_prefix) "
            "SELECT * FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::text[], $5::text[])",
            *as_columns([(delivery_id, a.status, a.latency_ms, _error(a), a.prefix) for delivery_id, a in attempts], 5))


async def _endpoints_answered(conn: asyncpg.Connection, attempts: list[Attempt]) -> None:
    """An endpoint that answered is no longer failing; one that failed is failing from now, unless it
    already was. Only a change is written: a row lock taken on every success would serialise all
    of one endpoint's deliveries."""
    ok = list({a.delivery["endpoint_id"] for a in attempts if a.ok})
    failed = list({a.delivery["endpoint_id"] for a in attempts if not a.ok})
    if ok:
        await conn.execute("UPDATE webhook_endpoints SET failing_since = NULL "
                           "WHERE id = ANY($1::text[]) AND failing_since IS NOT NULL", ok)
    if failed:
        await conn.execute("UPDATE webhook_endpoints SET failing_since = now() "
                           "WHERE id = ANY($1::text[]) AND failing_since IS NULL", failed)


WebhookDispatcherActor = ray.remote(WebhookDispatcher)
