"""API key authentication: `Authorization: Bearer sk_…` or HTTP Basic with the key as user."""

from __future__ import annotations

import base64
import hmac
import time

import asyncpg
from starlette.requests import Request

from cluster.merchants import merchant_for_key
from gateway.errors import AuthenticationError

_CACHE_TTL_S = 30.0


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            user = ""
        if user:
            return user
    raise AuthenticationError(
        "You did not provide an API key. You need to provide your API key in the Authorization header, "
        "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
    )


def _masked(key: str) -> str:
    return f"{key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}" if len(key) > 12 else "****"


class MerchantAuthenticator:
    """Maps a secret key to its merchant, with a short cache so a hot key costs no query."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.cache: dict[str, tuple[str, float]] = {}

    async def merchant_id(self, request: Request) -> str:
        key = bearer_key(request)
        cached = self.cache.get(key)
        now = time.monotonic()
        if cached and cached[1] > now:
            return cached[0]
        merchant = await merchant_for_key(self.pool, key) if key.startswith("sk_") else None
        if merchant is None:
            raise AuthenticationError(f"Invalid API Key provided: {_masked(key)}", code="api_key_invalid")
        self.cache[key] = (merchant, now + _CACHE_TTL_S)
        return merchant


def check_admin_key(request: Request, admin_key: str) -> None:
    key = bearer_key(request)
    if not hmac.compare_digest(key.encode(), admin_key.encode()):
        raise AuthenticationError("This endpoint needs the operator (admin) key; merchant keys are not accepted.",
                                  code="api_key_invalid")
