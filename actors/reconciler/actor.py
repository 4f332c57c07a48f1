"""The Reconciler actor: reconciles a business day on request, and by itself every day after the
settlement file is expected (`actors/reconciler/schedule.py`).

Runs of one (date, scope) are serialised by an advisory lock in the ledger, so the actor, the
`paygate reconcile` command and another actor instance can never interleave on the same day.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import ray

from actors.reconciler import engine
from actors.reconciler.fileformat import SettlementFileError
from actors.reconciler.ledger import IN_DOUBT_AFTER_S
from actors.reconciler.report import write_reports
from actors.reconciler.schedule import ScheduleSettings, settlement_file_name
from actors.reconciler.store import ALL, scope_of
from cluster.db import create_pool

log = logging.getLogger("paygate.reconciler")


def local_settlement_file(settings: ScheduleSettings, business_date: date, merchants: list[str] | None,
                          now: datetime | None = None) -> Path | None:
    """The delivered file for the day, or one banksim writes from its journal (local stack only).

    A generated file for all merchants of a finished day goes to the inbox, as the bank would
    deliver it; anything else (a merchant filter, a day still in progress) goes next to it, in
    `generated/`, so it never stands in for the bank's final file.
    """
    delivered = settings.inbox_file(business_date)
    if delivered.exists():
        return delivered  # with a merchant filter too: the reconciler filters the bank's whole file
    if not settings.journal or not Path(settings.journal).exists():
        return None
    from banksim.settlement import cutoff_for, day_bounds, write_settlement_file

    now = now or datetime.now(UTC)
    complete = cutoff_for(business_date, now) >= day_bounds(business_date)[1]
    if merchants is None and complete:
        target = delivered
    else:
        scope = scope_of(merchants)[0].replace("merchants:", "")
        target = Path(settings.inbox).parent / "generated" / settlement_file_name(business_date).replace(
            ".csv", f"-{scope}-{now.strftime('%H%M%S%f')}.csv")
    return write_settlement_file(settings.journal, business_date, target, merchants=merchants, now=now)


class Reconciler:
    def __init__(self, ledger_dsn: str, settings: dict[str, Any]) -> None:
        self.ledger_dsn = ledger_dsn
        self.settings = ScheduleSettings(**settings)
        self.pool: asyncpg.Pool | None = None
        self.schedule_task: asyncio.Task[None] | None = None
        self._rejected: set[tuple[date, str]] = set()
        self._waiting_logged: date | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self.pool is not None:
                return
            self.pool = await create_pool(self.ledger_dsn, min_size=1, max_size=4)
            if self.settings.at is not None:
                self.schedule_task = asyncio.create_task(self._schedule_forever())
                log.info("reconciler scheduled daily at %s UTC (inbox %s)", self.settings.at, self.settings.inbox)

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def schedule(self) -> dict[str, Any]:
        return {**self.settings.as_dict(), "running": self.schedule_task is not None and not self.schedule_task.done()}

    async def reconcile(self, business_date: str, file: str | None = None, merchants: list[str] | None = None,
                        reports_dir: str | None = None, discrepancy_limit: int = 1000,
                        in_doubt_after_s: float = IN_DOUBT_AFTER_S) -> dict[str, Any]:
        """Reconcile one day; the file is the given path, the delivered one, or banksim's (local).

        Raises SettlementFileError (naming the line) for a bad file, FileNotFoundError when there is
        no file. `in_doubt_after_s`: how long a bank call must have been in flight before the file
        may settle it. Returns the run, its discrepancies (up to `discrepancy_limit`), what was settled
        from the file and what is still in doubt.
        """
        await self.start()
        assert self.pool is not None
        day = date.fromisoformat(business_date)
        path = Path(file) if file else local_settlement_file(self.settings, day, merchants)
        if path is None or not path.exists():
            raise FileNotFoundError(f"no settlement file for {day} (expected {self.settings.inbox_file(day)})")
        outcome = await engine.reconcile_file(self.pool, str(path), day, merchants=merchants,
                                              in_doubt_after_s=in_doubt_after_s)
        result = outcome.summary(discrepancy_limit)
        if reports_dir:
            result["reports"] = [str(p) for p in write_reports(outcome, reports_dir)]
        return result

    async def tick(self, now: str | None = None) -> dict[str, Any] | None:
        """One look at the schedule (`now`: ISO timestamp to pretend it is, for tests)."""
        await self.start()
        assert self.pool is not None
        moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
        day = self.settings.due_date(moment)
        if day is None:
            return None
        done = await self.pool.fetchval(
            "SELECT id FROM reconciliation_runs WHERE business_date = $1 AND scope = $2", day, ALL)
        if done:
            return {"status": "done", "business_date": day.isoformat(), "run": done}
        path = local_settlement_file(self.settings, day, None, now=moment)
        if path is None or not path.exists():
            if self._waiting_logged != day:
                log.warning("settlement file for %s not delivered yet (%s)", day, self.settings.inbox_file(day))
                self._waiting_logged = day
            return {"status": "waiting", "business_date": day.isoformat()}
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if (day, digest) in self._rejected:
            return {"status": "rejected", "business_date": day.isoformat()}
        try:
            outcome = await engine.reconcile_file(self.pool, str(path), day)
        except SettlementFileError as error:
            self._rejected.add((day, digest))
            log.error("settlement file %s rejected: %s", path, error)
            return {"status": "rejected", "business_date": day.isoformat(), "error": str(error)}
        reports = write_reports(outcome, self.settings.reports)
        log.info("scheduled reconciliation of %s: %s (%s)", day, outcome.run["status"], outcome.run["counts"])
        return {"status": "reconciled", "business_date": day.isoformat(), "run": outcome.run["id"],
                "run_status": outcome.run["status"], "reports": [str(p) for p in reports]}

    async def _schedule_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scheduled reconciliation failed; retrying")
            await asyncio.sleep(self.settings.poll_s)


ReconcilerActor = ray.remote(Reconciler)
