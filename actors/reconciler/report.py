"""Reports of a run: a CSV of every item, a JSON document (the run, its discrepancies, what was
settled from the file, what is still in doubt), and a rich summary for the terminal."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from actors.reconciler.classify import CLASSIFICATIONS
from actors.reconciler.engine import Outcome

CSV_COLUMNS = ("seq", "classification", "type", "rrn", "line", "merchant_id", "object_id", "settlement_amount",
               "settlement_currency", "ledger_amount", "ledger_currency", "transaction_at", "ledger_at", "note",
               "resolution", "resolved_by_run")


def report_stem(run: dict[str, Any]) -> str:
    scope = "" if run["scope"] == "all" else "-" + run["scope"].split(":", 1)[1]
    return f"reconciliation-{run['business_date']}{scope}"


def write_reports(outcome: Outcome, out_dir: str | Path) -> tuple[Path, Path]:
    """`<out>/reconciliation-<date>[-<scope>].csv` (every item) and `.json`; returns both paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = report_stem(outcome.run)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    with open(csv_path.with_suffix(".csv.part"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for seq, item in enumerate(outcome.items, start=1):
            writer.writerow({"seq": seq, **item.as_dict()})
    csv_path.with_suffix(".csv.part").replace(csv_path)
    document = {**outcome.summary(discrepancy_limit=10**9)}
    json_path.with_suffix(".json.part").write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    json_path.with_suffix(".json.part").replace(json_path)
    return csv_path, json_path


def _money(amount: int | None) -> str:
    return "" if amount is None else f"{amount:,}"


def summary_renderable(run: dict[str, Any], discrepancies: Iterable[dict[str, Any]], limit: int = 20) -> Group:
    title = (f"Reconciliation {run['business_date']} ({run['scope']}): {run['status'].upper()}  "
             f"run {run['id']}, attempt {run['attempts']}, file {run['file']['name']} "
             f"({run['records']} of {run['file']['records']} records)")
    counts = Table()
    counts.add_column("classification")
    counts.add_column("items", justify="right")
    for name in CLASSIFICATIONS:
        style = "green" if name == "matched" else ("red" if run["counts"].get(name) else "dim")
        counts.add_row(name, str(run["counts"].get(name, 0)), style=style)
    totals = Table(title="Totals per currency (minor units)", title_justify="left")
    for column in ("currency", "settlement records", "settlement captured", "settlement refunded",
                   "settlement net", "ledger records", "ledger net", "difference"):
        totals.add_column(column, justify="left" if column == "currency" else "right")
    for currency, entry in run["totals"].items():
        s, led = entry["settlement"], entry["ledger"]
        totals.add_row(currency, str(s["count"]), _money(s["captured"]), _money(s["refunded"]), _money(s["net"]),
                       str(led["count"]), _money(led["net"]), _money(entry["difference"]),
                       style="red" if entry["difference"] else None)
    parts: list[Any] = [Text(title, style="bold red" if run["discrepancies"] else "bold green"), counts, totals]
    rows = list(discrepancies)
    if rows:
        detail = Table(title=f"Discrepancies (first {min(limit, len(rows))} of {len(rows)})", title_justify="left")
        for column in ("classification", "type", "rrn", "line", "object", "settlement", "ledger", "note"):
            detail.add_column(column)
        for item in rows[:limit]:
            detail.add_row(item["classification"], item["type"], item["rrn"], str(item["line"] or ""),
                           item["object_id"] or "",
                           f"{_money(item['settlement_amount'])} {item['settlement_currency'] or ''}".strip(),
                           f"{_money(item['ledger_amount'])} {item['ledger_currency'] or ''}".strip(),
                           item["note"] or "")
        parts.append(detail)
    return Group(*parts)


def print_summary(outcome: Outcome, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_renderable(outcome.run, outcome.discrepancies()))
    for r in outcome.resolutions:
        console.print(f"settled from the file: {r.kind} {r.object_id} (rrn {r.rrn}): {r.action}")
    for u in outcome.unresolved:
        console.print(f"still in doubt (left to the recovery sweep): {u['type']} {u['object_id']} "
                      f"(rrn {u['rrn']}, {u['state']})")
