"""Bounded, sliding-window counters: the memory of the fraud scorer.

Each tracked entity (a card fingerprint, an IP address, an email, a device id — always scoped to
one merchant) keeps attempts and declines in three sliding windows, 1 minute, 1 hour and 24 hours.
Each window is a short run of buckets (1 s buckets for the minute, 1 min buckets for the hour,
10 min buckets for the day) with running totals, so adding an event and reading a window are
O(1) amortised; a window may over-count by at most one bucket at its old edge (≤ 1 s, 1 min,
10 min), never under-count. Entities of kind IP, email and device also remember the distinct card
fingerprints they were seen with (the card-testing signal), capped per entity.

An entity is one `bytearray` of packed doubles — a header (last seen, the six running sums, the
three bucket counts) followed by the buckets of the three windows, (start, attempts, declines)
each. A bytearray holds no object references, so the cyclic garbage collector never tracks it:
200,000 entities cost the collector nothing, where small Python objects per bucket made every
full collection a pause of hundreds of milliseconds.

Memory is bounded twice: a window holds at most span/width buckets, and the `EntityStore` keeps at
most `max_entities` entities, least recently seen evicted first, and drops any entity idle longer
than the longest window (about 100 bytes for an entity seen once).
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from dataclasses import dataclass

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# (span, bucket width) of the three windows
WINDOWS: tuple[tuple[float, float], ...] = ((MINUTE, 1.0), (HOUR, 60.0), (DAY, 600.0))
DISTINCT_CARDS_CAP = 256

# header: last_seen, attempts/declines for 1 min, 1 h, 24 h, then the bucket count of each window
_HEADER = struct.Struct("<10d")
_BUCKET = struct.Struct("<3d")
_LAST_SEEN = struct.Struct("<d")
_HSIZE, _BSIZE = _HEADER.size, _BUCKET.size

Entity = bytearray
Counts = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def new_entity() -> Entity:
    return bytearray(_HSIZE)


def last_seen(entity: Entity) -> float:
    return float(_LAST_SEEN.unpack_from(entity, 0)[0])


def add(entity: Entity, ts: float, attempts: int = 1, declines: int = 0) -> None:
    """Count `attempts` and `declines` at time `ts` in the three windows."""
    header = list(_HEADER.unpack_from(entity, 0))
    offset = _HSIZE
    for w, (_, width) in enumerate(WINDOWS):
        n = int(header[7 + w])
        end = offset + n * _BSIZE
        start = ts - ts % width
        if n:
            last_start, last_attempts, last_declines = _BUCKET.unpack_from(entity, end - _BSIZE)
            if last_start >= start:  # same bucket (or an event a little out of order)
                _BUCKET.pack_into(entity, end - _BSIZE, last_start, last_attempts + attempts,
                                  last_declines + declines)
                offset = end
                continue
        entity[end:end] = _BUCKET.pack(start, attempts, declines)
        header[7 + w] = n + 1
        offset = end + _BSIZE
    for w in range(3):
        header[1 + 2 * w] += attempts
        header[2 + 2 * w] += declines
    if ts > header[0]:
        header[0] = ts
    _HEADER.pack_into(entity, 0, *header)


def counts(entity: Entity, now: float) -> Counts:
    """((attempts, declines) for 1 min, 1 h, 24 h) at `now`, evicting buckets that left their window."""
    header = list(_HEADER.unpack_from(entity, 0))
    offset = _HSIZE
    changed = False
    for w, (span, width) in enumerate(WINDOWS):
        n = int(header[7 + w])
        horizon = now - span - width  # a bucket starting after this still overlaps the window
        k = 0
        attempts = declines = 0.0
        while k < n:
            start, a, d = _BUCKET.unpack_from(entity, offset + k * _BSIZE)
            if start > horizon:
                break
            attempts += a
            declines += d
            k += 1
        if k:
            del entity[offset:offset + k * _BSIZE]
            header[7 + w] = n - k
            header[1 + 2 * w] -= attempts
            header[2 + 2 * w] -= declines
            changed = True
        offset += (n - k) * _BSIZE
    if changed:
        _HEADER.pack_into(entity, 0, *header)
    return ((int(header[1]), int(header[2])), (int(header[3]), int(header[4])), (int(header[5]), int(header[6])))


def distinct_cards(cards: dict[str, float] | None, now: float) -> tuple[int, int, int]:
    """Distinct fingerprints in 1 min, 1 h, 24 h, from a fingerprint -> last-seen map kept in
    recency order (newest last)."""
    if not cards:
        return 0, 0, 0
    minute = hour = day = 0
    for seen in reversed(cards.values()):
        age = now - seen
        if age > DAY:
            break
        day += 1
        if age <= HOUR:
            hour += 1
            if age <= MINUTE:
                minute += 1
    return minute, hour, day


class EntityStore:
    """Entities by key, least recently seen first; bounded by count and by age. The distinct cards
    of IP, email and device entities live beside them (a str -> float dict is not GC-tracked either)."""

    def __init__(self, max_entities: int = 200_000) -> None:
        self.max_entities = max_entities
        self.entities: OrderedDict[str, Entity] = OrderedDict()
        self.cards: dict[str, dict[str, float]] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entities)

    def get(self, key: str) -> Entity | None:
        return self.entities.get(key)

    def touch(self, key: str) -> Entity:
        entities = self.entities
        entity = entities.get(key)
        if entity is None:
            entity = entities[key] = new_entity()
            if len(entities) > self.max_entities:
                old, _ = entities.popitem(last=False)
                self.cards.pop(old, None)
                self.evicted += 1
        else:
            entities.move_to_end(key)
        return entity

    def see_card(self, key: str, fingerprint: str, ts: float) -> None:
        cards = self.cards.get(key)
        if cards is None:
            cards = self.cards[key] = {}
        else:
            cards.pop(fingerprint, None)
        cards[fingerprint] = ts
        if len(cards) > DISTINCT_CARDS_CAP:
            del cards[next(iter(cards))]

    def distinct_cards(self, key: str, now: float) -> tuple[int, int, int]:
        return distinct_cards(self.cards.get(key), now)

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Drop entities idle for longer than the longest window (oldest first, at most `budget`)."""
        entities = self.entities
        dropped = 0
        while entities and dropped < budget:
            key, entity = next(iter(entities.items()))
            if now - last_seen(entity) <= DAY + WINDOWS[-1][1]:
                break
            del entities[key]
            self.cards.pop(key, None)
            dropped += 1
        self.evicted += dropped
        return dropped


@dataclass
class AmountStats:
    """A merchant's usual amounts in one currency: exponentially weighted mean and variance of
    log(amount), so a 10x outlier stands out whatever the merchant's price level."""

    count: int = 0
    mean: float = 0.0
    var: float = 0.0
    last_seen: float = 0.0

    ALPHA = 0.02  # ~50 recent payments dominate
    MIN_COUNT = 20
    MIN_STD = 0.25  # a merchant with one price still tolerates ±25 %

    def zscore(self, amount: int) -> float | None:
        if self.count < self.MIN_COUNT:
            return None
        std = max(math.sqrt(self.var), self.MIN_STD)
        return (math.log(amount) - self.mean) / std

    def add(self, amount: int, ts: float) -> None:
        x = math.log(amount)
        self.count += 1
        self.last_seen = ts
        if self.count == 1:
            self.mean, self.var = x, 0.0
            return
        # warm up as a plain average, then decay
        alpha = max(self.ALPHA, 1.0 / self.count)
        delta = x - self.mean
        self.mean += alpha * delta
        self.var = (1 - alpha) * (self.var + alpha * delta * delta)
