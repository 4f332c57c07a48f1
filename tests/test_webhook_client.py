"""The dispatcher's HTTP client against a real TCP server: answers read, connections kept alive
and reused, and a server that closes (by header or without a word) costs a new connection, never
a failed delivery."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from actors.events.http import KEEP_BODY_BYTES, DeliveryError, WebhookClient
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


def test_a_chunked_answer_in_pieces_is_read_whole_and_the_connection_kept() -> None:
    pieces = [b"HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhel",
              b"lo\r\n6\r\n world\r\n", b"0\r\n\r\n"]

    async def scenario() -> Server:
        async with serving(pieces) as server:
            client = WebhookClient(timeout_s=5)
            assert [await _post(client, server) for _ in range(2)] == [(402, "hello world")] * 2
            await client.close()
            return server

    server = asyncio.run(scenario())
    assert (server.requests, server.connections) == (2, 1)


def test_an_answer_ended_by_closing_the_connection_is_read_and_the_connection_not_kept() -> None:
    async def scenario() -> Server:
        async with serving([b"HTTP/1.1 200 OK\r\n\r\n", b"no length"], close_after_answer=True) as server:
            client = WebhookClient(timeout_s=5)
            assert [await _post(client, server) for _ in range(2)] == [(200, "no length")] * 2
            assert not any(client.idle.values())  # nothing kept
            await client.close()
            return server

    server = asyncio.run(scenario())
    assert (server.requests, server.connections) == (2, 2)


def test_only_the_first_kilobyte_of_an_answer_is_kept() -> None:
    body = b"x" * (KEEP_BODY_BYTES * 3)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def scenario() -> tuple[int, str]:
        async with serving(answer) as server:
            client = WebhookClient(timeout_s=5)
            result = await _post(client, server)
            assert await _post(client, server) == result  # the rest of the body did not linger
            await client.close()
            return result

    assert asyncio.run(scenario()) == (200, "x" * KEEP_BODY_BYTES)


@pytest.mark.parametrize(("answer", "message"), [
    (None, "closed the connection before answering"),
    (b"SMTP ready\r\n\r\n", "malformed HTTP answer"),
], ids=["hangs-up", "not-http"])
def test_no_proper_answer_is_a_delivery_error(answer: bytes | None, message: str) -> None:
    async def scenario() -> None:
        async with serving(answer) as server:
            client = WebhookClient(timeout_s=5)
            with pytest.raises(DeliveryError, match=message):
                await _post(client, server)
            assert not any(client.idle.values())  # nothing kept
            await client.close()

    asyncio.run(scenario())


@asynccontextmanager
async def _silent() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that reads and never answers; what it read, and b"" once the client hung up."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            seen.append(data)
        seen.append(b"")
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/hook", seen


def test_a_silent_endpoint_times_out_and_its_connection_is_closed() -> None:
    async def scenario() -> tuple[float, list[bytes]]:
        async with _silent() as (url, seen):
            client = WebhookClient(timeout_s=0.3)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.post(url, b"{}", {})
            waited = time.monotonic() - started
            await asyncio.sleep(0.1)
            assert not any(client.idle.values())  # nothing kept
            await client.close()
            return waited, seen

    waited, seen = asyncio.run(scenario())
    assert 0.25 <= waited < 2.0
    assert seen[0].startswith(b"POST /hook HTTP/1.1\r\n") and seen[-1] == b""


def test_an_unreachable_or_unsupported_endpoint_is_a_delivery_error() -> None:
    async def scenario() -> None:
        async with _silent() as (url, _):
            pass  # closed again: its port now refuses
        client = WebhookClient(timeout_s=5)
        with pytest.raises(DeliveryError, match="cannot connect"):
            await client.post(url, b"{}", {})
        with pytest.raises(DeliveryError, match="unsupported URL scheme 'ftp'"):
            await client.post("ftp://127.0.0.1/hook", b"{}", {})

    asyncio.run(scenario())


def test_a_kept_connection_the_server_drops_on_the_next_request_is_retried_once_on_a_new_one() -> None:
    """The server answers the first request on each connection and hangs up on the second: a
    delivery that meets a dead kept-alive connection goes out again, not as a failure."""
    async def scenario() -> tuple[Server, list[tuple[int, str]]]:
        async with serving(OK, answers_per_connection=1) as server:
            client = WebhookClient(timeout_s=5)
            answers = [await _post(client, server) for _ in range(2)]
            await client.close()
            return server, answers

    server, answers = asyncio.run(scenario())
    assert answers == [(200, "received")] * 2
    assert (server.requests, server.connections) == (3, 2)


def test_a_connection_is_not_kept_after_connection_close_or_bytes_nobody_asked_for() -> None:
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"

    async def scenario() -> Server:
        async with serving(CLOSING) as closing:
            client = WebhookClient(timeout_s=5)
            assert await _post(client, closing) == (200, "received")
            assert not any(client.idle.values())  # at once, not when the server's close arrives
            await client.close()
        async with serving([OK, stray]) as server:
            for _ in range(2):
                assert await _post(client, server) == (200, "received")
                await asyncio.sleep(0.05)  # the stray answer arrives while no request waits
            await client.close()
            return server

    server = asyncio.run(scenario())
    assert (server.requests, server.connections) == (2, 2)
