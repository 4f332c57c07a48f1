"""Prefixed, time-sortable ids (`pi_…`, `pm_…`, `re_…`, `evt_…`, `we_…`).

48 bits of milliseconds then 80 random bits, in a fixed-width base62 body: ids sort by creation
time as plain strings, which keyset pagination relies on.
"""

from __future__ import annotations

import secrets
import time

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_WIDTH = 22  # ceil(128 / log2(62))


def base62(value: int, width: int) -> str:
    """`value` in base 62, left-padded to `width` (higher digits beyond it are dropped)."""
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(BASE62_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | secrets.randbits(80)
    return f"{prefix}_{base62(value, _WIDTH)}"


def random_token(nbytes: int = 24) -> str:
    """An unguessable base62 string (secrets, keys)."""
    return base62(secrets.randbits(nbytes * 8), (nbytes * 8 * 100 + 594) // 595)
