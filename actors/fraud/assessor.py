"""FraudAssessor: the payment shard's RiskAssessor, backed by the FraudScorer pool.

Routing: the attempt goes to the scorer that owns its card fingerprint, which decides. When the
pool has more than one scorer and the IP address, email or device id belong to other scorers,
those are asked first (observe-only: they count the attempt and return their signals) and their
signals travel with the request to the card's scorer — so every entity's windows live in exactly
one place whatever the pool size. With one scorer (the default) it is a single call.

Batching: each scorer has one queue per shard, and at most one call in flight. Requests that
arrive while a call is out go together in the next one (self-clocking: no added delay when idle,
large batches under load). Bank outcomes ride the same queue, so they reach the scorer before any
later attempt from this shard; they wait up to `OUTCOME_DELAY_S` for a request to ride with rather
than cost a call of their own.

Failure: if the scorers cannot answer (restarting past the timeout, gone), the payment is not held
hostage: it is authorized with `risk_level = not_assessed` and the rule `risk_unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import ray

from actors.direct import DirectClient
from actors.fraud import scorer_name
from actors.fraud.messages import OutcomeRecord, Result, ScoreRequest, ScoreResult, entity_key, owner
from actors.fraud.rules import normalize
from actors.ids import new_id
from actors.payments.risk import AllowAll, RiskAssessor, RiskDecision

log = logging.getLogger("paygate.fraud.assessor")

SCORE_TIMEOUT_S = 10.0
MAX_BATCH = 256
MAX_OUTCOMES = 4096
OUTCOME_DELAY_S = 0.05
UNAVAILABLE = RiskDecision(0, "not_assessed", "authorized", ("risk_unavailable",))


class ScorerClient:
    """One scorer's queue: at most one `score_many` in flight; the next carries all that queued up."""

    def __init__(self, handle: Any, timeout_s: float = SCORE_TIMEOUT_S) -> None:
        self.scorer = DirectClient(handle)
        self.timeout_s = timeout_s
        self.requests: list[tuple[ScoreRequest, asyncio.Future[ScoreResult]]] = []
        self.outcomes: list[OutcomeRecord] = []
        self.draining: asyncio.Task[None] | None = None
        self.outcome_timer: asyncio.TimerHandle | None = None
        self.batches = 0

    async def score(self, request: ScoreRequest) -> ScoreResult:
        future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        self.requests.append((request, future))
        self._kick()
        return await future

    def record(self, outcome: OutcomeRecord) -> None:
        self.outcomes.append(outcome)
        if len(self.outcomes) > MAX_OUTCOMES:  # the scorer is unreachable: forget the oldest
            del self.outcomes[: len(self.outcomes) - MAX_OUTCOMES]
        if self.outcome_timer is None:
            self.outcome_timer = asyncio.get_running_loop().call_later(OUTCOME_DELAY_S, self._kick)

    def _kick(self) -> None:
        if self.outcome_timer is not None:
            self.outcome_timer.cancel()
            self.outcome_timer = None
        if self.draining is None or self.draining.done():
            self.draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.requests or self.outcomes:
            batch, self.requests = self.requests[:MAX_BATCH], self.requests[MAX_BATCH:]
            outcomes, self.outcomes = self.outcomes, []
            try:
                results = await asyncio.wait_for(
                    self.scorer.call("score_many", [r for r, _ in batch], outcomes), self.timeout_s)
            except Exception as error:  # RayActorError, timeout...: every caller in the batch learns it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def _signal(signals: Mapping[str, str], name: str, kind: str) -> str | None:
    value = signals.get(name)
    if not value or not value.strip():
        return None
    return normalize(kind, value)[:200]


class FraudAssessor:
    def __init__(self, handles: list[Any], timeout_s: float = SCORE_TIMEOUT_S) -> None:
        self.clients = [ScorerClient(h, timeout_s) for h in handles]

    @classmethod
    def connect(cls, namespace: str) -> RiskAssessor:
        """Find the deployed scorers (`fraud-scorer-0`, `-1`, …); none deployed: allow everything."""
        handles: list[Any] = []
        while True:
            try:
                handles.append(ray.get_actor(scorer_name(len(handles)), namespace=namespace))
            except ValueError:
                break
        if not handles:
            log.warning("no fraud scorers deployed: payments are not risk-assessed")
            return AllowAll()
        return cls(handles)

    def _request(self, payment: Mapping[str, Any], card: Mapping[str, Any],
                 signals: Mapping[str, str]) -> ScoreRequest:
        details = card.get("card") or {}
        return ScoreRequest(
            attempt_id=f"{payment['id']}:{payment['auth_rrn'] or ''}", merchant_id=payment["merchant_id"],
            payment_id=payment["id"], amount=int(payment["amount"]), currency=payment["currency"],
            fingerprint=details.get("fingerprint"), card_country=(details.get("country") or "").upper() or None,
            ip_address=_signal(signals, "ip_address", "ip_address"), email=_signal(signals, "email", "email"),
            device_id=_signal(signals, "device_id", "device_id"), ip_country=_signal(signals, "country", "country"))

    def _owners(self, req: ScoreRequest) -> tuple[int, set[int]]:
        n = len(self.clients)
        primary = owner(entity_key(req.merchant_id, "card", req.fingerprint or req.payment_id), n)
        others = {owner(entity_key(req.merchant_id, kind, value), n) for kind, value in req.entities()
                  if kind != "card"}
        return primary, others - {primary}

    async def assess(self, payment: Mapping[str, Any], card: Mapping[str, Any],
                     signals: Mapping[str, str]) -> RiskDecision:
        req = self._request(payment, card, signals)
        primary, others = self._owners(req)
        try:
            if others:
                observed = await asyncio.gather(*[self.clients[i].score(replace(req, decide=False)) for i in others])
                external = tuple(pair for result in observed for pair in result.signals)
                req = replace(req, external=external)
            result = await self.clients[primary].score(req)
        except Exception as error:
            log.warning("risk assessment of %s failed (%s): authorizing unassessed", req.payment_id,
                        type(error).__name__)
            return UNAVAILABLE
        decision = result.decision or UNAVAILABLE
        if decision.outcome == "manual_review":
            decision = replace(decision, review=new_id("prv"))
        return decision

    def record_outcome(self, payment: Mapping[str, Any], card: Mapping[str, Any], signals: Mapping[str, str],
                       status: str) -> None:
        """Feed the bank's answer back (declines drive `declines_then_attempt`); never blocks or raises."""
        try:
            result: Result = "approved" if status == "approved" else "declined" if status == "declined" else "failed"
            req = self._request(payment, card, signals)
            record = OutcomeRecord(req.attempt_id, req.merchant_id, req.fingerprint, req.ip_address, req.email,
                                   req.device_id, result)
            primary, others = self._owners(req)
            for index in {primary, *others}:
                self.clients[index].record(replace(record, primary=index == primary))
        except Exception:
            log.warning("could not record the bank outcome for risk scoring", exc_info=True)
