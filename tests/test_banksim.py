"""banksim's business rules and journal, driven only through `Iso8583Adapter` over real TCP.

One banksim subprocess serves the whole module; every test uses fresh RRNs and merchant ids,
so tests do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from actors.acquirer import (
    AcquirerRequest,
    AcquirerResponse,
    AcquirerTimeout,
    CardData,
    Iso8583Adapter,
    OriginalRef,
    format_transmitted_at,
    mask_pan,
)
from actors.acquirer import iso8583 as iso
from actors.acquirer.iso_adapter import build_request
from banksim import NEVER_ANSWER_CARD, command
from banksim.journal import Journal, now
from cluster.procs import ChildProcess, free_port

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
VISA = "4242424242424242"
CVC = "739"
T = TypeVar("T")


@dataclass
class Bank:
    port: int
    journal_path: Path
    log_path: Path  # --log-file (JSON lines)
    out_path: Path  # the child's stdout/stderr
    proc: ChildProcess

    def journal(self) -> Journal:
        return Journal(self.journal_path)


def start_bank(directory: Path, port: int | None = None, slow_ms: int = 3000) -> Bank:
    port = port or free_port()
    journal, log, out = directory / "journal.sqlite3", directory / "banksim.log", directory / "banksim.out"
    argv = command(port, journal, log_file=log, slow_ms=slow_ms, log_level="DEBUG")  # a line per message
    proc = ChildProcess("banksim", argv, out).start()
    proc.wait_listening(HOST, port)
    return Bank(port, journal, log, out, proc)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bank]:
    running = start_bank(tmp_path_factory.mktemp("banksim"), slow_ms=200)
    yield running
    running.proc.stop()


_serial = itertools.count(1)
_RUN = uuid.uuid4().hex[:4].upper()


def ids() -> tuple[str, str]:
    """A fresh (STAN, RRN) pair, unique within this test run."""
    n = next(_serial)
    return f"{n % 1_000_000:06d}", f"{_RUN}{n:08d}"


def merchant() -> str:
    return f"acct_{uuid.uuid4().hex[:16]}"


def card(pan: str = VISA, cvc: str | None = CVC) -> CardData:
    return CardData(pan, 12, 2034, cvc)


def authorization(mid: str, amount: int = 1000, pan: str = VISA, currency: str = "usd") -> AcquirerRequest:
    stan, rrn = ids()
    now = format_transmitted_at(datetime.now(UTC))
    return AcquirerRequest("authorize", stan, rrn, amount, currency, mid, card(pan), transmitted_at=now)


def follow_up(kind: str, auth: AcquirerRequest, amount: int, *, own_rrn: bool = True) -> AcquirerRequest:
    """A capture/refund/reversal of `auth`, with a new RRN unless `own_rrn` is False."""
    stan, rrn = ids()
    original = OriginalRef(auth.stan, auth.rrn, None, auth.transmitted_at)
    return AcquirerRequest(
        kind,  # type: ignore[arg-type]
        stan,
        rrn if own_rrn else auth.rrn,
        amount,
        auth.currency,
        auth.merchant_id,
        original=original,
    )


def with_adapter(bank: Bank, body: Callable[[Iso8583Adapter], Awaitable[T]], **options: float) -> T:
    """Run `body(adapter)` in a fresh event loop with a started adapter (pytest-asyncio-free)."""

    async def main() -> T:
        async with Iso8583Adapter(HOST, bank.port, **options) as adapter:  # type: ignore[arg-type]
            return await body(adapter)

    return asyncio.run(main())


def send(bank: Bank, *requests: AcquirerRequest, **options: float) -> list[AcquirerResponse]:
    """Send `requests` one after the other (order matters for lifecycles)."""

    async def body(adapter: Iso8583Adapter) -> list[AcquirerResponse]:
        return [await adapter.handle(request) for request in requests]

    return with_adapter(bank, body, **options)


def test_echo(bank: Bank) -> None:
    stan, rrn = ids()
    (response,) = send(bank, AcquirerRequest("echo", stan, rrn, 0, "usd", "paygate"))
    assert response.approved and response.response_code == "00" and response.stan == stan
    assert response.raw["t"] == "0810" and response.raw["70"] == "301"


@pytest.mark.parametrize(
    ("pan", "code", "decline_code"),
    [
        ("4242424242424242", "00", None),
        ("5555555555554444", "00", None),  # "any other valid card"
        ("4000000000000002", "05", "generic_decline"),
        ("4000000000009995", "51", "insufficient_funds"),
        ("4000000000009987", "41", "lost_card"),
        ("4000000000009979", "43", "stolen_card"),
        ("4000000000000069", "54", "expired_card"),
        ("4000000000000127", "82", "incorrect_cvc"),
        ("4000000000000119", "96", "processing_error"),
        ("4242424242424241", "14", "incorrect_number"),  # fails Luhn
    ],
)
def test_test_cards(bank: Bank, pan: str, code: str, decline_code: str | None) -> None:
    request = authorization(merchant(), pan=pan)
    (response,) = send(bank, request)
    assert (response.response_code, response.decline_code) == (code, decline_code)
    assert response.approved is (code == "00")
    assert (response.auth_code is not None) is (code == "00")
    assert (response.stan, response.rrn) == (request.stan, request.rrn)
    journaled = bank.journal().by_rrn(request.rrn)
    assert (journaled is not None) is (code == "00")  # only approvals are journaled


def test_pipelined_requests_are_all_answered_in_order(bank: Bank) -> None:
    """Fifty authorizations written at once on one connection (the link pipelines its requests)
    get fifty answers, in request order: none dropped, none reordered."""
    requests = [authorization(merchant(), amount=100 + i) for i in range(50)]

    async def exchange() -> list[dict[str, str]]:
        reader, writer = await asyncio.open_connection(HOST, bank.port)
        try:
            writer.write(b"".join(iso.encode_frame(build_request(r, "TERM0001")) for r in requests))
            await writer.drain()
            return [await asyncio.wait_for(iso.read_frame(reader), 10) for _ in requests]
        finally:
            writer.close()

    answers = asyncio.run(exchange())
    assert [a["11"] for a in answers] == [r.stan for r in requests]
    assert {a["t"] for a in answers} == {"0110"} and {a["39"] for a in answers} == {"00"}


def test_expired_card_by_date(bank: Bank) -> None:
    request = replace(authorization(merchant()), card=CardData(VISA, 1, 2020, CVC))
    (response,) = send(bank, request)
    assert (response.response_code, response.decline_code) == ("54", "expired_card")


def test_capture_partial_refunds_then_over_refund_declined(bank: Bank) -> None:
    auth = authorization(merchant(), amount=1000)
    responses = send(
        bank,
        auth,
        follow_up("capture", auth, 800, own_rrn=False),
        follow_up("refund", auth, 300),
        follow_up("refund", auth, 400),
        follow_up("refund", auth, 101),  # 300 + 400 + 101 > 800
        follow_up("refund", auth, 100),
    )
    assert [r.response_code for r in responses] == ["00", "00", "00", "00", "13", "00"]
    assert responses[4].decline_code == "invalid_amount"
    assert responses[1].auth_code == responses[0].auth_code  # completion quotes the auth
    row = bank.journal().by_rrn(auth.rrn)
    assert row is not None
    assert (row.state, row.authorized_amount, row.captured_amount, row.refunded_amount) == (
        "captured", 1000, 800, 800,
    )  # fmt: skip
    assert bank.journal().net_amount(auth.rrn) == 0
    kinds = [op.kind for op in bank.journal().operations(auth.rrn)]
    assert kinds == ["capture", "refund", "refund", "refund"]


def test_capture_rules(bank: Bank) -> None:
    auth = authorization(merchant(), amount=1000)
    responses = send(
        bank,
        auth,
        follow_up("refund", auth, 100),  # nothing captured yet
        follow_up("capture", auth, 1001),  # more than authorized
        follow_up("capture", auth, 600),
        follow_up("capture", auth, 100),  # a second completion (new RRN)
    )
    assert [r.response_code for r in responses] == ["00", "12", "13", "00", "12"]
    assert responses[2].decline_code == "invalid_amount"
    assert bank.journal().net_amount(auth.rrn) == 600


def test_reversal_of_authorization_nets_to_zero(bank: Bank) -> None:
    auth = authorization(merchant(), amount=500)
    responses = send(
        bank,
        auth,
        follow_up("reversal", auth, 500, own_rrn=False),
        follow_up("capture", auth, 500),  # a reversed authorization cannot be captured
    )
    assert [r.response_code for r in responses] == ["00", "00", "12"]
    row = bank.journal().by_rrn(auth.rrn)
    assert row is not None and row.state == "reversed" and row.reversed_amount == 500
    assert bank.journal().net_amount(auth.rrn) == 0


def test_reversal_after_capture_reverses_the_capture(bank: Bank) -> None:
    auth = authorization(merchant(), amount=700)
    responses = send(bank, auth, follow_up("capture", auth, 700), follow_up("reversal", auth, 700))
    assert [r.response_code for r in responses] == ["00", "00", "00"]
    row = bank.journal().by_rrn(auth.rrn)
    assert row is not None and (row.state, row.captured_amount) == ("reversed", 700)
    assert bank.journal().net_amount(auth.rrn) == 0


def purchase(mid: str, amount: int = 1000, pan: str = VISA) -> AcquirerRequest:
    """An automatic capture's one message: authorized and captured, the capture under its own RRN."""
    _, capture_rrn = ids()
    return replace(authorization(mid, amount, pan), kind="purchase", capture_rrn=capture_rrn)


