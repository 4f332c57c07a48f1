"""The simulated acquiring bank: an asyncio TCP server speaking paygate's ISO 8583.

`Bank` decides every answer and writes the journal; `BankServer` moves frames. The decision is
synchronous on purpose: a decision and its journal write complete without yielding to the event
loop, so two requests for the same authorization can never interleave. The decisions of one
event-loop turn commit together (`GroupCommit`), and their answers leave after that commit. Only
the answer's delay is awaited, in a task per request, so a slow answer never holds up the others
on a connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

from actors.acquirer import iso8583 as iso
from actors.acquirer.messages import mask_pan
from actors.batching import CorkedWriter
from banksim import cards
from banksim.journal import Authorization, Journal, StoredAnswer

log = logging.getLogger("banksim")

Document = dict[str, str]

# Request fields echoed in every answer (never the PAN, expiry or field 48).
_ECHOED = ("3", "4", "7", "11", "12", "13", "37", "41", "42", "49", "70")
# Answers not remembered for retransmissions: they had no effect and may differ next time
# (the original may not have arrived yet; a system error is transient).
_NOT_REMEMBERED = frozenset({"25", "96"})


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 0
    journal: Path = Path("banksim.sqlite3")
    latency_ms: int = 0
    slow_ms: int = 3000


@dataclass(frozen=True)
class Answer:
    """What to send back and when. `fields` is None when the bank stays silent (lost reply)."""

    fields: Document | None
    delay_s: float
    code: str
    note: str = ""


@dataclass(frozen=True)
class _Result:
    code: str
    auth_code: str | None = None
    behaviour: cards.Behaviour = "normal"


@dataclass
class Bank:
    journal: Journal
    latency_s: float = 0.0
    slow_s: float = 3.0
    today: Callable[[], date] = field(default=lambda: datetime.now(UTC).date())

    def decide(self, doc: Document) -> Answer:
        mti = doc.get("t", "")
        kind = iso.kind_of(mti, doc.get("3"))
        if kind == "echo":
            return Answer(self._fields(doc, "00"), self.latency_s, "00")
        if iso.response_mti(mti) == mti:
            return Answer(None, 0.0, "--", "not a request, ignored")
        if kind is None or not doc.get("37"):
            return Answer(self._fields(doc, "12"), self.latency_s, "12", "unsupported or no RRN")
        try:
            with self.journal.transaction():
                return self._decide_once(kind, doc)
        except Exception:
            # A bug or a full disk must not pass for an approval; the journal rolled back.
            log.exception("banksim failed on mti=%s stan=%s rrn=%s", mti, doc.get("11"), doc.get("37"))
            return Answer(self._fields(doc, "96"), self.latency_s, "96", "internal error")

    def _decide_once(self, kind: str, doc: Document) -> Answer:
        rrn, mti = doc.get("37", ""), doc["t"]
        stored = self.journal.answer_for(rrn, mti)
        if stored is not None:
            return self._retransmission(doc, stored)
        handler = {
            "authorize": self._authorize,
            "purchase": self._purchase,
            "capture": self._capture,
            "refund": self._refund,
            "reversal": self._reverse,
        }[kind]
        result = handler(doc)
        fields = self._fields(doc, result.code, result.auth_code)
        silent = result.behaviour == "silent"
        if result.code not in _NOT_REMEMBERED:
            self.journal.save_answer(rrn, mti, StoredAnswer(doc.get("4", ""), fields, silent))
        delay = self.slow_s if result.behaviour == "slow" else self.latency_s
        return Answer(None if silent else fields, delay, result.code, "never answered" if silent else "")

    def _retransmission(self, doc: Document, stored: StoredAnswer) -> Answer:
        """Same RRN and MTI again: the first answer, no second effect; a different amount is 94."""
        if stored.amount != doc.get("4", ""):
            return Answer(self._fields(doc, "94"), self.latency_s, "94", "duplicate RRN, different amount")
        fields = {**stored.fields, "7": doc.get("7", ""), "11": doc.get("11", "")}
        code = fields.get("39", "")
        if stored.silent:
            return Answer(None, 0.0, code, "retransmission, never answered")
        return Answer(fields, self.latency_s, code, "retransmission")

    def _authorize(self, doc: Document) -> _Result:
        pan, amount = doc.get("2", ""), _amount(doc)
        if amount is None or amount <= 0:
            return _Result("13")
        outcome = cards.outcome(pan, doc.get("14"), self.today())
        currency = iso.currency_alpha(doc.get("49", ""))
        if outcome.response_code != iso.APPROVED:
            return _Result(outcome.response_code)
        if currency is None:
            return _Result("12")
        auth_code = _new_auth_code()
        self.journal.add_authorization(
            doc["37"], doc.get("11", ""), auth_code, mask_pan(pan), amount, currency, doc.get("42", "")
        )
        return _Result(iso.APPROVED, auth_code, outcome.behaviour)

    def _purchase(self, doc: Document) -> _Result:
        """An authorization captured in full at once (0200). The capture is journalled under the
        RRN the acquirer gave it (field 48), or the purchase's own, as a completion would be."""
        result = self._authorize(doc)
        if result.code == iso.APPROVED:
            rrn, amount = doc["37"], _amount(doc)
            assert amount is not None  # _authorize approved it
            capture_rrn = _private(doc).get(iso.SE_CAPTURE_RRN) or rrn
            self.journal.add_capture(rrn, capture_rrn, doc.get("11", ""), rrn, amount)
        return result

    def _capture(self, doc: Document) -> _Result:
        original_rrn = _original_rrn(doc)
        auth = self.journal.by_rrn(original_rrn)
        amount = _amount(doc)
        if auth is None:
            return _Result("25")
        if auth.state != "authorized" or not _same_merchant_and_currency(auth, doc):
            return _Result("12")  # reversed, already captured, or someone else's
        if amount is None or not 0 < amount <= auth.authorized_amount:
            return _Result("13")
        self.journal.add_capture(auth.rrn, doc["37"], doc.get("11", ""), original_rrn, amount)
        return _Result(iso.APPROVED, auth.auth_code)

    def _refund(self, doc: Document) -> _Result:
        original_rrn = _original_rrn(doc)
        auth = self._authorization_behind(original_rrn)
        amount = _amount(doc)
        if auth is None:
            return _Result("25")
        if auth.state != "captured" or not _same_merchant_and_currency(auth, doc):
            return _Result("12")
        if amount is None or amount <= 0 or auth.refunded_amount + amount > auth.captured_amount:
            return _Result("13")
        self.journal.add_refund(auth.rrn, doc["37"], doc.get("11", ""), original_rrn, amount)
        return _Result(iso.APPROVED, _new_auth_code())

    def _reverse(self, doc: Document) -> _Result:
        """Reverse an authorization (capture included) or a single refund, by the original's RRN.

        Reversing something already reversed answers 00 again: the caller wants it undone, it is.
        """
        original_rrn, rrn, stan = _original_rrn(doc), doc["37"], doc.get("11", "")
        operation = None if self.journal.by_rrn(original_rrn) else self.journal.operation_by_rrn(original_rrn)
        if operation is not None and operation.kind == "refund":
            if not operation.reversed:
                self.journal.add_refund_reversal(operation, rrn, stan)
            return _Result(iso.APPROVED)
        auth = self._authorization_behind(original_rrn)
        if auth is None:
            return _Result("25")
        if auth.state != "reversed":
            self.journal.add_reversal(auth.rrn, rrn, stan, original_rrn)
        return _Result(iso.APPROVED, auth.auth_code)

    def _authorization_behind(self, rrn: str) -> Authorization | None:
        """The authorization with this RRN, or the one a capture with this RRN completed."""
        auth = self.journal.by_rrn(rrn)
        if auth is None:
            operation = self.journal.operation_by_rrn(rrn)
            if operation is not None and operation.kind == "capture":
                auth = self.journal.by_rrn(operation.authorization_rrn)
        return auth

    @staticmethod
    def _fields(doc: Document, code: str, auth_code: str | None = None) -> Document:
        fields = {key: doc[key] for key in _ECHOED if key in doc}
        fields["t"] = iso.response_mti(doc.get("t", "0000"))
        fields["39"] = code
        if auth_code is not None and code == iso.APPROVED:
            fields["38"] = auth_code
        return fields


