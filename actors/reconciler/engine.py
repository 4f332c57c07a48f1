"""One reconciliation, end to end: a verified settlement file in, a stored run out.

Everything happens in one ledger transaction under an advisory lock for (business date, scope):
settling unknown outcomes the file proves, reading the ledger, classifying, and replacing the
day's previous run. A failure anywhere rolls all of it back. The file itself is parsed and
verified before the transaction starts, so a rejected file never touches the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from actors.payments.store import VersionConflict
from actors.reconciler import classify as cls
from actors.reconciler import ledger, store
from actors.reconciler.fileformat import SettlementFile, read_settlement

log = logging.getLogger("paygate.reconciler")

_ATTEMPTS = 5  # a payment changed under us (the recovery sweep booked it first): classify again


@dataclass
class Outcome:
    run: dict[str, Any]
    items: list[cls.Item]
    resolutions: list[ledger.Resolution]
    unresolved: list[dict[str, Any]] = field(default_factory=list)

    def discrepancies(self, limit: int | None = None) -> list[dict[str, Any]]:
        found = [i.as_dict() for i in self.items if i.classification != "matched"]
        return found if limit is None else found[:limit]

    def summary(self, discrepancy_limit: int = 1000) -> dict[str, Any]:
        """What crosses a process boundary: the run, its discrepancies (capped), what was settled."""
        return {**self.run, "discrepancy_items": self.discrepancies(discrepancy_limit),
                "resolutions": [{"type": r.kind, "rrn": r.rrn, "object_id": r.object_id, "action": r.action,
                                 "detail": r.detail} for r in self.resolutions],
                "unresolved": self.unresolved}


def day_window(business_date: date, cutoff: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the ledger bookings that belong to the file: the day, up to its cutoff."""
    start = datetime(business_date.year, business_date.month, business_date.day, tzinfo=UTC)
    return start, min(start + timedelta(days=1), cutoff + timedelta(milliseconds=1))


async def reconcile(pool: asyncpg.Pool, settlement: SettlementFile, *, merchants: Sequence[str] | None = None,
                    in_doubt_after_s: float = ledger.IN_DOUBT_AFTER_S) -> Outcome:
    """Reconcile a verified file against the ledger, for all merchants or only `merchants`."""
    started = time.monotonic()
    scope, merchant_ids = store.scope_of(merchants)
    keep = set(merchant_ids) if merchant_ids is not None else None
    records = [r for r in settlement.records if keep is None or r.merchant_id in keep]
    start, end = day_window(settlement.business_date, settlement.cutoff)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await _reconcile_in(conn, settlement, records, scope, merchant_ids, start, end, started,
                                           in_doubt_after_s)
        except VersionConflict:
            log.info("a payment changed during reconciliation of %s (attempt %d); again",
                     settlement.business_date, attempt)
    raise RuntimeError(f"reconciliation of {settlement.business_date} kept conflicting with payment updates")


async def _reconcile_in(conn: asyncpg.Connection, settlement: SettlementFile, records: list[Any], scope: str,
                        merchant_ids: list[str] | None, start: datetime, end: datetime, started: float,
                        in_doubt_after_s: float) -> Outcome:
    run_id = await store.lock_day(conn, settlement.business_date, scope)
    resolutions = await ledger.resolve_unknown(conn, settlement, records, in_doubt_after_s)
    view = await ledger.load_ledger(conn, records, start, end, merchant_ids)
    keys = list({(r.type, r.rrn) for r in records} | {(t.kind, t.rrn) for t in view.candidates})
    prior = await ledger.prior_settlements(conn, scope, settlement.business_date, keys)
    items = cls.classify(settlement.business_date, records, view.booked, view.candidates, prior, view.unbooked)
    counts = cls.counts(items)
    discrepancies = sum(n for c, n in counts.items() if c != "matched")
    values = {
        "business_date": settlement.business_date, "scope": scope, "merchants": merchant_ids,
        "status": "balanced" if discrepancies == 0 else "discrepancies", "file_name": settlement.name,
        "file_sha256": settlement.sha256, "bank_id": settlement.bank_id, "file_cutoff": settlement.cutoff,
        "file_records": len(settlement.records), "records": len(records), "counts": counts,
        "totals": cls.totals(records, items), "discrepancies": discrepancies,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }
    row = await store.save_run(conn, run_id, values, items, resolutions)
    for r in resolutions:
        log.warning("reconciliation %s settled %s %s (%s) from the settlement file", run_id, r.kind, r.object_id,
                    r.action)
    log.info("reconciled %s (%s): %d records, %s", settlement.business_date, scope, len(records), counts)
    return Outcome(store.run_object(row), items, resolutions, view.unresolved)


async def reconcile_file(pool: asyncpg.Pool, path: str, business_date: date, *,
                         merchants: Sequence[str] | None = None,
                         in_doubt_after_s: float = ledger.IN_DOUBT_AFTER_S) -> Outcome:
    """Read, verify (SettlementFileError names the line; nothing is written) and reconcile."""
    settlement = read_settlement(path, expected_date=business_date)
    return await reconcile(pool, settlement, merchants=merchants, in_doubt_after_s=in_doubt_after_s)
