"""actors/ids.py: fixed-width base62 ids that sort by creation time as plain strings."""

from __future__ import annotations

import os
import random
import threading

from actors.ids import BASE62_ALPHABET, base62, new_id, random_token


def _one_digit_at_a_time(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        digits.append(BASE62_ALPHABET[rem])
    return "".join(reversed(digits))


def test_base62_is_positional_base_62_at_every_width() -> None:
    rng = random.Random(7)
    for width in (1, 2, 3, 4, 7, 9, 16, 21, 22, 33):
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


def _random_part(id_: str) -> int:
    """The 80 random bits of an id (the 48 above them are its milliseconds)."""
    value = 0
    for digit in id_.partition("_")[2]:
        value = value * 62 + BASE62_ALPHABET.index(digit)
    return value & ((1 << 80) - 1)


def test_ids_made_in_the_same_millisecond_by_many_threads_never_repeat() -> None:
    # Random bits are read ahead in bulk and shared by the process's threads: none may be taken twice.
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(made))

    def make(out: list[str]) -> None:
        start.wait()
        out.extend(new_id("pi", now_ms=1_765_000_000_000) for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for out in made for i in out]
    assert len(ids) == 40_000 and len(set(ids)) == 40_000


def test_a_forked_child_never_repeats_its_parents_random_bits() -> None:
    new_id("pi")  # the parent now holds bits read ahead for its next ids
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        os.close(reader)
        os.write(writer, " ".join(new_id("pi") for _ in range(300)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_id("pi") for _ in range(300)]
    assert len(child) == 300
    assert not {_random_part(i) for i in child} & {_random_part(i) for i in parent}
