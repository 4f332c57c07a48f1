"""`paygate bench --profile`, the database's side: the ledger PostgreSQL's time per payment by
statement, from `pg_stat_statements` (reset when the load starts, read when it ends). A local stack
started by the bench loads the extension when profiling; elsewhere the section says why it is
missing. Times are the executor's wall time inside PostgreSQL: on a saturated machine they include
waiting for a core, so read them as shares, like the py-spy samples."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

TOP_STATEMENTS = 10
QUERY_CHARS = 160


def reset(dsn: str) -> str | None:
    """Start counting from zero; the reason it cannot, if it cannot."""
    return asyncio.run(_reset(dsn))


def collect(dsn: str, payments: int, limit: int = TOP_STATEMENTS) -> dict[str, Any]:
    """The statements that took the most time, per payment, with the total over all statements; or
    the error that kept them from being read (the run's other results stand either way)."""
    try:
        return asyncio.run(_collect(dsn, max(1, payments), limit))
    except (OSError, asyncpg.PostgresError) as error:
        return {"error": f"reading pg_stat_statements failed: {error}"}


async def _reset(dsn: str) -> str | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        return f"cannot connect to the ledger: {error}"
    try:
        # Checked first: the extension can be created without the library loaded, and would then
        # be left behind in a database that cannot use it.
        preloaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
        if "pg_stat_statements" not in [name.strip() for name in str(preloaded).split(",")]:
            return "pg_stat_statements unavailable: not in shared_preload_libraries"
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    except asyncpg.PostgresError as error:  # not installed, or no right to create it
        return f"pg_stat_statements unavailable: {error}"
    finally:
        await conn.close()
    return None


async def _collect(dsn: str, payments: int, limit: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT calls, total_exec_time + total_plan_time AS ms, rows, wal_records, "
            "regexp_replace(query, '\\s+', ' ', 'g') AS query, "
            "sum(total_exec_time + total_plan_time) OVER () AS all_ms "
            "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY ms DESC")
    finally:
        await conn.close()
    total = float(rows[0]["all_ms"]) if rows else 0.0
    return {
        "ms_per_payment": round(total / payments, 3),
        "top": [{"query": r["query"][:QUERY_CHARS], "ms_per_payment": round(r["ms"] / payments, 3),
                 "share": round(r["ms"] / total, 3) if total else 0.0,
                 "calls_per_payment": round(r["calls"] / payments, 3),
                 "rows_per_call": round(r["rows"] / max(1, r["calls"]), 1),
                 "wal_records_per_payment": round(r["wal_records"] / payments, 1)} for r in rows[:limit]],
    }
