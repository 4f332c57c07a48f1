"""PaymentShard: the actor that owns the state transitions of its merchants' PaymentIntents.

A merchant maps to one shard (stable hashing); inside the shard each payment's operations run one
at a time (a lock per payment, plus the row's version check as the safety net, since an async
actor does not keep call order). On start, and every few seconds, the shard settles payments it
finds left in `processing` by a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import ray

from actors.acquirer.link import AuthorizeOrder, BankOutcome
from actors.acquirer.messages import AcquirerRequest
from actors.batching import Batcher, gather_outcomes
from actors.direct import DirectCallable, DirectClient
from actors.errors import ApiError, IdempotencyError, IdempotencyInProgress, StripeError
from actors.fraud.assessor import FraudAssessor
from actors.payments import idempotency
from actors.payments.idempotency import Claim
from actors.payments.messages import PaymentCommand, Reply
from actors.payments.operations import Operations, Ports, failure, unexpected_state
from actors.payments.refunds import Refunds
from actors.payments.states import IllegalTransition
from actors.payments.store import VersionConflict
from cluster.db import create_pool

log = logging.getLogger("paygate.shard")

RECOVERY_INTERVAL_S = 2.0


def shard_index(merchant_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike hash(), which is salted per process)."""
    return zlib.crc32(merchant_id.encode()) % shards


