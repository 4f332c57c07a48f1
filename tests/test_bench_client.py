"""The bench's HTTP client (cluster/bench/client.py) against a real socket server: answers sized and
chunked and split across packets, keep-alive reuse, `Connection: close`, a server that hangs up
or answers garbage, and the timeout."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from cluster.bench.client import Endpoint, HttpError, Pool, RequestBuilder

Answer = Callable[[bytes], list[bytes] | None]  # request head -> the pieces to write (None: hang up)


@asynccontextmanager
async def server(answer: Answer) -> AsyncIterator[tuple[Endpoint, list[int]]]:
    """A keep-alive server: each request's head (and its Content-Length body) read, `answer` written
    piece by piece; yields its endpoint and how many connections it accepted."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                pieces = answer(head)
                if pieces is None:
                    break
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)  # separate packets
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield Endpoint("127.0.0.1", port, False), accepted
    finally:
        listener.close()
        await listener.wait_closed()


def run(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())  # type: ignore[arg-type]
    return sync


def request(endpoint: Endpoint) -> bytes:
    return RequestBuilder(endpoint, "sk_test_x").post("/v1/things", b"a=1")


@run
async def test_sized_answers_split_across_packets_come_whole_over_one_kept_connection() -> None:
    body = b'{"id": "pi_1", "status": "succeeded"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nIdempotent-Replayed: true\r\n\r\n" % len(body)
    async with server(lambda _: [head[:10], head[10:] + body[:5], body[5:]]) as (endpoint, accepted):
        pool = Pool(endpoint, 4, timeout_s=5)
        first = await pool.request(request(endpoint))
        second = await pool.request(request(endpoint))
        pool.close()
    assert (first.status, first.body, first.replayed) == (200, body, True)
    assert second.body == body
    assert (pool.opened, len(accepted)) == (1, 1)


@run
async def test_a_chunked_answer_is_joined_and_the_connection_kept() -> None:
    pieces = [b"HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhel",
              b"lo\r\n6;ext=1\r\n world\r\n", b"0\r\n", b"\r\n"]
    async with server(lambda _: pieces) as (endpoint, accepted):
        pool = Pool(endpoint, 4, timeout_s=5)
        answers = [await pool.request(request(endpoint)) for _ in range(2)]
        pool.close()
    assert [(a.status, a.body, a.replayed) for a in answers] == [(402, b"hello world", False)] * 2
    assert len(accepted) == 1


@run
async def test_connection_close_is_not_reused() -> None:
    closing = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"]
    async with server(lambda _: closing) as (endpoint, accepted):
        pool = Pool(endpoint, 4, timeout_s=5)
        for _ in range(3):
            assert (await pool.request(request(endpoint))).body == b"ok"
        pool.close()
    assert (pool.opened, len(accepted)) == (3, 3)


@run
async def test_a_server_that_hangs_up_or_answers_garbage_is_a_connection_error() -> None:
    async with server(lambda _: None) as (endpoint, _):
        pool = Pool(endpoint, 4, timeout_s=5)
        with pytest.raises(HttpError) as hung_up:
            await pool.request(request(endpoint))
    async with server(lambda _: [b"HTTP/1.1 2xx OK\r\nContent-Length: 2\r\n\r\nok"]) as (endpoint, _):
        pool = Pool(endpoint, 4, timeout_s=5)
        with pytest.raises(HttpError) as garbage:
            await pool.request(request(endpoint))
        assert not pool._idle  # the connection that answered garbage is not kept
    assert (hung_up.value.kind, garbage.value.kind) == ("connection", "connection")


@run
async def test_an_answer_that_does_not_come_times_out_and_the_connection_is_dropped() -> None:
    async with server(lambda _: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]) as (endpoint, _):
        pool = Pool(endpoint, 4, timeout_s=0.3)
        with pytest.raises(HttpError) as timed_out:
            await pool.request(request(endpoint))
        assert not pool._idle
    assert timed_out.value.kind == "timeout"
