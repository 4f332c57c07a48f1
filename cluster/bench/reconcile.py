"""Benchmark: reconcile a settlement file of 100,000 records against a ledger holding them.

    python -m cluster.bench.reconcile [--records 100000] [--refund-share 0.1] [--dsn postgresql://…]

Without `--dsn` it starts a private embedded PostgreSQL in a temporary folder (never a running
paygate's ledger), applies the ledger migrations, bulk-loads the ledger with COPY (merchants,
captured payments, succeeded refunds), writes the matching settlement file with banksim's writer,
then times what `paygate reconcile` does: parse and verify the file, then match, classify and
store the run (one transaction). It reconciles twice: the first run, then a rerun that replaces
it. The target is under 30 s for 100,000 records; the figure is printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from actors.reconciler.engine import reconcile
from actors.reconciler.fileformat import read_settlement
from banksim.settlement import SettlementRecord, render
from cluster.db import create_pool
from cluster.migrate import apply_migrations

TARGET_S = 30.0


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


async def load_ledger(dsn: str, records: int, refund_share: float, day: date,
                      seed: int = 7) -> list[SettlementRecord]:
    """COPY a day of captures and refunds into the ledger; return the bank's records for them."""
    rng = random.Random(seed)
    refunds = int(records * refund_share)
    captures = records - refunds
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    merchants = [f"acct_bench{i:03d}" for i in range(20)]
    payments: list[tuple[Any, ...]] = []
    bank: list[SettlementRecord] = []
    settled_at = _iso(start + timedelta(days=1))
    for n in range(captures):
        merchant = merchants[n % len(merchants)]
        amount = rng.randint(100, 500_000)
        at = start + timedelta(milliseconds=int(n * 86_000_000 / captures))
        auth_rrn, capture_rrn = f"{2 * n + 1:012d}", f"{2 * n + 2:012d}"
        refunded = amount // 2 if n < refunds else 0
        payments.append((f"pi_bench{n:09d}", merchant, amount, "usd", "succeeded", "automatic",
                         f"pi_bench{n:09d}_secret", int(at.timestamp()), amount, refunded, auth_rrn, capture_rrn,
                         at + timedelta(milliseconds=5), f"ch_bench{n:09d}"))
        bank.append(SettlementRecord("capture", capture_rrn, capture_rrn[-6:], "A00001", auth_rrn, amount, "usd",
                                     merchant, _iso(at), settled_at))
    refund_rows: list[tuple[Any, ...]] = []
    for n in range(refunds):
        pid, merchant, amount = payments[n][0], payments[n][1], payments[n][9]
        at = start + timedelta(milliseconds=int(n * 86_000_000 / max(refunds, 1)) + 200_000)
        rrn = f"{10**11 + n:012d}"
        refund_rows.append((f"re_bench{n:09d}", merchant, pid, f"ch_bench{n:09d}", amount, "usd", "succeeded",
                            rrn[-6:], rrn, int(at.timestamp()), at + timedelta(milliseconds=5)))
        bank.append(SettlementRecord("refund", rrn, rrn[-6:], "R00001", payments[n][10], amount, "usd", merchant,
                                     _iso(at), settled_at))
    bank.sort(key=lambda r: (r.transaction_at, r.rrn))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table("merchants", columns=("id", "name"),
                                         records=[(m, f"bench {m}") for m in merchants])
        await conn.copy_records_to_table("payment_orders", columns=(
            "id", "merchant_id", "amount", "currency", "status", "capture_method", "client_secret", "created",
            "amount_received", "amount_refunded", "auth_rrn", "capture_rrn", "captured_at", "latest_charge"),
            records=payments)
        await conn.copy_records_to_table("refunds", columns=(
            "id", "merchant_id", "payment_id", "charge_id", "amount", "currency", "status", "stan", "rrn", "created",
            "updated_at"), records=refund_rows)
        await conn.execute("ANALYZE payment_orders; ANALYZE refunds")
    finally:
        await conn.close()
    return bank


async def run(dsn: str, records: int, refund_share: float, workdir: Path) -> dict[str, Any]:
    day = datetime.now(UTC).date() - timedelta(days=1)
    await apply_migrations(dsn, "ledger")
    started = time.perf_counter()
    bank = await load_ledger(dsn, records, refund_share, day)
    loaded = time.perf_counter()
    path = workdir / f"settlement-{day}.csv"
    lines = render(day, bank, cutoff=datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1))
    path.write_text("".join(line + "\n" for line in lines))
    written = time.perf_counter()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        timings = []
        outcome = None
        for _ in range(2):
            t0 = time.perf_counter()
            settlement = read_settlement(path, expected_date=day)
            t1 = time.perf_counter()
            outcome = await reconcile(pool, settlement)
            t2 = time.perf_counter()
            timings.append({"parse_s": round(t1 - t0, 3), "match_and_store_s": round(t2 - t1, 3),
                            "total_s": round(t2 - t0, 3)})
        assert outcome is not None
    finally:
        await pool.close()
    run_info = outcome.run
    return {
        "records": len(bank), "file_bytes": path.stat().st_size, "ledger_load_s": round(loaded - started, 3),
        "file_write_s": round(written - loaded, 3), "first_run": timings[0], "rerun": timings[1],
        "status": run_info["status"], "counts": run_info["counts"], "attempts": run_info["attempts"],
        "target_s": TARGET_S, "within_target": max(t["total_s"] for t in timings) < TARGET_S,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cluster.bench.reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--refund-share", type=float, default=0.1)
    parser.add_argument("--dsn", help="an empty scratch database (default: a private embedded PostgreSQL)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="paygate-bench-reconcile-"))
    server = None
    try:
        dsn = args.dsn
        if not dsn:
            from cluster.postgres import EmbeddedPostgres
            from cluster.procs import free_port

            server = EmbeddedPostgres("bench-ledger", workdir / "pg", free_port(), workdir / "postgres.log").start()
            dsn = server.dsn
        result = asyncio.run(run(dsn, args.records, args.refund_share, workdir))
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
