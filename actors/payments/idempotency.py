"""Idempotency records, claimed before an operation and finished in its last transaction.

Follows Stripe's published design: the first response is stored with the business write; a retry
with the same key and parameters gets it back byte-identical; the same key with other parameters
is an error; the same key while the first attempt runs is a 409; an attempt whose owner died
(lock older than `stale_after_s`) is resumed from its recovery point.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import asyncpg

from actors.payments.messages import Idempotency, Reply

KEEP_HOURS = 24


def needs_claim(idem: Idempotency) -> bool:
    """A merchant's key is claimed before anything runs; a gateway-made key only when the gateway
    re-sends a call it lost (its first attempt can only be found through the key)."""
    return idem.retry or not idem.internal
# Keys the gateway makes up when the merchant sent none (marked `internal`: a merchant's own key
# may look the same): they exist only so that the gateway can re-send a call it lost (the shard
# died, or the connection did, the answer unread) and get the first attempt's answer, or resume
# it. Kept at least this long, far longer than the gateway retries (2 x the acquirer timeout +
# 20 s: 40 s by default; see PaymentShard for longer timeouts).
INTERNAL_KEY_PREFIX = "gw:"
INTERNAL_KEEP_S = 600.0

ClaimKind = Literal["fresh", "resume", "replay", "in_progress", "mismatch"]


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    recovery_point: str | None = None
    reply: Reply | None = None


async def claim(pool: asyncpg.Pool, merchant_id: str, idem: Idempotency, stale_after_s: float) -> Claim:
    inserted = await pool.fetchval(  # the common case, a new key: one statement, no transaction
        "INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, request_hash, internal, "
        "locked_at) VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING RETURNING 1",
        merchant_id, idem.key, idem.method, idem.path, idem.request_hash, idem.internal,
    )
    if inserted:
        return Claim("fresh")
    claimed = await _claim_existing(pool, merchant_id, idem, stale_after_s)
    # None: deleted between the insert and the select, so take it as new (with the connection
    # given back first: waiting for a second one while holding one can exhaust a busy pool).
    return claimed or await claim(pool, merchant_id, idem, stale_after_s)


async def _claim_existing(pool: asyncpg.Pool, merchant_id: str, idem: Idempotency,
                          stale_after_s: float) -> Claim | None:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT *, locked_at > now() - make_interval(secs => $3) AS fresh_lock, "
            "created_at < now() - make_interval(hours => $4) AS expired "
            "FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 FOR UPDATE",
            merchant_id, idem.key, stale_after_s, KEEP_HOURS,
        )
        if row is None:
            return None
        if row["expired"]:
            await conn.execute(
                "UPDATE idempotency_keys SET request_method = $3, request_path = $4, request_hash = $5, "
                "recovery_point = NULL, locked_at = now(), response_code = NULL, response_body = NULL, "
                "created_at = now() WHERE merchant_id = $1 AND key = $2",
                merchant_id, idem.key, idem.method, idem.path, idem.request_hash,
            )
            return Claim("fresh")
        if row["request_hash"] != idem.request_hash:
            return Claim("mismatch")
        if row["response_code"] is not None:
            return Claim("replay", reply=Reply(row["response_code"], bytes(row["response_body"]), replayed=True))
        if row["fresh_lock"]:
            return Claim("in_progress")
        await conn.execute("UPDATE idempotency_keys SET locked_at = now() WHERE merchant_id = $1 AND key = $2",
                           merchant_id, idem.key)
        return Claim("resume", recovery_point=row["recovery_point"])


def recovery_point_sql(merchant_id: str, idem: Idempotency, object_id: str, first: int,
                       only_if: str = "") -> tuple[str, list[Any]]:
    """Record what this attempt created or moved. An upsert: a gateway-made key is first written
    here, in the business write, rather than claimed in a round trip of its own. Written for many
    rows (each parameter an array), so that a RowBatcher can merge such writes; parameters numbered
    from `first`; `only_if` names a CTE whose rows (`id`) the recorded objects must be among."""
    return (_recovery_point_statement(first, only_if),
            [[merchant_id], [idem.key], [idem.method], [idem.path], [idem.request_hash], [object_id],
             [idem.internal]])


@lru_cache(maxsize=64)
def _recovery_point_statement(first: int, only_if: str) -> str:
    n = first
    guard = f"k.recovery_point IN (SELECT id FROM {only_if})" if only_if else "true"
    return (f"INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, request_hash, "
            f"recovery_point, internal, locked_at) SELECT k.*, now() FROM unnest(${n}::text[], ${n + 1}::text[], "
            f"${n + 2}::text[], ${n + 3}::text[], ${n + 4}::text[], ${n + 5}::text[], ${n + 6}::boolean[]) "
            f"AS k(merchant_id, key, method, path, hash, recovery_point, internal) WHERE {guard} "
            f"ON CONFLICT (merchant_id, key) DO UPDATE SET recovery_point = EXCLUDED.recovery_point")


def finish_sql(merchant_id: str, idem: Idempotency, reply: Reply, first: int,
               owner: tuple[str, str] | None = None) -> tuple[str, list[Any]]:
    """Store the reply for replays: to the merchant retrying with its key, or, for a key the
    gateway made up, to the gateway re-sending a call whose answer it lost (kept for
    `INTERNAL_KEEP_S`; such a key was never claimed, so it is written here if need be). Written
    for many rows, like `recovery_point_sql`; parameters numbered from `first`. With `owner` (a
    CTE's name, the object's id) only when that object is among the CTE's rows."""
    args: list[Any] = [[merchant_id], [idem.key], [reply.status], [reply.body]]
    if idem.internal:
        args += [[idem.method], [idem.path], [idem.request_hash]]
    if owner is not None:
        args.append([owner[1]])
    return _finish_statement(first, idem.internal, owner[0] if owner is not None else ""), args