class GroupCommit:
    """The journal writes of one event-loop turn in one SQLite transaction, and their answers held
    until it commits: an answer never leaves for an effect that is not durable yet. Under load a
    turn decides tens of requests, and a commit of its own (a WAL write) was about 40% of each
    decision's time.

    If the commit fails, the turn's effects roll back and its answers are never sent: to the
    acquirer those are lost replies (it retransmits or reverses), and the journal holds nothing."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.waiting: list[Callable[[], None]] | None = None  # None: no group open

    def join(self) -> None:
        """Before a decision: open the turn's group, if not open yet."""
        if self.waiting is not None:
            return
        try:
            self.journal.begin_group()
        except Exception:
            # The decision then tries a transaction of its own, and answers 96 if that fails too.
            log.exception("banksim could not open a journal transaction")
            return
        self.waiting = []
        asyncio.get_running_loop().call_soon(self.commit)

    def after_commit(self, send: Callable[[], None]) -> None:
        if self.waiting is None:
            send()  # decided in a transaction of its own, already committed
        else:
            self.waiting.append(send)

    def commit(self) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is None:
            return
        try:
            self.journal.commit_group()
        except Exception:
            log.exception("banksim journal commit failed: %d answers withheld", len(waiting))
            self.journal.rollback_group()
            return
        for send in waiting:
            send()


