"""The seam where fraud scoring plugs into confirm: the shard asks a RiskAssessor before the bank.

The real assessor is `actors.fraud.assessor.FraudAssessor` (FraudScorer actors); `AllowAll`, which
authorizes everything with a normal risk level, is the fallback when no scorer is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

RiskOutcome = Literal["authorized", "manual_review", "blocked"]


@dataclass(frozen=True)
class RiskDecision:
    risk_score: int
    risk_level: Literal["normal", "elevated", "highest", "not_assessed"]
    outcome: RiskOutcome
    rules: tuple[str, ...] = field(default_factory=tuple)
    # Stripe's outcome.reason for a block or a review: "rule", "highest_risk_level", "elevated_risk_level"
    reason: str | None = None
    rule: str | None = None  # the merchant rule that decided a block (block_list:email, max_amount, ...)
    review: str | None = None  # prv_... when the outcome is manual_review

    def as_outcome(self) -> dict[str, Any]:
        outcome: dict[str, Any] = {
            "risk_level": self.risk_level, "risk_score": self.risk_score, "rules": list(self.rules),
            "seller_message": "Payment complete." if self.outcome != "blocked" else "Blocked by risk rules."}
        if self.outcome != "authorized":
            outcome.update(reason=self.reason, rule=self.rule)
        if self.review:
            outcome["review"] = self.review
        return outcome

    def as_dict(self) -> dict[str, Any]:
        return {"risk_score": self.risk_score, "risk_level": self.risk_level, "outcome": self.outcome,
                "rules": list(self.rules), "reason": self.reason, "rule": self.rule, "review": self.review}


class RiskAssessor(Protocol):
    async def assess(self, payment: Mapping[str, Any], card: Mapping[str, Any],
                     signals: Mapping[str, str]) -> RiskDecision: ...

    def record_outcome(self, payment: Mapping[str, Any], card: Mapping[str, Any], signals: Mapping[str, str],
                       status: str) -> None:
        """The bank's answer (`approved`, `declined`, `failed`) for an assessed attempt; never blocks."""


class AllowAll:
    async def assess(self, payment: Mapping[str, Any], card: Mapping[str, Any],
                     signals: Mapping[str, str]) -> RiskDecision:
        return RiskDecision(0, "normal", "authorized")

    def record_outcome(self, payment: Mapping[str, Any], card: Mapping[str, Any], signals: Mapping[str, str],
                       status: str) -> None:
        return None
