"""The simulated bank's durable journal: what the bank believes happened, in SQLite (WAL).

Three tables:

- `authorizations`: one row per APPROVED authorization, with its running captured, refunded and
  reversed amounts. Declines leave no row here.
- `operations`: one row per approved capture, refund and reversal, pointing at its authorization.
- `answers`: the answer given to every (RRN, MTI), so a retransmission gets the same answer
  without a second effect. A journal effect and its answer commit in one transaction, so a
  crash can never leave an effect without the answer that deduplicates it.

Only masked card numbers (first six + last four) are stored; the CVC never is. Readers (tests,
reconciliation) may open the file while banksim runs: WAL lets them read without blocking it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson

AuthorizationState = Literal["authorized", "captured", "reversed"]
OperationKind = Literal["capture", "refund", "reversal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS authorizations (
    rrn               TEXT PRIMARY KEY,
    stan              TEXT NOT NULL,
    auth_code         TEXT NOT NULL,
    masked_pan        TEXT NOT NULL,
    currency          TEXT NOT NULL,
    merchant_id       TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('authorized', 'captured', 'reversed')),
    authorized_amount INTEGER NOT NULL,
    captured_amount   INTEGER NOT NULL DEFAULT 0,
    refunded_amount   INTEGER NOT NULL DEFAULT 0,
    reversed_amount   INTEGER NOT NULL DEFAULT 0,
    authorized_at     TEXT NOT NULL,
    captured_at       TEXT,
    refunded_at       TEXT,
    reversed_at       TEXT,
    CHECK (0 <= refunded_amount AND refunded_amount <= captured_amount
           AND captured_amount <= authorized_amount)
);
CREATE INDEX IF NOT EXISTS authorizations_by_merchant ON authorizations (merchant_id);
CREATE TABLE IF NOT EXISTS operations (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind              TEXT NOT NULL CHECK (kind IN ('capture', 'refund', 'reversal')),
    rrn               TEXT NOT NULL,
    stan              TEXT NOT NULL,
    original_rrn      TEXT NOT NULL,
    authorization_rrn TEXT NOT NULL REFERENCES authorizations (rrn),
    amount            INTEGER NOT NULL,
    reversed          INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    UNIQUE (kind, rrn)
);
CREATE INDEX IF NOT EXISTS operations_by_authorization ON operations (authorization_rrn);
CREATE TABLE IF NOT EXISTS answers (
    rrn         TEXT NOT NULL,
    mti         TEXT NOT NULL,
    amount      TEXT NOT NULL,
    fields      TEXT NOT NULL,
    silent      INTEGER NOT NULL,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (rrn, mti)
);
"""


@dataclass(frozen=True)
class Authorization:
    rrn: str
    stan: str
    auth_code: str
    masked_pan: str
    currency: str
    merchant_id: str
    state: AuthorizationState
    authorized_amount: int
    captured_amount: int
    refunded_amount: int
    reversed_amount: int
    authorized_at: str
    captured_at: str | None
    refunded_at: str | None
    reversed_at: str | None

    @property
    def net_amount(self) -> int:
        """What the bank will settle to the merchant: captured - refunded, nothing if reversed."""
        return 0 if self.state == "reversed" else self.captured_amount - self.refunded_amount


@dataclass(frozen=True)
class Operation:
    id: int
    kind: OperationKind
    rrn: str
    stan: str
    original_rrn: str  # the RRN the request referenced
    authorization_rrn: str  # the authorization it resolved to
    amount: int
    reversed: bool
    created_at: str


@dataclass(frozen=True)
class StoredAnswer:
    amount: str  # field 4 of the request, to tell a retransmission from a clash
    fields: dict[str, str]
    silent: bool  # the bank decided never to send it (lost reply)


_second: tuple[int, str] = (-1, "")  # a second, and its date and time as isoformat writes them


def now() -> str:
    """`datetime.now(UTC).isoformat(timespec="milliseconds")`, its date and time formatted once a
    second: a payment writes three journal rows, and the full formatting was 8% of banksim's CPU."""
    global _second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    second = _second
    if second[0] != seconds:
        second = _second = (seconds, datetime.fromtimestamp(seconds, UTC).isoformat()[:19])
    return f"{second[1]}.{nanos // 1_000_000:03d}+00:00"


