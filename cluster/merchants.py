"""Merchant administration: create merchants, issue and look up hashed secret keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg

from actors.ids import new_id, random_token

SECRET_KEY_PREFIX = "sk_test_"


@dataclass(frozen=True)
class NewMerchant:
    merchant_id: str
    name: str
    secret_key: str  # shown once; only its hash is stored


def hash_key(secret: str) -> str:
    # Keys are 190+ random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_merchant(conn: asyncpg.Connection, name: str) -> NewMerchant:
    merchant_id = new_id("acct")
    secret = SECRET_KEY_PREFIX + random_token(24)
    async with conn.transaction():
        await conn.execute("INSERT INTO merchants (id, name) VALUES ($1, $2)", merchant_id, name)
        await conn.execute(
            "INSERT INTO api_keys (id, merchant_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)",
            new_id("key"), merchant_id, hash_key(secret), secret[:12],
        )
    return NewMerchant(merchant_id, name, secret)


async def merchant_for_key(conn: asyncpg.Connection | asyncpg.Pool, secret: str) -> str | None:
    return await conn.fetchval(
        "SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(secret)
    )
