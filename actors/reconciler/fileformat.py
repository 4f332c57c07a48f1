"""Reading and verifying a settlement file (format `PGSETTLE` version 1, described in
`banksim/settlement.py` and the README).

`parse_settlement` checks everything before anything is used: the header, every record's fields,
the record sequence, the per-currency totals and the trailer's counts. The first problem raises
`SettlementFileError` naming the line; a file that parses is internally consistent, so whatever
the reconciler finds after that is a disagreement with the ledger, not a damaged file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

FORMAT = "PGSETTLE"
SUPPORTED_VERSIONS = ("1",)
RECORD_TYPES = ("capture", "refund")

_RRN = re.compile(r"[0-9A-Za-z]{1,12}")
_STAN = re.compile(r"[0-9]{1,6}")
_CURRENCY = re.compile(r"[a-z]{3}")
_AMOUNT = re.compile(r"[0-9]{1,18}")
_HEADER_FIELDS = 7
_RECORD_FIELDS = 12
_TOTAL_FIELDS = 6
_TRAILER_FIELDS = 3


class SettlementFileError(ValueError):
    """The file is malformed, truncated or its trailer does not add up; nothing may be used."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class Record:
    line: int
    seq: int
    type: str  # capture | refund
    rrn: str
    stan: str
    auth_code: str
    authorization_rrn: str
    amount: int
    currency: str
    merchant_id: str
    transaction_at: datetime
    settled_at: datetime


@dataclass(frozen=True)
class CurrencyTotal:
    records: int
    captured: int
    refunded: int

    @property
    def net(self) -> int:
        return self.captured - self.refunded


@dataclass(frozen=True)
class SettlementFile:
    business_date: date
    bank_id: str
    version: str
    cutoff: datetime
    generated_at: datetime
    records: list[Record]
    totals: dict[str, CurrencyTotal]
    sha256: str
    name: str


