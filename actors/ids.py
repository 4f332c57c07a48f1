"""Prefixed, time-sortable ids (`pi_…`, `pm_…`, `re_…`, `evt_…`, `we_…`).

48 bits of milliseconds then 80 random bits, in a fixed-width base62 body: ids sort by creation
time as plain strings, which keyset pagination relies on.
"""

from __future__ import annotations

import secrets
import time

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_WIDTH = 22  # ceil(128 / log2(62))


_PAIRS = [high + low for high in BASE62_ALPHABET for low in BASE62_ALPHABET]  # two digits per division


def base62(value: int, width: int) -> str:
    """`value` in base 62, left-padded to `width` (higher digits beyond it are dropped)."""
    chunks = []
    for _ in range(width >> 1):
        value, rem = divmod(value, 62 * 62)
        chunks.append(_PAIRS[rem])
    if width & 1:
        chunks.append(BASE62_ALPHABET[value % 62])
    return "".join(reversed(chunks))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | secrets.randbits(80)
    return f"{prefix}_{base62(value, _WIDTH)}"


def random_token(nbytes: int = 24) -> str:
    """An unguessable base62 string (secrets, keys)."""
    return base62(secrets.randbits(nbytes * 8), (nbytes * 8 * 100 + 594) // 595)
