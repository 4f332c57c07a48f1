"""A real HTTP server for webhook tests: verifies every delivery with the stripe SDK and records it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import stripe

# path -> (delivery number for that path) -> status to answer, or None to never answer
Behaviour = Callable[[int], int | None]


@dataclass
class Delivery:
    path: str
    event: Any
    received_at: float



class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many deliveries connect at once: the default backlog of 5 drops them

@dataclass
class Receiver:
    secrets: dict[str, str] = field(default_factory=dict)  # path -> whsec_
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def events(self, path: str) -> list[Any]:
        with self.lock:
            return [d.event for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, predicate: Callable[[list[Any]], bool], timeout: float = 60) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events(path)
            if predicate(events):
                return events
            time.sleep(0.1)
        return self.events(path)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    number = receiver.attempts[self.path] = receiver.attempts.get(self.path, 0) + 1
                behaviour = receiver.behaviours.get(self.path, lambda n: 200)
                status = behaviour(number)
                if status is None:
                    time.sleep(30)  # never answers in time
                    return
                if 200 <= status < 300:
                    try:
                        stripe.Webhook.construct_event(body, self.headers.get("Stripe-Signature", ""),
                                                       receiver.secrets[self.path])
                        event = json.loads(body)
                    except (stripe.SignatureVerificationError, KeyError, ValueError):
                        with receiver.lock:
                            receiver.bad_signatures += 1
                        status = 400
                    else:
                        with receiver.lock:
                            receiver.deliveries.append(Delivery(self.path, event, time.monotonic()))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