def _timestamp(value: str, line: int, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SettlementFileError(line, f"{what} {value[:40]!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise SettlementFileError(line, f"{what} {value[:40]!r} has no UTC offset")
    return moment


def _int(value: str, line: int, what: str) -> int:
    if not _AMOUNT.fullmatch(value):
        raise SettlementFileError(line, f"{what} {value[:40]!r} is not a non-negative integer")
    return int(value)


def _fields(text: str, line: int, expected: int, kind: str) -> list[str]:
    fields = text.split(",")
    if len(fields) != expected:
        raise SettlementFileError(line, f"{kind} line has {len(fields)} fields, expected {expected}")
    return fields


def _lines(data: bytes) -> Iterator[tuple[int, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SettlementFileError(line, "is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    for number, raw in enumerate(lines, start=1):
        yield number, raw[:-1] if raw.endswith("\r") else raw


def parse_settlement(data: bytes, *, name: str = "", expected_date: date | None = None) -> SettlementFile:
    """Parse and verify a whole file; raise SettlementFileError (with the line) on the first problem."""
    records: list[Record] = []
    computed: dict[str, list[int]] = {}
    declared: dict[str, CurrencyTotal] = {}
    header: list[str] | None = None
    cutoff = generated = None
    business_date = None
    trailer_line = 0
    last_line = 0
    for number, text in _lines(data):
        last_line = number
        if trailer_line:
            raise SettlementFileError(number, "content after the trailer (TRL must be the last line)")
        kind = text.split(",", 1)[0]
        if number == 1:
            if kind != "HDR":
                raise SettlementFileError(1, f"the first line must be the HDR header, found {kind[:20]!r}")
            header = _fields(text, 1, _HEADER_FIELDS, "HDR")
            if header[1] != FORMAT:
                raise SettlementFileError(1, f"format {header[1][:20]!r} is not {FORMAT}")
            if header[2] not in SUPPORTED_VERSIONS:
                raise SettlementFileError(1, f"format version {header[2][:10]!r} is not supported "
                                             f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
            try:
                business_date = date.fromisoformat(header[3])
            except ValueError:
                raise SettlementFileError(1, f"business date {header[3][:20]!r} is not YYYY-MM-DD") from None
            if expected_date is not None and business_date != expected_date:
                raise SettlementFileError(1, f"the file is for {business_date}, not {expected_date}")
            if not header[4]:
                raise SettlementFileError(1, "the bank id is empty")
            cutoff = _timestamp(header[5], 1, "cutoff")
            generated = _timestamp(header[6], 1, "generation time")
        elif kind == "REC":
            if declared:
                raise SettlementFileError(number, "REC after TOT lines")
            records.append(_record(text, number, len(records) + 1))
            record = records[-1]
            total = computed.setdefault(record.currency, [0, 0, 0])
            total[0] += 1
            total[1 if record.type == "capture" else 2] += record.amount
        elif kind == "TOT":
            fields = _fields(text, number, _TOTAL_FIELDS, "TOT")
            currency = fields[1]
            if not _CURRENCY.fullmatch(currency):
                raise SettlementFileError(number, f"currency {currency[:10]!r} is not a lowercase ISO 4217 code")
            if currency in declared:
                raise SettlementFileError(number, f"a second TOT line for {currency}")
            count, captured, refunded = (_int(fields[i], number, what) for i, what in
                                         ((2, "record count"), (3, "captured total"), (4, "refunded total")))
            net_text = fields[5]
            net = int(net_text) if re.fullmatch(r"-?[0-9]{1,19}", net_text) else None
            got = computed.get(currency, [0, 0, 0])
            if [count, captured, refunded] != got or net != got[1] - got[2]:
                raise SettlementFileError(number, (
                    f"{currency} totals do not add up: the trailer says {count} records, captured {captured}, "
                    f"refunded {refunded}, net {net_text}; the records add up to {got[0]} records, captured "
                    f"{got[1]}, refunded {got[2]}, net {got[1] - got[2]}"))
            declared[currency] = CurrencyTotal(count, captured, refunded)
        elif kind == "TRL":
            fields = _fields(text, number, _TRAILER_FIELDS, "TRL")
            count = _int(fields[1], number, "record count")
            line_count = _int(fields[2], number, "line count")
            if count != len(records):
                raise SettlementFileError(number, f"the trailer counts {count} records, the file has {len(records)}")
            if line_count != number:
                raise SettlementFileError(number, f"the trailer counts {line_count} lines, the file has {number}")
            missing = sorted(set(computed) - set(declared))
            if missing:
                raise SettlementFileError(number, f"no TOT line for {', '.join(missing)}")
            trailer_line = number
        else:
            raise SettlementFileError(number, f"unknown record type {kind[:20]!r} (expected REC, TOT or TRL)")
    if header is None or business_date is None or cutoff is None or generated is None:
        raise SettlementFileError(1, "the file is empty")
    if not trailer_line:
        raise SettlementFileError(last_line + 1, "the file ends without a TRL trailer (truncated?)")
    return SettlementFile(business_date, header[4], header[2], cutoff, generated, records, declared,
                          hashlib.sha256(data).hexdigest(), name)


def _record(text: str, line: int, seq: int) -> Record:
    f = _fields(text, line, _RECORD_FIELDS, "REC")
    if f[1] != str(seq):
        raise SettlementFileError(line, f"record sequence {f[1][:12]!r}, expected {seq}")
    if f[2] not in RECORD_TYPES:
        raise SettlementFileError(line, f"type {f[2][:20]!r} is not capture or refund")
    if not _RRN.fullmatch(f[3]):
        raise SettlementFileError(line, f"RRN {f[3][:20]!r} is not 1-12 letters or digits")
    if not _STAN.fullmatch(f[4]):
        raise SettlementFileError(line, f"STAN {f[4][:20]!r} is not 1-6 digits")
    if f[6] and not _RRN.fullmatch(f[6]):
        raise SettlementFileError(line, f"authorization RRN {f[6][:20]!r} is not 1-12 letters or digits")
    amount = _int(f[7], line, "amount")
    if amount == 0:
        raise SettlementFileError(line, "amount is zero")
    if not _CURRENCY.fullmatch(f[8]):
        raise SettlementFileError(line, f"currency {f[8][:10]!r} is not a lowercase ISO 4217 code")
    if not f[9] or len(f[9]) > 255:
        raise SettlementFileError(line, "merchant id is empty or too long")
    return Record(line, seq, f[2], f[3], f[4], f[5], f[6], amount, f[8], f[9],
                  _timestamp(f[10], line, "transaction time"), _timestamp(f[11], line, "settlement time"))


def read_settlement(path: str | Path, *, expected_date: date | None = None) -> SettlementFile:
    file = Path(path)
    return parse_settlement(file.read_bytes(), name=file.name, expected_date=expected_date)
