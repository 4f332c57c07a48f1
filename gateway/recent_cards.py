"""The card facts of PaymentMethods this gateway has just tokenized, so that the payment which
follows (tokenize, then create-and-confirm: Stripe.js's flow) reaches its shard with them and spares
the shard a round trip to the vault.

Only what cannot change is kept: a PaymentMethod's id and the card facts a payment uses
(`CARD_FACTS`), fixed when it is tokenized. Keyed by merchant, so one merchant's entry is
never another's. A miss (another gateway process tokenized it, or it aged out) costs nothing but
the vault call the shard makes anyway."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from actors.payments.messages import CARD_FACTS


class RecentCards:
    def __init__(self, max_entries: int = 20_000, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, dict[str, Any]]] = OrderedDict()

    def remember(self, merchant_id: str, payment_method: Mapping[str, Any]) -> None:
        card = payment_method.get("card")
        if not isinstance(card, Mapping) or not payment_method.get("id"):
            return
        facts = {"id": payment_method["id"], "card": {key: card.get(key) for key in CARD_FACTS}}
        self._entries[(merchant_id, str(payment_method["id"]))] = (self.clock() + self.ttl_s, facts)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def recall(self, merchant_id: str, pm_id: str | None) -> dict[str, Any] | None:
        if pm_id is None:
            return None
        entry = self._entries.get((merchant_id, pm_id))
        if entry is None:
            return None
        expires, facts = entry
        if expires < self.clock():
            del self._entries[(merchant_id, pm_id)]
            return None
        return facts

    def __len__(self) -> int:
        return len(self._entries)
