"""A small HTTP/1.1 client for webhook deliveries: POST one body, read the status and a prefix
of the answer, keep connections alive per origin.

httpx costs the dispatcher about 2 ms of CPU per delivery; this does the same job with the C
parser uvicorn already depends on (httptools). It does only what deliveries need: POST, http and
https, keep-alive, Content-Length or chunked answers, a total timeout, and no redirects.

Each connection is an `asyncio.Protocol` with one parser for its life, fed as bytes arrive: no
stream reader, no future per read, no timeout context per delivery (see `_Connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from functools import lru_cache
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

KEEP_BODY_BYTES = 1024


class DeliveryError(Exception):
    """The endpoint could not be reached or did not answer properly; the message says how."""


class _Closed(DeliveryError):
    """The connection ended before an answer began: on a kept-alive one, the server had closed it."""


Origin = tuple[str, str, int]


class _Target(NamedTuple):
    origin: Origin
    head: bytes  # the request line, Host and User-Agent


@lru_cache(maxsize=4096)
def _target(url: str, user_agent: str) -> _Target:
    """Where `url` goes and how its requests begin; a merchant's endpoints are few and fixed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError(f"unsupported URL scheme {parts.scheme!r}")
    origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: {user_agent}\r\n"
    return _Target(origin, head.encode("latin-1"))


class _Connection(asyncio.Protocol):
    """One kept-alive connection. An answer is parsed as its bytes arrive and completes the
    delivery's future; the connection is reusable once an answer ends with keep-alive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, str]] | None = None
        self.body = bytearray()
        self.headers_done = False
        self.keep_alive = False
        self.closed = False
        self.since = time.monotonic()  # when it was parked idle

    def usable(self, now: float, idle_timeout_s: float) -> bool:
        return not self.closed and now - self.since < idle_timeout_s

    def exchange(self, request: bytes) -> asyncio.Future[tuple[int, str]]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.body.clear()
        self.headers_done = self.keep_alive = False
        self.transport.write(request)
        return self.answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.parser is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(DeliveryError(f"malformed HTTP answer: {error}"))
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser, self.parser = self.parser, None  # the parser holds this protocol's bound methods
        if self.headers_done and parser is not None:  # an answer delimited by closing the connection
            self._finish(parser.get_status_code(), keep_alive=False)
        else:
            self._fail(_Closed("the endpoint closed the connection before answering"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Asked here: once the message is complete the parser is reset for the next one and
        # always answers False (every delivery then paid for a new connection).
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        if len(self.body) < KEEP_BODY_BYTES:
            self.body.extend(data[: KEEP_BODY_BYTES - len(self.body)])

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self._finish(self.parser.get_status_code(), self.keep_alive)

    def _finish(self, status: int, keep_alive: bool) -> None:
        answer, self.answer = self.answer, None
        self.headers_done = False
        if not keep_alive:
            self.close()
        if answer is not None and not answer.done():
            answer.set_result((status, self.body.decode("utf-8", "replace")))

    def _fail(self, error: Exception) -> None:
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)


class WebhookClient:
    def __init__(self, timeout_s: float, max_idle_per_origin: int = 32, idle_timeout_s: float = 30.0,
                 user_agent: str = "paygate-webhooks/1") -> None:
        # Keep as many idle connections per origin as deliveries may be in flight to it: a smaller
        # pool closes what each burst opened, and the next burst connects again. Idle ones are
        # closed after idle_timeout_s (see prune), so endpoints that went quiet hold no sockets.
        self.timeout_s = timeout_s
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout_s = idle_timeout_s
        self.user_agent = user_agent
        self.idle: dict[Origin, list[_Connection]] = {}
        self.tls = ssl.create_default_context()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """(status, first characters of the answer); DeliveryError or TimeoutError otherwise."""
        target = _target(url, self.user_agent)
        request = b"".join((target.head, f"Content-Length: {len(body)}\r\n".encode(),
                            *(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()), b"\r\n", body))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        conn, reused = await self._connect(target.origin, deadline)
        try:
            status, text = await self._exchange(conn, request, deadline)
        except _Closed:
            if not reused:
                raise
            # A kept-alive connection the server had closed: once more on a fresh one.
            conn, _ = await self._connect(target.origin, deadline, fresh=True)
            status, text = await self._exchange(conn, request, deadline)
        pool = self.idle.setdefault(target.origin, [])
        if not conn.closed and len(pool) < self.max_idle_per_origin:
            conn.since = time.monotonic()
            pool.append(conn)
        else:
            conn.close()
        return status, text

    def prune(self) -> int:
        """Close idle connections past their idle timeout or closed by the server; how many."""
        now, closed = time.monotonic(), 0
        for origin, pool in list(self.idle.items()):
            keep = []
            for conn in pool:
                if conn.usable(now, self.idle_timeout_s):
                    keep.append(conn)
                else:
                    conn.close()
                    closed += 1
            if keep:
                self.idle[origin] = keep
            else:
                del self.idle[origin]
        return closed

    async def _exchange(self, conn: _Connection, request: bytes, deadline: float) -> tuple[int, str]:
        """The answer to `request`, or TimeoutError at `deadline` (the connection is then closed:
        its answer may still come, out of step with the next request)."""
        answer = conn.exchange(request)
        timer = asyncio.get_running_loop().call_at(deadline, _time_out, answer)
        try:
            return await answer
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()

    async def _connect(self, origin: Origin, deadline: float, fresh: bool = False) -> tuple[_Connection, bool]:
        """A kept connection (reused=True) or a new one."""
        pool, now = self.idle.get(origin, []), time.monotonic()
        while pool and not fresh:
            conn = pool.pop()
            if conn.usable(now, self.idle_timeout_s):
                return conn, True
            conn.close()
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(_Connection, host, port,
                                                       ssl=self.tls if scheme == "https" else None)
        except OSError as error:
            raise DeliveryError(f"cannot connect to {host}:{port}: {error.strerror or error}") from None
        return conn, False

    async def close(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                with contextlib.suppress(Exception):
                    conn.close()
        self.idle.clear()


def _time_out(answer: asyncio.Future[tuple[int, str]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())
