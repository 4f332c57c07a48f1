"""The simulated bank's settlement files: one per business day, written from its journal.

A settlement file is the bank's word on what it paid the merchant (captures) and took back
(refunds) on one business day. paygate's reconciler (`actors/reconciler`) matches it against the
ledger. Command line:

    python -m banksim.settlement --journal J --date YYYY-MM-DD --out FILE
                                 [--merchant ID ...] [--bank-id ID] [--fault FAULT ...]

Business day
------------
A transaction belongs to the UTC date of the bank's timestamp for it (the capture or refund
operation in the journal; a refund has its own date, not its payment's). The file's *cutoff* is
the end of that day, or the moment the file was written if that is earlier (a file for a day
still in progress lists what happened up to then). Reversed transactions net to zero and are not
settled: a capture whose authorization was reversed, a refund that was reversed.

Format `PGSETTLE` version 1
---------------------------
CSV (comma separated, UTF-8, `\\n` line ends, no quoting: no field may contain a comma, a quote or
a line break). Every line starts with its record type. Amounts are integers in the currency's
minor units (no sign, no decimal point); currencies are lowercase ISO 4217 codes; timestamps are
ISO 8601 in UTC with milliseconds.

    HDR,PGSETTLE,1,<business date>,<bank id>,<cutoff>,<generated at>
    REC,<seq>,<type>,<rrn>,<stan>,<auth code>,<authorization rrn>,<amount>,<currency>,<merchant id>,
        <transaction at>,<settled at>          (one line)
    ...
    TOT,<currency>,<records>,<captured total>,<refunded total>,<net>
    ...
    TRL,<record count>,<line count>

- `HDR` (line 1): format name and version, the business date (YYYY-MM-DD), the bank's id, the
  cutoff and the time the file was generated.
- `REC`, one per settled transaction, ordered by transaction time: `seq` counts records from 1;
  `type` is `capture` (the bank pays the merchant) or `refund` (the bank takes it back); `rrn` and
  `stan` are the operation's own (ISO 8583 fields 37 and 11: a capture has its own RRN, not the
  authorization's); `auth code` is field 38 of the bank's answer; `authorization rrn` is the RRN
  of the authorization the operation belongs to; `merchant id` is field 42 (paygate's merchant
  id); `transaction at` is when the bank did it; `settled at` is the cutoff of the file that
  settles it (after the transaction's own day when it settles late).
- `TOT`, one per currency present, sorted by currency: record count, sum of capture amounts, sum
  of refund amounts, and net = captured - refunded.
- `TRL` (last line): number of `REC` lines and number of lines in the file, this one included.

A reader must reject a file whose trailer is missing (truncated) or whose counts or totals do not
add up (tampered), naming the line.

Faults (for tests)
------------------
`--fault` may be given several times. Record faults are applied before the totals are computed, so
the file is consistent and only the ledger disagrees; damage faults are applied after.

- `drop:RRN`: the record is left out.
- `amount:RRN=AMOUNT`: the record carries AMOUNT instead.
- `currency:RRN=CCY`: the record carries currency CCY instead.
- `duplicate:RRN`: the record appears twice.
- `unknown:RRN=AMOUNT[:CCY]`: an extra capture the ledger never saw (currency usd by default;
  merchant: the first `--merchant`, or `mer_unknown`).
- `shift:RRN`: the transaction settles on the next business day: it is left out of its own day's
  file and listed in the next day's (give the same fault when writing the next day's file).
- `truncate[:N]` (damage): the last N lines (default 1, the trailer) are cut off.
- `tamper:RRN=AMOUNT` (damage): the record's amount is changed after the totals were computed.

`--merchant ID` (repeatable) keeps only those merchants' transactions, so a test can reconcile its
own merchants while other tests share the bank.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

FORMAT = "PGSETTLE"
VERSION = "1"
DEFAULT_BANK_ID = "BANKSIM"
RECORD_TYPES = ("capture", "refund")


@dataclass(frozen=True)
class SettlementRecord:
    type: str
    rrn: str
    stan: str
    auth_code: str
    authorization_rrn: str
    amount: int
    currency: str
    merchant_id: str
    transaction_at: str
    settled_at: str


@dataclass(frozen=True)
class Fault:
    kind: str
    rrn: str = ""
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, _, rest = text.partition(":")
        rrn, _, value = rest.partition("=")
        if kind in ("drop", "duplicate", "shift") and rrn and not value:
            return cls(kind, rrn)
        if kind in ("amount", "tamper") and rrn and value.isdigit():
            return cls(kind, rrn, value)
        if kind == "currency" and rrn and len(value) == 3 and value.isalpha():
            return cls(kind, rrn, value.lower())
        if kind == "unknown" and rrn and value.partition(":")[0].isdigit():
            return cls(kind, rrn, value)
        if kind == "truncate" and (rest == "" or rest.isdigit()):
            return cls(kind, "", rest or "1")
        raise ValueError(f"bad fault {text!r} (see `python -m banksim.settlement --help`)")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def day_bounds(business_date: date) -> tuple[datetime, datetime]:
    start = datetime.combine(business_date, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def cutoff_for(business_date: date, now: datetime | None = None) -> datetime:
    """End of the business day, or now if the day is still in progress."""
    end = day_bounds(business_date)[1]
    now = now or datetime.now(UTC)
    return min(end, now)


_OPERATIONS_SQL = """
SELECT o.kind, o.rrn, o.stan, o.authorization_rrn, o.amount, o.created_at, a.currency, a.merchant_id,
       CASE WHEN o.kind = 'capture' THEN a.auth_code
            ELSE coalesce((SELECT json_extract(x.fields, '$."38"') FROM answers x
                            WHERE x.rrn = o.rrn AND json_extract(x.fields, '$."39"') = '00' LIMIT 1), '')
       END AS auth_code
  FROM operations o JOIN authorizations a ON a.rrn = o.authorization_rrn
 WHERE o.kind IN ('capture', 'refund') AND o.created_at >= ? AND o.created_at < ?
   AND o.reversed = 0 AND NOT (o.kind = 'capture' AND a.state = 'reversed')
 ORDER BY o.created_at, o.id
