"""banksim's group commit: the decisions of one event-loop turn share a journal commit, and no
answer leaves before it. A BankServer in this process, over real TCP, with a journal that counts
(or fails) its group commits."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from actors.acquirer import iso8583 as iso
from actors.acquirer.iso_adapter import build_request
from banksim.journal import Journal
from banksim.server import Bank, BankServer
from tests.test_banksim import HOST, authorization, merchant

pytestmark = pytest.mark.timeout(60)


class CountingJournal(Journal):
    def __init__(self, path: Path, failing_commits: int = 0) -> None:
        super().__init__(path)
        self.commits = 0
        self.failing_commits = failing_commits

    def commit_group(self) -> None:
        if self.failing_commits:
            self.failing_commits -= 1
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        super().commit_group()
        self.commits += 1


def authorizations(count: int) -> list[bytes]:
    mid = merchant()
    return [iso.encode_frame(build_request(authorization(mid), "TERM0001")) for _ in range(count)]


async def exchange(port: int, frames: list[bytes], wait_s: float = 5.0) -> list[dict[str, str]]:
    """Send every frame in one write; read answers until all came or none came for `wait_s`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"".join(frames))
    answers: list[dict[str, str]] = []
    try:
        while len(answers) < len(frames):
            answers.append(await asyncio.wait_for(iso.read_frame(reader), wait_s))
    except TimeoutError:
        pass
    finally:
        writer.close()
    return answers


def serve(journal: Journal, frames: list[bytes], wait_s: float = 5.0) -> list[dict[str, str]]:
    async def main() -> list[dict[str, str]]:
        server = BankServer(Bank(journal), HOST, 0)
        await server.start()
        try:
            return await exchange(server.port, frames, wait_s)
        finally:
            await server.close()

    return asyncio.run(main())


def test_requests_decided_in_one_turn_commit_together(tmp_path: Path) -> None:
    journal = CountingJournal(tmp_path / "journal.sqlite3")
    answers = serve(journal, authorizations(20))
    assert [a["39"] for a in answers] == ["00"] * 20
    assert len(journal.authorizations()) == 20
    # 20 frames in one write arrive in a read or two: one commit each, not one per request.
    assert 1 <= journal.commits <= 3


def test_a_failed_commit_sends_no_answer_and_leaves_no_effect(tmp_path: Path) -> None:
    journal = CountingJournal(tmp_path / "journal.sqlite3", failing_commits=1)
    frames = authorizations(3)
    assert serve(journal, frames, wait_s=0.5) == []  # lost replies, as far as the acquirer knows
    assert journal.authorizations() == []
    # The acquirer's retransmissions are then decided afresh, once each.
    answers = serve(journal, frames)
    assert [a["39"] for a in answers] == ["00"] * 3
    assert len(journal.authorizations()) == 3