def test_a_purchase_is_authorized_and_captured_under_the_capture_rrn_once(bank: Bank) -> None:
    sale = purchase(merchant(), amount=1200)
    first, again = send(bank, sale, sale)  # the second is a retransmission: same answer, no second effect
    assert (first.response_code, again.response_code) == ("00", "00")
    assert first.auth_code and again.auth_code == first.auth_code
    assert first.raw["t"] == "0210" and first.rrn == sale.rrn
    row = bank.journal().by_rrn(sale.rrn)
    assert row is not None and (row.state, row.authorized_amount, row.captured_amount) == ("captured", 1200, 1200)
    (capture,) = bank.journal().operations(sale.rrn)
    assert (capture.kind, capture.rrn, capture.original_rrn, capture.amount) == (
        "capture", sale.capture_rrn, sale.rrn, 1200)
    assert bank.journal().net_amount(sale.rrn) == 1200


def test_a_purchase_is_refunded_by_either_rrn_and_reversed_whole(bank: Bank) -> None:
    sale = purchase(merchant(), amount=900)
    by_capture = replace(sale, kind="authorize", rrn=sale.capture_rrn or "", capture_rrn=None)
    responses = send(bank, sale, follow_up("refund", sale, 300), follow_up("refund", by_capture, 200),
                     follow_up("reversal", sale, 900))
    assert [r.response_code for r in responses] == ["00", "00", "00", "00"]
    row = bank.journal().by_rrn(sale.rrn)
    assert row is not None and (row.state, row.captured_amount, row.refunded_amount) == ("reversed", 900, 500)
    assert bank.journal().net_amount(sale.rrn) == 0


