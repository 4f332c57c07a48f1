"""The audit's checks, as pure functions over what the audit loaded (`Snapshot`) and what the
client was told (`Book`). Each returns a `Check`; a breach names the payment (or event) at fault."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cluster.bench.book import Book

MAX_LISTED = 20  # breaches listed per check in the report (all are counted)
HOLDING = ("requires_capture",)
CAPTURED = ("succeeded",)
NOT_CHARGED = ("canceled", "requires_payment_method", "requires_confirmation")


@dataclass(frozen=True)
class Breach:
    subject: str  # a payment id (pi_…), an event id, or a ledger entry group
    message: str


@dataclass
class Check:
    name: str
    description: str
    checked: int = 0
    breaches: list[Breach] = field(default_factory=list)
    skipped: str | None = None  # why it could not run (no ledger DSN, no bank journal…)

    @property
    def ok(self) -> bool:
        return not self.breaches

    def add(self, subject: str, message: str) -> None:
        self.breaches.append(Breach(subject, message))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "ok": self.ok, "checked": self.checked,
                "breaches": len(self.breaches), "skipped": self.skipped,
                "examples": [{"subject": b.subject, "message": b.message} for b in self.breaches[:MAX_LISTED]]}


@dataclass(frozen=True)
class Auth:
    """One approved authorization in the bank's journal (banksim.journal.Authorization, reduced)."""
    rrn: str
    state: str
    authorized: int
    captured: int
    refunded: int


@dataclass
class Snapshot:
    payments: dict[str, dict[str, Any]]  # id -> payment_orders row
    rrn_to_payment: dict[str, str]
    refunds: dict[str, tuple[int, int]]  # payment id -> (succeeded total, pending count)
    balances: dict[str, int]  # payment id -> sum of its merchant_balance entries
    unbalanced_groups: list[tuple[str, str, int]]  # (entry group, payment id, sum)
    outbox: dict[str, str]  # event id -> object id
    undispatched: int
    deliveries: dict[str, int]  # webhook deliveries to the bench's endpoints by status
    auths: list[Auth] | None  # None: no bank journal to compare with


def client_vs_ledger(book: Book, snap: Snapshot) -> Check:
    check = Check("client_vs_ledger", "every payment the API answered exists in the ledger as it was told")
    for payment_id, want in book.payments.items():
        check.checked += 1
        row = snap.payments.get(payment_id)
        if row is None:
            check.add(payment_id, "answered by the API but missing from payment_orders")
            continue
        for name, value in (("status", want.status), ("amount", want.amount),
                            ("amount_received", want.amount_received), ("amount_refunded", want.amount_refunded)):
            if value is not None and row[name] != value:
                check.add(payment_id, f"{name} is {row[name]} in the ledger, the API said {value}")
    return check


def no_unexpected_payments(book: Book, snap: Snapshot) -> Check:
    check = Check("no_unexpected_payments", "the ledger holds no payment the client did not create")
    unseen = sorted(set(snap.payments) - set(book.payments))
    check.checked = len(snap.payments)
    if len(unseen) > book.unacknowledged_creates:
        for payment_id in unseen:
            check.add(payment_id, f"in the ledger but never answered to the client ({len(unseen)} such, "
                                  f"only {book.unacknowledged_creates} creates went unanswered)")
    return check


def _auths_by_payment(snap: Snapshot, check: Check) -> dict[str, list[Auth]]:
    grouped: dict[str, list[Auth]] = defaultdict(list)
    for auth in snap.auths or []:
        payment_id = snap.rrn_to_payment.get(auth.rrn)
        if payment_id is None:
            if auth.state != "reversed":
                check.add(f"rrn {auth.rrn}", f"the bank holds an unreversed {auth.state} authorization "
                                             f"of {auth.authorized} that no ledger payment knows")
            continue
        grouped[payment_id].append(auth)
    return grouped


def bank_vs_ledger(snap: Snapshot) -> Check:
    check = Check("bank_vs_ledger", "the bank's journal and the ledger agree payment by payment "
                                    "(one live authorization at most; captured and refunded amounts)")
    if snap.auths is None:
        check.skipped = "no bank journal (remote cluster)"
        return check
    grouped = _auths_by_payment(snap, check)
    for payment_id, row in snap.payments.items():
        check.checked += 1
        live = [a for a in grouped.get(payment_id, []) if a.state != "reversed"]
        for message in _bank_disagreements(row, live):
            check.add(payment_id, message)
    return check


