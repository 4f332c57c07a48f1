"""OutboxRelay: publishes outbox rows to Kafka, in creation order per payment.

Rows are claimed with `FOR UPDATE SKIP LOCKED` in batches, produced with `acks=all` keyed by the
payment id (one payment's events share a partition, so consumers see them in order), and marked
published in the same transaction that claimed them; a failed produce rolls the claim back and the
batch is published again (receivers dedupe by event id).

Several relays: relay i of n only takes rows with `hashtext(object_id) mod n = i`, so each
payment's events always go through one relay, one batch after another — no duplicates between
relays (SKIP LOCKED) and no reordering of a payment's events (one owner per payment).

The outbox row, not the broker, is the durable record: until a dispatcher has recorded every
delivery for an event (and so taken it out of `outbox_pending`), the relay publishes it again every
`republish_after_s`, so a broker that loses messages (the local broker keeps them in memory) loses
no event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, cast

import asyncpg
import ray
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from actors.lifecycle import autostart
from cluster.broker import EVENTS_TOPIC, PUBLICATION_HEADER
from cluster.db import create_pool

log = logging.getLogger("paygate.relay")

# Caught up (a batch short of full), the relay polls again this long after the last poll began:
# at 150 payments/s, polling as soon as a batch was out sent batches of a few rows, each a
# transaction and a produce request of its own. Behind (a full batch), it polls at once. Each
# poll's batch is one stored object per partition in the local broker, whose fetches cost more
# the more objects it holds: at 500 payments/s, 0.2 s against 0.05 s took relay and broker from
# 0.19 to 0.09 ms of CPU per payment, for 0.08 s more webhook lag (two runs each).
POLL_INTERVAL_S = 0.2

_CLAIM = ("SELECT p.seq, p.publish_count, o.id, o.object_id, o.type, o.payload::text AS payload "
          "FROM outbox_pending p JOIN outbox_events o ON o.id = p.event_id WHERE {due} "
          "AND ($1 = 1 OR abs(hashtext(p.object_id)) % $1 = $2) ORDER BY p.seq LIMIT $3 FOR UPDATE OF p SKIP LOCKED")
_UNPUBLISHED = _CLAIM.format(due="p.published_at IS NULL")
_UNDISPATCHED = _CLAIM.format(due="p.published_at < now() - make_interval(secs => $4)")


@functools.lru_cache(maxsize=4096)
def _key_hash(key: bytes) -> int:
    """The hash of aiokafka's default partitioner (murmur2, as Kafka's Java client computes it).
    It is pure Python, 3.4 µs a payment id here, and a payment's events come in one batch."""
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: list[int]) -> int:
    """The partition aiokafka's default partitioner picks for `key` among `partitions`."""
    return partitions[_key_hash(key) % len(partitions)]


class OutboxRelay:
    def __init__(self, index: int, relays: int, ledger_dsn: str, bootstrap: str, republish_after_s: float = 30.0,
                 compression: str | None = "zstd", batch_size: int = 500) -> None:
        self.index, self.relays = index, relays
        self.compression = compression
        self.ledger_dsn, self.bootstrap = ledger_dsn, bootstrap
        self.republish_after_s, self.batch_size = republish_after_s, batch_size
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None
        self.published = 0
        self.next_sweep = 0.0
        self._loop: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        autostart(self.start, "outbox relay")

    async def start(self) -> None:
        async with self._starting:
            if self._loop is not None:
                return
            self.pool = await create_pool(self.ledger_dsn, min_size=1, max_size=3)
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def stats(self) -> dict[str, int]:
        return {"published": self.published}

    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            # zstd: the local broker, which keeps every record in memory, grew by 1.4 KB a checkout
            # instead of 6.5 KB (its CPU fell as much as the relay's rose).
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2,
                                        request_timeout_ms=5000, max_batch_size=1 << 20,
                                        compression_type=self.compression)
            await producer.start()
            self.producer = producer
        return self.producer

    async def _reset_producer(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except Exception:  # a dead broker can make stop() fail too; the next start is fresh
                log.debug("producer stop failed", exc_info=True)

    async def _run(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            try:
                polled = loop.time()
                sent = await self.relay_once()
                backoff = 0.1
                if sent < self.batch_size:
                    await asyncio.sleep(max(0.0, polled + POLL_INTERVAL_S - loop.time()))
            except Exception as error:
                log.warning("outbox relay: %s; retrying in %.1fs", error, backoff)
                await self._reset_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    @property
    def _sweep_every_s(self) -> float:
        return min(max(self.republish_after_s / 4, 0.1), 5.0)

    async def relay_once(self) -> int:
        """Publish one batch; return how many rows it held. Mostly new rows (a cheap index scan);
        every `_sweep_every_s` instead the rows published long ago and still not dispatched."""
        assert self.pool is not None
        sweep = time.monotonic() >= self.next_sweep
        if sweep:
            self.next_sweep = time.monotonic() + self._sweep_every_s
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _UNDISPATCHED if sweep else _UNPUBLISHED, self.relays, self.index, self.batch_size,
                *([self.republish_after_s] if sweep else []))
            if not rows:
                return 0
            producer = await self._producer()
            partitions = list(await producer.partitions_for(EVENTS_TOPIC))  # as its partitioner sees them
            by_partition: dict[int, list[asyncpg.Record]] = {}
            for row in rows:
                by_partition.setdefault(partition_for(row["object_id"].encode(), partitions), []).append(row)
            futures = [future for partition, group in by_partition.items()
                       for future in await _publish(producer, partition, group)]
            await asyncio.wait_for(asyncio.gather(*futures), 10)
            await conn.execute(
                "UPDATE outbox_pending SET published_at = now(), publish_count = publish_count + 1 "
                "WHERE seq = ANY($1::bigint[])", [row["seq"] for row in rows])
        self.published += len(rows)
        return len(rows)


async def _publish(producer: AIOKafkaProducer, partition: int, rows: list[asyncpg.Record]) -> list[asyncio.Future[Any]]:
    """One partition's rows as record batches, in order (a second batch only if the first fills
    up): a future per batch, where `send` made one per record and queued each on its own."""
    futures, batch = [], producer.create_batch()
    for row in rows:
        # The event id and type ride in headers: the dispatcher routes without parsing the body.
        # So does the publication's number: only a copy published again can find deliveries of
        # its event written already.
        record = {"timestamp": None, "key": row["object_id"].encode(), "value": row["payload"].encode(),
                  "headers": [("event_id", row["id"].encode()), ("type", row["type"].encode()),
                              (PUBLICATION_HEADER, str(row["publish_count"] + 1).encode())]}
        if batch.append(**record) is None:  # full; a fresh batch takes any one record, as Kafka's do
            futures.append(await _send(producer, batch, partition))
            batch = producer.create_batch()
            batch.append(**record)
    futures.append(await _send(producer, batch, partition))
    return futures


async def _send(producer: AIOKafkaProducer, batch: BatchBuilder, partition: int) -> asyncio.Future[Any]:
    batch.close()  # nothing else may join it
    return cast(asyncio.Future[Any], await producer.send_batch(batch, EVENTS_TOPIC, partition=partition))


OutboxRelayActor = ray.remote(OutboxRelay)
