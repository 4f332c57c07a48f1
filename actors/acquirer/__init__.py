"""Talking to the acquiring bank: typed messages, the adapter interface, and its ISO 8583 implementation."""

from actors.acquirer.adapter import AcquirerAdapter
from actors.acquirer.iso_adapter import Iso8583Adapter
from actors.acquirer.messages import (
    AcquirerError,
    AcquirerRequest,
    AcquirerResponse,
    AcquirerTimeout,
    AcquirerUnavailable,
    CardData,
    Kind,
    OriginalRef,
    format_transmitted_at,
    mask_pan,
)

__all__ = [
    "AcquirerAdapter",
    "AcquirerError",
    "AcquirerRequest",
    "AcquirerResponse",
    "AcquirerTimeout",
    "AcquirerUnavailable",
    "CardData",
    "Iso8583Adapter",
    "Kind",
    "OriginalRef",
    "format_transmitted_at",
    "mask_pan",
]
