"""`run_bench`: the Python API behind `paygate bench`. Set up (stack, merchants, webhook receiver),
drive the load, measure the stack, audit, optionally measure the baseline, report.

    from cluster.bench.runner import BenchOptions, run_bench
    result = run_bench(BenchOptions(scenario="checkout", rate=200, duration_s=30))
    assert result.ok, result.report["audit"]
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from cluster.bench import provision, statements
from cluster.bench.audit import AuditResult, Scope, audit, resolve_merchants
from cluster.bench.book import Book
from cluster.bench.client import Endpoint, Pool
from cluster.bench.launch import LaunchedStack, Target
from cluster.bench.loadgen import Driver, Flow, LoadResult, Plan, drive
from cluster.bench.monitor import StackMonitor, Usage, cpu_seconds
from cluster.bench.profile import Profiler, profiled
from cluster.bench.progress import ProgressLine
from cluster.bench.receiver import ReceiverProcess
from cluster.bench.report import print_report, ratios, resources, throughput, write
from cluster.bench.scenarios import SCENARIOS
from cluster.bench.stats import Recorder
from cluster.config import load_config
from cluster.procs import raise_open_file_limit, schedule_as_batch
from cluster.runtime import tuned_gc


@dataclass
class BenchOptions:
    scenario: str = "checkout"
    rate: float = 100.0  # payments started per second (open loop)
    duration_s: float | None = 10.0
    count: int | None = None  # payments in total; wins over duration_s
    warmup_s: float = 0.0  # load at `rate` for this long first, left out of the figures (audited)
    concurrency: int = 1024  # connections (requests in flight) at most; see README, Load model
    merchants: int = 4
    bank_latency_ms: int = 0  # only for a stack the bench starts itself
    results_dir: Path | None = None
    audit: bool = True
    baseline: bool = False
    webhooks: bool = True
    drain_timeout_s: float | None = None  # default: max(120 s, 3 x the load's wall time)
    request_timeout_s: float = 30.0
    backlog: int | None = None  # payments in progress before arrivals are dropped (default rate x 10 s)
    seed: int = 1
    idle_probe_s: float = 3.0  # measure the stack's CPU with no load first (0: skip)
    progress: bool = True
    print_tables: bool = True
    keep_data: bool = False
    profile: bool = False  # py-spy on the stack's Python processes during the load (local stack only)
    webhook_host: str = "127.0.0.1"  # where the stack reaches the receiver (a remote stack needs a routable one)
    command: str = ""

    @property
    def total(self) -> int:
        if self.count is not None:
            return self.count
        return max(1, math.ceil(self.rate * (self.duration_s or 10.0)))

    @property
    def warmup_total(self) -> int:
        return math.ceil(self.rate * self.warmup_s) if self.warmup_s > 0 else 0


@dataclass
class BenchResult:
    report: dict[str, Any]
    audit: AuditResult | None
    book: Book
    scope: Scope | None
    results_dir: Path
    recorder: Recorder = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.audit is None or self.audit.ok


def open_files_for(concurrency: int) -> int:
    """What the client's connections need, with room for the receiver's and a local gateway's."""
    return 2 * concurrency + 256


def run_bench(options: BenchOptions, target: Target | None = None) -> BenchResult:
    """Run one bench; with no target, against a local stack started (and stopped) for it."""
    if options.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {options.scenario!r}; one of {', '.join(SCENARIOS)}")
    raise_open_file_limit(open_files_for(options.concurrency))  # a local stack started from here inherits it
    launched = None
    if target is None:
        if load_config().sched_batch:
            schedule_as_batch()  # the load and the receiver share the cores with the stack: under its policy
        # --profile also reads the ledger's time per statement, which needs pg_stat_statements loaded.
        launched = LaunchedStack(options.bank_latency_ms, options.keep_data,
                                 env={"PAYGATE_PG_STAT_STATEMENTS": "1"} if options.profile else None)
        if options.progress:
            print(f"paygate bench: starting a local stack in {launched.data_dir}", flush=True)
        target = launched.start()
    try:
        return _run(options, target)
    finally:
        if launched:
            launched.stop()


def _merchants(options: BenchOptions, target: Target, run_id: str) -> list[provision.Merchant]:
    if target.admin_key:
        return provision.create_merchants(target.base_url, target.admin_key, options.merchants, run_id)
    if target.key:
        return [provision.given_merchant(target.base_url, target.key)]
    raise provision.ProvisionError("need an admin key (to create merchants) or a merchant key")


