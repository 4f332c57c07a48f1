"""Micro-benchmark of fraud scoring: how long one score takes in-process (the engine alone, and the
FraudScorer's `score_many` without Ray), and through a real FraudScorer Ray actor (round trip per
call at several batch sizes, plus the actor's own per-score latency).

    python -m cluster.bench.fraud                    # in-process and a private local actor
    python -m cluster.bench.fraud --no-actor         # in-process only (seconds)
    RAY_AUTH_MODE=token python -m cluster.bench.fraud --live .paygate
                                                     # a running local stack's scorers, per score

The actor here has no database (persistence off) and lives in its own namespace, so the benchmark
never touches a running paygate. The traffic mix: 50 merchants, 50k cards, 20k IPs, 30k emails,
20k devices, Zipf-ish reuse, 10 % of requests without any risk signal, a quarter of merchants
with block lists and max amounts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.fraud.engine import RiskEngine
from actors.fraud.messages import OutcomeRecord, ScoreRequest
from actors.fraud.rules import DEFAULT_RULES, CompiledRules, RiskRules
from actors.fraud.scorer import FraudScorer
from cluster.bench.stats import summary_us


class Traffic:
    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.merchants = [f"acct_bench{i:04d}" for i in range(50)]
        self.counter = 0

    def _pick(self, prefix: str, population: int) -> str:
        # a few heavy hitters, a long tail
        index = int(population * self.rng.random() ** 3)
        return f"{prefix}{index}"

    def request(self) -> ScoreRequest:
        self.counter += 1
        rng = self.rng
        bare = rng.random() < 0.10
        return ScoreRequest(
            attempt_id=f"pi_bench{self.counter}:1", merchant_id=rng.choice(self.merchants),
            payment_id=f"pi_bench{self.counter}", amount=max(50, int(rng.lognormvariate(8.3, 0.8))),
            currency="usd", fingerprint=self._pick("fp", 50_000), card_country=rng.choice(("US", "US", "GB", None)),
            ip_address=None if bare else f"10.{rng.randrange(80)}.{rng.randrange(256)}.{rng.randrange(256)}",
            email=None if bare else self._pick("user", 30_000) + "@example.com",
            device_id=None if bare else self._pick("dev", 20_000),
            ip_country=None if bare else rng.choice(("US", "GB")))

    def rules(self) -> dict[str, CompiledRules]:
        rules: dict[str, CompiledRules] = {}
        for i, merchant in enumerate(self.merchants):
            if i % 4 == 0:
                rules[merchant] = CompiledRules.of(RiskRules(
                    blocked_countries=("KP", "IR"), max_amount={"usd": 500_000},
                    block_list={"fingerprint": [f"fp{j}" for j in range(0, 50_000, 997)],
                                "ip_address": ["10.66.0.0/16", "10.1.2.3"],
                                "email": [f"user{j}@example.com" for j in range(0, 30_000, 311)],
                                "device_id": []},
                    allow_list={"fingerprint": [], "ip_address": [], "email": ["vip@example.com"], "device_id": []}))
        return rules


def bench_engine(count: int, warmup: int) -> dict[str, Any]:
    traffic = Traffic()
    rules = traffic.rules()
    engine = RiskEngine()
    now = time.time()
    for _ in range(warmup):
        req = traffic.request()
        engine.score(req, rules.get(req.merchant_id, DEFAULT_RULES), now)
    latencies: list[float] = []
    cpu: list[float] = []
    outcomes = {"authorized": 0, "manual_review": 0, "blocked": 0}
    started = time.perf_counter()
    for i in range(count):
        req = traffic.request()
        now += 0.0005  # 2,000 attempts/s of simulated time: windows slide and evict
        began, began_cpu = time.perf_counter_ns(), time.thread_time_ns()
        decision = engine.score(req, rules.get(req.merchant_id, DEFAULT_RULES), now)
        cpu.append((time.thread_time_ns() - began_cpu) / 1000)
        latencies.append((time.perf_counter_ns() - began) / 1000)
        outcomes[decision.outcome] += 1
        if i % 7 == 0:
            engine.record_outcome(OutcomeRecord(req.attempt_id, req.merchant_id, req.fingerprint, req.ip_address,
                                                req.email, req.device_id, "declined"), now)
    elapsed = time.perf_counter() - started
    return {"what": "RiskEngine.score, one request at a time, in-process", **summary_us(latencies),
            "cpu_time": summary_us(cpu), "scores_per_s": round(count / elapsed), "outcomes": outcomes,
            **engine.memory()}


async def _bench_scorer_inprocess(count: int, batch: int) -> dict[str, Any]:
    traffic = Traffic(seed=2)
    scorer = FraudScorer(0, 1, ledger_dsn=None)
    for merchant, rules in traffic.rules().items():
        scorer.rules[merchant] = (rules, time.monotonic() + 3600)
    await scorer.start()
    calls: list[float] = []
    started = time.perf_counter()
    for _ in range(count // batch):
        requests = [traffic.request() for _ in range(batch)]
        began = time.perf_counter_ns()
        await scorer.score_many(requests)
        calls.append((time.perf_counter_ns() - began) / 1000)
    elapsed = time.perf_counter() - started
    stats = await scorer.stats()
    await scorer.close()
    return {"what": f"FraudScorer.score_many in-process, batches of {batch}", "per_call": summary_us(calls),
            "per_score_inside": stats["score_ms"], "scores_per_s": round(count / elapsed)}


def bench_actor(batches: Sequence[int], calls: int, ray_address: str | None) -> list[dict[str, Any]]:
    import ray

    from actors.fraud.scorer import FraudScorerActor

    ray.init(address=ray_address, namespace="paygate-fraud-bench", include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    try:
        actor: Any = FraudScorerActor.options(num_cpus=0).remote(0, 1, None)  # type: ignore[attr-defined]
        ray.get(actor.ping.remote())
        traffic = Traffic(seed=3)
        results = []
        for batch in batches:
            for _ in range(20):  # warm up
                ray.get(actor.score_many.remote([traffic.request() for _ in range(batch)]))
            round_trips: list[float] = []
            started = time.perf_counter()
            for _ in range(calls):
                requests = [traffic.request() for _ in range(batch)]
                began = time.perf_counter_ns()
                ray.get(actor.score_many.remote(requests))
                round_trips.append((time.perf_counter_ns() - began) / 1000)
            elapsed = time.perf_counter() - started
            results.append({"what": f"FraudScorer actor, score_many round trip, batches of {batch}",
                            "per_call": summary_us(round_trips), "scores_per_s": round(calls * batch / elapsed)})
        stats: dict[str, Any] = ray.get(actor.stats.remote())
        results.append({"what": "inside the actor, per score (all batch sizes above)", **stats["score_ms"],
                        "entities": stats["entities"]})
        ray.kill(actor)
        return results
    finally:
        ray.shutdown()


def live(target: str, namespace: str) -> list[dict[str, Any]]:
    """Per-score latency and memory of a running stack's scorers. `target`: a Ray address, or a
    paygate data dir (its `run/stack.json` names the stack's Ray)."""
    import ray

    from actors.fraud import scorer_name

    ray_address = target
    run_file = Path(target).expanduser() / "run" / "stack.json"
    if run_file.is_file():
        ray_address = json.loads(run_file.read_text())["ray_address"]
    ray.init(address=ray_address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING)
    try:
        found: list[dict[str, Any]] = []
        for index in range(64):
            try:
                handle: Any = ray.get_actor(scorer_name(index), namespace=namespace)
            except ValueError:
                break
            stats: dict[str, Any] = ray.get(handle.stats.remote(), timeout=30)
            found.append({"scorer": scorer_name(index), **stats})
        return found
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="scores timed in-process")
    parser.add_argument("--warmup", type=int, default=50_000, help="scores to fill the windows first")
    parser.add_argument("--calls", type=int, default=500, help="actor calls per batch size")
    parser.add_argument("--batches", default="1,16,128", help="actor batch sizes")
    parser.add_argument("--no-actor", action="store_true", help="skip the Ray actor measurements")
    parser.add_argument("--ray-address", default=None, help="Ray to start the private actor on (default: local)")
    parser.add_argument("--live", metavar="DATA_DIR|RAY_ADDRESS",
                        help="only print a running stack's scorer stats (its data dir, or its Ray address)")
    parser.add_argument("--namespace", default="paygate")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    args = parser.parse_args(argv)

    if args.live:
        report: list[dict[str, Any]] = live(args.live, args.namespace)
    else:
        report = [bench_engine(args.count, args.warmup)]
        for batch in (1, 128):
            report.append(asyncio.run(_bench_scorer_inprocess(min(args.count, 50_000), batch)))
        if not args.no_actor:
            report += bench_actor([int(b) for b in args.batches.split(",")], args.calls, args.ray_address)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for entry in report:
            print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
