"""FraudScorer: the Ray actor that keeps velocity windows and scores payment attempts in batches.

A pool of `PAYGATE_FRAUD_SCORERS` scorers (`fraud-scorer-0`, …); the payment shards send each
attempt to the scorer that owns its card fingerprint. One `score_many` call carries every request
(and every bank outcome) a shard has queued for this scorer; the scoring itself is synchronous
Python between two awaits, so a batch is never interleaved with another.

On start the scorer loads the fingerprints of Stripe's test cards from the vault (exempt from
per-card velocity), replays the last 24 hours of `risk_attempts` into its windows, and starts the
write-behind flush of new attempts. A restarted scorer therefore keeps blocking what it blocked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ray

from actors.direct import DirectCallable
from actors.fraud import store
from actors.fraud.engine import RiskEngine
from actors.fraud.messages import OutcomeRecord, ScoreRequest, ScoreResult
from actors.fraud.rules import DEFAULT_RULES, CompiledRules, RiskRules, load_many
from cluster.db import create_pool

log = logging.getLogger("paygate.fraud")

RULES_TTL_S = 30.0  # safety net; the rules API pushes changes to every scorer at once
RULES_CACHE = 50_000
SWEEP_INTERVAL_S = 60.0
PURGE_INTERVAL_S = 600.0
PROBE_MERCHANT = "acct_paygate_risk_probe"  # the vault resolves Stripe's test cards under this id
LATENCY_SAMPLES = 65_536


class FraudScorer(DirectCallable):
    DIRECT_METHODS = frozenset({"score_many"})

    def __init__(self, index: int, scorers: int, ledger_dsn: str | None, vault_name: str | None = None,
                 namespace: str = "paygate", max_entities: int = 200_000) -> None:
        self.index, self.scorers = index, scorers
        self.ledger_dsn, self.vault_name, self.namespace = ledger_dsn, vault_name, namespace
        self.engine = RiskEngine(index, scorers, max_entities=max_entities)
        self.writer = store.AttemptWriter()
        self.rules: OrderedDict[str, tuple[CompiledRules, float]] = OrderedDict()
        self.pool: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        self.latencies = array.array("I", bytes(4 * LATENCY_SAMPLES))
        self.samples = 0
        self.scored = 0
        self.replayed = 0
        self.started_at = 0.0
        self._started = False
        self._starting = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        async with self._starting:
            if self._started:
                return
            if self.vault_name:
                await self._learn_test_cards()
            if self.ledger_dsn:
                self.pool = await create_pool(self.ledger_dsn, min_size=1, max_size=4)
                began = time.perf_counter()
                rows = await store.recent_attempts(self.pool)
                for row in rows:
                    self.engine.replay(row)
                self.replayed = len(rows)
                log.info("fraud scorer %d rebuilt %d attempts in %.0f ms (%d entities)", self.index, len(rows),
                         (time.perf_counter() - began) * 1000, len(self.engine.entities))
                self.tasks.append(asyncio.create_task(self._flush_forever()))
            self.tasks.append(asyncio.create_task(self._housekeeping_forever()))
            # What exists now (the rebuilt windows, the process's own objects) is never scanned by
            # the cyclic collector again; entities hold no cycles, so eviction frees them as usual.
            gc.freeze()
            self.started_at = time.time()
            self._started = True

    async def _learn_test_cards(self) -> None:
        from actors.vault.cards import TEST_PAYMENT_METHODS

        assert self.vault_name is not None
        try:
            vault = ray.get_actor(self.vault_name, namespace=self.namespace)
            methods: list[dict[str, Any] | None] = await asyncio.wait_for(asyncio.gather(
                *[vault.get.remote(PROBE_MERCHANT, alias) for alias in TEST_PAYMENT_METHODS]), 30)
            self.engine.exempt_fingerprints = frozenset(
                m["card"]["fingerprint"] for m in methods if m and m.get("card"))
        except Exception:
            log.warning("fraud scorer %d could not learn the test cards' fingerprints; they count as any card",
                        self.index, exc_info=True)

    async def ping(self) -> str:
        await self.start()
        return "ok"

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.writer.flush(self.pool)
            await self.pool.close()

    # ---- the hot path ----------------------------------------------------------------------
    async def score_many(self, requests: Sequence[ScoreRequest],
                         outcomes: Sequence[OutcomeRecord] = ()) -> list[ScoreResult]:
        """Apply `outcomes` (older than every request here), then score `requests` in order."""
        await self.start()
        await self._ensure_rules({r.merchant_id for r in requests if r.decide})
        now = time.time()
        engine, writer, persist = self.engine, self.writer, self.pool is not None
        for record in outcomes:
            engine.record_outcome(record, now)
            if record.primary and persist:
                writer.result(record.attempt_id, record.result)
        results: list[ScoreResult] = []
        exempt = engine.exempt_fingerprints
        for req in requests:
            began = time.perf_counter_ns()
            signals = engine.observe(req, now)
            if req.decide:
                cached = self.rules.get(req.merchant_id)
                decision = engine.decide(req, signals, cached[0] if cached else DEFAULT_RULES, now)
                if persist:
                    writer.attempt(req, decision, req.fingerprint in exempt, now)
                elapsed = (time.perf_counter_ns() - began) // 1000
                results.append(ScoreResult(decision, (), elapsed))
            else:
                elapsed = (time.perf_counter_ns() - began) // 1000
                results.append(ScoreResult(None, tuple(signals.items()), elapsed))
            self.latencies[self.samples % LATENCY_SAMPLES] = min(elapsed, 2**32 - 1)
            self.samples += 1
        self.scored += len(requests)
        return results

    async def _ensure_rules(self, merchant_ids: set[str]) -> None:
        now = time.monotonic()
        stale = [m for m in merchant_ids if m not in self.rules or self.rules[m][1] < now]
        if not stale:
            return
        if self.pool is None:
            loaded = {m: RiskRules() for m in stale}
        else:
            loaded = await load_many(self.pool, stale)
        for merchant_id, rules in loaded.items():
            self._cache_rules(merchant_id, rules)

    def _cache_rules(self, merchant_id: str, rules: RiskRules) -> None:
        self.rules[merchant_id] = (CompiledRules.of(rules), time.monotonic() + RULES_TTL_S)
        self.rules.move_to_end(merchant_id)
        while len(self.rules) > RULES_CACHE:
            self.rules.popitem(last=False)

    async def set_rules(self, merchant_id: str, rules: dict[str, Any], updated: int | None = None) -> None:
        """Pushed by the rules API after it committed a change: takes effect on the next attempt."""
        self._cache_rules(merchant_id, RiskRules.from_json(rules, updated))

    # ---- background ------------------------------------------------------------------------
    async def flush(self) -> int:
        if self.pool is None:
            return 0
        return await self.writer.flush(self.pool)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(store.FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception:
                log.warning("fraud scorer %d: writing attempts failed; retrying", self.index, exc_info=True)
                await asyncio.sleep(1.0)

    async def _housekeeping_forever(self) -> None:
        last_purge = 0.0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.engine.entities.sweep(time.time())
                if self.pool is not None and self.index == 0 and time.monotonic() - last_purge > PURGE_INTERVAL_S:
                    last_purge = time.monotonic()
                    purged = await store.purge(self.pool)
                    if purged:
                        log.info("purged %d risk attempts older than %s", purged, store.RETENTION)
            except Exception:
                log.warning("fraud scorer %d housekeeping failed", self.index, exc_info=True)

    # ---- observability ---------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        count = min(self.samples, LATENCY_SAMPLES)
        ordered = sorted(self.latencies[:count])

        def pct(p: float) -> float:
            return ordered[min(count - 1, int(p * count))] / 1000 if count else 0.0

        return {"index": self.index, "pid": os.getpid(), "started_at": self.started_at, "scored": self.scored,
                "replayed": self.replayed, "buffered": len(self.writer), "written": self.writer.written,
                "exempt_cards": len(self.engine.exempt_fingerprints), "rules_cached": len(self.rules),
                **self.engine.memory(),
                "score_ms": {"samples": count, "p50": pct(0.50), "p99": pct(0.99), "p999": pct(0.999),
                             "max": ordered[-1] / 1000 if count else 0.0}}


FraudScorerActor = ray.remote(FraudScorer)