def _run(options: BenchOptions, target: Target) -> BenchResult:
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    results_dir = options.results_dir or Path("bench-results") / f"{run_id}-{options.scenario}-{options.rate:g}"
    merchants = _merchants(options, target, run_id)
    receiver = ReceiverProcess(advertise=options.webhook_host).start() if options.webhooks else None
    try:
        if receiver:
            provision.add_webhook_endpoints(target.base_url, merchants, receiver.url)
            receiver.set_secrets({provision.webhook_path(m, i): str(m.webhook_secret)
                                  for i, m in enumerate(merchants)})
        since, loadavg = int(time.time()) - 1, os.getloadavg()
        monitor = StackMonitor(target.stack_pid, {receiver.pid} if receiver and receiver.pid else set())
        monitor.idle_probe(options.idle_probe_s)
        window = _Window(options, target, monitor, receiver, results_dir)
        # uvloop, and the stack's GC settings: the load generator shares the machine with the stack
        # under test (so does the baseline's, measured the same way). With the interpreter's default
        # thresholds it collected 523 times in a 30 s run at rate 1,000, four of them full
        # collections of the growing book at ~37 ms each, stalls its latencies would have counted.
        with tuned_gc():
            load, recorder, book, warmup = uvloop.run(_load(options, merchants, target, run_id, window.start))
        monitor.mark_load_end()
        profile = window.profiler.stop() if window.profiler else None
        if profile is not None:
            profile["ledger_statements"] = _ledger_statements(target, recorder.payments_ok, window.statements_error)
        receiver_cpu = cpu_seconds(receiver.pid) - window.receiver_cpu0 if receiver else None
        scope, audit_result = _audit(options, target, merchants, book, receiver, since, load.wall_s)
        usage = monitor.stop() if target.stack_pid else None
        if receiver and audit_result:
            audit_result.facts["receiver_cpu_s_with_drain"] = round(cpu_seconds(receiver.pid) - window.receiver_cpu0,
                                                                    2)
    finally:
        if receiver:
            receiver.stop()
            provision.remove_webhook_endpoints(target.base_url, merchants)
    report = _report(options, target, load, recorder, usage, receiver_cpu, audit_result)
    report["warmup"] = warmup
    report["meta"]["loadavg_before"] = loadavg  # other tenants of the machine show here
    if options.profile:
        report["profile"] = profile or {"dir": None, "parts": {}, "errors": {"stack": "remote: not profiled"}}
    if options.baseline and target.ledger_dsn:
        _add_baseline(report, options, target, results_dir)
    _write(report, recorder, results_dir, options)
    return BenchResult(report, audit_result, book, scope, results_dir, recorder)


def _ledger_statements(target: Target, payments: int, reset_error: str | None) -> dict[str, Any]:
    if not target.ledger_dsn:
        return {"error": "no ledger DSN"}
    if reset_error:
        return {"error": reset_error}
    return statements.collect(target.ledger_dsn, payments)


@dataclass
class _Window:
    """What is measured over the load itself, after any warm-up: the stack's CPU (the monitor's
    window), the py-spy profile, the ledger's statement counters, the receiver's CPU."""

    options: BenchOptions
    target: Target
    monitor: StackMonitor
    receiver: ReceiverProcess | None
    results_dir: Path
    profiler: Profiler | None = None
    statements_error: str | None = None
    receiver_cpu0: float = 0.0

    def start(self) -> None:
        self.monitor.start()
        if self.options.profile and self.target.stack_pid is not None:
            self.profiler = Profiler(profiled(self.monitor.components()), self.results_dir / "profiles").start()
            if self.target.ledger_dsn:
                self.statements_error = statements.reset(self.target.ledger_dsn)
        self.receiver_cpu0 = cpu_seconds(self.receiver.pid if self.receiver else None)


async def _load(options: BenchOptions, merchants: list[provision.Merchant], target: Target, run_id: str,
                start_measuring: Callable[[], None]) -> tuple[LoadResult, Recorder, Book, dict[str, Any] | None]:
    pool = Pool(Endpoint.parse(target.base_url), options.concurrency, options.request_timeout_s)
    recorder, book = Recorder(0.0), Book()
    backlog = options.backlog or max(1000, int(options.rate * 10))
    flow = SCENARIOS[options.scenario]
    line = ProgressLine(recorder, options.total) if options.progress else None
    try:
        warmup = await _warm_up(options, flow, merchants, pool, book, run_id, backlog) if options.warmup_total else None
        # In a thread: starting the window runs blocking calls (and an event loop of its own).
        await asyncio.get_running_loop().run_in_executor(None, start_measuring)
        if line:
            line.start()
        driver = Driver(pool, recorder, book, options.seed, run_id)
        result = await drive(Plan(options.rate, options.total, backlog), flow, merchants, driver,
                             line.tick if line else None)
    finally:
        if line:
            line.stop()
        pool.close()
    return result, recorder, book, warmup


