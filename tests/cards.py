"""Random test card numbers, for the suites that need many distinct cards on the shared stack."""

from __future__ import annotations

import random

from cluster.logs import luhn_complete

# The CVCs `test_leaks` searches the whole stack for (as JSON string values, among others). A random
# card whose last four digits spell one has that `last4` in its events, the ledger and the vault,
# which reads as a leak: such numbers are never drawn.
LEAK_TEST_CVCS = ("737", "9173")


def random_visa(rng: random.Random) -> str:
    """A Luhn-valid Visa number that banksim approves (not one of its special cards)."""
    while True:
        number = luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
        if number[-4:] not in LEAK_TEST_CVCS:
            return number
