"""actors/ids.py: fixed-width base62 ids that sort by creation time as plain strings."""

from __future__ import annotations

import random

from actors.ids import BASE62_ALPHABET, base62, new_id, random_token


def _one_digit_at_a_time(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        digits.append(BASE62_ALPHABET[rem])
    return "".join(reversed(digits))


def test_base62_is_positional_base_62_at_every_width() -> None:
    rng = random.Random(7)
    for width in (1, 2, 9, 16, 21, 22, 33):
        for value in [0, 1, 61, 62, 62 * 62 - 1, 62 * 62, 62**width - 1, *(rng.getrandbits(200) for _ in range(500))]:
            assert base62(value, width) == _one_digit_at_a_time(value, width), (value, width)
    assert base62(62, 3) == "010" and base62(62**3, 3) == "000"  # digits beyond the width are dropped


def test_ids_have_their_prefix_a_fixed_width_and_sort_by_time() -> None:
    ids = [new_id("pi", now_ms=ms) for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000)]
    assert all(i.startswith("pi_") and len(i) == 3 + 22 for i in ids)
    assert ids == sorted(ids)
    assert len({new_id("evt") for _ in range(10_000)}) == 10_000


def test_random_tokens_are_base62() -> None:
    token = random_token(24)
    assert len(token) == 33 and set(token) <= set(BASE62_ALPHABET)