@lru_cache(maxsize=64)
def _finish_statement(first: int, internal: bool, owner_cte: str) -> str:
    arrays = ["text", "text", "integer", "bytea"]
    columns = ["merchant_id", "key", "code", "body"]
    if internal:
        arrays += ["text", "text", "text"]
        columns += ["method", "path", "hash"]
    guard = "true"
    if owner_cte:
        arrays.append("text")
        columns.append("owner")
        guard = f"f.owner IN (SELECT id FROM {owner_cte})"
    unnest = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(arrays, start=first))
    rows = f"unnest({unnest}) AS f({', '.join(columns)})"
    if internal:
        return (f"INSERT INTO idempotency_keys (merchant_id, key, request_method, request_path, request_hash, "
                f"response_code, response_body, internal) SELECT f.merchant_id, f.key, f.method, f.path, f.hash, "
                f"f.code, f.body, true FROM {rows} WHERE {guard} ON CONFLICT (merchant_id, key) DO UPDATE SET "
                f"response_code = EXCLUDED.response_code, response_body = EXCLUDED.response_body, locked_at = NULL")
    return (f"UPDATE idempotency_keys i SET response_code = f.code, response_body = f.body, locked_at = NULL "
            f"FROM {rows} WHERE i.merchant_id = f.merchant_id AND i.key = f.key AND {guard}")


async def finish(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str, idem: Idempotency | None,
                 reply: Reply) -> None:
    if idem:
        await conn.execute(*_flat(finish_sql(merchant_id, idem, reply, 1)))


def _flat(statement: tuple[str, list[Any]]) -> list[Any]:
    sql, args = statement
    return [sql, *args]


async def purge_expired(conn: asyncpg.Connection | asyncpg.Pool, internal_keep_s: float = INTERNAL_KEEP_S) -> int:
    """Drop answered keys past their time: a merchant's after `KEEP_HOURS`, a gateway-made one
    after `internal_keep_s` (answered or not: the gateway stopped retrying it long before)."""
    merchants = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1) "
        "AND response_code IS NOT NULL", KEEP_HOURS)
    internal = await conn.execute(
        "DELETE FROM idempotency_keys WHERE internal AND created_at < now() - make_interval(secs => $1)",
        internal_keep_s)
    return int(merchants.split()[-1]) + int(internal.split()[-1])