"""


def journal_records(journal: str | Path, business_date: date, *, merchants: Iterable[str] | None = None,
                    shifted: Iterable[str] = (), now: datetime | None = None) -> list[SettlementRecord]:
    """The records the bank settles on `business_date`, read from its journal (opened read-only)."""
    keep = set(merchants) if merchants is not None else None
    late = set(shifted)
    start, end = day_bounds(business_date)
    cutoff = cutoff_for(business_date, now)
    settled_at = _iso(cutoff)
    db = sqlite3.connect(f"file:{Path(journal)}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        # up to the cutoff, inclusive at millisecond precision (the journal's), exclusive of the next day
        upper = min(end, cutoff + timedelta(milliseconds=1))
        rows = db.execute(_OPERATIONS_SQL, (_iso(start - timedelta(days=1)), _iso(upper))).fetchall()
    finally:
        db.close()
    records = []
    for kind, rrn, stan, auth_rrn, amount, created_at, currency, merchant_id, auth_code in rows:
        if keep is not None and merchant_id not in keep:
            continue
        moment = datetime.fromisoformat(created_at)
        settles_on = moment.date() + timedelta(days=1 if rrn in late else 0)
        if settles_on != business_date:
            continue
        records.append(SettlementRecord(kind, rrn, stan, auth_code or "", auth_rrn, int(amount), currency,
                                        merchant_id, _iso(moment), settled_at))
    return records


def apply_record_faults(records: Sequence[SettlementRecord], faults: Sequence[Fault], *,
                        merchants: Sequence[str] | None = None, settled_at: str = "") -> list[SettlementRecord]:
    out = list(records)
    for fault in faults:
        if fault.kind == "drop":
            out = [r for r in out if r.rrn != fault.rrn]
        elif fault.kind == "amount":
            out = [replace(r, amount=int(fault.value)) if r.rrn == fault.rrn else r for r in out]
        elif fault.kind == "currency":
            out = [replace(r, currency=fault.value) if r.rrn == fault.rrn else r for r in out]
        elif fault.kind == "duplicate":
            out = [copy for r in out for copy in ((r, r) if r.rrn == fault.rrn else (r,))]
        elif fault.kind == "unknown":
            amount, _, currency = fault.value.partition(":")
            stamp = settled_at or (out[-1].settled_at if out else _iso(datetime.now(UTC)))
            moment = out[-1].transaction_at if out else stamp
            merchant = merchants[0] if merchants else "mer_unknown"
            out.append(SettlementRecord("capture", fault.rrn, "999999", "UNKNWN", fault.rrn, int(amount),
                                        (currency or "usd").lower(), merchant, moment, stamp))
    return out


def render(business_date: date, records: Sequence[SettlementRecord], *, bank_id: str = DEFAULT_BANK_ID,
           cutoff: datetime | None = None, generated_at: datetime | None = None) -> list[str]:
    """The file's lines (without line ends), header to trailer."""
    generated = generated_at or datetime.now(UTC)
    cut = cutoff or cutoff_for(business_date, generated)
    lines = [f"HDR,{FORMAT},{VERSION},{business_date.isoformat()},{bank_id},{_iso(cut)},{_iso(generated)}"]
    totals: dict[str, list[int]] = {}
    for seq, r in enumerate(records, start=1):
        for field in (r.rrn, r.stan, r.auth_code, r.authorization_rrn, r.currency, r.merchant_id):
            if any(c in field for c in ',"\r\n'):
                raise ValueError(f"field {field!r} of record {seq} cannot be written in {FORMAT}")
        lines.append(f"REC,{seq},{r.type},{r.rrn},{r.stan},{r.auth_code},{r.authorization_rrn},{r.amount},"
                     f"{r.currency},{r.merchant_id},{r.transaction_at},{r.settled_at}")
        total = totals.setdefault(r.currency, [0, 0, 0])
        total[0] += 1
        total[1 if r.type == "capture" else 2] += r.amount
    for currency in sorted(totals):
        count, captured, refunded = totals[currency]
        lines.append(f"TOT,{currency},{count},{captured},{refunded},{captured - refunded}")
    lines.append(f"TRL,{len(records)},{len(lines) + 1}")
    return lines