def test_a_declined_purchase_journals_nothing(bank: Bank) -> None:
    sale = purchase(merchant(), pan="4000000000009995")  # insufficient funds
    (response,) = send(bank, sale)
    assert (response.response_code, response.decline_code) == ("51", "insufficient_funds")
    assert bank.journal().by_rrn(sale.rrn) is None
    assert bank.journal().operation_by_rrn(sale.capture_rrn or "") is None


def test_reversal_of_unknown_rrn_journals_nothing(bank: Bank) -> None:
    ghost = authorization(merchant())  # never sent
    before = len(bank.journal().operations())
    (response,) = send(bank, follow_up("reversal", ghost, ghost.amount, own_rrn=False))
    assert (response.response_code, response.approved) == ("25", False)
    assert len(bank.journal().operations()) == before
    assert bank.journal().by_rrn(ghost.rrn) is None


def test_never_answer_card_times_out_then_reversal_nets_to_zero(bank: Bank, caplog: pytest.LogCaptureFixture) -> None:
    auth = replace(authorization(merchant(), amount=4200, pan=NEVER_ANSWER_CARD), transmitted_at="")

    async def body(adapter: Iso8583Adapter) -> tuple[AcquirerTimeout, float, AcquirerResponse]:
        started = time.monotonic()
        with pytest.raises(AcquirerTimeout) as caught:
            await adapter.handle(auth)
        elapsed = time.monotonic() - started
        # The adapter filled field 7 itself; the error tells us what it sent.
        sent_at = caught.value.transmitted_at
        assert sent_at and caught.value.rrn == auth.rrn and caught.value.stan == auth.stan
        stan, _ = ids()
        original = OriginalRef(auth.stan, auth.rrn, None, sent_at)
        reversal = AcquirerRequest(
            "reversal", stan, auth.rrn, auth.amount, auth.currency, auth.merchant_id, original=original
        )
        return caught.value, elapsed, await adapter.handle(reversal)

    error, elapsed, reversal = with_adapter(bank, body, timeout_s=0.5)
    assert 0.45 <= elapsed < 1.5
    assert VISA not in str(error) and NEVER_ANSWER_CARD not in str(error)
    assert reversal.approved
    row = bank.journal().by_rrn(auth.rrn)
    assert row is not None and row.state == "reversed" and row.reversed_amount == 4200
    assert bank.journal().net_amount(auth.rrn) == 0
    assert all(NEVER_ANSWER_CARD not in record.getMessage() for record in caplog.records)


def test_never_answer_card_is_journaled_before_any_reversal(bank: Bank) -> None:
    auth = authorization(merchant(), amount=100, pan=NEVER_ANSWER_CARD)

    async def body(adapter: Iso8583Adapter) -> None:
        for _ in range(2):  # a retransmission gets no answer either, and no second row
            with pytest.raises(AcquirerTimeout):
                await adapter.handle(auth)

    with_adapter(bank, body, timeout_s=0.3)
    row = bank.journal().by_rrn(auth.rrn)
    assert row is not None and row.state == "authorized" and row.masked_pan == mask_pan(NEVER_ANSWER_CARD)
    assert bank.journal().approved_count_for_merchant(auth.merchant_id) == 1


