"""The scoring engine in-process (no stack): windows slide and stay bounded, a rebuilt engine
decides like the one it replaces, and a pool of several scorers still sees card testing whose
cards land on different scorers."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.fraud import windows
from actors.fraud.assessor import FraudAssessor
from actors.fraud.engine import RiskEngine
from actors.fraud.messages import ScoreRequest, entity_key, owner
from actors.fraud.scorer import FraudScorer

T0 = 1_800_000_000.0


def _req(i: int, fingerprint: str, merchant: str = "acct_a", **signals: str) -> ScoreRequest:
    return ScoreRequest(f"pi_{i}:{i}", merchant, f"pi_{i}", 1000, "usd", fingerprint, **signals)  # type: ignore[arg-type]


def test_windows_slide_and_evict() -> None:
    entity = windows.new_entity()
    for second in range(10):
        windows.add(entity, T0 + second)
    windows.add(entity, T0 + 10, attempts=0, declines=2)
    assert windows.counts(entity, T0 + 10) == ((10, 2), (10, 2), (10, 2))
    assert windows.counts(entity, T0 + 75) == ((0, 0), (10, 2), (10, 2))  # the minute has passed
    assert windows.counts(entity, T0 + 3700) == ((0, 0), (0, 0), (10, 2))
    assert windows.counts(entity, T0 + 90_000) == ((0, 0), (0, 0), (0, 0))
    assert len(entity) == 80  # only the header is left


def test_the_store_is_bounded() -> None:
    engine = RiskEngine(max_entities=1000)
    for i in range(5000):
        engine.score(_req(i, f"fp{i}", ip_address=f"10.0.{i // 250}.{i % 250}"), now=T0 + i / 100)
    assert len(engine.entities) == 1000 and engine.entities.evicted == 9000
    assert len(engine.entities.cards) <= 1000
    assert engine.entities.sweep(T0 + 2 * 86_400) == 1000 and len(engine.entities) == 0


def test_replay_rebuilds_the_same_decisions() -> None:
    live, rows = RiskEngine(), []
    for i in range(7):
        decision = live.score(_req(i, "fpX"), now=T0 + i)
        rows.append({"at": T0 + i, "merchant_id": "acct_a", "payment_id": f"pi_{i}", "fingerprint": "fpX",
                     "card_exempt": False, "ip_address": None, "email": None, "device_id": None, "amount": 1000,
                     "currency": "usd", "result": "blocked" if decision.outcome == "blocked" else "approved"})
    rebuilt = RiskEngine()
    for row in rows:
        rebuilt.replay(row)
    assert live.score(_req(8, "fpX"), now=T0 + 8) == rebuilt.score(_req(8, "fpX"), now=T0 + 8)
    assert rebuilt.score(_req(9, "fpX"), now=T0 + 9).outcome == "blocked"


class _Remote:
    def __init__(self, method: Any) -> None:
        self.remote = method


class _Handle:
    """A FraudScorer in this process, called the way the assessor calls the actor through Ray (it
    offers no direct endpoint)."""

    def __init__(self, scorer: FraudScorer) -> None:
        self.score_many = _Remote(scorer.score_many)
        self.direct_endpoint = _Remote(_no_endpoint)


async def _no_endpoint() -> None:
    return None


def test_a_pool_of_scorers_sees_card_testing_across_them() -> None:
    scorers = [FraudScorer(i, 3, ledger_dsn=None) for i in range(3)]
    assessor = FraudAssessor([_Handle(s) for s in scorers])
    cards = [f"fingerprint{i:03d}" for i in range(12)]
    owners = {owner(entity_key("acct_m", "card", c), 3) for c in cards}
    assert len(owners) == 3, "the cards must be spread over the pool for this test to mean anything"

    async def run() -> list[Any]:
        decisions = []
        for i, card in enumerate(cards):
            payment = {"id": f"pi_{i}", "auth_rrn": f"{i:012d}", "merchant_id": "acct_m", "amount": 500,
                       "currency": "usd"}
            decisions.append(await assessor.assess(payment, {"card": {"fingerprint": card, "country": "US"}},
                                                   {"ip_address": "198.51.100.7", "country": "US"}))
        return decisions

    decisions = asyncio.run(run())
    outcomes = [d.outcome for d in decisions]
    first = outcomes.index("blocked")
    assert first == 4 and all(o == "blocked" for o in outcomes[first:]), outcomes
    assert "card_testing_ip" in decisions[-1].rules
    # the IP's windows live on exactly one scorer
    ip_key = entity_key("acct_m", "ip_address", "198.51.100.7")
    assert [s.engine.entities.get(ip_key) is not None for s in scorers].count(True) == 1
