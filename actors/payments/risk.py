"""The seam where fraud scoring plugs into confirm: the shard asks a RiskAssessor before the bank.

Until the FraudScorer actors exist, `AllowAll` authorizes everything with a normal risk level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

RiskOutcome = Literal["authorized", "manual_review", "blocked"]


@dataclass(frozen=True)
class RiskDecision:
    risk_score: int
    risk_level: Literal["normal", "elevated", "highest"]
    outcome: RiskOutcome
    rules: tuple[str, ...] = field(default_factory=tuple)

    def as_outcome(self) -> dict[str, Any]:
        return {"risk_level": self.risk_level, "risk_score": self.risk_score, "rules": list(self.rules),
                "seller_message": "Payment complete." if self.outcome != "blocked" else "Blocked by risk rules."}

    def as_dict(self) -> dict[str, Any]:
        return {"risk_score": self.risk_score, "risk_level": self.risk_level, "outcome": self.outcome,
                "rules": list(self.rules)}


class RiskAssessor(Protocol):
    async def assess(self, payment: Mapping[str, Any], card: Mapping[str, Any],
                     signals: Mapping[str, str]) -> RiskDecision: ...


class AllowAll:
    async def assess(self, payment: Mapping[str, Any], card: Mapping[str, Any],
                     signals: Mapping[str, str]) -> RiskDecision:
        return RiskDecision(0, "normal", "authorized")
