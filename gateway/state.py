"""What every request handler can reach: configuration, the ledger pool, actor handles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from cluster.config import Config
from gateway.auth import MerchantAuthenticator
from gateway.ratelimit import RateLimitClient
from gateway.recent_cards import RecentCards


@dataclass
class GatewayState:
    config: Config
    pool: asyncpg.Pool
    auth: MerchantAuthenticator
    rate: RateLimitClient
    admin_key: str
    actors: dict[str, Any] = field(default_factory=dict)
    shards: list[Any] = field(default_factory=list)
    shard_batchers: dict[int, Any] = field(default_factory=dict)
    vault: Any = None
    tokenizer: Any = None  # Batcher in front of the vault's tokenize_many
    recent_cards: RecentCards = field(default_factory=RecentCards)
