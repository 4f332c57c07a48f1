"""Runs and their items in the ledger database: saving a run (replacing the day's previous one),
and reading runs back for the API and the reports."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import asyncpg

from actors.ids import new_id
from actors.reconciler.classify import CLASSIFICATIONS, Item
from actors.reconciler.ledger import Resolution
from cluster.db import as_columns

ALL = "all"
_LOCK_CLASS = 0x7263_6E31  # "rcn1": advisory lock class for (business date, scope)

_ITEM_COLUMNS = ("run_id", "seq", "classification", "kind", "rrn", "line", "merchant_id", "object_id",
                 "settlement_amount", "settlement_currency", "ledger_amount", "ledger_currency", "transaction_at",
                 "ledger_at", "note", "resolution", "resolved_by_run")


def scope_of(merchants: Sequence[str] | None) -> tuple[str, list[str] | None]:
    """'all', or 'merchants:<digest>' for a merchant filter (with the sorted, deduplicated ids)."""
    if merchants is None:
        return ALL, None
    ids = sorted(set(merchants))
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"merchants:{digest}", ids


async def lock_day(conn: asyncpg.Connection, business_date: date, scope: str) -> str:
    """Serialise runs of one (date, scope) across processes; return the run id to use (kept on reruns)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CLASS, f"{business_date}|{scope}")
    existing = await conn.fetchval("SELECT id FROM reconciliation_runs WHERE business_date = $1 AND scope = $2",
                                   business_date, scope)
    return str(existing) if existing else new_id("rcn")


async def save_run(conn: asyncpg.Connection, run_id: str, values: Mapping[str, Any], items: Sequence[Item],
                   resolutions: Sequence[Resolution]) -> asyncpg.Record:
    """Insert the run, or replace the previous run of the same (date, scope): same id, attempts + 1."""
    columns = list(values)
    placeholders = ", ".join(f"${i}" for i in range(2, len(columns) + 2))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in ("business_date", "scope"))
    row = await conn.fetchrow(
        f"INSERT INTO reconciliation_runs (id, {', '.join(columns)}, resolved) "
        f"VALUES ($1, {placeholders}, {len(resolutions)}) "
        f"ON CONFLICT (business_date, scope) DO UPDATE SET {updates}, "
        f"resolved = reconciliation_runs.resolved + EXCLUDED.resolved, "
        "attempts = reconciliation_runs.attempts + 1, updated_at = now() RETURNING *",
        run_id, *[values[c] for c in columns])
    assert row is not None and row["id"] == run_id
    await conn.execute("DELETE FROM reconciliation_items WHERE run_id = $1", run_id)
    await conn.copy_records_to_table("reconciliation_items", columns=_ITEM_COLUMNS, records=[
        (run_id, seq, i.classification, i.kind, i.rrn, i.line, i.merchant_id, i.object_id, i.settlement_amount,
         i.settlement_currency, i.ledger_amount, i.ledger_currency, i.transaction_at, i.ledger_at, i.note,
         i.resolution, i.resolved_by_run) for seq, i in enumerate(items, start=1)])
    if resolutions:
        await conn.executemany(
            "INSERT INTO reconciliation_resolutions (run_id, business_date, kind, rrn, object_id, action, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(run_id, values["business_date"], r.kind, r.rrn, r.object_id, r.action, r.detail) for r in resolutions])
    late = [(i.kind, i.rrn) for i in items if i.classification == "timing"]
    if late:
        # The earlier days' runs listed these as missing_in_settlement: this file settled them late.
        await conn.execute(
            "UPDATE reconciliation_items i SET resolution = 'settled_late', resolved_by_run = $1 "
            "FROM reconciliation_runs r, unnest($2::text[], $3::text[]) AS t(kind, rrn) "
            "WHERE r.id = i.run_id AND r.scope = $4 AND r.business_date < $5 AND i.line IS NULL "
            "AND i.classification = 'missing_in_settlement' AND i.kind = t.kind AND i.rrn = t.rrn",
            run_id, *as_columns(late, 2), values["scope"], values["business_date"])
    return row


def run_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "reconciliation_run", "business_date": row["business_date"].isoformat(),
        "scope": row["scope"], "merchants": list(row["merchants"]) if row["merchants"] is not None else None,
        "status": row["status"], "discrepancies": row["discrepancies"], "records": row["records"],
        "counts": {c: row["counts"].get(c, 0) for c in CLASSIFICATIONS}, "totals": _sorted_totals(row["totals"]),
        "resolved": row["resolved"], "attempts": row["attempts"],
        "duration_ms": row["duration_ms"],
        "file": {"name": row["file_name"], "sha256": row["file_sha256"], "bank_id": row["bank_id"],
                 "cutoff": row["file_cutoff"].isoformat(timespec="milliseconds"), "records": row["file_records"]},
        "created": int(row["created_at"].timestamp()), "updated": int(row["updated_at"].timestamp()),
    }


def _sorted_totals(totals: Mapping[str, Any]) -> dict[str, Any]:
    """jsonb does not keep key order: currencies sorted, each side in a fixed order."""
    order = ("count", "captured", "refunded", "net")
    return {currency: {"settlement": {k: entry["settlement"][k] for k in order},
                       "ledger": {k: entry["ledger"][k] for k in order}, "difference": entry["difference"]}
            for currency, entry in sorted(totals.items())}


def item_object(row: Mapping[str, Any]) -> dict[str, Any]:
    def stamp(value: Any) -> str | None:
        return value.isoformat(timespec="milliseconds") if value is not None else None

    return {
        "seq": row["seq"], "classification": row["classification"], "type": row["kind"], "rrn": row["rrn"],
        "line": row["line"], "merchant_id": row["merchant_id"], "object_id": row["object_id"],
        "settlement_amount": row["settlement_amount"], "settlement_currency": row["settlement_currency"],
        "ledger_amount": row["ledger_amount"], "ledger_currency": row["ledger_currency"],
        "transaction_at": stamp(row["transaction_at"]), "ledger_at": stamp(row["ledger_at"]), "note": row["note"],
        "resolution": row["resolution"], "resolved_by_run": row["resolved_by_run"],
    }


def resolution_object(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": row["kind"], "rrn": row["rrn"], "object_id": row["object_id"], "action": row["action"],
            "detail": row["detail"], "created": int(row["created_at"].timestamp())}


async def fetch_run(conn: asyncpg.Connection | asyncpg.Pool, run_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM reconciliation_runs WHERE id = $1", run_id)


async def fetch_items(conn: asyncpg.Connection | asyncpg.Pool, run_id: str, *, classifications: Sequence[str] | None,
                      after_seq: int = 0, limit: int | None = None) -> list[asyncpg.Record]:
    sql = "SELECT * FROM reconciliation_items WHERE run_id = $1 AND seq > $2"
    args: list[Any] = [run_id, after_seq]
    if classifications is not None:
        args.append(list(classifications))
        sql += f" AND classification = ANY(${len(args)}::text[])"
    sql += " ORDER BY seq"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return list(await conn.fetch(sql, *args))


async def fetch_resolutions(conn: asyncpg.Connection | asyncpg.Pool, run_id: str) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM reconciliation_resolutions WHERE run_id = $1 ORDER BY id", run_id))
