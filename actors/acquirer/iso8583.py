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
`92` is the CVC2 (Mastercard's own tag for it; only ever sent in an 0100 or a purchase's 0200),
`63` is the original transaction's RRN for completions, refunds and reversals (the original data
elements in field 90 hold MTI, STAN and time but no RRN, and the bank looks originals up by RRN),
and `64`, in a purchase, is the RRN its capture is to be known by (settlement, refunds): paygate
picks a capture's RRN before it is sent, whether it goes as a completion or within a purchase.

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
SE_CAPTURE_RRN = "64"  # a purchase: the RRN its capture settles under


class FrameError(ValueError):
    """A message that cannot be encoded or decoded. The message never quotes field values."""


@dataclass(frozen=True)
class MessageType:
    request_mti: str
    response_mti: str
    processing_code: str | None  # field 3; None where the message has no field 3


MESSAGE_TYPES: dict[Kind, MessageType] = {
    "authorize": MessageType("0100", "0110", "000000"),
    "purchase": MessageType("0200", "0210", "000000"),  # authorization and capture in one message
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
    body = _encode_fields(doc)
    if body is None:
        body = _encode_generic(doc)
    if len(body) > MAX_FRAME:
        raise FrameError(f"ISO 8583 message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame")
    return len(body).to_bytes(2, "big") + body


def _encode_generic(doc: dict[str, str]) -> bytes:
    problem = None
    try:
        # encode() adds bitmaps to the dict it is given: hand it a copy.
        body, _ = iso8583.encode(dict(doc), SPEC)
    except (iso8583.EncodeError, TypeError, ValueError) as exc:
        problem = _describe(exc)
    if problem is not None:
        # Raised outside the except block: pyiso8583's errors hold the document (with the PAN).
        raise FrameError(f"cannot encode ISO 8583 message: {problem}")
    return bytes(body)


async def read_frame(reader: asyncio.StreamReader) -> dict[str, str]:
    """Read one framed message. EOF raises `asyncio.IncompleteReadError`; garbage `FrameError`.

    A `FrameError` leaves the stream at the next frame, so the caller may keep reading.
    """
    header = await reader.readexactly(2)
    return decode_body(await reader.readexactly(int.from_bytes(header, "big")))


def decode_body(body: bytes) -> dict[str, str]:
    """The fields of one ISO 8583 message (without its length prefix); garbage raises `FrameError`."""
    doc = _decode_fields(body)
    if doc is not None:
        return doc
    problem = None
    try:
        decoded, _ = iso8583.decode(body, SPEC)
    except (iso8583.DecodeError, ValueError) as exc:
        problem = _describe(exc)
    if problem is not None:
        raise FrameError(f"cannot decode ISO 8583 message: {problem}")
    return dict(decoded)


# The fast path. pyiso8583 handles any spec, field by field through its spec dicts; on the hot
# path that was about 40% of the acquirer link's and of banksim's CPU. These two functions handle
# only well-formed messages made of the fields above, byte for byte as pyiso8583 does (the tests
# compare them), and return None for anything else, which then goes to pyiso8583 and its errors.
_FIELDS: dict[int, tuple[int, int]] = {  # field -> (digits of its length prefix (0: fixed), max length)
    n: (SPEC[str(n)]["len_type"], SPEC[str(n)]["max_len"])
    for n in (2, 3, 4, 7, 11, 12, 13, 14, 37, 38, 39, 41, 42, 48, 49, 70, 90)
}
_NUMBERS = {str(n): n for n in _FIELDS}
assert all(SPEC[str(n)]["data_enc"] == SPEC[str(n)]["len_enc"] == "ascii" for n in [*_FIELDS, 1])
assert SPEC["h"]["max_len"] == 0 and SPEC["t"]["max_len"] == 4 and SPEC["p"]["data_enc"] == "ascii"
_SECONDARY = 1 << 127  # bit of field 1 (a secondary bitmap follows) in the 128-bit bitmap
_SECONDARY_FIELDS = (1 << 64) - 1
_KNOWN_BITS = _SECONDARY | sum(1 << (128 - n) for n in _FIELDS)
_HEX = frozenset("0123456789ABCDEF")


def _encode_fields(doc: dict[str, str]) -> bytes | None:
    mti = doc.get("t")
    if type(mti) is not str or len(mti) != 4 or not mti.isascii():
        return None
    numbered: list[tuple[int, str]] = []
    for key, value in doc.items():
        if key in ("t", "p", "1"):  # pyiso8583 too makes the bitmaps from the fields present
            continue
        number = _NUMBERS.get(key)
        if number is None or type(value) is not str or not value.isascii():
            return None
        numbered.append((number, value))
    numbered.sort()
    bitmap, parts = 0, [mti]
    for number, value in numbered:
        digits, max_len = _FIELDS[number]
        if len(value) != max_len if digits == 0 else len(value) > max_len:
            return None
        parts.append(f"{len(value):0{digits}d}{value}" if digits else value)
        bitmap |= 1 << (128 - number)
    if bitmap & _SECONDARY_FIELDS:
        bitmap |= _SECONDARY
        parts.insert(1, f"{bitmap:032X}")
    else:
        parts.insert(1, f"{bitmap >> 64:016X}")
    return "".join(parts).encode("ascii")


def _decode_fields(body: bytes) -> dict[str, str] | None:
    if not body.isascii() or len(body) < 20:
        return None
    text = body.decode("ascii")
    primary = text[4:20]
    if not _HEX.issuperset(primary):
        return None
    doc = {"t": text[:4], "p": primary}
    bitmap, pos = int(primary, 16) << 64, 20
    if bitmap & _SECONDARY:
        secondary = text[20:36]
        if len(secondary) != 16 or not _HEX.issuperset(secondary):
            return None
        doc["1"], bitmap, pos = secondary, bitmap | int(secondary, 16), 36
    if bitmap & ~_KNOWN_BITS:
        return None
    for number, (digits, max_len) in _FIELDS.items():
        if not bitmap & (1 << (128 - number)):
            continue
        length = max_len
        if digits:
            prefix = text[pos:pos + digits]
            if len(prefix) != digits or not prefix.isdigit() or int(prefix) > max_len:
                return None
            length, pos = int(prefix), pos + digits
        value = text[pos:pos + length]
        if len(value) != length:
            return None
        doc[str(number)], pos = value, pos + length
    return doc if pos == len(text) else None


def _describe(exc: Exception) -> str:
    # pyiso8583 messages say what is wrong with which field ("Field data is 20 bytes, larger
    # than maximum 19: field 2"), never the data; other errors are reduced to their type.
    if isinstance(exc, (iso8583.EncodeError, iso8583.DecodeError)):
        return str(exc)
    return type(exc).__name__
