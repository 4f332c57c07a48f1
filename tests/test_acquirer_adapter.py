"""`Iso8583Adapter` against a real banksim subprocess: multiplexing, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from actors.acquirer import (
    AcquirerAdapter,
    AcquirerRequest,
    AcquirerResponse,
    AcquirerTimeout,
    AcquirerUnavailable,
    CardData,
    Iso8583Adapter,
    format_transmitted_at,
)
from actors.acquirer.iso8583 import encode_private_data, safe_fields
from banksim import SLOW_CARD, command
from banksim.journal import Journal
from cluster.procs import ChildProcess, free_port

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
VISA = "4242424242424242"
T = TypeVar("T")


@dataclass
class Bank:
    port: int
    journal_path: Path
    proc: ChildProcess
    argv: list[str]

    def restart(self) -> None:
        self.proc = ChildProcess("banksim", self.argv, self.proc.log_path).start()
        self.proc.wait_listening(HOST, self.port)


def start_bank(directory: Path, slow_ms: int = 3000) -> Bank:
    port = free_port()
    journal = directory / "journal.sqlite3"
    argv = command(port, journal, log_file=directory / "banksim.log", slow_ms=slow_ms)
    proc = ChildProcess("banksim", argv, directory / "banksim.out").start()
    proc.wait_listening(HOST, port)
    return Bank(port, journal, proc, argv)


@pytest.fixture
def slow_bank(tmp_path: Path) -> Iterator[Bank]:
    bank = start_bank(tmp_path, slow_ms=600)
    yield bank
    bank.proc.stop()


_serial = itertools.count(1)
_RUN = uuid.uuid4().hex[:4].upper()


def authorization(mid: str, amount: int = 1000, pan: str = VISA) -> AcquirerRequest:
    n = next(_serial)
    now = format_transmitted_at(datetime.now(UTC))
    return AcquirerRequest(
        "authorize", f"{n % 1_000_000:06d}", f"{_RUN}{n:08d}", amount, "usd", mid,
        CardData(pan, 12, 2034, "123"), transmitted_at=now,
    )  # fmt: skip


def echo() -> AcquirerRequest:
    n = next(_serial)
    return AcquirerRequest("echo", f"{n % 1_000_000:06d}", f"{_RUN}{n:08d}", 0, "usd", "paygate")


def run(bank_port: int, body: Callable[[Iso8583Adapter], Awaitable[T]], **options: float) -> T:
    async def main() -> T:
        async with Iso8583Adapter(HOST, bank_port, **options) as adapter:  # type: ignore[arg-type]
            return await body(adapter)

    return asyncio.run(main())


def test_adapter_implements_the_protocol() -> None:
    assert isinstance(Iso8583Adapter(HOST, 1), AcquirerAdapter)


def test_card_data_errors_and_raw_never_show_the_pan() -> None:
    card = CardData(VISA, 12, 2034, "123")
    assert VISA not in repr(card) and "123" not in repr(card) and "424242******4242" in repr(card)
    request = AcquirerRequest("authorize", "000001", "ABCDEF000001", 100, "usd", "m", card)
    assert VISA not in repr(request) and "'123'" not in repr(request)
    with pytest.raises(ValueError) as caught:
        CardData("4242x", 12, 2034, None)
    assert "4242x" not in str(caught.value)
    raw = safe_fields({"t": "0100", "2": VISA, "48": encode_private_data({"92": "123", "63": "ABCDEF000001"})})
    assert raw == {"t": "0100", "2": "424242******4242", "48": "6312ABCDEF000001"}
    error = AcquirerTimeout("no answer", "000001", "ABCDEF000001", "1125101010")
    copy = pickle.loads(pickle.dumps(error))  # Ray ships exceptions between processes
    assert (type(copy), str(copy), copy.stan, copy.rrn, copy.transmitted_at) == (
        AcquirerTimeout, "no answer", "000001", "ABCDEF000001", "1125101010",
    )  # fmt: skip


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="original"):
        AcquirerRequest("capture", "000001", "ABCDEF000001", 100, "usd", "m")
    with pytest.raises(ValueError, match="rrn"):
        AcquirerRequest("echo", "000001", "short", 0, "usd", "m")
    with pytest.raises(ValueError, match="card"):
        AcquirerRequest("authorize", "000001", "ABCDEF000001", 100, "usd", "m")


def test_slow_card_does_not_block_others_on_one_connection(slow_bank: Bank) -> None:
    async def body(adapter: Iso8583Adapter) -> tuple[float, float, list[AcquirerResponse], AcquirerResponse]:
        started = time.monotonic()
        slow = asyncio.create_task(adapter.handle(authorization("acct_slow", pan=SLOW_CARD)))
        await asyncio.sleep(0.02)  # let the slow one be written first
        others = await asyncio.gather(*(adapter.handle(authorization("acct_fast")) for _ in range(50)))
        others_done = time.monotonic() - started
        assert not slow.done()
        slow_response = await slow
        return others_done, time.monotonic() - started, others, slow_response

    others_done, slow_done, others, slow = run(slow_bank.port, body, connections=1, timeout_s=5)
    assert all(response.approved for response in others)
    assert others_done < 0.5 and slow_done >= 0.6  # the bank holds the slow answer 600 ms
    assert slow.approved


def test_timeout_then_late_reply_is_ignored(slow_bank: Bank, caplog: pytest.LogCaptureFixture) -> None:
    request = authorization("acct_late", pan=SLOW_CARD)

    async def body(adapter: Iso8583Adapter) -> AcquirerResponse:
        started = time.monotonic()
        with pytest.raises(AcquirerTimeout):
            await adapter.handle(request)
        assert time.monotonic() - started < 0.5
        await asyncio.sleep(0.6)  # the late answer arrives meanwhile and must be dropped
        return await adapter.handle(authorization("acct_late"))

    response = run(slow_bank.port, body, connections=1, timeout_s=0.2)
    assert response.approved
    messages = [record.getMessage() for record in caplog.records]
    assert any("late or unmatched acquirer reply ignored" in m and request.stan in m for m in messages)
    assert not any(SLOW_CARD in m for m in messages)


def test_300_concurrent_requests_over_two_connections(slow_bank: Bank) -> None:
    mid = f"acct_{uuid.uuid4().hex[:12]}"
    requests = [authorization(mid, amount=100 + i) for i in range(300)]

    async def body(adapter: Iso8583Adapter) -> list[AcquirerResponse]:
        assert adapter.connected_count == 2
        return await asyncio.gather(*(adapter.handle(request) for request in requests))

    responses = run(slow_bank.port, body, connections=2, timeout_s=10)
    for request, response in zip(requests, responses, strict=True):
        assert response.approved
        assert (response.stan, response.rrn) == (request.stan, request.rrn)
        assert response.raw["4"] == f"{request.amount:012d}"  # the answer to this request, not another
    journal = Journal(slow_bank.journal_path)
    assert journal.approved_count_for_merchant(mid) == 300
    assert {row.authorized_amount for row in journal.authorizations() if row.merchant_id == mid} == {
        request.amount for request in requests
    }


def test_unavailable_when_no_bank_listens() -> None:
    async def body(adapter: Iso8583Adapter) -> None:
        assert adapter.connected_count == 0
        with pytest.raises(AcquirerUnavailable):
            await adapter.handle(echo())

    run(free_port(), body, connections=2, timeout_s=0.5)


def test_bank_killed_and_restarted(tmp_path: Path) -> None:
    bank = start_bank(tmp_path, slow_ms=2000)
    first, last = authorization("acct_restart"), authorization("acct_restart")
    in_flight = authorization("acct_restart", pan=SLOW_CARD)

    async def body(adapter: Iso8583Adapter) -> None:
        assert (await adapter.handle(first)).approved
        pending = asyncio.create_task(adapter.handle(in_flight))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.to_thread(bank.proc.kill)
        # Sent, then the connection died: outcome unknown, reported at once (not after 5 s).
        with pytest.raises(AcquirerTimeout):
            await pending
        assert time.monotonic() - started < 2.0
        while adapter.connected_count:
            await asyncio.sleep(0.01)
        with pytest.raises(AcquirerUnavailable):  # nothing to write on: not sent
            await adapter.handle(authorization("acct_restart"))

        await asyncio.to_thread(bank.restart)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert (await adapter.handle(echo())).approved
                break
            except AcquirerUnavailable:
                assert time.monotonic() < deadline, "adapter did not reconnect"
                await asyncio.sleep(0.05)
        assert (await adapter.handle(last)).approved

    try:
        run(bank.port, body, connections=2, timeout_s=5)
    finally:
        bank.proc.stop()
    journal = Journal(bank.journal_path)
    # The bank journals before it answers: the in-flight authorization survived the crash too.
    assert all(journal.by_rrn(r.rrn) is not None for r in (first, in_flight, last))
    assert journal.approved_count_for_merchant("acct_restart") == 3
