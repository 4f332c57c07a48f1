"""The card vault: the only component that stores a full card number (PAN).

`cards` (validation, brands, Stripe's test cards) and `crypto` (envelope encryption, key ring,
fingerprints) are pure; `actor` is the Ray actor. The actor module is imported lazily so that the
gateway can validate cards and map CardError without importing Ray and asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.vault.cards import (
    TEST_PAYMENT_METHODS,
    CardData,
    CardError,
    ValidCard,
    detect_brand,
    luhn_valid,
    validate_card,
)
from actors.vault.crypto import (
    FINGERPRINT_ENV,
    KEK_ENV,
    KeyRing,
    KeyRingError,
    Sealed,
    VaultCryptoError,
    fingerprint,
    load_fingerprint_key,
    open_sealed,
    rewrap,
    seal,
)

if TYPE_CHECKING:
    from actors.vault.actor import CardVault, CardVaultActor, UnknownTokenError, VaultError

_ACTOR_NAMES = ("CardVault", "CardVaultActor", "UnknownTokenError", "VaultError")

__all__ = [
    "FINGERPRINT_ENV",
    "KEK_ENV",
    "TEST_PAYMENT_METHODS",
    "CardData",
    "CardError",
    "CardVault",
    "CardVaultActor",
    "KeyRing",
    "KeyRingError",
    "Sealed",
    "UnknownTokenError",
    "ValidCard",
    "VaultCryptoError",
    "VaultError",
    "detect_brand",
    "fingerprint",
    "load_fingerprint_key",
    "luhn_valid",
    "open_sealed",
    "rewrap",
    "seal",
    "validate_card",
]


def __getattr__(name: str) -> Any:
    if name in _ACTOR_NAMES:
        from actors.vault import actor

        return getattr(actor, name)
    raise AttributeError(f"module 'actors.vault' has no attribute {name!r}")
