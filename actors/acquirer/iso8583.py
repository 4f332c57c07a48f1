"""ISO 8583 (1987, ASCII) as paygate and its acquirer speak it: spec, framing and code tables.

Shared by the adapter (`iso_adapter.py`) and the simulated bank (`banksim`), so the two cannot
drift apart. Messages travel as a 2-byte big-endian length followed by the ISO 8583 body.

Fields used
-----------
2 PAN · 3 processing code · 4 amount (minor units, 12 digits) · 7 transmission date/time
(MMDDhhmmss UTC) · 11 STAN · 12/13 local time/date · 14 expiry (YYMM) · 37 RRN · 38 auth code ·
39 response code · 41 terminal id · 42 card acceptor (merchant) id · 48 private data (TLV, below)
· 49 currency (ISO 4217 numeric) · 70 network management code · 90 original data elements.

Field 48 carries subelements as tag(2) + length(2) + value, the way Mastercard's DE 48 does:
`92` is the CVC2 (Mastercard's own tag for it; only ever sent in an 0100), and `63` is the
original transaction's RRN for completions, refunds and reversals (the original data elements
in field 90 hold MTI, STAN and time but no RRN, and the bank looks originals up by RRN).

Deviation from the 1987 standard: field 42 is LLVAR up to 40 characters instead of fixed 15, so
paygate's prefixed merchant ids fit without a merchant-id mapping table.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import iso8583
from iso8583.specs import default_ascii

from actors.acquirer.messages import Kind, mask_pan

SPEC: dict[str, dict[str, Any]] = copy.deepcopy(default_ascii)  # type: ignore[arg-type]
SPEC["42"] = {
    "data_enc": "ascii",
    "len_enc": "ascii",
    "len_type": 2,
    "max_len": 40,
    "desc": "Card Acceptor ID Code (LLVAR, paygate)",
}

MAX_FRAME = 0xFFFF
APPROVED = "00"
ECHO_NETWORK_CODE = "301"  # field 70: echo test
SE_CVC = "92"
SE_ORIGINAL_RRN = "63"


class FrameError(ValueError):
    """A message that cannot be encoded or decoded. The message never quotes field values."""


@dataclass(frozen=True)
class MessageType:
    request_mti: str
    response_mti: str
    processing_code: str | None  # field 3; None where the message has no field 3


MESSAGE_TYPES: dict[Kind, MessageType] = {
    "authorize": MessageType("0100", "0110", "000000"),
    "capture": MessageType("0220", "0230", "000000"),  # completion of an earlier authorization
    "refund": MessageType("0200", "0210", "200000"),
    "reversal": MessageType("0400", "0410", "000000"),
    "echo": MessageType("0800", "0810", None),
}


def kind_of(mti: str, processing_code: str | None) -> Kind | None:
    """Which request this is, from its MTI and processing code (field 3); None if unsupported."""
    for kind, message_type in MESSAGE_TYPES.items():
        if message_type.request_mti != mti:
            continue
        wanted = message_type.processing_code
        # Only the transaction type (first two digits) matters; account types may vary.
        if wanted is None or (processing_code or "")[:2] == wanted[:2]:
            return kind
    return None


def response_mti(request_mti: str) -> str:
    """0100 -> 0110, 0220 -> 0230: the function digit goes from request/advice to its response."""
    function = request_mti[2:3]
    if not function.isdigit() or int(function) % 2:
        return request_mti  # not a request; nothing sensible to answer with
    return request_mti[:2] + str(int(function) + 1) + request_mti[3:]


# ISO 4217 alpha -> numeric (field 49).
CURRENCIES: dict[str, str] = {
    "usd": "840", "eur": "978", "gbp": "826", "jpy": "392", "cad": "124", "aud": "036",
    "chf": "756", "sek": "752", "nok": "578", "dkk": "208", "nzd": "554", "sgd": "702",
    "hkd": "344", "pln": "985", "czk": "203", "mxn": "484", "brl": "986", "inr": "356",
}  # fmt: skip
_ALPHA_BY_NUMERIC = {numeric: alpha for alpha, numeric in CURRENCIES.items()}


def currency_numeric(alpha: str) -> str:
    try:
        return CURRENCIES[alpha]
    except KeyError:
        raise ValueError(f"currency {alpha!r} is not supported by this acquirer") from None


def currency_alpha(numeric: str) -> str | None:
    return _ALPHA_BY_NUMERIC.get(numeric)


# Response code (field 39) -> Stripe decline_code. Codes not listed decline as generic_decline.
DECLINE_CODES: dict[str, str] = {
    "05": "generic_decline",
    "12": "transaction_not_allowed",  # invalid transaction (e.g. capture of a reversed auth)
    "13": "invalid_amount",  # e.g. capture > authorized, refund > captured
    "14": "incorrect_number",  # the card number fails the Luhn check
    "25": "no_action_taken",  # unable to locate the original transaction
    "41": "lost_card",
    "43": "stolen_card",
    "51": "insufficient_funds",
    "54": "expired_card",
    "82": "incorrect_cvc",
    "94": "duplicate_transaction",  # same RRN and MTI, different content
    "96": "processing_error",
}


def decline_code_for(response_code: str) -> str | None:
    if response_code == APPROVED:
        return None
    return DECLINE_CODES.get(response_code, "generic_decline")


def encode_private_data(subelements: dict[str, str]) -> str:
    """Field 48: tag(2) + length(2) + value for each subelement."""
    parts = []
    for tag, value in subelements.items():
        if len(tag) != 2 or len(value) > 99:
            raise FrameError(f"field 48 subelement {tag!r} is malformed")
        parts.append(f"{tag}{len(value):02d}{value}")
    return "".join(parts)


def decode_private_data(data: str) -> dict[str, str]:
    subelements: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        tag, length = data[pos : pos + 2], data[pos + 2 : pos + 4]
        if len(tag) != 2 or not length.isdigit() or pos + 4 + int(length) > len(data):
            raise FrameError(f"field 48 is malformed at position {pos}")
        subelements[tag] = data[pos + 4 : pos + 4 + int(length)]
        pos += 4 + int(length)
    return subelements


def original_data_elements(mti: str, stan: str, transmitted_at: str) -> str:
    """Field 90: original MTI, STAN, transmission time, then acquirer/forwarder ids (zeros)."""
    return f"{mti}{stan}{transmitted_at or '0' * 10}" + "0" * 22


def safe_fields(doc: dict[str, str]) -> dict[str, str]:
    """A copy fit for logs and storage: PAN masked, CVC removed, bitmaps dropped."""
    safe = {key: value for key, value in doc.items() if key not in ("p", "1")}
    if "2" in safe:
        safe["2"] = mask_pan(safe["2"])
    if "48" in safe:
        try:
            private = decode_private_data(safe["48"])
        except FrameError:
            private = {}  # unparseable: drop it whole rather than risk leaking a CVC
        private.pop(SE_CVC, None)
        if private:
            safe["48"] = encode_private_data(private)
        else:
            del safe["48"]
    return safe


def encode_frame(doc: dict[str, str]) -> bytes:
    """Length-prefixed ISO 8583 bytes for `doc` (a dict of field number -> string, plus "t")."""
    problem = None
    try:
        # encode() adds bitmaps to the dict it is given: hand it a copy.
        body, _ = iso8583.encode(dict(doc), SPEC)
    except (iso8583.EncodeError, TypeError, ValueError) as exc:
        problem = _describe(exc)
    if problem is not None:
        # Raised outside the except block: pyiso8583's errors hold the document (with the PAN).
        raise FrameError(f"cannot encode ISO 8583 message: {problem}")
    if len(body) > MAX_FRAME:
        raise FrameError(f"ISO 8583 message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame")
    return len(body).to_bytes(2, "big") + bytes(body)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, str]:
    """Read one framed message. EOF raises `asyncio.IncompleteReadError`; garbage `FrameError`.

    A `FrameError` leaves the stream at the next frame, so the caller may keep reading.
    """
    header = await reader.readexactly(2)
    body = await reader.readexactly(int.from_bytes(header, "big"))
    problem = None
    try:
        doc, _ = iso8583.decode(body, SPEC)
    except (iso8583.DecodeError, ValueError) as exc:
        problem = _describe(exc)
    if problem is not None:
        raise FrameError(f"cannot decode ISO 8583 message: {problem}")
    return dict(doc)


def _describe(exc: Exception) -> str:
    # pyiso8583 messages say what is wrong with which field ("Field data is 20 bytes, larger
    # than maximum 19: field 2"), never the data; other errors are reduced to their type.
    if isinstance(exc, (iso8583.EncodeError, iso8583.DecodeError)):
        return str(exc)
    return type(exc).__name__
