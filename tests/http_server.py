"""A keep-alive HTTP/1.1 test server on a real TCP socket, for the project's own HTTP clients (the
webhook client, the bench's load client): it reads each request's head and Content-Length body,
then writes the same answer, and counts connections and requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: int = 0


@asynccontextmanager
async def serving(answer: bytes | Sequence[bytes] | None, close_after_answer: bool = False,
                  answers_per_connection: int | None = None) -> AsyncIterator[Server]:
    """`answer` as one write, or as pieces written apart (separate packets); None hangs up instead.
    The server closes after answering when told to or when the answer says `Connection: close`;
    with `answers_per_connection`, it reads the request after that many and hangs up on it."""
    server = Server("")
    pieces = [answer] if isinstance(answer, bytes) else answer
    closes = close_after_answer or (pieces is not None and b"Connection: close" in b"".join(pieces))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                server.requests += 1
                if pieces is None or answered == answers_per_connection:
                    break
                for index, piece in enumerate(pieces):
                    if index:
                        await asyncio.sleep(0.01)  # a separate packet
                    writer.write(piece)
                    await writer.drain()
                answered += 1
                if closes:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/hook"
    async with listener:
        yield server
