"""`paygate reconcile --date YYYY-MM-DD [--file PATH] [--out DIR] [--merchant ID ...]`.

Runs the reconciliation in this process against the ledger (the running stack's, from
`<data dir>/run/stack.json`, or `PAYGATE_LEDGER_DSN`), with the same code and the same per-day
lock as the Reconciler actor. Without `--file`, the local banksim writes the day's file from its
journal into the output folder. Prints a summary table and writes `<out>/reconciliation-<date>.csv`
and `.json`. Exit status: 0 balanced, 1 discrepancies found, 3 file rejected (nothing written),
2 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from rich.console import Console

from actors.reconciler.fileformat import SettlementFileError
from cluster.config import Config, ConfigError, load_config

EXIT_BALANCED, EXIT_DISCREPANCIES, EXIT_REJECTED = 0, 1, 3


def add_reconcile_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("reconcile", help="reconcile a business day against the bank's settlement file")
    parser.add_argument("--date", required=True, type=_date, help="business date YYYY-MM-DD (UTC)")
    parser.add_argument("--file", type=Path, help="the bank's settlement file (default: banksim writes it)")
    parser.add_argument("--out", type=Path, help="report folder (default <data dir>/reports/reconciliation)")
    parser.add_argument("--merchant", action="append",
                        help="only this merchant (repeatable): filters the file and the ledger")
    parser.add_argument("--data-dir")
    parser.set_defaults(func=cmd_reconcile)


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date YYYY-MM-DD") from None


def _config(args: argparse.Namespace) -> Config:
    config = load_config()
    if getattr(args, "data_dir", None):
        config = config.with_overrides(data_dir=Path(args.data_dir).expanduser().resolve())
    return config


def _stack(config: Config) -> dict[str, str]:
    from cluster.stack import run_file

    path = run_file(config)
    return dict(json.loads(path.read_text())) if path.exists() else {}


def cmd_reconcile(args: argparse.Namespace) -> int:
    config = _config(args)
    stack = _stack(config)
    dsn = config.ledger_dsn or stack.get("ledger_dsn")
    if not dsn:
        raise ConfigError(f"no ledger to reconcile: paygate is not running with data dir {config.data_dir} "
                          "and PAYGATE_LEDGER_DSN is not set")
    out = args.out or config.data_dir / "reports" / "reconciliation"
    console = Console()
    file = args.file
    if file is None:
        journal = Path(stack.get("bank_journal") or config.data_dir / "banksim" / "journal.sqlite3")
        if not journal.exists():
            raise ConfigError(f"no --file given and no banksim journal at {journal}")
        from banksim.settlement import write_settlement_file

        suffix = "" if not args.merchant else "-filtered"
        file = write_settlement_file(journal, args.date, Path(out) / f"settlement-{args.date}{suffix}.csv",
                                     merchants=args.merchant)
        console.print(f"banksim wrote the settlement file {file}")
    try:
        return asyncio.run(_reconcile(dsn, file, args.date, args.merchant, Path(out), console))
    except SettlementFileError as error:
        print(f"paygate: settlement file {file} rejected, nothing was written: {error}", file=sys.stderr)
        return EXIT_REJECTED


async def _reconcile(dsn: str, file: Path, business_date: date, merchants: Sequence[str] | None, out: Path,
                     console: Console) -> int:
    from actors.reconciler.engine import reconcile
    from actors.reconciler.fileformat import read_settlement
    from actors.reconciler.report import print_summary, write_reports
    from cluster.db import create_pool
    from cluster.migrate import apply_migrations

    settlement = read_settlement(file, expected_date=business_date)  # verified before any connection
    await apply_migrations(dsn, "ledger")
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        outcome = await reconcile(pool, settlement, merchants=merchants)
    finally:
        await pool.close()
    print_summary(outcome, console)
    csv_path, json_path = write_reports(outcome, out)
    console.print(f"reports: {csv_path}\n         {json_path}")
    return EXIT_BALANCED if outcome.run["status"] == "balanced" else EXIT_DISCREPANCIES
