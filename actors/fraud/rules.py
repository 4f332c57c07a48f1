"""A merchant's risk rules: thresholds, blocked countries, maximum amounts, allow and block lists.

`RiskRules` is what is stored (as JSON, one row per merchant in `risk_rules`) and what the rules
API shows; `CompiledRules` is the same thing prepared for the scorer's hot path (sets, parsed
networks). Normalisation lives here so the API, the store and the scorer agree on what matches.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

LIST_KINDS = ("fingerprint", "ip_address", "email", "device_id")
DEFAULT_BLOCK_SCORE = 75  # Stripe's "highest risk" band starts here
DEFAULT_REVIEW_SCORE = 65  # and "elevated" here
MAX_LIST_ENTRIES = 1000
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize(kind: str, value: str) -> str:
    """The canonical form a list entry and a payment's signal are compared in."""
    value = value.strip()
    if kind == "email":
        return value.lower()
    if kind == "ip_address":
        try:
            return str(ipaddress.ip_network(value, strict=False)) if "/" in value else str(
                ipaddress.ip_address(value))
        except ValueError:
            return value.lower()
    if kind == "country":
        return value.upper()
    return value


def _empty_lists() -> dict[str, list[str]]:
    return {kind: [] for kind in LIST_KINDS}


@dataclass(frozen=True)
class RiskRules:
    block_score: int = DEFAULT_BLOCK_SCORE
    review_score: int = DEFAULT_REVIEW_SCORE
    blocked_countries: tuple[str, ...] = ()
    max_amount: Mapping[str, int] = field(default_factory=dict)
    allow_list: Mapping[str, list[str]] = field(default_factory=_empty_lists)
    block_list: Mapping[str, list[str]] = field(default_factory=_empty_lists)
    updated: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"block_score": self.block_score, "review_score": self.review_score,
                "blocked_countries": list(self.blocked_countries), "max_amount": dict(self.max_amount),
                "allow_list": {k: list(self.allow_list.get(k, [])) for k in LIST_KINDS},
                "block_list": {k: list(self.block_list.get(k, [])) for k in LIST_KINDS}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, updated: int | None = None) -> RiskRules:
        if not data:
            return cls(updated=updated)
        return cls(
            block_score=int(data.get("block_score", DEFAULT_BLOCK_SCORE)),
            review_score=int(data.get("review_score", DEFAULT_REVIEW_SCORE)),
            blocked_countries=tuple(data.get("blocked_countries") or ()),
            max_amount={str(k): int(v) for k, v in (data.get("max_amount") or {}).items()},
            allow_list={k: list((data.get("allow_list") or {}).get(k) or []) for k in LIST_KINDS},
            block_list={k: list((data.get("block_list") or {}).get(k) or []) for k in LIST_KINDS},
            updated=updated,
        )

    def api_object(self, merchant_id: str) -> dict[str, Any]:
        return {"object": "risk_rules", "merchant": merchant_id, **self.to_json(), "updated": self.updated,
                "livemode": False}


class EntryList:
    """Exact values plus, for IP addresses, CIDR ranges."""

    __slots__ = ("networks", "values")

    def __init__(self, kind: str, entries: list[str]) -> None:
        self.values = frozenset(normalize(kind, e) for e in entries if "/" not in e)
        self.networks: tuple[IpNetwork, ...] = ()
        if kind == "ip_address":
            self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if "/" in e)

    def __bool__(self) -> bool:
        return bool(self.values or self.networks)

    def matches(self, value: str | None) -> bool:
        if not value:
            return False
        if value in self.values:
            return True
        if self.networks:
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                return False
            return any(address in network for network in self.networks)
        return False


@dataclass(frozen=True)
class CompiledRules:
    block_score: int
    review_score: int
    blocked_countries: frozenset[str]
    max_amount: Mapping[str, int]
    allow: Mapping[str, EntryList]
    block: Mapping[str, EntryList]

    @classmethod
    def of(cls, rules: RiskRules) -> CompiledRules:
        return cls(rules.block_score, rules.review_score, frozenset(rules.blocked_countries),
                   dict(rules.max_amount),
                   {k: EntryList(k, list(rules.allow_list.get(k, []))) for k in LIST_KINDS},
                   {k: EntryList(k, list(rules.block_list.get(k, []))) for k in LIST_KINDS})


DEFAULT_RULES = CompiledRules.of(RiskRules())


# ---- storage (ledger database, table risk_rules) ----------------------------------------------

async def load_rules(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str) -> RiskRules:
    row = await conn.fetchrow("SELECT rules, updated FROM risk_rules WHERE merchant_id = $1", merchant_id)
    return RiskRules.from_json(row["rules"], row["updated"]) if row else RiskRules()


async def load_many(conn: asyncpg.Connection | asyncpg.Pool, merchant_ids: list[str]) -> dict[str, RiskRules]:
    rows = await conn.fetch("SELECT merchant_id, rules, updated FROM risk_rules WHERE merchant_id = ANY($1)",
                            merchant_ids)
    found = {r["merchant_id"]: RiskRules.from_json(r["rules"], r["updated"]) for r in rows}
    return {m: found.get(m, RiskRules()) for m in merchant_ids}


async def save_rules(conn: asyncpg.Connection | asyncpg.Pool, merchant_id: str, rules: RiskRules) -> RiskRules:
    updated = int(time.time())
    await conn.execute(
        "INSERT INTO risk_rules (merchant_id, rules, updated) VALUES ($1, $2, $3) "
        "ON CONFLICT (merchant_id) DO UPDATE SET rules = EXCLUDED.rules, updated = EXCLUDED.updated",
        merchant_id, rules.to_json(), updated)
    return RiskRules.from_json(rules.to_json(), updated)
