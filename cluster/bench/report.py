"""The run's report: one JSON document (written to the results dir) and the tables printed from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.bench.loadgen import LoadResult
from cluster.bench.monitor import Usage
from cluster.bench.stats import Recorder

GIB = 1024**3


def throughput(load: LoadResult, rec: Recorder, rate: float) -> dict[str, Any]:
    wall = max(load.wall_s, 1e-9)
    return {"offered_payments_per_s": rate, "payments_started": load.started, "payments_ok": rec.payments_ok,
            "payments_failed": rec.payments_failed, "dropped_arrivals": rec.dropped, "requests": rec.requests,
            "wall_s": round(load.wall_s, 2), "schedule_s": round(load.schedule_s, 2),
            "payments_per_s": round(rec.payments_ok / wall, 1), "requests_per_s": round(rec.requests / wall, 1),
            "steady_payments_per_s": steady(rec, load.schedule_s), "connections_opened": load.connections_opened}


def steady(rec: Recorder, schedule_s: float) -> float | None:
    """Mean completions per second over the seconds wholly inside the arrival window, the first
    one left out (warm-up): what the stack kept up with, without the tail of the last requests."""
    inner = [s.payments for s in rec.seconds[1:max(1, int(schedule_s))]]
    return round(sum(inner) / len(inner), 1) if inner else None


def resources(usage: Usage | None, load: LoadResult, receiver_cpu_s: float | None) -> dict[str, Any]:
    wall = max(load.wall_s, 1e-9)
    out: dict[str, Any] = {"client_cpu_s": round(load.client_cpu_s, 2),
                           "client_cpu_pct_of_core": round(100 * load.client_cpu_s / wall, 1),
                           "receiver_cpu_s": None if receiver_cpu_s is None else round(receiver_cpu_s, 2)}
    if usage is None:
        return {**out, "stack_peak_rss_bytes": None, "note": "remote stack: memory and CPU not measured"}
    cpu, busy = usage.machine_cpu_pct, usage.machine_busy_cpu_s
    mean = min(100.0, 100 * busy / ((os.cpu_count() or 1) * max(usage.window_s, 1e-9)))
    others = busy - usage.stack_cpu_s - load.client_cpu_s - (receiver_cpu_s or 0)
    return {**out, "stack_peak_rss_bytes": usage.peak_rss_bytes, "stack_peak_pss_bytes": usage.peak_pss_bytes,
            "stack_processes": usage.processes, "stack_cpu_s": usage.stack_cpu_s,
            "stack_cpu_s_by_component": usage.cpu_by_component, "stack_idle_cores": usage.idle_cores,
            "stack_cpu_pct_of_core": round(100 * usage.stack_cpu_s / max(usage.window_s, 1e-9), 1),
            "machine_cpus": os.cpu_count(), "machine_cpu_pct_mean": round(mean, 1), "machine_busy_cpu_s": busy,
            "machine_cpu_pct_max": max(cpu) if cpu else None,
            # CPU the machine spent on anything but the stack and the bench (other tenants, the kernel)
            "other_cpu_s": round(max(0.0, others), 1)}


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    base, tp = report.get("baseline"), report["throughput"]
    if not base:
        return {}
    ceiling = base["http_ceiling"]["per_s"] or None
    tps = base["pgbench"]["tps"] or None
    same = base["http_same_rate"]["latency_ms"]
    mine = report["latency"]["overall"]["latency_ms"]

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {"payments_per_s / baseline_ceiling_per_s": div(tp["payments_per_s"], ceiling),
            "requests_per_s / baseline_ceiling_per_s": div(tp["requests_per_s"], ceiling),
            "payments_per_s / pgbench_tps": div(tp["payments_per_s"], tps),
            "p50 / baseline_p50_same_rate": div(mine.get("p50"), same.get("p50")),
            "p99 / baseline_p99_same_rate": div(mine.get("p99"), same.get("p99"))}


def write(report: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def _pct(cores: float | None) -> str:
    return "not measured" if cores is None else f"{100 * cores:.0f}% of a core"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _summary_table(r: dict[str, Any]) -> Table:
    tp, res, meta = r["throughput"], r["resources"], r["meta"]
    t = Table(title=f"paygate bench: {meta['scenario']} at {meta['rate']:g} payments/s", show_header=False)
    rss = res.get("stack_peak_rss_bytes")
    rows = [
        ("payments/s (ok)", f"{tp['payments_per_s']:.1f} over the run, {tp['steady_payments_per_s']} steady  "
                            f"({tp['payments_ok']} ok, {tp['payments_failed']} failed, "
                            f"{tp['dropped_arrivals']} dropped)"),
        ("requests/s", f"{tp['requests_per_s']:.1f}  ({tp['requests']} in {tp['wall_s']} s)"),
        ("stack peak RSS", "n/a (remote)" if rss is None else
         f"{rss / GIB:.2f} GiB RSS sum, {res['stack_peak_pss_bytes'] / GIB:.2f} GiB PSS, "
         f"{res['stack_processes']} processes"),
        ("stack CPU", "n/a" if rss is None else f"{res['stack_cpu_s']} s ({res['stack_cpu_pct_of_core']}% of a core; "
                                               f"idle before the load: {_pct(res['stack_idle_cores'])}); "
                                               f"machine {res['machine_cpu_pct_mean']}% busy on average over "
                                               f"{res['machine_cpus']} cores, {res['other_cpu_s']} s of it "
                                               "neither the stack's nor the bench's"),
        ("stack CPU by part", "n/a" if rss is None else ", ".join(
            f"{name} {seconds:g}" for name, seconds in list(res["stack_cpu_s_by_component"].items())[:8])),
        ("client CPU", f"load {res['client_cpu_s']} s ({res['client_cpu_pct_of_core']}% of a core), "
                       f"webhook receiver {res['receiver_cpu_s']} s"),
        ("python", _python(meta)),
    ]
    warmup = r.get("warmup")
    if warmup:
        lat = warmup["latency_ms"]
        rows.insert(0, ("warm-up (not above)", f"{warmup['seconds']:g} s first: {warmup['payments_ok']} payments ok, "
                                               f"{warmup['payments_failed']} failed, {warmup['dropped_arrivals']} "
                                               f"dropped; all requests p50 {_ms(lat.get('p50'))}, p99 "
                                               f"{_ms(lat.get('p99'))}, max {_ms(lat.get('max'))} ms; audited"))
    for name, value in rows:
        t.add_row(name, value)
    return t


def _python(meta: dict[str, Any]) -> str:
    py = meta.get("python")
    if not py:
        return "not recorded"
    whose = "the bench's and the stack's" if meta.get("stack_started_by_bench") else "the bench's"
    return f"{py['implementation']} {py['version']} installed under {py['base_prefix']} ({whose})"


def _latency_table(r: dict[str, Any]) -> Table:
    t = Table(title="latency per endpoint (ms, HDR histogram; first request timed from its due time)")
    for column in ("endpoint", "count", "/s", "p50", "p90", "p99", "p99.9", "max", "statuses"):
        t.add_column(column, justify="left" if column in ("endpoint", "statuses") else "right")
    for name, s in r["latency"].items():
        lat = s["latency_ms"]
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(s["statuses"].items()))
        t.add_row(name, str(s["count"]), f"{s['per_s']:.0f}", *(_ms(lat.get(k)) for k in ("p50", "p90", "p99",
                  "p99.9", "max")), statuses)
    return t


def _errors_table(r: dict[str, Any]) -> Table:
    t = Table(title="errors")
    t.add_column("count", justify="right")
    t.add_column("error")
    for name, count in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:15]:
        t.add_row(str(count), name)
    return t


def _audit_table(audit: dict[str, Any]) -> Table:
    verdict = "PASSED" if audit["ok"] else "FAILED"
    t = Table(title=f"audit {verdict} (drained in {audit['drain_s']} s{'' if audit['drained'] else ', TIMED OUT'})")
    for column in ("check", "result", "checked", "breaches", "first breach"):
        t.add_column(column)
    for c in audit["checks"]:
        result = "skipped" if c["skipped"] else "ok" if c["ok"] else "[bold red]BREACH[/]"
        first = c["examples"][0] if c["examples"] else None
        detail = c["skipped"] or (f"{first['subject']}: {first['message']}" if first else "")
        t.add_row(c["name"], result, str(c["checked"]), str(c["breaches"]), detail)
    return t


def _baseline_table(r: dict[str, Any]) -> Table:
    b, ratio = r["baseline"], r["ratios"]
    t = Table(title="baseline: this machine's ceiling for the same shape of work", show_header=False)
    same, ceil, pg = b["http_same_rate"], b["http_ceiling"], b["pgbench"]
    lat = ceil["latency_ms"]
    t.add_row("Starlette+asyncpg insert, flat out", f"{ceil['per_s']:.0f} req/s, p50 {_ms(lat.get('p50'))} ms, "
              f"p99 {_ms(lat.get('p99'))} ms ({ceil['workers']} connections)")
    t.add_row(f"same, open-loop at {same['rate']:g} req/s", f"p50 {_ms(same['latency_ms'].get('p50'))} ms, "
              f"p99 {_ms(same['latency_ms'].get('p99'))} ms, {same['errors']} errors")
    t.add_row("pgbench -N", f"{pg['tps']} tps, {pg['latency_avg_ms']} ms avg ({pg['clients']} clients)")
    for name, value in ratio.items():
        t.add_row(name, "-" if value is None else f"{value:.3f}")
    return t


def _profile_table(r: dict[str, Any]) -> Table:
    profile, payments = r["profile"], max(1, r["throughput"]["payments_ok"])
    cpu = r["resources"].get("stack_cpu_s_by_component") or {}
    t = Table(title="where the time goes: CPU per payment by part, and its Python samples holding the GIL "
                    f"(py-spy; stacks in {profile['dir']})")
    for column in ("part", "CPU ms/payment", "samples", "by package", "leading functions"):
        t.add_column(column, justify="left" if column in ("part", "by package", "leading functions") else "right")
    for name, part in sorted(profile["parts"].items(), key=lambda kv: -cpu.get(kv[0], 0.0)):
        seconds = cpu.get(name)
        t.add_row(name.removeprefix("ray::"), "-" if seconds is None else f"{1000 * seconds / payments:.2f}",
                  str(part["samples"]), ", ".join(f"{p['name']} {100 * p['share']:.0f}%" for p in part["packages"][:4]),
                  "\n".join(f"{100 * f['share']:.0f}% {f['name']}" for f in part["top_functions"][:3]))
    for where, why in profile["errors"].items():
        t.add_row(where, "-", "-", "[red]not profiled[/]", why)
    return t


def _statements_table(statements: dict[str, Any]) -> Table:
    if "error" in statements:
        t = Table(title="ledger PostgreSQL by statement: not measured")
        t.add_column("why")
        t.add_row(str(statements["error"]))
        return t
    t = Table(title=f"ledger PostgreSQL by statement (pg_stat_statements): {statements.get('ms_per_payment')} ms "
                    "of statement time per payment, the leading statements")
    for column in ("ms/payment", "share", "calls/payment", "rows/call", "WAL records/payment", "statement"):
        t.add_column(column, justify="left" if column == "statement" else "right")
    for s in statements.get("top", []):
        t.add_row(f"{s['ms_per_payment']:.3f}", f"{100 * s['share']:.0f}%", f"{s['calls_per_payment']:.2f}",
                  f"{s['rows_per_call']:.1f}", f"{s['wal_records_per_payment']:.1f}", s["query"])
    return t


def _webhook_line(facts: dict[str, Any]) -> str:
    receiver, lag = facts.get("receiver"), facts.get("webhook_lag_s") or {}
    if not receiver:
        return "webhooks: no receiver"
    duplicates = receiver["deliveries"] - receiver["unique_events"]
    return (f"webhooks: {receiver['unique_events']} events received ({duplicates} duplicate deliveries, "
            f"{receiver['bad_signatures']} bad signatures); event -> delivery lag p50 {lag.get('p50')} s, "
            f"p99 {lag.get('p99')} s, max {lag.get('max')} s (whole-second event times); receiver CPU "
            f"{facts.get('receiver_cpu_s_with_drain')} s with the drain")


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)  # a log file: do not squeeze the tables
    console.print(_summary_table(report))
    console.print(_latency_table(report))
    if report["errors"]:
        console.print(_errors_table(report))
    if report.get("baseline"):
        console.print(_baseline_table(report))
    if report.get("profile"):
        console.print(_profile_table(report))
        console.print(_statements_table(report["profile"].get("ledger_statements") or {}))
    if report.get("audit"):
        console.print(_audit_table(report["audit"]))
        console.print(_webhook_line(report["audit"].get("facts") or {}), highlight=False)
    for name in ("json", "plot"):
        if report["files"].get(name):
            console.print(f"{name}: {report['files'][name]}")