def apply_damage(lines: list[str], faults: Sequence[Fault]) -> list[str]:
    out = list(lines)
    for fault in faults:
        if fault.kind == "tamper":
            for i, line in enumerate(out):
                parts = line.split(",")
                if parts[0] == "REC" and parts[3] == fault.rrn:
                    parts[7] = fault.value
                    out[i] = ",".join(parts)
        elif fault.kind == "truncate":
            out = out[: max(0, len(out) - int(fault.value))]
    return out


def write_settlement_file(journal: str | Path, business_date: date, out: str | Path, *,
                          faults: Sequence[Fault | str] = (), merchants: Sequence[str] | None = None,
                          bank_id: str = DEFAULT_BANK_ID, now: datetime | None = None) -> Path:
    """Write the settlement file of `business_date` from the journal; return its path."""
    parsed = [f if isinstance(f, Fault) else Fault.parse(f) for f in faults]
    generated = now or datetime.now(UTC)
    cutoff = cutoff_for(business_date, generated)
    shifted = [f.rrn for f in parsed if f.kind == "shift"]
    records = journal_records(journal, business_date, merchants=merchants, shifted=shifted, now=generated)
    records = apply_record_faults(records, parsed, merchants=merchants, settled_at=_iso(cutoff))
    lines = apply_damage(render(business_date, records, bank_id=bank_id, cutoff=cutoff, generated_at=generated),
                         parsed)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file (unless `truncate` asked for one)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="banksim.settlement",
                                     description="Write banksim's settlement file for one business day")
    parser.add_argument("--journal", type=Path, required=True, help="banksim's SQLite journal")
    parser.add_argument("--date", type=date.fromisoformat, required=True, help="business date YYYY-MM-DD (UTC)")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--merchant", action="append", help="only this merchant's transactions (repeatable)")
    parser.add_argument("--bank-id", default=DEFAULT_BANK_ID)
    parser.add_argument("--fault", action="append", default=[], type=Fault.parse,
                        help="drop:RRN amount:RRN=N currency:RRN=CCY duplicate:RRN unknown:RRN=N[:CCY] "
                             "shift:RRN truncate[:N] tamper:RRN=N (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = write_settlement_file(args.journal, args.date, args.out, faults=args.fault, merchants=args.merchant,
                                 bank_id=args.bank_id)
    print(path)


if __name__ == "__main__":
    main()