def _bank_disagreements(row: dict[str, Any], live: list[Auth]) -> Iterable[str]:
    status = row["status"]
    if len(live) > 1:
        yield f"{len(live)} live authorizations at the bank: {', '.join(a.rrn for a in live)}"
        return
    auth = live[0] if live else None
    if status in NOT_CHARGED and auth is not None:
        yield f"{status} in the ledger but the bank holds {auth.state} authorization {auth.rrn}"
    elif status in HOLDING + CAPTURED:
        if auth is None:
            yield f"{status} in the ledger but the bank has no live authorization"
            return
        if auth.rrn != row["auth_rrn"]:
            yield f"the ledger's auth_rrn {row['auth_rrn']} is not the bank's live authorization {auth.rrn}"
        if auth.captured != row["amount_received"]:
            yield f"captured {auth.captured} at the bank, amount_received {row['amount_received']} in the ledger"
        if auth.refunded != row["amount_refunded"]:
            yield f"refunded {auth.refunded} at the bank, amount_refunded {row['amount_refunded']} in the ledger"


def refunds_within_captures(snap: Snapshot) -> Check:
    check = Check("refunds_within_captures", "refunds never exceed captures, and add up to amount_refunded")
    for payment_id, row in snap.payments.items():
        check.checked += 1
        succeeded, pending = snap.refunds.get(payment_id, (0, 0))
        if row["amount_refunded"] > row["amount_received"]:
            check.add(payment_id, f"refunded {row['amount_refunded']} > captured {row['amount_received']}")
        if succeeded != row["amount_refunded"]:
            check.add(payment_id, f"succeeded refunds total {succeeded}, amount_refunded is {row['amount_refunded']}")
        if pending:
            check.add(payment_id, f"{pending} refund(s) still pending after the drain")
    return check


def ledger_balanced(snap: Snapshot) -> Check:
    check = Check("ledger_balanced", "double entry: every entry group sums to zero, and each payment's "
                                     "merchant balance equals captured minus refunded")
    for group, payment_id, total in snap.unbalanced_groups:
        check.add(payment_id, f"entry group {group} sums to {total}, not 0")
    for payment_id, row in snap.payments.items():
        check.checked += 1
        owed = row["amount_received"] - row["amount_refunded"]
        booked = -snap.balances.get(payment_id, 0)
        if booked != owed:
            check.add(payment_id, f"merchant balance entries total {booked}, captured - refunded is {owed}")
    return check


def no_stuck_payments(snap: Snapshot) -> Check:
    check = Check("no_stuck_payments", "no payment is left in `processing` after the drain")
    check.checked = len(snap.payments)
    for payment_id, row in snap.payments.items():
        if row["status"] == "processing":
            check.add(payment_id, "still processing")
    return check


def outbox_drained(snap: Snapshot) -> Check:
    check = Check("outbox_drained", "every outbox event was dispatched and every delivery succeeded")
    check.checked = len(snap.outbox)
    if snap.undispatched:
        check.add("outbox", f"{snap.undispatched} event(s) not dispatched")
    if snap.deliveries.get("pending"):
        check.add("webhook_deliveries", f"{snap.deliveries['pending']} delivery(ies) still pending when the drain "
                                        "ended: webhooks fell behind (raise --drain-timeout to wait longer)")
    if snap.deliveries.get("failed"):
        check.add("webhook_deliveries", f"{snap.deliveries['failed']} delivery(ies) failed for good")
    return check


def webhooks_received(snap: Snapshot, received: dict[str, Any] | None) -> Check:
    check = Check("webhooks_received", "every event reached the bench's receiver with a valid signature")
    if received is None:
        check.skipped = "no receiver (--no-webhooks, or a re-audit after the run)"
        return check
    events = received["events"]
    check.checked = len(snap.outbox)
    for event_id, object_id in snap.outbox.items():
        if event_id not in events:
            check.add(object_id, f"event {event_id} never reached the receiver")
    if received["bad_signatures"]:
        check.add("receiver", f"{received['bad_signatures']} delivery(ies) with a bad Stripe-Signature")
    return check


def idempotency(book: Book) -> Check:
    check = Check("idempotency", "retries with one Idempotency-Key got the first answer, byte for byte")
    check.checked = len(book.payments)
    for subject, message in book.idempotency_breaches:
        check.add(subject, message)
    return check
