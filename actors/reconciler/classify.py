"""Matching settlement records to ledger transactions, and the totals of a run: pure functions.

The match key is the acquirer reference: (type, RRN). A capture's RRN is the RRN of its own
capture message (`payment_orders.capture_rrn`), a refund's is `refunds.rrn`; both come from the
ledger's one message sequence, so they are unique across the ledger.

Each settlement record (in the run's scope) becomes one item, in file order:

- `duplicate`: its (type, RRN) already appeared earlier in this file, or in the file of an
  earlier business date (same scope);
- `missing_in_ledger`: the ledger has no booked transaction with that (type, RRN);
- `currency_mismatch`: booked in another currency;
- `amount_mismatch`: booked with another amount;
- `timing`: agrees, but the bank did it on an earlier day: it settled late;
- `matched`: agrees.

Then each ledger transaction booked on the business date (up to the file's cutoff) that no record
of this file carries becomes a `missing_in_settlement` item, unless an earlier date's file already
settled it (booked just after midnight, transacted at the bank just before: it is that day's). If
a later date's file settled it, the item stays `missing_in_settlement` with resolution
`settled_late` (and that later run lists the record as `timing`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from actors.reconciler.fileformat import Record

CLASSIFICATIONS = ("matched", "missing_in_ledger", "missing_in_settlement", "amount_mismatch",
                   "currency_mismatch", "duplicate", "timing")
Key = tuple[str, str]  # (kind, rrn)


@dataclass(frozen=True)
class LedgerTxn:
    """A capture or refund as the ledger booked it."""

    kind: str
    rrn: str
    object_id: str
    merchant_id: str
    amount: int
    currency: str
    booked_at: datetime


@dataclass(frozen=True)
class PriorSettlement:
    """The same (kind, RRN) was carried by the file of another business date (same scope)."""

    business_date: date
    run_id: str
    line: int


@dataclass
class Item:
    classification: str
    kind: str
    rrn: str
    line: int | None = None
    merchant_id: str | None = None
    object_id: str | None = None
    settlement_amount: int | None = None
    settlement_currency: str | None = None
    ledger_amount: int | None = None
    ledger_currency: str | None = None
    transaction_at: datetime | None = None
    ledger_at: datetime | None = None
    note: str | None = None
    resolution: str | None = None
    resolved_by_run: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "classification": self.classification, "type": self.kind, "rrn": self.rrn, "line": self.line,
            "merchant_id": self.merchant_id, "object_id": self.object_id,
            "settlement_amount": self.settlement_amount, "settlement_currency": self.settlement_currency,
            "ledger_amount": self.ledger_amount, "ledger_currency": self.ledger_currency,
            "transaction_at": _iso(self.transaction_at), "ledger_at": _iso(self.ledger_at), "note": self.note,
            "resolution": self.resolution, "resolved_by_run": self.resolved_by_run,
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


def _from_record(classification: str, record: Record, note: str | None = None) -> Item:
    return Item(classification, record.type, record.rrn, line=record.line, merchant_id=record.merchant_id,
                settlement_amount=record.amount, settlement_currency=record.currency,
                transaction_at=record.transaction_at, note=note)


def classify(business_date: date, records: Sequence[Record], booked: Mapping[Key, LedgerTxn],
             candidates: Iterable[LedgerTxn], prior: Mapping[Key, Sequence[PriorSettlement]],
             unbooked: Mapping[Key, str] | None = None) -> list[Item]:
    """One item per record, then one per ledger transaction of the day that no record carries.

    `booked`: the ledger's booked transactions by key (at least every key of `records`);
    `candidates`: the transactions booked on `business_date` up to the cutoff; `prior`: where
    other dates' files carried the same keys; `unbooked`: why a key the file carries is not booked
    (e.g. "refund re_… is failed"), for the notes.
    """
    unbooked = unbooked or {}
    items: list[Item] = []
    first_line: dict[Key, int] = {}
    for record in records:
        key = (record.type, record.rrn)
        if key in first_line:
            items.append(_from_record("duplicate", record, f"also on line {first_line[key]}"))
            continue
        first_line[key] = record.line
        earlier = [p for p in prior.get(key, ()) if p.business_date < business_date]
        if earlier:
            p = earlier[0]
            items.append(_from_record("duplicate", record,
                                      f"already settled on {p.business_date} (run {p.run_id}, line {p.line})"))
            continue
        txn = booked.get(key)
        if txn is None:
            items.append(_from_record("missing_in_ledger", record, unbooked.get(key)))
            continue
        item = _from_record("matched", record)
        item.object_id, item.ledger_amount, item.ledger_currency = txn.object_id, txn.amount, txn.currency
        item.ledger_at = txn.booked_at
        late = record.transaction_at.astimezone(UTC).date() < business_date
        notes = []
        if txn.merchant_id != record.merchant_id:
            notes.append(f"the ledger books it for merchant {txn.merchant_id}")
        if record.currency != txn.currency:
            item.classification = "currency_mismatch"
        elif record.amount != txn.amount:
            item.classification = "amount_mismatch"
        elif late:
            item.classification = "timing"
        if late:
            notes.append(f"transacted on {record.transaction_at.astimezone(UTC).date()}, settled on {business_date}")
        item.note = "; ".join(notes) or None
        items.append(item)
    for txn in sorted(candidates, key=lambda t: (t.booked_at, t.kind, t.rrn)):
        key = (txn.kind, txn.rrn)
        if key in first_line:
            continue
        elsewhere = prior.get(key, ())
        if any(p.business_date < business_date for p in elsewhere):
            continue  # an earlier day's file settled it
        item = Item("missing_in_settlement", txn.kind, txn.rrn, merchant_id=txn.merchant_id, object_id=txn.object_id,
                    ledger_amount=txn.amount, ledger_currency=txn.currency, ledger_at=txn.booked_at)
        later = sorted((p for p in elsewhere if p.business_date > business_date), key=lambda p: p.business_date)
        if later:
            item.resolution, item.resolved_by_run = "settled_late", later[0].run_id
            item.note = f"settled on {later[0].business_date}"
        items.append(item)
    return items


def counts(items: Iterable[Item]) -> dict[str, int]:
    result = dict.fromkeys(CLASSIFICATIONS, 0)
    for item in items:
        result[item.classification] += 1
    return result


def _side() -> dict[str, int]:
    return {"count": 0, "captured": 0, "refunded": 0, "net": 0}


def _add(side: dict[str, int], kind: str, amount: int) -> None:
    side["count"] += 1
    side["captured" if kind == "capture" else "refunded"] += amount
    side["net"] += amount if kind == "capture" else -amount


def totals(records: Iterable[Record], items: Iterable[Item]) -> dict[str, dict[str, Any]]:
    """Per currency: what the file settles (every record in scope, duplicates and unknowns
    included), what the ledger booked for the same transactions, and settlement net - ledger net."""
    result: dict[str, dict[str, Any]] = {}

    def of(currency: str) -> dict[str, Any]:
        return result.setdefault(currency, {"settlement": _side(), "ledger": _side(), "difference": 0})

    for record in records:
        _add(of(record.currency)["settlement"], record.type, record.amount)
    for item in items:
        if item.ledger_amount is not None and item.ledger_currency is not None:
            _add(of(item.ledger_currency)["ledger"], item.kind, item.ledger_amount)
    for entry in result.values():
        entry["difference"] = entry["settlement"]["net"] - entry["ledger"]["net"]
    return dict(sorted(result.items()))
