"""When and from where the Reconciler runs by itself.

Environment (read when the actors are created):

- `PAYGATE_RECONCILE_AT` (default `02:00`): daily time (UTC, HH:MM) after which the previous
  business day is reconciled; `off` disables the schedule.
- `PAYGATE_SETTLEMENT_DIR` (default `<data dir>/settlement/inbox`): where the bank delivers
  `settlement-YYYY-MM-DD.csv`.
- `PAYGATE_RECONCILE_REPORTS_DIR` (default `<data dir>/reports/reconciliation`): where scheduled
  runs write their CSV and JSON reports.
- `PAYGATE_BANKSIM_JOURNAL` (default `<data dir>/banksim/journal.sqlite3`, if it exists): local
  stack only: when no file was delivered, banksim "delivers" one from its journal.
- `PAYGATE_RECONCILE_POLL_S` (default `60`): how often the schedule looks.

From the scheduled time on, the reconciler checks every poll whether
the previous day has a run (scope: all merchants); if not and the file is there, it reconciles it.
A rejected file is not retried until a different file is delivered. Only the latest due day is
caught up automatically; older days are reconciled with `paygate reconcile --date`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ScheduleSettings:
    at: str | None  # "HH:MM" UTC, None: off
    inbox: str
    reports: str
    journal: str | None
    poll_s: float = 60.0

    @classmethod
    def from_env(cls, data_dir: str | Path, env: Mapping[str, str] | None = None) -> ScheduleSettings:
        env = os.environ if env is None else env
        data = Path(data_dir)
        raw_at = (env.get("PAYGATE_RECONCILE_AT") or "02:00").strip().lower()
        at = None if raw_at in ("off", "none", "disabled") else _hhmm(raw_at)
        journal = env.get("PAYGATE_BANKSIM_JOURNAL") or str(data / "banksim" / "journal.sqlite3")
        poll = float(env.get("PAYGATE_RECONCILE_POLL_S") or 60.0)
        if not 0.05 <= poll <= 86400:
            raise ValueError(f"PAYGATE_RECONCILE_POLL_S={poll} is outside 0.05..86400")
        return cls(at=at, inbox=env.get("PAYGATE_SETTLEMENT_DIR") or str(data / "settlement" / "inbox"),
                   reports=env.get("PAYGATE_RECONCILE_REPORTS_DIR") or str(data / "reports" / "reconciliation"),
                   journal=journal, poll_s=poll)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def due_date(self, now: datetime) -> date | None:
        """The business day that should be reconciled by `now`, or None (schedule off or too early)."""
        if self.at is None:
            return None
        now = now.astimezone(UTC)
        if now.time() < time.fromisoformat(self.at):
            return None
        return now.date() - timedelta(days=1)

    def inbox_file(self, business_date: date) -> Path:
        return Path(self.inbox) / settlement_file_name(business_date)


def settlement_file_name(business_date: date) -> str:
    return f"settlement-{business_date.isoformat()}.csv"


def _hhmm(value: str) -> str:
    try:
        parsed = time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"PAYGATE_RECONCILE_AT={value!r} is not HH:MM (UTC) or 'off'") from None
    return parsed.strftime("%H:%M")
