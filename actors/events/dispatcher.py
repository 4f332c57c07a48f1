"""WebhookDispatcher: a member of the Kafka consumer group that turns events into deliveries, and
a delivery worker that POSTs them to merchants' endpoints.

Consuming only records work: for each event and each matching endpoint one `webhook_deliveries`
row (unique per event and endpoint, so a re-published event adds nothing), then the outbox row is
marked dispatched, then the offset is committed — a dispatcher killed mid-batch leaves the offset
uncommitted and the batch is consumed again. Sending happens apart from consuming, with many
deliveries in flight, so a slow or failing endpoint never holds up other merchants: a failure is
scheduled for a later attempt (exponential backoff with jitter) and the worker moves on. One
payment's events reach an endpoint in order: a delivery waits while an earlier one for the same
endpoint and payment is still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import ray
from aiokafka import AIOKafkaConsumer

from actors.events.signing import sign
from actors.lifecycle import autostart
from cluster.broker import EVENTS_TOPIC
from cluster.db import create_pool

log = logging.getLogger("paygate.webhooks")

CONSUMER_GROUP = "paygate-webhooks"
RESPONSE_PREFIX_CHARS = 200


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
    """An event's id and type, from the relay's headers (or the body, for messages without them)."""
    headers = {key: value.decode() for key, value in (message.headers or ())}
    if "event_id" in headers and "type" in headers:
        return {"id": headers["event_id"], "type": headers["type"]}
    event = json.loads(message.value)
    return {"id": event["id"], "type": event["type"]}


class WebhookDispatcher:
    def __init__(self, index: int, ledger_dsn: str, bootstrap: str, policy: RetryPolicy,
                 concurrency: int = 64) -> None:
        self.index, self.ledger_dsn, self.bootstrap, self.policy = index, ledger_dsn, bootstrap, policy
        self.concurrency = concurrency
        self.pool: asyncpg.Pool | None = None
        self.http: httpx.AsyncClient | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.counters = {"consumed": 0, "delivered": 0, "failed_attempts": 0}
        # Set when there may be new work (deliveries recorded, a slot freed, the next event of a
        # payment unblocked): the delivery loop wakes at once instead of at its next poll.
        self.wakeup = asyncio.Event()
        self._starting = asyncio.Lock()
        autostart(self.start, f"webhook dispatcher {index}")

    async def start(self) -> None:
        async with self._starting:
            if self.tasks:
                return
            self.pool = await create_pool(self.ledger_dsn, min_size=2, max_size=8)
            self.http = httpx.AsyncClient(timeout=self.policy.timeout_s, follow_redirects=False,
                                          limits=httpx.Limits(max_connections=self.concurrency))
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
                        self.wakeup.set()
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
        """One transaction: a delivery per (event, matching endpoint), then the events dispatched."""
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            meta = await conn.fetch(
                "SELECT id, merchant_id, object_id, seq FROM outbox_events WHERE id = ANY($1::text[])",
                [e["id"] for e in events])
            merchants = list({r["merchant_id"] for r in meta})
            endpoints = await conn.fetch(
                "SELECT id, merchant_id, enabled_events FROM webhook_endpoints "
                "WHERE merchant_id = ANY($1::text[]) AND deleted_at IS NULL AND status = 'enabled'", merchants)
            by_merchant: dict[str, list[asyncpg.Record]] = {}
            for endpoint in endpoints:
                by_merchant.setdefault(endpoint["merchant_id"], []).append(endpoint)
            types = {e["id"]: e["type"] for e in events}
            rows = [(m["id"], ep["id"], m["merchant_id"], m["object_id"], m["seq"])
                    for m in meta for ep in by_merchant.get(m["merchant_id"], [])
                    if "*" in ep["enabled_events"] or types[m["id"]] in ep["enabled_events"]]
            if rows:
                await conn.executemany(
                    "INSERT INTO webhook_deliveries (event_id, endpoint_id, merchant_id, ordering_key, event_seq) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", rows)
            await conn.execute("UPDATE outbox_events SET dispatched_at = now() "
                               "WHERE id = ANY($1::text[]) AND dispatched_at IS NULL", [m["id"] for m in meta])

    # ---- delivering: deliveries -> HTTP -------------------------------------------------------
    async def _deliver_forever(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            try:
                free = self.concurrency - len(in_flight)
                due = await self._claim_due(free) if free > 0 else []
                for delivery in due:
                    task = asyncio.get_running_loop().create_task(self._deliver(delivery))
                    in_flight.add(task)
                    task.add_done_callback(self._finished(in_flight))
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

    def _finished(self, in_flight: set[asyncio.Task[None]]) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            self.wakeup.set()

        return done

    async def _claim_due(self, limit: int) -> list[asyncpg.Record]:
        """Lease due deliveries whose predecessors (same endpoint and payment) are all done."""
        assert self.pool is not None
        return await self.pool.fetch(
            "UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2) "
            "FROM (SELECT x.id FROM webhook_deliveries x WHERE x.status = 'pending' AND x.next_attempt_at <= now() "
            "      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries y WHERE y.endpoint_id = x.endpoint_id "
            "                      AND y.ordering_key = x.ordering_key AND y.status = 'pending' "
            "                      AND y.event_seq < x.event_seq AND NOT x.manual) "
            "      AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = x.endpoint_id "
            "                  AND w.deleted_at IS NULL AND w.status = 'enabled') "
            "      ORDER BY x.event_seq LIMIT $1 FOR UPDATE SKIP LOCKED) due "
            "WHERE d.id = due.id "
            "RETURNING d.*, (SELECT url FROM webhook_endpoints w WHERE w.id = d.endpoint_id) AS url, "
            "(SELECT secret FROM webhook_endpoints w WHERE w.id = d.endpoint_id) AS secret, "
            "(SELECT payload::text FROM outbox_events o WHERE o.id = d.event_id) AS payload",
            limit, self.policy.lease_s)

    async def _deliver(self, delivery: asyncpg.Record) -> None:
        assert self.http is not None
        body = delivery["payload"].encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "paygate-webhooks/1",
                   "Stripe-Signature": sign(body, delivery["secret"])}
        started = time.perf_counter()
        status, error, prefix = None, None, None
        try:
            response = await self.http.post(delivery["url"], content=body, headers=headers)
            status, prefix = response.status_code, response.text[:RESPONSE_PREFIX_CHARS]
        except httpx.TimeoutException:
            error = f"timed out after {self.policy.timeout_s:.0f}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        latency_ms = int((time.perf_counter() - started) * 1000)
        await self._record_attempt(delivery, status, error, prefix, latency_ms)

    async def _record_attempt(self, delivery: asyncpg.Record, status: int | None, error: str | None,
                              prefix: str | None, latency_ms: int) -> None:
        assert self.pool is not None
        ok = status is not None and 200 <= status < 300
        if not ok and error is None:
            error = f"HTTP {status}"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, status_code, latency_ms, error, response_prefix) "
                "VALUES ($1, $2, $3, $4, $5)", delivery["id"], status, latency_ms, error, prefix)
            if ok:
                await conn.execute(
                    "UPDATE webhook_deliveries SET status = 'succeeded', attempts = attempts + 1, "
                    "delivered_at = now(), "
                    "last_status_code = $2, last_error = NULL WHERE id = $1", delivery["id"], status)
                # Only a recovering endpoint is written: a row lock taken on every success would
                # serialise all of one endpoint's deliveries.
                await conn.execute("UPDATE webhook_endpoints SET failing_since = NULL "
                                   "WHERE id = $1 AND failing_since IS NOT NULL", delivery["endpoint_id"])
                self.counters["delivered"] += 1
                return
            self.counters["failed_attempts"] += 1
            await self._schedule_retry(conn, delivery, status, error)

    async def _schedule_retry(self, conn: asyncpg.Connection, delivery: asyncpg.Record, status: int | None,
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
