"""Settlement files without the stack: banksim writes them from a real journal, the reconciler's
parser verifies them (every rejection names its line), and the classifier's rules on their own."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from actors.reconciler.classify import LedgerTxn, PriorSettlement, classify, counts, totals
from actors.reconciler.fileformat import SettlementFileError, parse_settlement, read_settlement
from banksim.journal import Journal, StoredAnswer
from banksim.settlement import Fault, render, write_settlement_file

DAY = date(2031, 3, 14)
NOON = datetime(2031, 3, 14, 12, 0, tzinfo=UTC)


def _journal(path: Path) -> Path:
    """Two merchants: a captured and partly refunded usd payment, a captured eur one, a reversed one."""
    journal = Journal(path)
    try:
        with journal.transaction():
            journal.add_authorization("000000000001", "000001", "AUTH01", "424242******4242", 5000, "usd", "mer_a")
            journal.add_capture("000000000001", "000000000002", "000002", "000000000001", 4000)
            journal.add_refund("000000000001", "000000000003", "000003", "000000000002", 1500)
            journal.save_answer("000000000003", "0200", StoredAnswer("1500", {"39": "00", "38": "RFND01"}, False))
            journal.add_authorization("000000000004", "000004", "AUTH04", "424242******4242", 700, "eur", "mer_b")
            journal.add_capture("000000000004", "000000000005", "000005", "000000000004", 700)
            journal.add_authorization("000000000006", "000006", "AUTH06", "424242******4242", 900, "usd", "mer_a")
            journal.add_reversal("000000000006", "000000000007", "000007", "000000000006")
    finally:
        journal.close()
    return path


def _today() -> date:
    return datetime.now(UTC).date()


def test_banksim_writes_a_file_the_reconciler_verifies(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "journal.sqlite3")
    path = write_settlement_file(journal, _today(), tmp_path / "s.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"HDR,PGSETTLE,1,{_today()},BANKSIM,")
    assert lines[-1] == "TRL,3,7"
    assert "TOT,eur,1,700,0,700" in lines and "TOT,usd,2,4000,1500,2500" in lines
    parsed = read_settlement(path, expected_date=_today())
    assert [(r.type, r.rrn, r.amount, r.currency, r.merchant_id, r.auth_code) for r in parsed.records] == [
        ("capture", "000000000002", 4000, "usd", "mer_a", "AUTH01"),
        ("refund", "000000000003", 1500, "usd", "mer_a", "RFND01"),
        ("capture", "000000000005", 700, "eur", "mer_b", "AUTH04"),
    ]  # the reversed authorization settles nothing
    assert parsed.records[0].authorization_rrn == "000000000001"
    only_b = read_settlement(write_settlement_file(journal, _today(), tmp_path / "b.csv", merchants=["mer_b"]))
    assert [r.merchant_id for r in only_b.records] == ["mer_b"]
    tomorrow = read_settlement(write_settlement_file(journal, _today() + timedelta(days=1), tmp_path / "t.csv"))
    assert tomorrow.records == []


def test_record_faults_keep_the_file_consistent(tmp_path: Path) -> None:
    journal = _journal(tmp_path / "journal.sqlite3")
    faults = ["drop:000000000003", "amount:000000000002=3999", "duplicate:000000000005", "unknown:UNK000000001=42",
              "currency:000000000005=gbp"]
    parsed = read_settlement(write_settlement_file(journal, _today(), tmp_path / "f.csv", faults=faults))
    assert [(r.rrn, r.amount, r.currency) for r in parsed.records] == [
        ("000000000002", 3999, "usd"), ("000000000005", 700, "gbp"), ("000000000005", 700, "gbp"),
        ("UNK000000001", 42, "usd")]
    shifted_today = read_settlement(write_settlement_file(journal, _today(), tmp_path / "s0.csv",
                                                          faults=["shift:000000000002"]))
    assert "000000000002" not in {r.rrn for r in shifted_today.records}
    next_day = _today() + timedelta(days=1)
    shifted = read_settlement(write_settlement_file(journal, next_day, tmp_path / "s1.csv",
                                                    faults=["shift:000000000002"]))
    assert [r.rrn for r in shifted.records] == ["000000000002"]
    assert shifted.records[0].transaction_at.date() == _today() and shifted.business_date == next_day


@pytest.mark.parametrize(("fault", "line", "reason"), [
    ("truncate", 7, "without a TRL trailer"),
    ("truncate:3", 5, "without a TRL trailer"),
    ("tamper:000000000002=4001", 6, "usd totals do not add up"),
])
def test_damaged_files_are_rejected_with_the_line(tmp_path: Path, fault: str, line: int, reason: str) -> None:
    path = write_settlement_file(_journal(tmp_path / "j.sqlite3"), _today(), tmp_path / "d.csv", faults=[fault])
    with pytest.raises(SettlementFileError) as error:
        read_settlement(path)
    assert error.value.line == line and reason in str(error.value) and str(error.value).startswith(f"line {line}:")


def _good() -> list[str]:
    return [
        render(DAY, [], cutoff=NOON, generated_at=NOON)[0],
        f"REC,1,capture,000000000002,000002,AUTH01,000000000001,4000,usd,mer_a,{NOON.isoformat()},{NOON.isoformat()}",
        f"REC,2,refund,000000000003,000003,RFND01,000000000002,1500,usd,mer_a,{NOON.isoformat()},{NOON.isoformat()}",
        "TOT,usd,2,4000,1500,2500",
        "TRL,2,5",
    ]


@pytest.mark.parametrize(("line", "replacement", "reason"), [
    (1, "HDR,PGSETTLE,2,2031-03-14,BANKSIM,2031-03-14T12:00:00+00:00,2031-03-14T12:00:00+00:00", "version"),
    (1, "HDR,OTHER,1,2031-03-14,BANKSIM,2031-03-14T12:00:00+00:00,2031-03-14T12:00:00+00:00", "format"),
    (1, "HDR,PGSETTLE,1,2031-03-15,BANKSIM,2031-03-14T12:00:00+00:00,2031-03-14T12:00:00+00:00", "not 2031-03-14"),
    (2, "REC,1,capture,000000000002,000002,AUTH01,000000000001,40.00,usd,mer_a,2031-03-14T12:00:00+00:00,"
        "2031-03-14T12:00:00+00:00", "amount '40.00'"),
    (2, "REC,1,capture,000000000002,000002,AUTH01,000000000001,4000,USD,mer_a,2031-03-14T12:00:00+00:00,"
        "2031-03-14T12:00:00+00:00", "currency"),
    (2, "REC,1,chargeback,000000000002,000002,AUTH01,000000000001,4000,usd,mer_a,2031-03-14T12:00:00+00:00,"
        "2031-03-14T12:00:00+00:00", "type"),
    (2, "REC,1,capture,000000000002,000002,AUTH01,000000000001,4000,usd,mer_a,yesterday,"
        "2031-03-14T12:00:00+00:00", "transaction time"),
    (3, "REC,3,refund,000000000003,000003,RFND01,000000000002,1500,usd,mer_a,2031-03-14T12:00:00+00:00,"
        "2031-03-14T12:00:00+00:00", "sequence"),
    (3, "REC,2,refund,000000000003", "fields"),
    (4, "TOT,usd,2,4000,1500,2501", "totals do not add up"),
    (5, "TRL,3,5", "counts 3 records"),
    (5, "TRL,2,6", "counts 6 lines"),
    (4, "XYZ,1", "unknown record type"),
])
def test_malformed_lines_are_rejected(line: int, replacement: str, reason: str) -> None:
    lines = _good()
    parse_settlement("\n".join(lines).encode(), expected_date=DAY)  # the unmodified file is fine
    lines[line - 1] = replacement
    with pytest.raises(SettlementFileError) as error:
        parse_settlement(("\n".join(lines) + "\n").encode(), expected_date=DAY)
    assert error.value.line == line, str(error.value)
    assert reason in str(error.value)


def test_missing_tot_line_extra_lines_and_empty_file() -> None:
    lines = _good()
    with pytest.raises(SettlementFileError, match="line 4: no TOT line for usd"):
        parse_settlement("\n".join([*lines[:3], "TRL,2,4"]).encode())
    with pytest.raises(SettlementFileError, match="line 6: content after the trailer"):
        parse_settlement("\n".join([*lines, "REC,3"]).encode())
    with pytest.raises(SettlementFileError, match="line 1: the file is empty"):
        parse_settlement(b"")
    with pytest.raises(SettlementFileError, match="line 2: is not valid UTF-8"):
        parse_settlement(b"HDR\n\xff\xfe\n")


def test_fault_flags_parse() -> None:
    assert Fault.parse("amount:000000000002=10") == Fault("amount", "000000000002", "10")
    assert Fault.parse("truncate") == Fault("truncate", "", "1")
    with pytest.raises(ValueError):
        Fault.parse("amount:000000000002=ten")
    with pytest.raises(ValueError):
        Fault.parse("explode:1")


def _rec(line: int, kind: str, rrn: str, amount: int, currency: str = "usd", at: datetime = NOON) -> object:
    from actors.reconciler.fileformat import Record

    return Record(line, line - 1, kind, rrn, "000001", "AUTH", "000000000001", amount, currency, "mer_a", at, at)


def _txn(kind: str, rrn: str, amount: int, currency: str = "usd", at: datetime = NOON) -> LedgerTxn:
    return LedgerTxn(kind, rrn, f"obj_{rrn}", "mer_a", amount, currency, at)


def test_classification_rules_and_totals() -> None:
    records = [_rec(2, "capture", "A", 1000), _rec(3, "capture", "B", 1999), _rec(4, "capture", "C", 500, "gbp"),
               _rec(5, "capture", "A", 1000), _rec(6, "capture", "U", 42), _rec(7, "refund", "R", 300),
               _rec(8, "capture", "L", 700, at=NOON - timedelta(days=1)), _rec(9, "capture", "P", 10)]
    booked = {("capture", "A"): _txn("capture", "A", 1000), ("capture", "B"): _txn("capture", "B", 2000),
              ("capture", "C"): _txn("capture", "C", 500, "eur"), ("refund", "R"): _txn("refund", "R", 300),
              ("capture", "L"): _txn("capture", "L", 700, at=NOON - timedelta(days=1)),
              ("capture", "P"): _txn("capture", "P", 10)}
    candidates = [booked[("capture", "A")], _txn("capture", "M", 250), _txn("capture", "S", 80),
                  _txn("capture", "E", 5)]
    prior = {("capture", "P"): [PriorSettlement(DAY - timedelta(days=1), "rcn_prev", 4)],
             ("capture", "S"): [PriorSettlement(DAY + timedelta(days=1), "rcn_next", 2)],
             ("capture", "E"): [PriorSettlement(DAY - timedelta(days=1), "rcn_prev", 3)]}
    items = classify(DAY, records, booked, candidates, prior)  # type: ignore[arg-type]
    by = [(i.classification, i.rrn) for i in items]
    assert by == [("matched", "A"), ("amount_mismatch", "B"), ("currency_mismatch", "C"), ("duplicate", "A"),
                  ("missing_in_ledger", "U"), ("matched", "R"), ("timing", "L"), ("duplicate", "P"),
                  ("missing_in_settlement", "M"), ("missing_in_settlement", "S")]
    assert items[3].note == "also on line 2" and "rcn_prev" in (items[7].note or "")
    assert (items[9].resolution, items[9].resolved_by_run) == ("settled_late", "rcn_next")
    assert counts(items) == {"matched": 2, "missing_in_ledger": 1, "missing_in_settlement": 2, "amount_mismatch": 1,
                             "currency_mismatch": 1, "duplicate": 2, "timing": 1}
    result = totals(records, items)  # type: ignore[arg-type]
    # usd file: 1000 + 1999 + 1000 + 42 + 700 + 10 captured, 300 refunded; ledger: A, B, R, L, M, S
    assert result["usd"]["settlement"] == {"count": 7, "captured": 4751, "refunded": 300, "net": 4451}
    assert result["usd"]["ledger"] == {"count": 6, "captured": 4030, "refunded": 300, "net": 3730}
    assert result["usd"]["difference"] == 721  # -1 + 1000 + 42 + 10 - 250 - 80
    assert result["gbp"]["difference"] == 500 and result["eur"]["difference"] == -500