class PaymentShard(DirectCallable):
    DIRECT_METHODS = frozenset({"execute_many"})

    def __init__(self, index: int, shards: int, ledger_dsn: str, vault_name: str, link_names: list[str],
                 namespace: str, stale_after_s: float, connections: int) -> None:
        self.index, self.shards = index, shards
        self.connections = connections
        self.ledger_dsn = ledger_dsn
        self.vault_name, self.link_names, self.namespace = vault_name, link_names, namespace
        self.stale_after_s = stale_after_s
        self.pool: asyncpg.Pool | None = None
        self.ops: Operations | None = None
        self.refunds: Refunds | None = None
        self.locks: dict[str, asyncio.Lock] = {}
        self.lock_users: dict[str, int] = {}
        self.recovery_task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self.ops is not None:
                return
            self.pool = await create_pool(self.ledger_dsn, min_size=min(2, self.connections),
                                          max_size=self.connections)
            vault = ray.get_actor(self.vault_name, namespace=self.namespace)
            links = [ray.get_actor(name, namespace=self.namespace) for name in self.link_names]
            ports = Ports(self.pool, _VaultClient(vault), _LinkPool(links), FraudAssessor.connect(self.namespace))
            self.ops = Operations(ports)
            self.refunds = Refunds(ports)
            self.recovery_task = asyncio.create_task(self._recover_forever())

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def execute_many(self, commands: list[PaymentCommand]) -> list[Reply | BaseException]:
        """A micro-batch from a gateway: each command runs as if it came alone."""
        return await gather_outcomes([self.execute(cmd) for cmd in commands])

    async def execute(self, cmd: PaymentCommand) -> Reply:
        await self.start()
        assert self.pool is not None and self.ops is not None
        claim = Claim("fresh")
        if cmd.idempotency and idempotency.needs_claim(cmd.idempotency):
            claim = await idempotency.claim(self.pool, cmd.merchant_id, cmd.idempotency, self.stale_after_s)
            if claim.reply is not None:
                return claim.reply
            if claim.kind == "mismatch":
                return failure(IdempotencyError(
                    "Keys for idempotent requests can only be used with the same parameters they were first "
                    f"used with. Try using a key other than '{cmd.idempotency.key}' if you meant to execute a "
                    "different request."))
            if claim.kind == "in_progress":
                return failure(IdempotencyInProgress())
        async with self._payment_lock(cmd.payment_id or claim.recovery_point):
            reply = await self._run(cmd, claim)
        return reply

    async def _run(self, cmd: PaymentCommand, claim: Claim) -> Reply:
        assert self.ops is not None and self.pool is not None
        operation = self.refunds.refund if cmd.verb == "refund" else getattr(self.ops, cmd.verb)  # type: ignore[union-attr]
        try:
            return await operation(cmd, claim.recovery_point)
        except StripeError as error:
            reply = failure(error)
        except IllegalTransition as error:
            row = await self.pool.fetchrow("SELECT * FROM payment_orders WHERE id = $1", cmd.payment_id)
            reply = failure(unexpected_state(row, error.action)) if row else failure(ApiError(str(error)))
        except VersionConflict:
            reply = failure(IdempotencyInProgress())
        except Exception:
            log.exception("%s failed for merchant %s", cmd.verb, cmd.merchant_id)
            reply = failure(ApiError("An unexpected error occurred while processing the request."))
        await idempotency.finish(self.pool, cmd.merchant_id, cmd.idempotency, reply)
        return reply

    @contextlib.asynccontextmanager
    async def _payment_lock(self, payment_id: str | None) -> AsyncIterator[None]:
        if payment_id is None:
            yield
            return
        lock = self.locks.setdefault(payment_id, asyncio.Lock())
        self.lock_users[payment_id] = self.lock_users.get(payment_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self.lock_users[payment_id] -= 1
            if self.lock_users[payment_id] == 0:
                del self.lock_users[payment_id], self.locks[payment_id]

    async def recover(self) -> int:
        """Settle this shard's payments stuck in `processing` for longer than the stale limit."""
        await self.start()
        assert self.pool is not None and self.ops is not None
        rows = await self.pool.fetch(
            "SELECT * FROM payment_orders WHERE status = 'processing' "
            "AND processing_since < now() - make_interval(secs => $1)", self.stale_after_s)
        settled = 0
        for row in rows:
            if shard_index(row["merchant_id"], self.shards) != self.index or row["id"] in self.locks:
                continue
            async with self._payment_lock(row["id"]):
                fresh = await self.pool.fetchrow("SELECT * FROM payment_orders WHERE id = $1", row["id"])
                if fresh and fresh["status"] == "processing":
                    reply = await self.ops.resolve(fresh)
                    log.warning("recovered %s from %s: %s", row["id"], row["bank_phase"], reply.status)
                    settled += 1
        return settled + await self._recover_refunds()

    async def _recover_refunds(self) -> int:
        assert self.pool is not None and self.refunds is not None
        rows = await self.pool.fetch(
            "SELECT * FROM refunds WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)",
            self.stale_after_s)
        settled = 0
        for row in rows:
            if shard_index(row["merchant_id"], self.shards) != self.index or row["payment_id"] in self.locks:
                continue
            async with self._payment_lock(row["payment_id"]):
                fresh = await self.pool.fetchrow("SELECT * FROM refunds WHERE id = $1", row["id"])
                if fresh and fresh["status"] == "pending":
                    await self.refunds.resolve_pending(fresh)
                    log.warning("recovered refund %s", row["id"])
                    settled += 1
        return settled

    async def _recover_forever(self) -> None:
        while True:
            try:
                await self.recover()
                # Gateway-made keys outlive the gateway's retries (2 x acquirer timeout + 20 s).
                await idempotency.purge_expired(self.pool, max(idempotency.INTERNAL_KEEP_S,  # type: ignore[arg-type]
                                                               4 * self.stale_after_s))
            except Exception:
                log.exception("recovery pass failed; retrying")
            await asyncio.sleep(RECOVERY_INTERVAL_S)


class _LinkPool:
    """Spreads bank calls over the AcquirerLink actors, keeping one payment on one link."""

    def __init__(self, links: list[Any]) -> None:
        clients = [DirectClient(link) for link in links]
        self.authorizers = [Batcher(client.sender("authorize_many")) for client in clients]
        self.senders = [Batcher(client.sender("send_many")) for client in clients]

    @staticmethod
    def _index(key: str, count: int) -> int:
        return zlib.crc32(key.encode()) % count

    async def authorize(self, order: AuthorizeOrder) -> BankOutcome:
        return await self.authorizers[self._index(order.payment_id, len(self.authorizers))].call(order)

    async def send(self, request: AcquirerRequest) -> BankOutcome:
        return await self.senders[self._index(request.rrn, len(self.senders))].call(request)


class _VaultClient:
    """The shard's view of the vault: PaymentMethod metadata only, fetched in micro-batches."""

    def __init__(self, vault: Any) -> None:
        self.getter: Batcher[tuple[str, str], Any] = Batcher(DirectClient(vault).sender("get_many"))

    async def get(self, merchant_id: str, pm_id: str) -> dict[str, Any] | None:
        return await self.getter.call((merchant_id, pm_id))


PaymentShardActor = ray.remote(PaymentShard)