class Journal:
    """Read API for everyone, plus the write primitives banksim's server uses."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a crash of banksim (what tests do to it); only an OS crash
        # or power loss could lose the last commits, and it keeps thousands of commits/s possible.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- read API -------------------------------------------------------------------------

    def authorizations(self) -> list[Authorization]:
        rows = self._db.execute("SELECT * FROM authorizations ORDER BY authorized_at, rrn")
        return [_authorization(row) for row in rows]

    def by_rrn(self, rrn: str) -> Authorization | None:
        """The authorization whose own RRN is `rrn`, or None."""
        row = self._db.execute("SELECT * FROM authorizations WHERE rrn = ?", (rrn,)).fetchone()
        return _authorization(row) if row else None

    def operations(self, authorization_rrn: str | None = None) -> list[Operation]:
        """Captures, refunds and reversals in order; only those of one authorization if given."""
        if authorization_rrn is None:
            rows = self._db.execute("SELECT * FROM operations ORDER BY id")
        else:
            rows = self._db.execute(
                "SELECT * FROM operations WHERE authorization_rrn = ? ORDER BY id", (authorization_rrn,)
            )
        return [_operation(row) for row in rows]

    def approved_count_for_merchant(self, merchant_id: str) -> int:
        """Approved authorizations for the merchant, reversed ones included."""
        row = self._db.execute("SELECT count(*) FROM authorizations WHERE merchant_id = ?", (merchant_id,)).fetchone()
        return int(row[0])

    def net_amount(self, rrn: str) -> int:
        """Captured - refunded for the authorization `rrn`; 0 if reversed or unknown."""
        authorization = self.by_rrn(rrn)
        return authorization.net_amount if authorization else 0

    # --- write primitives (banksim.server) ---------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: its own transaction, or a savepoint inside an open group (then durable
        when the group commits)."""
        if self._db.in_transaction:
            self._db.execute("SAVEPOINT decision")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO decision")
                self._db.execute("RELEASE decision")
                raise
            self._db.execute("RELEASE decision")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def begin_group(self) -> None:
        """Open one transaction for several `transaction()`s: a commit (a WAL write) for them all."""
        self._db.execute("BEGIN IMMEDIATE")

    def commit_group(self) -> None:
        self._db.execute("COMMIT")

    def rollback_group(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def answer_for(self, rrn: str, mti: str) -> StoredAnswer | None:
        row = self._db.execute(
            "SELECT amount, fields, silent FROM answers WHERE rrn = ? AND mti = ?", (rrn, mti)
        ).fetchone()
        if row is None:
            return None
        return StoredAnswer(row["amount"], orjson.loads(row["fields"]), bool(row["silent"]))

    def save_answer(self, rrn: str, mti: str, answer: StoredAnswer) -> None:
        self._db.execute(
            "INSERT INTO answers (rrn, mti, amount, fields, silent, answered_at) VALUES (?, ?, ?, ?, ?, ?)",
            (rrn, mti, answer.amount, orjson.dumps(answer.fields).decode(), int(answer.silent), now()),
        )

    def add_authorization(
        self,
        rrn: str,
        stan: str,
        auth_code: str,
        masked_pan: str,
        amount: int,
        currency: str,
        merchant_id: str,
    ) -> None:
        self._db.execute(
            "INSERT INTO authorizations (rrn, stan, auth_code, masked_pan, currency, merchant_id, state,"
            " authorized_amount, authorized_at) VALUES (?, ?, ?, ?, ?, ?, 'authorized', ?, ?)",
            (rrn, stan, auth_code, masked_pan, currency, merchant_id, amount, now()),
        )

    def operation_by_rrn(self, rrn: str) -> Operation | None:
        """The latest capture or refund with this RRN (what a reversal may point at)."""
        row = self._db.execute(
            "SELECT * FROM operations WHERE rrn = ? AND kind IN ('capture', 'refund') ORDER BY id DESC",
            (rrn,),
        ).fetchone()
        return _operation(row) if row else None

    def add_capture(self, authorization_rrn: str, rrn: str, stan: str, original_rrn: str, amount: int) -> None:
        stamp = now()
        self._db.execute(
            "UPDATE authorizations SET state = 'captured', captured_amount = ?, captured_at = ? WHERE rrn = ?",
            (amount, stamp, authorization_rrn),
        )
        self._add_operation("capture", authorization_rrn, rrn, stan, original_rrn, amount, stamp)

    def add_refund(self, authorization_rrn: str, rrn: str, stan: str, original_rrn: str, amount: int) -> None:
        stamp = now()
        self._db.execute(
            "UPDATE authorizations SET refunded_amount = refunded_amount + ?, refunded_at = ? WHERE rrn = ?",
            (amount, stamp, authorization_rrn),
        )
        self._add_operation("refund", authorization_rrn, rrn, stan, original_rrn, amount, stamp)

    def add_reversal(self, authorization_rrn: str, rrn: str, stan: str, original_rrn: str) -> None:
        """Reverse the whole authorization, its capture included: it nets to zero."""
        stamp = now()
        self._db.execute(
            "UPDATE authorizations SET state = 'reversed', reversed_amount = authorized_amount,"
            " reversed_at = ? WHERE rrn = ?",
            (stamp, authorization_rrn),
        )
        (amount,) = self._db.execute(
            "SELECT authorized_amount FROM authorizations WHERE rrn = ?", (authorization_rrn,)
        ).fetchone()
        self._add_operation("reversal", authorization_rrn, rrn, stan, original_rrn, int(amount), stamp)

    def add_refund_reversal(self, refund: Operation, rrn: str, stan: str) -> None:
        """Undo one refund (its answer was lost, say): the money stays with the merchant."""
        stamp = now()
        self._db.execute("UPDATE operations SET reversed = 1 WHERE id = ?", (refund.id,))
        self._db.execute(
            "UPDATE authorizations SET refunded_amount = refunded_amount - ? WHERE rrn = ?",
            (refund.amount, refund.authorization_rrn),
        )
        self._add_operation("reversal", refund.authorization_rrn, rrn, stan, refund.rrn, refund.amount, stamp)

    def _add_operation(
        self,
        kind: OperationKind,
        authorization_rrn: str,
        rrn: str,
        stan: str,
        original_rrn: str,
        amount: int,
        stamp: str,
    ) -> None:
        self._db.execute(
            "INSERT INTO operations (kind, rrn, stan, original_rrn, authorization_rrn, amount, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, rrn, stan, original_rrn, authorization_rrn, amount, stamp),
        )


def _authorization(row: sqlite3.Row) -> Authorization:
    return Authorization(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - Row is not a dict


def _operation(row: sqlite3.Row) -> Operation:
    values = {key: row[key] for key in row.keys()}  # noqa: SIM118
    values["reversed"] = bool(values["reversed"])
    return Operation(**values)
