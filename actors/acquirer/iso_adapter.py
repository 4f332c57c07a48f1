"""`AcquirerAdapter` over ISO 8583/TCP: a small pool of persistent, multiplexed connections.

Each connection carries many requests at once; one reader task per connection matches every
answer to its request by STAN (field 11). What a failure means for the caller:

- no connection to write on          -> `AcquirerUnavailable` (the bank never saw it)
- written, no answer in `timeout_s`  -> `AcquirerTimeout` (outcome unknown; a late answer is
                                        logged and dropped)
- written, then the connection died  -> `AcquirerTimeout` (outcome unknown)

Lost connections come back by themselves, with exponential backoff. The PAN exists only in the
request's `CardData` and in the encoded bytes; logs and errors carry MTI, STAN and RRN only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType

from actors.acquirer import iso8583 as iso
from actors.acquirer.messages import (
    AcquirerError,
    AcquirerRequest,
    AcquirerResponse,
    AcquirerTimeout,
    AcquirerUnavailable,
    format_transmitted_at,
)
from actors.batching import CorkedWriter

log = logging.getLogger("paygate.acquirer")

Document = dict[str, str]


class Iso8583Adapter:
    """ISO 8583 client for one acquirer host: `connections` TCP links used round-robin."""

    def __init__(
        self,
        host: str,
        port: int,
        connections: int = 4,
        timeout_s: float = 10.0,
        *,
        terminal_id: str = "PAYGATE1",
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.terminal_id = terminal_id
        self._links = [
            _Link(host, port, index, timeout_s, backoff_initial_s, backoff_max_s) for index in range(connections)
        ]
        self._turn = itertools.count()
        self._started = False

    async def start(self) -> None:
        """Connect every link once; links that fail keep retrying in the background."""
        if self._started:
            return
        self._started = True
        for link in self._links:
            link.start()
        await asyncio.gather(*(link.first_attempt.wait() for link in self._links))

    async def close(self) -> None:
        self._started = False
        await asyncio.gather(*(link.close() for link in self._links))

    async def __aenter__(self) -> Iso8583Adapter:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected_count(self) -> int:
        """How many links are up right now (for health checks)."""
        return sum(link.connected for link in self._links)

    async def handle(self, request: AcquirerRequest) -> AcquirerResponse:
        if not request.transmitted_at:
            request = replace(request, transmitted_at=format_transmitted_at(datetime.now(UTC)))
        message_type = iso.MESSAGE_TYPES[request.kind]
        try:
            frame = iso.encode_frame(build_request(request, self.terminal_id))
        except iso.FrameError as exc:
            raise ValueError(str(exc)) from None
        link = self._pick(request)
        reply = await link.exchange(request, message_type, frame)
        return parse_response(reply, request)

    def _pick(self, request: AcquirerRequest) -> _Link:
        """Next connected link in turn that is not already waiting on this STAN."""
        if not self._started:
            raise AcquirerUnavailable("acquirer adapter is not started", request.stan, request.rrn)
        for _ in range(len(self._links)):
            link = self._links[next(self._turn) % len(self._links)]
            if link.connected and request.stan not in link.pending:
                return link
        if any(request.stan in link.pending for link in self._links):
            raise AcquirerError(
                f"STAN {request.stan} is already in flight on every connection", request.stan, request.rrn
            )
        raise AcquirerUnavailable(
            f"no connection to acquirer {self.host}:{self.port}",
            request.stan,
            request.rrn,
            request.transmitted_at,
        )


class _Link:
    """One persistent TCP connection plus the supervisor task that keeps reconnecting it."""

    def __init__(
        self, host: str, port: int, index: int, timeout_s: float, backoff_initial_s: float, backoff_max_s: float
    ) -> None:
        self.host, self.port, self.index = host, port, index
        self.timeout_s = timeout_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        # STAN -> (expected response MTI, future the caller awaits)
        self.pending: dict[str, tuple[str, asyncio.Future[Document]]] = {}
        self.first_attempt = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._frames: CorkedWriter | None = None  # the requests of one loop turn leave in one send
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"acquirer-link-{self.index}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def exchange(self, request: AcquirerRequest, message_type: iso.MessageType, frame: bytes) -> Document:
        """Write one request and wait for the answer with the same STAN."""
        writer, frames = self._writer, self._frames
        if writer is None or frames is None or writer.is_closing():
            raise AcquirerUnavailable(
                f"acquirer connection {self.index} is down", request.stan, request.rrn, request.transmitted_at
            )
        future: asyncio.Future[Document] = asyncio.get_running_loop().create_future()
        # Registered before writing: the answer can arrive before drain() returns.
        self.pending[request.stan] = (message_type.response_mti, future)
        try:
            async with asyncio.timeout(self.timeout_s):
                frames.write(frame)
                await writer.drain()
                return await future
        except TimeoutError:
            log.warning(
                "acquirer timeout mti=%s stan=%s rrn=%s after %.3fs: outcome unknown",
                message_type.request_mti, request.stan, request.rrn, self.timeout_s,
            )  # fmt: skip
            raise AcquirerTimeout(
                f"no answer from the acquirer within {self.timeout_s}s; outcome unknown",
                request.stan,
                request.rrn,
                request.transmitted_at,
            ) from None
        except AcquirerTimeout as exc:  # set by _drop(): the connection died while we waited
            raise AcquirerTimeout(str(exc), request.stan, request.rrn, request.transmitted_at) from None
        except (ConnectionError, OSError):
            # Bytes were handed to the socket: the bank may have acted on them.
            raise AcquirerTimeout(
                "acquirer connection lost after sending; outcome unknown",
                request.stan,
                request.rrn,
                request.transmitted_at,
            ) from None
        finally:
            entry = self.pending.get(request.stan)
            if entry is not None and entry[1] is future:
                del self.pending[request.stan]

    async def _supervise(self) -> None:
        delay = self.backoff_initial_s
        try:
            while True:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout_s
                    )
                except (OSError, TimeoutError) as exc:
                    log.warning(
                        "acquirer connection %d to %s:%d failed (%s); retry in %.2fs",
                        self.index, self.host, self.port, type(exc).__name__, delay,
                    )  # fmt: skip
                    self.first_attempt.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max_s)
                    continue
                delay = self.backoff_initial_s
                log.info("acquirer connection %d to %s:%d up", self.index, self.host, self.port)
                self._writer, self._frames = writer, CorkedWriter(writer.transport)
                self.first_attempt.set()
                try:
                    await self._read_replies(reader)
                finally:
                    self._drop(writer)
                await asyncio.sleep(delay)
        finally:
            if self._writer is not None:
                self._drop(self._writer)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                doc = await iso.read_frame(reader)
            except iso.FrameError as exc:
                log.warning("acquirer connection %d: undecodable reply dropped: %s", self.index, exc)
                continue
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                log.warning("acquirer connection %d lost (%s)", self.index, type(exc).__name__)
                return
            self._resolve(doc)

    def _resolve(self, doc: Document) -> None:
        stan, mti = doc.get("11", ""), doc.get("t", "")
        entry = self.pending.get(stan)
        if entry is None or entry[0] != mti or entry[1].done():
            # Its caller gave up (timeout) or never existed: nobody may act on it now.
            log.warning(
                "late or unmatched acquirer reply ignored mti=%s stan=%s rrn=%s rc=%s",
                mti, stan, doc.get("37", ""), doc.get("39", ""),
            )  # fmt: skip
            return
        del self.pending[stan]
        entry[1].set_result(doc)

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        """Close the socket and fail everything still waiting on it: sent, so outcome unknown."""
        self._writer, self._frames = None, None
        writer.close()
        waiting, self.pending = self.pending, {}
        for stan, (_, future) in waiting.items():
            if not future.done():
                future.set_exception(
                    AcquirerTimeout("acquirer connection lost before the answer; outcome unknown", stan)
                )


def build_request(request: AcquirerRequest, terminal_id: str) -> Document:
    """The ISO 8583 fields for `request` (transmitted_at must be filled)."""
    message_type = iso.MESSAGE_TYPES[request.kind]
    doc: Document = {"t": message_type.request_mti, "7": request.transmitted_at, "11": request.stan}
    if request.kind == "echo":
        doc["70"] = iso.ECHO_NETWORK_CODE
        return doc
    assert message_type.processing_code is not None
    doc.update(
        {
            "3": message_type.processing_code,
            "4": f"{request.amount:012d}",
            "12": request.transmitted_at[4:],  # hhmmss
            "13": request.transmitted_at[:4],  # MMDD
            "37": request.rrn,
            "41": terminal_id,
            "42": request.merchant_id,
            "49": iso.currency_numeric(request.currency),
        }
    )
    private: dict[str, str] = {}
    if request.card is not None:
        doc["2"] = request.card.pan
        doc["14"] = f"{request.card.exp_year % 100:02d}{request.card.exp_month:02d}"
        if request.kind in ("authorize", "purchase") and request.card.cvc:
            private[iso.SE_CVC] = request.card.cvc  # the CVC goes in an 0100 or 0200 and nowhere else
    if request.capture_rrn is not None:
        private[iso.SE_CAPTURE_RRN] = request.capture_rrn
    original = request.original
    if original is not None:
        private[iso.SE_ORIGINAL_RRN] = original.rrn
        doc["90"] = iso.original_data_elements(
            iso.MESSAGE_TYPES[original.kind].request_mti, original.stan, original.transmitted_at
        )
        if original.auth_code:
            doc["38"] = original.auth_code
    if private:
        doc["48"] = iso.encode_private_data(private)
    return doc


def parse_response(doc: Document, request: AcquirerRequest) -> AcquirerResponse:
    code = doc.get("39", "")
    auth_code = doc.get("38", "").strip() or None
    return AcquirerResponse(
        approved=code == iso.APPROVED,
        response_code=code,
        decline_code=iso.decline_code_for(code),
        auth_code=auth_code,
        stan=doc.get("11", request.stan),
        rrn=doc.get("37", request.rrn),
        raw=iso.safe_fields(doc),
    )
