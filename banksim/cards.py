"""How the simulated bank answers each card number.

Stripe's test numbers answer as they do on Stripe; two numbers of our own simulate a slow bank
and a lost reply. Every other Luhn-valid, unexpired card is approved.

| card number        | response code | decline_code / behaviour                                    |
|--------------------|---------------|-------------------------------------------------------------|
| 4242424242424242   | 00            | approved (so is any other valid card)                        |
| 4000000000000002   | 05            | generic_decline                                              |
| 4000000000009995   | 51            | insufficient_funds                                           |
| 4000000000009987   | 41            | lost_card                                                    |
| 4000000000009979   | 43            | stolen_card                                                  |
| 4000000000000069   | 54            | expired_card                                                 |
| 4000000000000127   | 82            | incorrect_cvc                                                |
| 4000000000000119   | 96            | processing_error                                             |
| 4000000000007775   | 00            | SLOW_CARD: approved, answered after `--slow-ms`              |
| 4000000000008880   | 00            | NEVER_ANSWER_CARD: approved and journaled, never answered    |
| fails Luhn         | 14            | incorrect_number                                             |
| expiry in the past | 54            | expired_card                                                 |

NEVER_ANSWER_CARD models a reply lost on the way back: the authorization exists in the journal
and holds funds until a reversal (0400) for its RRN releases them. Retransmitting the 0100 gets
no answer either, so a reversal is the only way to settle it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from cluster.logs import luhn_valid

SLOW_CARD = "4000000000007775"
NEVER_ANSWER_CARD = "4000000000008880"

# Stripe test card -> ISO 8583 response code.
DECLINED_CARDS: dict[str, str] = {
    "4000000000000002": "05",
    "4000000000009995": "51",
    "4000000000009987": "41",
    "4000000000009979": "43",
    "4000000000000069": "54",
    "4000000000000127": "82",
    "4000000000000119": "96",
}

Behaviour = Literal["normal", "slow", "silent"]


@dataclass(frozen=True)
class CardOutcome:
    response_code: str
    behaviour: Behaviour = "normal"


def outcome(pan: str, expiry_yymm: str | None, today: date) -> CardOutcome:
    """The bank's answer to an authorization on `pan` (field 14 expiry as YYMM, if sent)."""
    if not (pan.isdigit() and 12 <= len(pan) <= 19 and luhn_valid(pan)):
        return CardOutcome("14")
    # Stripe's decline cards win over our own checks: they carry valid future expiries in tests.
    if pan in DECLINED_CARDS:
        return CardOutcome(DECLINED_CARDS[pan])
    if expiry_yymm is not None and _expired(expiry_yymm, today):
        return CardOutcome("54")
    if pan == SLOW_CARD:
        return CardOutcome("00", "slow")
    if pan == NEVER_ANSWER_CARD:
        return CardOutcome("00", "silent")
    return CardOutcome("00")


def _expired(expiry_yymm: str, today: date) -> bool:
    if len(expiry_yymm) != 4 or not expiry_yymm.isdigit():
        return True
    year, month = 2000 + int(expiry_yymm[:2]), int(expiry_yymm[2:])
    if not 1 <= month <= 12:
        return True
    # A card is valid through the last day of its expiry month.
    return (year, month) < (today.year, today.month)