class BankServer:
    """Accepts connections; reads frames; answers each in its own task after its delay."""

    def __init__(self, bank: Bank, host: str, port: int) -> None:
        self.bank, self.host, self.port = bank, host, port
        self.commits = GroupCommit(bank.journal)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # the real one when port was 0

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self.commits.commit()  # the last turn's decisions, before the journal closes

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies: set[asyncio.Task[None]] = set()
        answers = CorkedWriter(writer.transport)
        try:
            while True:
                try:
                    doc = await iso.read_frame(reader)
                except iso.FrameError as exc:
                    log.warning("undecodable request dropped: %s", exc)
                    continue
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.commits.join()
                answer = self.bank.decide(doc)
                # Every message is in the journal; a log line each cost a quarter of banksim's CPU.
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "mti=%s stan=%s rrn=%s rc=%s card=%s delay_ms=%d%s",
                        doc.get("t"), doc.get("11"), doc.get("37", "-"), answer.code,
                        mask_pan(doc["2"]) if "2" in doc else "-",  # masked here; the log filter is a 2nd net
                        answer.delay_s * 1000, f" ({answer.note})" if answer.note else "",
                    )  # fmt: skip
                if answer.fields is None:
                    continue
                frame = iso.encode_frame(answer.fields)
                if answer.delay_s <= 0:
                    self.commits.after_commit(partial(answers.write, frame))
                else:
                    self.commits.after_commit(partial(_reply_later, replies, answers, frame, answer.delay_s))
        finally:
            # Answers still waiting on this connection are lost with it, as on a real network.
            for reply in list(replies):
                reply.cancel()


def _reply_later(replies: set[asyncio.Task[None]], answers: CorkedWriter, frame: bytes, delay_s: float) -> None:
    reply = asyncio.create_task(_reply(answers, frame, delay_s))
    replies.add(reply)
    reply.add_done_callback(replies.discard)


async def _reply(answers: CorkedWriter, frame: bytes, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    answers.write(frame)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until `stop` is set; the journal is closed cleanly on the way out."""
    journal = Journal(settings.journal)
    bank = Bank(journal, settings.latency_ms / 1000, settings.slow_ms / 1000)
    server = BankServer(bank, settings.host, settings.port)
    try:
        await server.start()
        log.info("banksim listening on %s:%d, journal %s", settings.host, server.port, settings.journal)
        await stop.wait()
    finally:
        await server.close()
        journal.close()
        log.info("banksim stopped")


def _amount(doc: Document) -> int | None:
    value = doc.get("4", "")
    return int(value) if value.isdigit() else None


def _original_rrn(doc: Document) -> str:
    """Field 48 subelement 63, falling back to the message's own RRN (lifecycle-wide RRNs)."""
    return _private(doc).get(iso.SE_ORIGINAL_RRN) or doc.get("37", "")


def _private(doc: Document) -> dict[str, str]:
    """Field 48's subelements; none when it is missing or malformed."""
    try:
        return iso.decode_private_data(doc.get("48", ""))
    except iso.FrameError:
        return {}


def _same_merchant_and_currency(auth: Authorization, doc: Document) -> bool:
    return auth.merchant_id == doc.get("42", "") and auth.currency == iso.currency_alpha(doc.get("49", ""))


_AUTH_CODE_ALPHABET = string.ascii_uppercase + string.digits


def _new_auth_code() -> str:
    """Six random letters or digits from one draw of the system's randomness (a draw per character
    was six `getrandom` calls per authorization)."""
    n = secrets.randbelow(len(_AUTH_CODE_ALPHABET) ** 6)
    code = []
    for _ in range(6):
        n, digit = divmod(n, len(_AUTH_CODE_ALPHABET))
        code.append(_AUTH_CODE_ALPHABET[digit])
    return "".join(code)
