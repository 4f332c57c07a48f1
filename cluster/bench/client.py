"""A lean HTTP/1.1 client for load generation: keep-alive connections as `asyncio` protocols,
requests pre-encoded as bytes, only the response headers the bench needs parsed.

httpx costs several hundred microseconds of CPU per request; at 1,000+ requests/s on a 2-core box
shared with the system under test that would distort what is measured. This costs a few tens.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

IDLE_REUSE_S = 4.0  # uvicorn closes idle keep-alive connections after 5 s: never reuse one that old


class HttpError(Exception):
    """No (complete) response: connection refused, reset, closed early or timed out."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    replayed: bool = False


def form(params: dict[str, str | int]) -> bytes:
    """`application/x-www-form-urlencoded`, brackets escaped as Stripe's SDKs do."""
    return "&".join(f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in params.items()).encode()


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        return cls(parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls)


class RequestBuilder:
    """Pre-encoded request heads for one API key."""

    def __init__(self, endpoint: Endpoint, key: str) -> None:
        self._common = (f"Host: {endpoint.host}:{endpoint.port}\r\nAuthorization: Bearer {key}\r\n"
                        "User-Agent: paygate-bench\r\n").encode()

    def post(self, path: str, body: bytes, idempotency_key: str | None = None) -> bytes:
        extra = f"Idempotency-Key: {idempotency_key}\r\n".encode() if idempotency_key else b""
        return (b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._common + extra
                + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    def get(self, path: str) -> bytes:
        return b"GET " + path.encode() + b" HTTP/1.1\r\n" + self._common + b"\r\n"


class Connection(asyncio.Protocol):
    """One keep-alive connection as a protocol: the answer is parsed as its bytes arrive, with no
    stream reader, its futures and a timeout context in between. With the scenarios' card bodies
    encoded once and orjson, it took the client from 0.19 to 0.14 ms of CPU per checkout."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[Response] | None = None
        self.head: tuple[int, int, bool, bool] | None = None  # status, length, chunked, replayed
        self.last_used = time.monotonic()
        self.reusable = True
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.answer is None or self.answer.done():
            return
        try:
            self._parse(self.answer)
        except ValueError as error:  # not HTTP: the answer fails, and the connection is not reused
            self.close()
            self.answer.set_exception(ConnectionError(f"malformed answer: {error}"))

    def _parse(self, answer: asyncio.Future[Response]) -> None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = _parse_head(bytes(self.buffer[:end]), self)
            del self.buffer[: end + 4]
        status, length, chunked, replayed = self.head
        body = _chunked_body(self.buffer) if chunked else _sized_body(self.buffer, length)
        if body is not None:
            self.head = None
            self.last_used = time.monotonic()
            answer.set_result(Response(status, body, replayed))

    async def roundtrip(self, request: bytes, timeout_s: float) -> Response:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.answer = answer = loop.create_future()
        self.head = None
        timer = loop.call_later(timeout_s, _time_out, answer)
        try:
            self.transport.write(request)
            return await answer
        finally:
            timer.cancel()
            self.answer = None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


def _time_out(answer: asyncio.Future[Response]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


def _sized_body(buffer: bytearray, length: int) -> bytes | None:
    if len(buffer) < length:
        return None
    body = bytes(buffer[:length])
    del buffer[:length]
    return body


def _chunked_body(buffer: bytearray) -> bytes | None:
    """The whole chunked body, taken from the buffer, once its last chunk has arrived."""
    parts: list[bytes] = []
    at = 0
    while True:
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(bytes(buffer[at:end]).split(b";")[0], 16)
        if size == 0:
            last = buffer.find(b"\r\n", end + 2)  # the end of the (empty) trailer section
            if last < 0:
                return None
            del buffer[: last + 2]
            return b"".join(parts)
        if len(buffer) < end + 2 + size + 2:
            return None
        parts.append(bytes(buffer[end + 2: end + 2 + size]))
        at = end + 2 + size + 2


def _parse_head(head: bytes, conn: Connection) -> tuple[int, int, bool, bool]:
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    length, chunked, replayed = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"idempotent-replayed":
            replayed = value.strip() == b"true"
        elif name == b"connection" and b"close" in value.lower():
            conn.reusable = False
    return status, length, chunked, replayed


class Pool:
    """At most `size` connections, reused LIFO (warm ones first); waiters are served in order."""

    def __init__(self, endpoint: Endpoint, size: int, timeout_s: float = 30.0) -> None:
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Connection] = []
        self._ssl = ssl.create_default_context() if endpoint.tls else None
        self.opened = 0

    async def request(self, raw: bytes) -> Response:
        async with self._slots:
            conn = await self._take()
            try:
                response = await conn.roundtrip(raw, self.timeout_s)
            except TimeoutError:
                conn.close()
                raise HttpError("timeout", f"no response in {self.timeout_s:g}s") from None
            except (ConnectionError, OSError) as exc:
                conn.close()
                raise HttpError("connection", type(exc).__name__) from None
            if conn.reusable:
                self._idle.append(conn)
            else:
                conn.close()
            return response

    async def _take(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.last_used < IDLE_REUSE_S and not conn.closed:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(Connection, self.endpoint.host, self.endpoint.port, ssl=self._ssl),
                self.timeout_s)
        except (TimeoutError, OSError) as exc:
            raise HttpError("connect", type(exc).__name__) from None
        self.opened += 1
        return conn

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