def test_retransmissions_journal_once(bank: Bank) -> None:
    mid = merchant()
    auth = authorization(mid, amount=900)
    capture = follow_up("capture", auth, 900)
    refund = follow_up("refund", auth, 250)

    def again(request: AcquirerRequest) -> AcquirerRequest:
        return replace(request, stan=ids()[0])  # same RRN and MTI, new STAN: a retransmission

    async def body(adapter: Iso8583Adapter) -> list[list[AcquirerResponse]]:
        rounds = []
        for request in (auth, capture, refund):
            # The original and two retransmissions at once, then one more later.
            burst = await asyncio.gather(*(adapter.handle(r) for r in (request, again(request), again(request))))
            rounds.append([*burst, await adapter.handle(again(request))])
        return rounds

    rounds = with_adapter(bank, body)
    for responses in rounds:
        assert {(r.response_code, r.auth_code) for r in responses} == {("00", responses[0].auth_code)}
    journal = bank.journal()
    assert journal.approved_count_for_merchant(mid) == 1
    assert [op.kind for op in journal.operations(auth.rrn)] == ["capture", "refund"]
    assert journal.net_amount(auth.rrn) == 650

    (clash,) = send(bank, replace(again(refund), amount=1))  # same RRN, different content
    assert (clash.response_code, clash.decline_code) == ("94", "duplicate_transaction")
    assert journal.net_amount(auth.rrn) == 650


def test_journal_read_api(bank: Bank) -> None:
    mid = merchant()
    first, second = authorization(mid, 300, currency="eur"), authorization(mid, 500, currency="jpy")
    send(bank, first, second, follow_up("capture", second, 500))
    journal = bank.journal()
    assert journal.approved_count_for_merchant(mid) == 2
    mine = [row for row in journal.authorizations() if row.merchant_id == mid]
    assert [(row.rrn, row.currency, row.state) for row in mine] == [
        (first.rrn, "eur", "authorized"),
        (second.rrn, "jpy", "captured"),
    ]
    assert journal.net_amount(first.rrn) == 0 and journal.net_amount(second.rrn) == 500
    assert journal.net_amount("NOSUCHRRN000") == 0 and journal.by_rrn("NOSUCHRRN000") is None


def test_only_masked_pan_in_journal_and_logs(bank: Bank) -> None:
    pan = "4000056655665556"  # a valid Visa (debit) test number used by no other test
    send(bank, authorization(merchant(), pan=pan))
    masked = mask_pan(pan)
    assert masked == "400005******5556"

    journal_bytes = b"".join(path.read_bytes() for path in bank.journal_path.parent.glob(bank.journal_path.name + "*"))
    assert pan.encode() not in journal_bytes
    assert masked.encode() in journal_bytes
    assert b"9203" + CVC.encode() not in journal_bytes  # the field 48 CVC subelement
    with sqlite3.connect(bank.journal_path) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            assert not any("cvc" in column or column == "pan" for column in columns)
            for row in db.execute(f"SELECT * FROM {table}"):
                assert CVC not in [str(value) for value in row]
                assert not any(pan in str(value) for value in row)

    for log in (bank.log_path, bank.out_path):
        text = log.read_text()
        assert pan not in text and masked in text
        assert "9203" + CVC not in text and "cvc" not in text.lower()
        for line in text.splitlines():
            message = json.loads(line)["msg"]  # every line is one JSON object
            # Ids may contain any digits; what is left must not hold the CVC on its own.
            message = re.sub(r"(rrn|stan)=\S+", "", message)
            assert not re.search(rf"(?<!\d){CVC}(?!\d)", message)


def test_journal_timestamps_read_as_datetime_writes_them() -> None:
    """`now()` formats the date and time once a second: across second boundaries each stamp still
    falls between two `datetime.now(UTC).isoformat(timespec="milliseconds")` read around it."""
    def reference() -> str:
        return datetime.now(UTC).isoformat(timespec="milliseconds")

    seconds_seen: set[str] = set()
    deadline = time.monotonic() + 3
    while len(seconds_seen) < 3 and time.monotonic() < deadline:
        before, stamp, after = reference(), now(), reference()
        assert before <= stamp <= after, (before, stamp, after)
        assert datetime.fromisoformat(stamp).tzinfo == UTC and len(stamp) == len(before)
        seconds_seen.add(stamp[:19])
    assert len(seconds_seen) == 3, "the clock did not cross two seconds within 3 s"