async def _warm_up(options: BenchOptions, flow: Flow, merchants: list[provision.Merchant], pool: Pool, book: Book,
                   run_id: str, backlog: int) -> dict[str, Any]:
    """The same load for `warmup_s` first, on the same connections, into the same books (so it is
    audited), with its own recorder and idempotency keys; the measured load starts once it has
    finished. Returns what it measured, for the report."""
    total = options.warmup_total
    if options.progress:
        print(f"paygate bench: warming up: {total} payments at {options.rate:g}/s, not measured…", flush=True)
    recorder = Recorder(0.0)
    load = await drive(Plan(options.rate, total, backlog), flow, merchants,
                       Driver(pool, recorder, book, options.seed + 1, f"{run_id}-warmup"))
    return {"seconds": options.warmup_s, **throughput(load, recorder, options.rate),
            "latency_ms": recorder.overall.summary(load.wall_s)["latency_ms"], "errors": dict(recorder.errors)}


def _audit(options: BenchOptions, target: Target, merchants: list[provision.Merchant], book: Book,
           receiver: ReceiverProcess | None, since: int, wall_s: float) -> tuple[Scope | None, AuditResult | None]:
    if not options.audit:
        return None, None
    ids = [m.id for m in merchants if m.id]
    if not ids and target.ledger_dsn and book.payments:
        ids = asyncio.run(resolve_merchants(target.ledger_dsn, list(book.payments)))
    scope = Scope(ids, since, target.ledger_dsn, target.bank_journal)
    if options.progress:
        print("paygate bench: auditing (waiting for the outbox and webhooks to drain)…", flush=True)
    received = (lambda summary: receiver.stats(summary)) if receiver else None
    timeout = options.drain_timeout_s if options.drain_timeout_s is not None else max(120.0, 3 * wall_s)
    say = (lambda line: print(line, flush=True)) if options.progress else None
    return scope, asyncio.run(audit(scope, book, received, timeout, say))


def rerun_audit(result: BenchResult, drain_timeout_s: float = 5.0) -> AuditResult:
    """Audit a finished run again (after the receiver is gone: webhook checks are skipped)."""
    assert result.scope is not None
    return asyncio.run(audit(result.scope, result.book, None, drain_timeout_s))


def _report(options: BenchOptions, target: Target, load: LoadResult, recorder: Recorder, usage: Usage | None,
            receiver_cpu: float | None, audit_result: AuditResult | None) -> dict[str, Any]:
    meta = {k: v for k, v in asdict(options).items() if k not in ("progress", "print_tables")}
    meta.update(target=target.base_url, stack_started_by_bench=target.started_here, total=options.total,
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"), python=_interpreter())
    latency = {name: s.summary(load.wall_s) for name, s in sorted(recorder.endpoints.items())}
    latency["overall"] = recorder.overall.summary(load.wall_s)
    return {"meta": meta, "throughput": throughput(load, recorder, options.rate), "latency": latency,
            "errors": dict(recorder.errors), "resources": resources(usage, load, receiver_cpu),
            "audit": audit_result.to_json() if audit_result else None, "timeline": recorder.timeline(),
            "files": {}}


def _interpreter() -> dict[str, str]:
    """The bench's Python, which is the stack's too when the bench starts it (every process of a
    local stack runs `sys.executable`). Its build moves the figures: see the README's *Benchmarks*."""
    return {"implementation": platform.python_implementation(), "version": platform.python_version(),
            "base_prefix": sys.base_prefix, "executable": sys.executable}


def _add_baseline(report: dict[str, Any], options: BenchOptions, target: Target, results_dir: Path) -> None:
    from cluster.bench.baseline import run_baseline

    if options.progress:
        print("paygate bench: measuring the baseline (Starlette+asyncpg insert endpoint, pgbench -N)…", flush=True)
    assert target.ledger_dsn
    results_dir.mkdir(parents=True, exist_ok=True)
    rate = max(1.0, report["throughput"]["requests_per_s"])
    seconds = min(10.0, max(3.0, report["throughput"]["wall_s"]))
    report["baseline"] = run_baseline(target.ledger_dsn, rate, seconds, options.concurrency, str(results_dir))
    report["ratios"] = ratios(report)


def _write(report: dict[str, Any], recorder: Recorder, results_dir: Path, options: BenchOptions) -> None:
    from cluster.bench.plot import plot

    report["files"]["json"] = str(results_dir / "report.json")
    png = plot(report, {name: s.histogram for name, s in recorder.endpoints.items()}, results_dir / "bench.png")
    report["files"]["plot"] = str(png) if png else None
    write(report, results_dir)
    if options.print_tables:
        print_report(report)
