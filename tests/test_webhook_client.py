"""The dispatcher's HTTP client against a real TCP server: answers read, connections kept alive
and reused, and a server that closes (by header or without a word) costs a new connection, never
a failed delivery."""

from __future__ import annotations

import asyncio
import gc

from actors.events.http import WebhookClient
from tests.http_server import Server, serving

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nreceived"
CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nreceived"


async def _post(client: WebhookClient, server: Server) -> tuple[int, str]:
    return await client.post(server.url, b'{"id": "evt_1"}', {"Content-Type": "application/json"})


def test_deliveries_reuse_one_kept_alive_connection() -> None:
    async def scenario() -> Server:
        async with serving(OK) as server:
            client = WebhookClient(timeout_s=5)
            answers = [await _post(client, server) for _ in range(5)]
            assert answers == [(200, "received")] * 5
            await client.close()
            return server

    server = asyncio.run(scenario())
    assert (server.requests, server.connections) == (5, 1)


def test_an_endpoint_that_closes_gets_a_new_connection_each_time() -> None:
    async def scenario(answer: bytes, close_after_answer: bool) -> Server:
        async with serving(answer, close_after_answer) as server:
            client = WebhookClient(timeout_s=5)
            for _ in range(3):
                assert await _post(client, server) == (200, "received")
                await asyncio.sleep(0.05)  # let the server's close arrive first
            await client.close()
            return server

    said_so = asyncio.run(scenario(CLOSING, close_after_answer=False))
    assert (said_so.requests, said_so.connections) == (3, 3)
    # Closing without a word: the kept connection is found dead, the delivery goes out on a new one.
    silently = asyncio.run(scenario(OK, close_after_answer=True))
    assert (silently.requests, silently.connections) == (3, 3)


def test_idle_connections_kept_per_origin_are_capped() -> None:
    async def scenario() -> tuple[Server, int]:
        async with serving(OK) as server:
            client = WebhookClient(timeout_s=5, max_idle_per_origin=2)
            answers = await asyncio.gather(*[_post(client, server) for _ in range(5)])
            assert answers == [(200, "received")] * 5
            kept = sum(len(pool) for pool in client.idle.values())
            await asyncio.gather(*[_post(client, server) for _ in range(2)])  # on the two kept ones
            await client.close()
            return server, kept

    server, kept = asyncio.run(scenario())
    assert kept == 2
    assert (server.requests, server.connections) == (7, 5)


def test_idle_connections_are_closed_after_their_idle_timeout_or_when_the_server_closed_them() -> None:
    async def scenario() -> tuple[Server, list[int]]:
        async with serving(OK) as fresh, serving(OK, close_after_answer=True) as closing:
            client = WebhookClient(timeout_s=5, idle_timeout_s=0.3)
            await asyncio.gather(_post(client, fresh), _post(client, closing))
            await asyncio.sleep(0.1)  # the closing server's FIN arrives; the other is still young
            pruned = [client.prune()]
            assert [len(pool) for pool in client.idle.values()] == [1]
            await asyncio.sleep(0.3)
            pruned.append(client.prune())
            assert client.idle == {}
            assert await _post(client, fresh) == (200, "received")  # on a new connection
            await client.close()
            return fresh, pruned

    server, pruned = asyncio.run(scenario())
    assert pruned == [1, 1]
    assert (server.requests, server.connections) == (2, 2)


def test_a_delivery_leaves_no_reference_cycle_for_the_collector() -> None:
    """At 1,500 deliveries a second, a cycle per delivery kept the dispatcher's collector busy for
    10-20 ms every two seconds."""
    async def scenario() -> list[object]:
        async with serving(OK) as server:
            client = WebhookClient(timeout_s=5)
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(20):
                    assert await _post(client, server) == (200, "received")
                gc.collect()
                ours = ("actors.events.http", "httptools.parser.parser")
                left = [o for o in gc.garbage if type(o).__module__ in ours]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            await client.close()
            return left

    assert asyncio.run(scenario()) == []
