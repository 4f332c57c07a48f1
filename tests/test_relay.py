"""The outbox relay's pacing: caught up, it polls once per interval; behind, at once. And what
it writes to the broker: compressed record batches, on the partition Kafka's default partitioner
gives the payment's id.

Delivery itself (every event published, in order, again after a broker loss) is tested against the
real stack in test_webhooks.py; for the pacing `relay_once` is replaced so that only the loop
around it runs."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.default_records import DefaultRecord as Record
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords

from actors.events.relay import POLL_INTERVAL_S, OutboxRelay, partition_for
from actors.events.relay import _publish as publish
from actors.ids import new_id
from cluster.broker import EVENTS_TOPIC, PUBLICATION_HEADER, TOPICS
from cluster.stack import StackInfo


def _poll_times(batches: list[int], batch_size: int) -> list[float]:
    """When the relay loop polled, for polls that found `batches` rows in turn."""
    relay = OutboxRelay(0, 1, "postgresql://nobody@127.0.0.1:1/none", "127.0.0.1:1", batch_size=batch_size)

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        polls: list[float] = []
        done = loop.create_future()

        async def relay_once() -> int:
            polls.append(loop.time())
            if len(polls) == len(batches):
                done.set_result(None)
            return batches[min(len(polls), len(batches)) - 1]

        relay.relay_once = relay_once  # type: ignore[method-assign]
        task = loop.create_task(relay._run())
        await asyncio.wait_for(done, 5)
        task.cancel()
        return polls

    return asyncio.run(run())


def test_a_caught_up_relay_waits_out_the_interval_and_one_behind_polls_at_once() -> None:
    polls = _poll_times([3, 10, 10, 0, 1, 0], batch_size=10)
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    after_partial, after_full, after_full_again, after_empty, after_one = gaps
    assert min(after_partial, after_empty, after_one) >= 0.9 * POLL_INTERVAL_S, gaps
    assert max(after_full, after_full_again) < POLL_INTERVAL_S / 2, gaps


def test_the_relay_writes_its_events_as_zstd_batches(stack_info: StackInfo, api: httpx.Client) -> None:
    """The stack's default (`PAYGATE_KAFKA_COMPRESSION=zstd`): the batch holding a new payment's
    events, read raw from the real broker, is compressed, and its records read back whole."""
    created = api.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd",
                                                    "payment_method": "pm_card_visa", "confirm": "true"})
    assert created.status_code == 200, created.text
    payment_id = created.json()["id"]

    async def batches_of(key: bytes) -> list[tuple[int, int, list[bytes]]]:
        client = AIOKafkaClient(bootstrap_servers=stack_info.kafka_bootstrap)
        await client.bootstrap()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                found = [(partition, batch.compression_type, [r.value for r in records])
                         for partition in range(TOPICS[EVENTS_TOPIC])
                         for batch, records in await _raw_batches(client, partition)
                         if any(r.key == key for r in records)]
                if found:
                    return found
                await asyncio.sleep(0.2)
            pytest.fail(f"no batch with the events of {key!r} on {EVENTS_TOPIC} within 30 s")
        finally:
            await client.close()

    key = payment_id.encode()
    found = asyncio.run(batches_of(key))
    assert {codec for _, codec, _ in found} == {DefaultRecordBatch.CODEC_ZSTD}, [codec for _, codec, _ in found]
    assert any(key in value for _, _, values in found for value in values)
    partitions = list(range(TOPICS[EVENTS_TOPIC]))
    assert {partition for partition, _, _ in found} == {DefaultPartitioner()(key, partitions, partitions)}


def test_the_relay_partitions_as_kafkas_default_partitioner() -> None:
    """The relay names each record's partition itself (murmur2 of the payment id, each id's hash
    kept): the choice must stay the default partitioner's, or a payment's events published
    before and after an upgrade would land on two partitions and lose their order."""
    rng = random.Random(9)
    default = DefaultPartitioner()
    for _ in range(3000):
        text = "".join(rng.choices("ab\u00e9\u4e2d", k=rng.randint(0, 40)))  # any length, not only ids
        key = rng.choice([new_id("pi"), new_id("re"), text]).encode()
        partitions = sorted(rng.sample(range(64), rng.randint(1, 16)))
        assert partition_for(key, partitions) == default(key, partitions, partitions), key


async def _raw_batches(client: AIOKafkaClient, partition: int) -> list[tuple[DefaultRecordBatch, list]]:
    """Every record batch of one partition of the events topic, as the broker stores it."""
    leader = client.cluster.leader_for_partition(TopicPartition(EVENTS_TOPIC, partition))
    response = await client.send(leader, FetchRequest(100, 1, 64 << 20, 0,
                                                      [(EVENTS_TOPIC, [(partition, 0, 64 << 20)])]))
    (_, partitions), = response.topics
    (_, error, *_, message_set), = partitions
    assert error == 0, f"fetch of partition {partition} failed with error code {error}"
    records = MemoryRecords(message_set)
    batches = []
    while records.has_next():
        batch = records.next_batch()
        assert isinstance(batch, DefaultRecordBatch)
        batches.append((batch, list(batch)))
    return batches


class _BatchProducer:
    """The two producer calls `_publish` makes, with aiokafka's real BatchBuilder at a small size."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, BatchBuilder]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0, is_transactional=False)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, partition, batch))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _outbox_rows(count: int, payload_bytes: int) -> list[dict[str, object]]:
    return [{"object_id": f"pi_{i}", "payload": f"{i:04d}" + "x" * payload_bytes, "id": f"evt_{i}",
             "type": "payment_intent.created", "publish_count": 0} for i in range(count)]


def _published(producer: _BatchProducer) -> list[list[Record]]:
    """The records of each batch sent, read back from its bytes as the broker would."""
    return [list(DefaultRecordBatch(bytes(batch._build()))) for _, _, batch in producer.sent]


def test_a_partition_larger_than_one_batch_goes_in_several_in_order() -> None:
    producer = _BatchProducer(4096)
    futures = asyncio.run(publish(producer, 3, _outbox_rows(20, 700)))  # type: ignore[arg-type]
    assert len(futures) == len(producer.sent) > 1
    assert {(topic, partition) for topic, partition, _ in producer.sent} == {(EVENTS_TOPIC, 3)}
    batches = _published(producer)
    assert [record.value[:4] for batch in batches for record in batch] == [f"{i:04d}".encode() for i in range(20)]
    headers = dict(batches[0][0].headers)
    assert headers["event_id"] == b"evt_0" and headers[PUBLICATION_HEADER] == b"1"


def test_an_event_larger_than_a_batch_goes_in_one_of_its_own() -> None:
    producer = _BatchProducer(4096)
    rows = _outbox_rows(3, 700)
    rows[1]["payload"] = "0001" + "x" * 10_000
    asyncio.run(publish(producer, 0, rows))  # type: ignore[arg-type]
    batches = [[record.value[:4] for record in batch] for batch in _published(producer)]
    assert batches == [[b"0000"], [b"0001"], [b"0002"]]
