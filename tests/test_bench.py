"""`paygate bench` against the shared test stack, through its Python API: short runs of each
scenario pass their audit with sane numbers, and the audit catches a corrupted ledger row and
names exactly that payment."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import stripe

from actors.events.signing import sign
from cluster.bench import statements
from cluster.bench.baseline import run_baseline
from cluster.bench.launch import Target
from cluster.bench.profile import Part, Profiler, package_of
from cluster.bench.receiver import ReceiverProcess, verify
from cluster.bench.runner import BenchOptions, BenchResult, rerun_audit, run_bench
from cluster.stack import StackInfo
from tests.bank import ledger


def _target(info: StackInfo) -> Target:
    # The stack runs inside this pytest process: its process tree is ours (the bench excludes itself).
    return Target(info.base_url, admin_key=info.admin_key, ledger_dsn=info.ledger_dsn,
                  bank_journal=info.bank_journal, stack_pid=os.getpid())


def _bench(info: StackInfo, results: Path, scenario: str, count: int, rate: float = 50,
           profile: bool = False, warmup_s: float = 0.0) -> BenchResult:
    options = BenchOptions(scenario=scenario, rate=rate, count=count, merchants=2, results_dir=results,
                           progress=False, print_tables=False, drain_timeout_s=90, profile=profile,
                           warmup_s=warmup_s)
    return run_bench(options, _target(info))


def _failures(result: BenchResult) -> str:
    assert result.report["audit"] is not None
    return json.dumps([c for c in result.report["audit"]["checks"] if not c["ok"]], indent=1)


def test_checkout_bench_passes_its_audit_with_sane_numbers(stack_info: StackInfo, tmp_path: Path) -> None:
    result = _bench(stack_info, tmp_path / "checkout", "checkout", count=100)
    assert result.ok, _failures(result)
    report = result.report
    tp = report["throughput"]
    assert (tp["payments_ok"], tp["payments_failed"], tp["dropped_arrivals"], tp["requests"]) == (100, 0, 0, 200)
    assert 0 < tp["payments_per_s"] <= 60 and tp["wall_s"] >= 1.9  # 100 arrivals at 50/s take 2 s
    for endpoint in ("POST /v1/payment_methods", "POST /v1/payment_intents"):
        stats = report["latency"][endpoint]
        lat = stats["latency_ms"]
        assert stats["count"] == 100 and stats["statuses"] == {"200": 100}
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"] < 30_000
    assert report["errors"] == {}
    assert report["meta"]["python"] == {"implementation": platform.python_implementation(),
                                        "version": platform.python_version(), "base_prefix": sys.base_prefix,
                                        "executable": sys.executable}
    assert report["resources"]["stack_peak_rss_bytes"] > 200 * 1024**2  # PostgreSQL x2, Ray, gateway…
    assert report["resources"]["client_cpu_s"] > 0
    checks = {c["name"]: c for c in report["audit"]["checks"]}
    assert checks["client_vs_ledger"]["checked"] == 100
    assert checks["bank_vs_ledger"]["checked"] == 100 and not checks["bank_vs_ledger"]["skipped"]
    assert checks["webhooks_received"]["checked"] >= 300  # created, succeeded, charge.succeeded each
    assert sum(row["payments"] for row in report["timeline"]) == 100
    assert json.loads((tmp_path / "checkout" / "report.json").read_text())["throughput"]["payments_ok"] == 100
    assert (tmp_path / "checkout" / "bench.png").stat().st_size > 10_000


@pytest.mark.parametrize("scenario", ["auth-capture", "decline-mix", "idempotent-retry"])
def test_other_scenarios_pass_their_audit(stack_info: StackInfo, tmp_path: Path, scenario: str) -> None:
    result = _bench(stack_info, tmp_path / scenario, scenario, count=40, rate=40)
    assert result.ok, _failures(result)
    assert result.report["throughput"]["payments_ok"] == 40, result.report["errors"]
    statuses = {p.status for p in result.book.payments.values()}
    expected = {"auth-capture": {"succeeded", "canceled"}, "decline-mix": {"succeeded", "requires_payment_method"},
                "idempotent-retry": {"succeeded"}}[scenario]
    assert statuses <= expected and statuses & expected


def test_a_warm_up_is_audited_but_left_out_of_the_figures(stack_info: StackInfo, tmp_path: Path) -> None:
    # idempotent-retry: a warm-up reusing the measured load's idempotency keys would turn measured
    # payments into replays of warm-up ones, which the audit would catch.
    result = _bench(stack_info, tmp_path / "warm", "idempotent-retry", count=40, rate=40, warmup_s=0.5)
    assert result.ok, _failures(result)
    report = result.report
    warmup = report["warmup"]
    assert (warmup["payments_started"], warmup["payments_ok"], warmup["payments_failed"]) == (20, 20, 0)
    assert warmup["requests"] >= 40 and 0 < warmup["latency_ms"]["p50"] <= warmup["latency_ms"]["max"]
    assert report["throughput"]["payments_ok"] == 40, report["errors"]
    assert sum(row["payments"] for row in report["timeline"]) == 40
    assert report["latency"]["POST /v1/payment_intents"]["count"] == 40
    assert 80 <= report["throughput"]["requests"] <= 160  # and 1-3 copies of each
    assert len(result.book.payments) == 60
    checks = {c["name"]: c for c in report["audit"]["checks"]}
    assert checks["client_vs_ledger"]["checked"] == 60 and checks["idempotency"]["checked"] == 60


def test_a_profiled_run_says_where_each_part_spends_its_cpu(stack_info: StackInfo, tmp_path: Path) -> None:
    result = _bench(stack_info, tmp_path / "profiled", "checkout", count=90, rate=30, profile=True)
    assert result.ok, _failures(result)
    profile = result.report["profile"]
    assert profile["errors"] == {}
    parts = profile["parts"]
    assert {"gateway", "ray::PaymentShard", "ray::CardVault", "ray::AcquirerLink", "banksim"} <= set(parts)
    for name in ("gateway", "ray::PaymentShard"):
        part = parts[name]
        assert part["samples"] > 0
        assert sum(p["share"] for p in part["packages"]) == pytest.approx(1, abs=0.01)
        assert 0 < len(part["top_functions"]) <= 5
    # Every process's stacks are kept, in the collapsed format speedscope and flamegraph.pl read.
    stacks = sorted((tmp_path / "profiled" / "profiles").glob("PaymentShard-*.txt"))
    assert len(stacks) == 2  # the test stack's two shards, folded into one part above
    lines = [line.rpartition(" ") for path in stacks for line in path.read_text().splitlines()]
    assert lines and all(count.isdigit() for _, _, count in lines)  # (a sample without Python frames is " N")
    assert any(";" in frames for frames, _, _ in lines)  # frame;frame;…, outermost first
    # The ledger's side, per statement: each checkout is created and confirmed by one INSERT.
    statements = profile["ledger_statements"]
    assert "error" not in statements, statements
    assert statements["ms_per_payment"] > 0 and 0 < len(statements["top"]) <= 10
    [insert] = [s for s in statements["top"] if s["query"].startswith("WITH p AS (INSERT INTO payment_orders")]
    assert insert["calls_per_payment"] == pytest.approx(1, abs=0.02) and insert["rows_per_call"] == 1
    assert insert["wal_records_per_payment"] > 0 and 0 < insert["share"] < 1


def test_statement_times_need_pg_stat_statements_loaded(stack_info: StackInfo) -> None:
    # The vault's PostgreSQL never loads it: the profile then says why the section is missing.
    assert "pg_stat_statements unavailable" in (statements.reset(stack_info.vault_dsn) or "")
    assert asyncio.run(_has_extension(stack_info.vault_dsn, "pg_stat_statements")) is False  # nothing left behind


async def _has_extension(dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) > 0 FROM pg_extension WHERE extname = $1", name))
    finally:
        await conn.close()


def test_profile_samples_are_counted_by_package_and_function(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text("main (gateway/app.py:3);_execute (asyncpg/connection.py:1904) 6\n"
                      "main (gateway/app.py:3);dumps (json/__init__.py:231) 3\n"
                      "main (gateway/app.py:4) 1\n")
    part = Part()
    part.add(stacks)
    assert part.summary() == {
        "samples": 10,
        "packages": [{"name": "asyncpg", "share": 0.6}, {"name": "stdlib", "share": 0.3},
                     {"name": "paygate", "share": 0.1}],
        "top_functions": [{"name": "_execute (asyncpg/connection.py:1904)", "share": 0.6},
                          {"name": "dumps (json/__init__.py:231)", "share": 0.3},
                          {"name": "main (gateway/app.py:4)", "share": 0.1}]}
    assert package_of("Worker.main_loop (ray/_private/worker.py:1069)") == "ray"
    assert package_of("Thread.run (threading.py:982)") == "stdlib"


def test_a_process_py_spy_cannot_sample_is_named_and_the_rest_goes_on(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    summary = Profiler({gone.pid: "ray::Ghost"}, tmp_path / "profiles").start().stop()
    assert summary["parts"] == {}
    assert list(summary["errors"]) == [f"ray::Ghost ({gone.pid})"]
    assert summary["errors"][f"ray::Ghost ({gone.pid})"]  # py-spy's own words


async def _shift_received(dsn: str, payment_id: str, delta: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE payment_orders SET amount_received = amount_received + $2 WHERE id = $1",
                               payment_id, delta)
    finally:
        await conn.close()


def test_refund_mix_passes_and_the_audit_names_a_corrupted_payment(stack_info: StackInfo, tmp_path: Path) -> None:
    result = _bench(stack_info, tmp_path / "refund-mix", "refund-mix", count=50)
    assert result.ok, _failures(result)
    assert result.report["throughput"]["payments_ok"] == 50
    refunded = [p for p in result.book.payments.values() if p.amount_refunded]
    assert refunded, "refund-mix refunded nothing"

    victim = next(pid for pid, p in result.book.payments.items()
                  if p.status == "succeeded" and (p.amount_received or 0) > (p.amount_refunded or 0))
    asyncio.run(_shift_received(stack_info.ledger_dsn, victim, -1))
    try:
        broken = rerun_audit(result)
    finally:
        asyncio.run(_shift_received(stack_info.ledger_dsn, victim, +1))
    assert not broken.ok
    assert broken.breached_subjects == {victim}
    assert {c.name for c in broken.checks if not c.ok} >= {"client_vs_ledger", "bank_vs_ledger", "ledger_balanced"}
    assert rerun_audit(result).ok


def test_the_receiver_verifies_signatures_as_stripe_does() -> None:
    body, secret = b'{"id": "evt_1", "object": "event"}', "whsec_test"
    header = sign(body, secret)
    stripe.Webhook.construct_event(body, header, secret)  # the reference accepts it…
    assert verify(body, header, secret)  # …and so does the bench
    assert not verify(body + b" ", header, secret)
    assert not verify(body, header, "whsec_other")
    assert not verify(body, sign(body, secret, timestamp=1), secret)  # outside the 300 s tolerance


def test_the_receiver_answers_pipelined_deliveries_split_across_reads() -> None:
    receiver = ReceiverProcess().start()
    try:
        receiver.set_secrets({"/hook": "whsec_test"})
        body = json.dumps({"id": "evt_1", "type": "charge.succeeded",
                           "data": {"object": {"id": "ch_1", "payment_intent": "pi_1"}}}).encode()

        def delivery(signature: str) -> bytes:
            return (f"POST /hook HTTP/1.1\r\nStripe-Signature: {signature}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body

        stream = delivery(sign(body, "whsec_test")) + delivery("t=1,v1=00") + delivery(sign(body, "whsec_test"))
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as conn:
            conn.sendall(stream[:40])  # mid-way through the first request line
            time.sleep(0.1)
            conn.sendall(stream[40:])
            answers = b""
            while answers.count(b"HTTP/1.1") < 3:
                answers += conn.recv(4096)
        assert re.findall(rb"HTTP/1\.1 (\d{3})", answers) == [b"200", b"400", b"200"]
        stats = receiver.stats()
        assert (stats["deliveries"], stats["bad_signatures"]) == (2, 1)
        assert stats["events"] == {"evt_1": ["pi_1", 2, "charge.succeeded"]}  # one event, delivered twice
    finally:
        receiver.stop()


def _in_child(code: str, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter whose open-file limits start at (soft, hard)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)


def test_the_open_file_limit_is_lifted_to_what_is_asked_within_the_hard_limit() -> None:
    done = _in_child("from cluster.procs import raise_open_file_limit as r; print(r(900), r(5000), r(100))", 256, 1500)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["900", "1500", "1500"]  # never lowered, never past the hard limit


def test_a_concurrency_the_open_file_limit_cannot_hold_is_refused_up_front() -> None:
    code = ("import argparse; from cluster.bench.cli import add_arguments, options_from\n"
            "p = argparse.ArgumentParser(); add_arguments(p)\n"
            "print(options_from(p.parse_args(['--concurrency', '{c}'])).concurrency)")
    assert _in_child(code.format(c=200), 256, 1024).stdout.split() == ["200"]
    refused = _in_child(code.format(c=1024), 256, 1024)
    assert refused.returncode == 2  # bad usage
    assert "--concurrency 1024 needs more open files than this process may have (1024)" in refused.stderr


def test_the_ray_call_benchmark_measures_both_actors_and_the_direct_call_in_both_modes() -> None:
    done = subprocess.run([sys.executable, "-m", "cluster.bench.raycall", "--calls", "30", "--rate", "200",
                           "--items", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    labels = ["task events on", "task events off", "direct (socket)"]
    assert [(row["actor"], row["mode"], row["calls"]) for row in rows] == [
        *[(label, "paced 200/s", 30) for label in labels], *[(label, "back to back", 30) for label in labels]]
    for row in rows:
        assert row["caller_ms_per_call"] > 0, row
        assert 0 < row["p50_us"] <= row["p99_us"], row
        if row["actor"] != "direct (socket)":  # 30 direct calls may take less than a clock tick of CPU
            assert row["machine_ms_per_call"] > 0, row
    paced = {row["actor"]: row for row in rows if row["mode"] == "paced 200/s"}
    assert paced["direct (socket)"]["p50_us"] < paced["task events off"]["p50_us"], paced


def test_the_gateway_benchmark_drives_both_checkout_requests_through_the_app() -> None:
    done = subprocess.run([sys.executable, "-m", "cluster.bench.gateway", "--checkouts", "300", "--concurrency", "4",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # a request answered other than 200 fails the run
    result = json.loads(done.stdout)
    assert (result["checkouts"], result["concurrency"]) == (300, 4)
    assert 0 < result["cpu_us_per_request"] < result["cpu_us_per_checkout"], result
    assert result["cpu_us_per_checkout"] == pytest.approx(2 * result["cpu_us_per_request"])
    refused = subprocess.run([sys.executable, "-m", "cluster.bench.gateway", "--checkouts", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "at least 1" in refused.stderr


def test_the_delivery_benchmark_posts_signed_events_the_receiver_accepts() -> None:
    done = subprocess.run([sys.executable, "-m", "cluster.bench.deliveries", "--deliveries", "200",
                           "--concurrency", "1", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # an answer other than 200 (a bad signature) fails the run
    rows = json.loads(done.stdout)
    assert [(row["concurrency"], row["deliveries"]) for row in rows] == [(1, 200), (4, 200)]
    for row in rows:
        assert row["cpu_us_per_delivery"] > 0 and row["deliveries_per_s"] > 0, row
    refused = subprocess.run([sys.executable, "-m", "cluster.bench.deliveries", "--concurrency", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "at least 1" in refused.stderr


def test_the_baseline_measures_an_insert_endpoint_and_pgbench_and_cleans_up(stack_info: StackInfo,
                                                                              tmp_path: Path) -> None:
    """--baseline: a minimal Starlette + asyncpg endpoint (one insert per request) at paygate's rate
    and flat out, and pgbench -N, on the ledger's server; its scratch table and database are dropped."""
    result = run_baseline(stack_info.ledger_dsn, rate=50, seconds=2, concurrency=16, log_dir=str(tmp_path))
    same_rate, ceiling, pgbench = result["http_same_rate"], result["http_ceiling"], result["pgbench"]
    assert same_rate["errors"] == 0 and same_rate["count"] == 100 and same_rate["statuses"] == {"200": 100}
    assert ceiling["errors"] == 0 and set(ceiling["statuses"]) == {"200"} and ceiling["per_s"] > 50
    assert pgbench["tps"] and pgbench["tps"] > 0 and pgbench["latency_avg_ms"] > 0
    left = ledger(stack_info, "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 'bench_pgbench_%') "
                  "+ (SELECT count(*) FROM pg_class WHERE relname LIKE 'bench_baseline_%') AS n")
    assert left == [{"n": 0}]
