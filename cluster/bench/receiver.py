"""The bench's webhook receiver: a lean asyncio HTTP/1.1 server in its own process (so thousands
of deliveries a second do not stall the load generator's event loop). It verifies every
`Stripe-Signature` exactly as `stripe.Webhook.construct_event` does (HMAC-SHA256 over
`"<t>.<body>"`, 300 s tolerance) and records each event id with its payment.

    python -m cluster.bench.receiver [--host H]   # prints {"port": N}, then serves until killed

Control endpoints: `POST /_bench/secrets` (JSON {path: whsec_…}) and `GET /_bench/stats`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import orjson
import uvloop

from cluster.runtime import tune_gc

TOLERANCE_S = 300
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def _answer(status: int, body: bytes = b"") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def verify(body: bytes, header: str, secret: str, now: float | None = None) -> bool:
    """Stripe's scheme: `t=<unix>,v1=<hex>[,v1=…]`, any v1 may match, within the tolerance."""
    items = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [value for key, value in items if key == "t"]
    signatures = [value for key, value in items if key == "v1"]
    if len(stamps) != 1 or not signatures or not stamps[0].isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamps[0])) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


@dataclass
class State:
    secrets: dict[str, str] = field(default_factory=dict)
    events: dict[str, list[Any]] = field(default_factory=dict)  # event id -> [payment id, deliveries, type]
    types: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    bad_signatures: int = 0
    unknown_paths: int = 0
    last_delivery: float = 0.0

    def stats(self, full: bool) -> dict[str, Any]:
        return {"events": self.events if full else {}, "unique_events": len(self.events),
                "types": dict(self.types), "deliveries": self.deliveries,
                "bad_signatures": self.bad_signatures, "unknown_paths": self.unknown_paths,
                "last_delivery": self.last_delivery, "cpu_s": time.process_time()}

    def webhook(self, path: str, body: bytes, signature: str) -> int:
        secret = self.secrets.get(path)
        if secret is None:
            self.unknown_paths += 1
            return 404
        if not verify(body, signature, secret):
            self.bad_signatures += 1
            return 400
        event = orjson.loads(body)
        obj = event.get("data", {}).get("object", {})
        payment = obj.get("payment_intent") or obj.get("id")
        seen = self.events.get(event["id"])
        if seen is None:
            self.events[event["id"]] = [payment, 1, event.get("type")]
            self.types[str(event.get("type"))] += 1
        else:
            seen[1] += 1
        self.deliveries += 1
        self.last_delivery = time.time()
        return 200


_MAX_HEAD = 65536


class _Connection(asyncio.Protocol):
    """One keep-alive connection, its requests parsed from the buffer as they complete and their
    answers written together: no stream machinery per request, since the receiver takes thousands
    of deliveries a second on the machine the stack under test runs on."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        answers = []
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            try:
                method, path, headers = _head(bytes(self.buffer[:end]))
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                break
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            answers.append(_route(self.state, method, path, headers, body))
        if answers:
            self.transport.write(b"".join(answers))
        if end < 0 and len(self.buffer) > _MAX_HEAD:  # no end of head in sight
            self.transport.close()


def _head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path = lines[0].split(" ")[:2]
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:] if line)}
    return method, path, headers


def _route(state: State, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    if method == "POST" and path == "/_bench/secrets":
        state.secrets.update(json.loads(body))
        return _answer(200)
    if method == "GET" and path.startswith("/_bench/stats"):
        return _answer(200, json.dumps(state.stats(full=path.endswith("?full=1"))).encode())
    if method == "POST":
        status = state.webhook(path, body, headers.get("stripe-signature", ""))
        return _OK if status == 200 else _answer(status)
    return _answer(405)


async def serve(host: str) -> None:
    state = State()
    server = await asyncio.get_running_loop().create_server(lambda: _Connection(state), host, 0, backlog=1024)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    async with server:
        await server.serve_forever()


class ReceiverProcess:
    """Starts the receiver as a child process and talks to its control endpoints."""

    def __init__(self, host: str = "127.0.0.1", advertise: str | None = None) -> None:
        self.host, self.advertise = host, advertise or host
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> ReceiverProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "cluster.bench.receiver", "--host", self.host],
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the webhook receiver did not start")
        self.port = int(json.loads(line)["port"])
        return self

    @property
    def url(self) -> str:
        return f"http://{self.advertise}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def set_secrets(self, secrets: dict[str, str]) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/_bench/secrets", content=json.dumps(secrets),
                   timeout=10).raise_for_status()

    def stats(self, summary: bool = False) -> dict[str, Any]:
        query = "" if summary else "?full=1"
        response = httpx.get(f"http://127.0.0.1:{self.port}/_bench/stats{query}", timeout=60)
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.bench.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    tune_gc()  # it shares the machine with the stack under test: keep it lean
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host))


if __name__ == "__main__":
    main()
