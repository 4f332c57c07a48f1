"""`paygate bench` (also `python -m cluster.bench`): arguments, and the exit code.

Exit codes: 0 the run passed its audit (or --no-audit); 1 the audit found a breach; 2 bad usage or
the stack could not be reached or started.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # the heavy modules load only when a bench runs, not for `paygate --help`
    from cluster.bench.launch import Target
    from cluster.bench.runner import BenchOptions

SCENARIO_NAMES = ("checkout", "auth-capture", "refund-mix", "decline-mix", "idempotent-retry")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=SCENARIO_NAMES, default="checkout",
                   help="shape of each payment (default checkout: tokenize, then create-and-confirm)")
    p.add_argument("--rate", type=float, default=100.0, help="payments started per second, open loop (default 100)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals (default 10)")
    p.add_argument("--count", type=int, help="payments in total instead of --duration")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="seconds of load at --rate before the measured load, left out of the figures "
                        "(still audited); default 0")
    p.add_argument("--concurrency", type=int, default=1024,
                   help="connections (requests in flight) at most (1024)")
    p.add_argument("--merchants", type=int, default=4, help="bench merchants the payments spread over (4)")
    p.add_argument("--bank-latency-ms", type=int, default=0, help="banksim answer delay (local stack only)")
    p.add_argument("--url", help="a running paygate instead of starting a local stack")
    p.add_argument("--key", help="with --url: bench as this merchant (sk_test_…) instead of creating merchants")
    p.add_argument("--admin-key", help="with --url: operator key, to create merchants and raise their limits")
    p.add_argument("--ledger-dsn", help="with --url: the ledger PostgreSQL, for the audit")
    p.add_argument("--bank-journal", help="with --url: banksim's journal (SQLite path), for the audit")
    p.add_argument("--data-dir", help="with --url: the `paygate up` data dir to read DSNs and the admin key from")
    p.add_argument("--results", type=Path, help="directory for report.json and bench.png (default bench-results/…)")
    p.add_argument("--no-audit", action="store_true", help="skip the audit (the run then always exits 0)")
    p.add_argument("--baseline", action="store_true", help="also measure this machine's ceiling (see README)")
    p.add_argument("--no-webhooks", action="store_true", help="no webhook endpoint: measure without deliveries")
    p.add_argument("--drain-timeout", type=float,
                   help="seconds the audit waits for the stack to drain (default: 120, or 3x the run if longer)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as timed out")
    p.add_argument("--webhook-host", default="127.0.0.1", help="address the stack reaches the bench's receiver at")
    p.add_argument("--idle-probe", type=float, default=3.0,
                   help="seconds to measure the stack's CPU with no load before the run (0: skip; default 3)")
    p.add_argument("--profile", action="store_true",
                   help="sample the stack's Python processes with py-spy during the load (local stack only; "
                        "costs CPU, so read throughput from runs without it)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-data", action="store_true", help="keep the local stack's temporary data dir")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="drive real load at paygate, then audit the books",
                           description="Open-loop load at a fixed rate, per-endpoint latency, then an audit of the "
                                       "ledger against the bank's journal and the webhooks received.")
    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)


def _usage_error(message: str) -> NoReturn:
    print(f"paygate bench: {message}", file=sys.stderr)
    raise SystemExit(2)  # the exit code for bad usage (see above), not SystemExit(message)'s 1


def _target(args: argparse.Namespace) -> Target | None:
    from urllib.parse import urlsplit

    from cluster.bench.launch import Target, running_stack
    from cluster.bench.monitor import listener_pid, stack_root

    if not args.url:
        return None
    info = running_stack(args.url, args.data_dir)
    admin_key = args.admin_key
    if not admin_key and not args.key and info:
        admin_key = (Path(info["data_dir"]) / "secrets" / "admin_key").read_text().strip()
    if not admin_key and not args.key:
        _usage_error("--url needs --key or --admin-key (or --data-dir of a local `paygate up`)")
    parts = urlsplit(args.url)
    pid = listener_pid(parts.port or 80) if parts.hostname in ("127.0.0.1", "localhost", "::1") else None
    return Target(args.url.rstrip("/"), admin_key=admin_key, key=args.key,
                  ledger_dsn=args.ledger_dsn or info.get("ledger_dsn"),
                  bank_journal=args.bank_journal or info.get("bank_journal"),
                  stack_pid=stack_root(pid) if pid else None)


def options_from(args: argparse.Namespace, argv: list[str] | None = None) -> BenchOptions:
    from cluster.bench.runner import BenchOptions, open_files_for
    from cluster.procs import raise_open_file_limit

    if args.rate <= 0 or args.concurrency < 1 or args.merchants < 1 or (args.count is not None and args.count < 1):
        _usage_error("--rate, --concurrency, --merchants and --count must be positive")
    if args.warmup < 0:
        _usage_error("--warmup must not be negative")
    open_files = raise_open_file_limit(open_files_for(args.concurrency))
    if open_files < args.concurrency + 64:
        _usage_error(f"--concurrency {args.concurrency} needs more open files than this process may have "
                     f"({open_files}): lower it, or raise the hard limit (ulimit -Hn)")
    return BenchOptions(
        scenario=args.scenario, rate=args.rate, duration_s=args.duration, count=args.count, warmup_s=args.warmup,
        concurrency=args.concurrency, merchants=args.merchants, bank_latency_ms=args.bank_latency_ms,
        results_dir=args.results, audit=not args.no_audit, baseline=args.baseline, webhooks=not args.no_webhooks,
        drain_timeout_s=args.drain_timeout, request_timeout_s=args.timeout, seed=args.seed,
        idle_probe_s=args.idle_probe, profile=args.profile,
        progress=not args.quiet, keep_data=args.keep_data, webhook_host=args.webhook_host,
        command=shlex.join(["paygate", "bench", *(argv if argv is not None else sys.argv[2:])]),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from cluster.bench.launch import LaunchError
    from cluster.bench.provision import ProvisionError
    from cluster.bench.runner import run_bench

    options = options_from(args)
    try:
        result = run_bench(options, _target(args))
    except (LaunchError, ProvisionError) as error:
        print(f"paygate bench: {error}", file=sys.stderr)
        return 2
    if result.audit is not None and not result.audit.ok:
        failed = [c for c in result.audit.checks if not c.ok]
        print(f"paygate bench: AUDIT FAILED: {len(failed)} check(s) breached: "
              f"{', '.join(f'{c.name} ({len(c.breaches)})' for c in failed)}; details in {result.results_dir}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    options = options_from(args, argv if argv is not None else sys.argv[1:])
    from cluster.bench.runner import run_bench

    result = run_bench(options, _target(args))
    return 0 if result.ok else 1
