"""Fraud and risk: FraudScorer actors (velocity windows, rules, a 0-99 score) and the payment
shards' assessor that asks them before every authorization. See README "Fraud and risk"."""

from __future__ import annotations


def scorer_name(index: int) -> str:
    return f"fraud-scorer-{index}"


__all__ = ["scorer_name"]
