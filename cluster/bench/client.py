"""A lean HTTP/1.1 client for load generation: keep-alive connections over `asyncio` streams,
requests pre-encoded as bytes, only the response headers the bench needs parsed.

httpx costs several hundred microseconds of CPU per request; at 1,000+ requests/s on a 2-core box
shared with the system under test that would distort what is measured. This costs a few tens.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
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


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()
        self.reusable = True

    async def roundtrip(self, request: bytes) -> Response:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length, chunked, replayed = _parse_head(head, self)
        if chunked:
            body = await _read_chunked(self.reader)
        else:
            body = await self.reader.readexactly(length) if length else b""
        self.last_used = time.monotonic()
        return Response(status, body, replayed)

    def close(self) -> None:
        self.reusable = False
        self.writer.close()


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


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


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
                async with asyncio.timeout(self.timeout_s):
                    response = await conn.roundtrip(raw)
            except TimeoutError:
                conn.close()
                raise HttpError("timeout", f"no response in {self.timeout_s:g}s") from None
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError) as exc:
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
            if now - conn.last_used < IDLE_REUSE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=self._ssl,
                                        limit=1 << 20), self.timeout_s)
        except (TimeoutError, OSError) as exc:
            raise HttpError("connect", type(exc).__name__) from None
        self.opened += 1
        return Connection(reader, writer)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
