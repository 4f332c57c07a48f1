"""Persistence of the velocity state: scored attempts written behind the scorer in batches, and read
back into the windows when a scorer (re)starts.

Writes never sit on the scoring path: `AttemptWriter` buffers rows in memory and the scorer flushes
them every `FLUSH_INTERVAL_S`, one statement per table and batch. An attempt's bank result usually
arrives before its row is flushed and is merged into it; a later one becomes an UPDATE. A crash
loses at most the last unflushed interval (about 100 ms of attempts), which the windows tolerate:
they are thresholds, not a ledger.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from actors.fraud.messages import Result, ScoreRequest
from actors.payments.risk import RiskDecision
from cluster.db import as_columns

log = logging.getLogger("paygate.fraud.store")

FLUSH_INTERVAL_S = 0.1
MAX_BUFFERED = 200_000  # rows kept while the database is unreachable; the oldest are dropped past this
REBUILD_LIMIT = 1_000_000  # newest attempts replayed on start
RETENTION = "25 hours"

_COLUMN_TYPES = (
    ("attempt_id", "text"), ("merchant_id", "text"), ("payment_id", "text"), ("at", "timestamptz"),
    ("fingerprint", "text"), ("card_exempt", "boolean"), ("ip_address", "text"), ("email", "text"),
    ("device_id", "text"), ("ip_country", "text"), ("card_country", "text"), ("amount", "bigint"),
    ("currency", "text"), ("risk_score", "smallint"), ("outcome", "text"), ("result", "text"), ("rules", "text"),
)
# One statement per flush, whatever its size (rows as column arrays). `rules` travels as JSON
# text, since unnest() would flatten an array of arrays.
_INSERT = (
    "INSERT INTO risk_attempts (" + ", ".join(name for name, _ in _COLUMN_TYPES) + ") "
    "SELECT " + ", ".join("ARRAY(SELECT jsonb_array_elements_text(x.rules::jsonb))" if name == "rules"
                          else f"x.{name}" for name, _ in _COLUMN_TYPES) + " FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(_COLUMN_TYPES, start=1))
    + ") AS x(" + ", ".join(name for name, _ in _COLUMN_TYPES) + ") "
    "ON CONFLICT (attempt_id) DO UPDATE SET result = EXCLUDED.result"
)
_UPDATE_RESULTS = ("UPDATE risk_attempts r SET result = x.result FROM unnest($1::text[], $2::text[]) "
                   "AS x(attempt_id, result) WHERE r.attempt_id = x.attempt_id")
_RESULT_AT = 15  # index of `result` in an insert row


def _ts(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class AttemptWriter:
    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}
        self.results: dict[str, str] = {}
        self.written = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self.results)

    def attempt(self, req: ScoreRequest, decision: RiskDecision, exempt: bool, now: float) -> None:
        result = "blocked" if decision.outcome == "blocked" else "pending"
        self.rows[req.attempt_id] = [
            req.attempt_id, req.merchant_id, req.payment_id, _ts(now), req.fingerprint, exempt, req.ip_address,
            req.email, req.device_id, req.ip_country, req.card_country, req.amount, req.currency,
            decision.risk_score, decision.outcome, result, json.dumps(list(decision.rules))]
        self._bound()

    def result(self, attempt_id: str, result: Result) -> None:
        row = self.rows.get(attempt_id)
        if row is not None:
            row[_RESULT_AT] = result
        else:
            self.results[attempt_id] = result
            self._bound()

    def _bound(self) -> None:
        while len(self.rows) > MAX_BUFFERED:
            del self.rows[next(iter(self.rows))]
            self.dropped += 1
        while len(self.results) > MAX_BUFFERED:
            del self.results[next(iter(self.results))]
            self.dropped += 1

    async def flush(self, pool: asyncpg.Pool) -> int:
        if not self.rows and not self.results:
            return 0
        rows, results = self.rows, self.results
        self.rows, self.results = {}, {}
        try:
            async with pool.acquire() as conn, conn.transaction():
                if rows:
                    await conn.execute(_INSERT, *as_columns(list(rows.values()), len(_COLUMN_TYPES)))
                if results:
                    await conn.execute(_UPDATE_RESULTS, *as_columns(list(results.items()), 2))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # keep them for the next flush (newer entries win), bounded
            self.rows = {**rows, **self.rows}
            self.results = {**results, **self.results}
            self._bound()
            raise
        self.written += len(rows)
        return len(rows) + len(results)


async def recent_attempts(pool: asyncpg.Pool, limit: int = REBUILD_LIMIT) -> Sequence[asyncpg.Record]:
    """The last 24 hours of attempts (newest `limit`), oldest first, for `RiskEngine.replay`."""
    return await pool.fetch(
        "SELECT * FROM (SELECT attempt_id, merchant_id, payment_id, extract(epoch FROM at)::float8 AS at, "
        "fingerprint, card_exempt, ip_address, email, device_id, amount, currency, result FROM risk_attempts "
        "WHERE at > now() - interval '24 hours' ORDER BY at DESC LIMIT $1) recent ORDER BY at", limit)


async def purge(pool: asyncpg.Pool) -> int:
    status = await pool.execute(f"DELETE FROM risk_attempts WHERE at < now() - interval '{RETENTION}'")
    return int(status.split()[-1]) if status.startswith("DELETE") else 0
