"""Persistence of the velocity state: scored attempts written behind the scorer in batches, and read
back into the windows when a scorer (re)starts.

Writes never sit on the scoring path: `AttemptWriter` buffers rows in memory and the scorer flushes
them every `FLUSH_INTERVAL_S` with one `executemany` per batch. An attempt's bank result usually
arrives before its row is flushed and is merged into it; a later one becomes an UPDATE. A crash
loses at most the last unflushed interval (about 100 ms of attempts), which the windows tolerate:
they are thresholds, not a ledger.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from actors.fraud.messages import Result, ScoreRequest
from actors.payments.risk import RiskDecision

log = logging.getLogger("paygate.fraud.store")

FLUSH_INTERVAL_S = 0.1
MAX_BUFFERED = 200_000  # rows kept while the database is unreachable; the oldest are dropped past this
REBUILD_LIMIT = 1_000_000  # newest attempts replayed on start
RETENTION = "25 hours"

_INSERT = (
    "INSERT INTO risk_attempts (attempt_id, merchant_id, payment_id, at, fingerprint, card_exempt, ip_address, "
    "email, device_id, ip_country, card_country, amount, currency, risk_score, outcome, result, rules) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
    "ON CONFLICT (attempt_id) DO UPDATE SET result = EXCLUDED.result"
)
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
            decision.risk_score, decision.outcome, result, list(decision.rules)]
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
                    await conn.executemany(_INSERT, list(rows.values()))
                if results:
                    await conn.executemany("UPDATE risk_attempts SET result = $2 WHERE attempt_id = $1",
                                           list(results.items()))
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
