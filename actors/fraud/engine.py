"""The scoring engine: velocity windows in, a typed RiskDecision out. Plain Python, no I/O, so it is
unit-testable and benchmarkable in-process; the FraudScorer actor wraps it with batching,
persistence and the rules cache.

A payment attempt is scored in two steps:

1. `observe`: count the attempt in the windows of every entity this scorer owns (the card
   fingerprint, the IP address, the email, the device id — each scoped to the merchant), then
   read those windows into named *signals*, each worth some points.
2. `decide` (on the scorer that owns the card): add the merchant-level signals (card country vs IP
   country, amount vs the merchant's usual amounts), combine the points into a 0-99 score, and
   apply the merchant's rules (block list, allow list, blocked countries, max amount, thresholds).

Points combine like independent probabilities (noisy-OR): 45 and 45 make 70, 80 alone is 80.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from actors.fraud import windows
from actors.fraud.messages import OutcomeRecord, ScoreRequest, entity_key, owner
from actors.fraud.rules import DEFAULT_RULES, CompiledRules
from actors.fraud.windows import AmountStats, EntityStore
from actors.payments.risk import RiskDecision

Signals = dict[str, int]


@dataclass(frozen=True)
class Tier:
    """`points` when any count exceeds its limit (1 min, 1 h, 24 h); None = no limit on that window."""

    points: int
    minute: int | None = None
    hour: int | None = None
    day: int | None = None

    def fires(self, minute: int, hour: int, day: int) -> bool:
        return ((self.minute is not None and minute > self.minute)
                or (self.hour is not None and hour > self.hour)
                or (self.day is not None and day > self.day))


def _first(tiers: tuple[Tier, ...], minute: int, hour: int, day: int) -> int:
    for tier in tiers:
        if tier.fires(minute, hour, day):
            return tier.points
    return 0


@dataclass(frozen=True)
class Limits:
    """Signal thresholds (counts include the attempt being scored). Strongest tier first."""

    card_attempts: tuple[Tier, ...] = (Tier(80, minute=5, hour=15, day=30), Tier(30, minute=3, hour=8, day=16))
    card_declines: tuple[Tier, ...] = (Tier(80, hour=3, day=5), Tier(35, hour=1, day=2))
    ip_attempts: tuple[Tier, ...] = (Tier(60, minute=20, hour=120, day=500), Tier(25, minute=10, hour=60))
    ip_cards: tuple[Tier, ...] = (Tier(85, minute=4, hour=10, day=20), Tier(30, minute=2, hour=5))
    ip_declines: tuple[Tier, ...] = (Tier(80, hour=5, day=10), Tier(40, hour=2, day=5))
    email_attempts: tuple[Tier, ...] = (Tier(60, minute=5, hour=15, day=40), Tier(25, minute=3, hour=8))
    email_cards: tuple[Tier, ...] = (Tier(60, hour=3, day=5), Tier(25, day=2))
    country_mismatch: int = 45
    amount_z: tuple[tuple[float, int], ...] = ((4.0, 55), (3.0, 30))


LIMITS = Limits()

# signal names, as they appear in `outcome.rules`
_ATTEMPTS = {"card": "card_velocity", "ip_address": "ip_velocity", "device_id": "device_velocity",
             "email": "email_velocity"}
_CARDS = {"ip_address": "card_testing_ip", "device_id": "card_testing_device", "email": "email_many_cards"}
DECLINES = "declines_then_attempt"
COUNTRY_MISMATCH = "country_mismatch"
AMOUNT_UNUSUAL = "amount_unusual"


def combine(points: Iterable[int]) -> int:
    keep = 1.0
    for p in points:
        keep *= 1.0 - min(max(p, 0), 100) / 100.0
    return min(99, round(100 * (1.0 - keep)))


def _put(signals: Signals, name: str, points: int) -> None:
    if points > signals.get(name, 0):
        signals[name] = points


class RiskEngine:
    def __init__(self, index: int = 0, scorers: int = 1, limits: Limits = LIMITS,
                 max_entities: int = 200_000, max_amount_stats: int = 100_000) -> None:
        self.index, self.scorers, self.limits = index, scorers, limits
        self.entities = EntityStore(max_entities)
        self.amounts: OrderedDict[tuple[str, str], AmountStats] = OrderedDict()
        self.max_amount_stats = max_amount_stats
        # Stripe's published test cards: shared by every test suite and load test, so they skip the
        # per-card velocity and decline signals (as on Stripe, where test-mode risk is simulated with
        # dedicated test cards). Everything else still applies to them.
        self.exempt_fingerprints: frozenset[str] = frozenset()

    # ---- ownership -------------------------------------------------------------------------
    def owns(self, key: str) -> bool:
        return owner(key, self.scorers) == self.index

    def _owned(self, merchant_id: str, kind: str, value: str | None) -> str | None:
        if not value or (kind == "card" and value in self.exempt_fingerprints):
            return None
        key = entity_key(merchant_id, kind, value)
        return key if self.owns(key) else None

    # ---- step 1: count and read the windows ------------------------------------------------
    def observe(self, req: ScoreRequest, now: float) -> Signals:
        signals: Signals = {}
        limits = self.limits
        fingerprint = req.fingerprint
        for kind, value in req.entities():
            key = self._owned(req.merchant_id, kind, value)
            if key is None:
                continue
            entity = self.entities.touch(key)
            windows.add(entity, now)
            if kind != "card" and fingerprint:
                self.entities.see_card(key, fingerprint, now)
            self._read(key, entity, kind, now, signals, limits)
        return signals

    def _read(self, key: str, entity: windows.Entity, kind: str, now: float, signals: Signals,
              limits: Limits) -> None:
        (a1, d1), (a60, d60), (a24, d24) = windows.counts(entity, now)
        if kind == "card":
            attempts, declines = limits.card_attempts, limits.card_declines
        elif kind == "email":
            attempts, declines = limits.email_attempts, limits.ip_declines
        else:
            attempts, declines = limits.ip_attempts, limits.ip_declines
        _put(signals, _ATTEMPTS[kind], _first(attempts, a1, a60, a24))
        _put(signals, DECLINES, _first(declines, d1, d60, d24))
        if kind != "card":
            c1, c60, c24 = self.entities.distinct_cards(key, now)
            _put(signals, _CARDS[kind], _first(limits.email_cards if kind == "email" else limits.ip_cards,
                                               c1, c60, c24))

    # ---- step 2: merchant-level signals, score and rules -----------------------------------
    def decide(self, req: ScoreRequest, signals: Signals, rules: CompiledRules = DEFAULT_RULES,
               now: float = 0.0) -> RiskDecision:
        for name, points in req.external:
            _put(signals, name, points)
        if req.card_country and req.ip_country and req.card_country != req.ip_country:
            _put(signals, COUNTRY_MISMATCH, self.limits.country_mismatch)
        stats = self.amounts.get((req.merchant_id, req.currency))
        if stats is not None:
            _put(signals, AMOUNT_UNUSUAL, zscore_points(stats.zscore(req.amount), self.limits))
        fired = {name: points for name, points in signals.items() if points > 0}
        score = combine(fired.values())

        values = {"fingerprint": req.fingerprint, "ip_address": req.ip_address, "email": req.email,
                  "device_id": req.device_id}
        blocked_by = [f"block_list:{kind}" for kind, entries in rules.block.items()
                      if entries and entries.matches(values[kind])]
        allowed_by = [f"allow_list:{kind}" for kind, entries in rules.allow.items()
                      if entries and entries.matches(values[kind])]
        hard: list[str] = []
        if rules.blocked_countries and (req.ip_country in rules.blocked_countries
                                        or req.card_country in rules.blocked_countries):
            hard.append("blocked_country")
        limit = rules.max_amount.get(req.currency)
        if limit is not None and req.amount > limit:
            hard.append("max_amount")

        level = "highest" if score >= rules.block_score else "elevated" if score >= rules.review_score else "normal"
        named = sorted(fired, key=lambda n: -fired[n])
        reason: str | None
        if blocked_by:
            outcome, reason, rule, shown = "blocked", "rule", blocked_by[0], [*blocked_by, *allowed_by, *hard]
        elif allowed_by:
            outcome, reason, rule, shown = "authorized", None, None, allowed_by
        elif hard:
            outcome, reason, rule, shown = "blocked", "rule", hard[0], hard
        elif level == "highest":
            outcome, reason, rule, shown = "blocked", "highest_risk_level", None, []
        elif level == "elevated":
            outcome, reason, rule, shown = "manual_review", "elevated_risk_level", None, []
        else:
            outcome, reason, rule, shown = "authorized", None, None, []
        if outcome != "blocked":
            self._learn_amount(req.merchant_id, req.currency, req.amount, now)
        return RiskDecision(score, level, outcome, tuple([*shown, *named]), reason=reason,  # type: ignore[arg-type]
                            rule=rule)

    def _learn_amount(self, merchant_id: str, currency: str, amount: int, now: float) -> None:
        key = (merchant_id, currency)
        stats = self.amounts.get(key)
        if stats is None:
            stats = self.amounts[key] = AmountStats()
            if len(self.amounts) > self.max_amount_stats:
                self.amounts.popitem(last=False)
        else:
            self.amounts.move_to_end(key)
        stats.add(amount, now)

    def score(self, req: ScoreRequest, rules: CompiledRules = DEFAULT_RULES, now: float = 0.0) -> RiskDecision:
        return self.decide(req, self.observe(req, now), rules, now)

    # ---- after the bank answered -----------------------------------------------------------
    def record_outcome(self, record: OutcomeRecord, now: float) -> None:
        if record.result != "declined":
            return
        for kind, value in (("card", record.fingerprint), ("ip_address", record.ip_address),
                            ("email", record.email), ("device_id", record.device_id)):
            key = self._owned(record.merchant_id, kind, value)
            if key is not None:
                windows.add(self.entities.touch(key), now, attempts=0, declines=1)

    # ---- rebuilding after a restart --------------------------------------------------------
    def replay(self, row: Mapping[str, Any]) -> None:
        """Count one persisted attempt (oldest first) as if it had just been scored at its time."""
        at = float(row["at"])
        declined = 1 if row["result"] == "declined" else 0
        fingerprint, merchant_id = row["fingerprint"], row["merchant_id"]
        for kind in ("card", "ip_address", "email", "device_id"):
            value = fingerprint if kind == "card" else row[kind]
            if kind == "card" and row["card_exempt"]:
                continue
            key = self._owned(merchant_id, kind, value)
            if key is None:
                continue
            windows.add(self.entities.touch(key), at, 1, declined)
            if kind != "card" and fingerprint:
                self.entities.see_card(key, fingerprint, at)
        card_owner = owner(entity_key(merchant_id, "card", fingerprint or row["payment_id"]), self.scorers)
        if row["result"] != "blocked" and card_owner == self.index and row["amount"]:
            self._learn_amount(merchant_id, row["currency"], int(row["amount"]), at)

    def memory(self) -> dict[str, int]:
        return {"entities": len(self.entities), "evicted": self.entities.evicted, "amount_stats": len(self.amounts)}


def zscore_points(z: float | None, limits: Limits = LIMITS) -> int:
    if z is None or math.isnan(z):
        return 0
    for threshold, points in limits.amount_z:
        if abs(z) >= threshold:
            return points
    return 0
