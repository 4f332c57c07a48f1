"""The bench's HTTP client (cluster/bench/client.py) against a real socket server: answers sized and
chunked and split across packets, keep-alive reuse, `Connection: close`, a server that hangs up
or answers garbage, and the timeout."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import pytest

from cluster.bench.client import Endpoint, HttpError, Pool, RequestBuilder
from tests.http_server import serving


def run(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())  # type: ignore[arg-type]
    return sync


def request(endpoint: Endpoint) -> bytes:
    return RequestBuilder(endpoint, "sk_test_x").post("/v1/things", b"a=1")


def pool(url: str, timeout_s: float = 5) -> tuple[Endpoint, Pool]:
    endpoint = Endpoint.parse(url)
    return endpoint, Pool(endpoint, 4, timeout_s=timeout_s)


@run
async def test_sized_answers_split_across_packets_come_whole_over_one_kept_connection() -> None:
    body = b'{"id": "pi_1", "status": "succeeded"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nIdempotent-Replayed: true\r\n\r\n" % len(body)
    async with serving([head[:10], head[10:] + body[:5], body[5:]]) as server:
        endpoint, client = pool(server.url)
        first = await client.request(request(endpoint))
        second = await client.request(request(endpoint))
        client.close()
    assert (first.status, first.body, first.replayed) == (200, body, True)
    assert second.body == body
    assert (client.opened, server.connections) == (1, 1)


@run
async def test_a_chunked_answer_is_joined_and_the_connection_kept() -> None:
    pieces = [b"HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhel",
              b"lo\r\n6;ext=1\r\n world\r\n", b"0\r\n", b"\r\n"]
    async with serving(pieces) as server:
        endpoint, client = pool(server.url)
        answers = [await client.request(request(endpoint)) for _ in range(2)]
        client.close()
    assert [(a.status, a.body, a.replayed) for a in answers] == [(402, b"hello world", False)] * 2
    assert server.connections == 1


@run
async def test_connection_close_is_not_reused() -> None:
    closing = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"]
    async with serving(closing) as server:
        endpoint, client = pool(server.url)
        for _ in range(3):
            assert (await client.request(request(endpoint))).body == b"ok"
        client.close()
    assert (client.opened, server.connections) == (3, 3)


@run
async def test_a_server_that_hangs_up_or_answers_garbage_is_a_connection_error() -> None:
    async with serving(None) as server:
        endpoint, client = pool(server.url)
        with pytest.raises(HttpError) as hung_up:
            await client.request(request(endpoint))
    async with serving(b"HTTP/1.1 2xx OK\r\nContent-Length: 2\r\n\r\nok") as server:
        endpoint, client = pool(server.url)
        with pytest.raises(HttpError) as garbage:
            await client.request(request(endpoint))
        assert not client._idle  # the connection that answered garbage is not kept
    assert (hung_up.value.kind, garbage.value.kind) == ("connection", "connection")


@run
async def test_an_answer_that_does_not_come_times_out_and_the_connection_is_dropped() -> None:
    async with serving(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort") as server:
        endpoint, client = pool(server.url, timeout_s=0.3)
        with pytest.raises(HttpError) as timed_out:
            await client.request(request(endpoint))
        assert not client._idle
    assert timed_out.value.kind == "timeout"
