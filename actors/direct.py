"""Direct calls: an actor's hot methods over a Unix socket on its node, beside Ray.

A Ray actor call costs about 3 ms of this machine's CPU (the caller, the actor and Ray's threads
in both) and 2-3 ms of latency, whatever it carries (`python -m cluster.bench.raycall`); the same
call over a Unix socket between two asyncio processes costs about a tenth of both. Ray still
places, names, restarts and supervises every actor. A hop on the payment path sends its
micro-batches over the actor's socket when caller and actor share a node, and through Ray
otherwise (another node, or `PAYGATE_DIRECT_CALLS=0` in the actor's environment).

Trust: the socket lives in a directory only this user can enter, and a connection must first
present the actor's random token, which only a Ray call (`direct_endpoint`) hands out: a direct
call is open to exactly those who can call the actor through Ray. Only the methods the actor
lists in `DIRECT_METHODS` answer.

Failure: a connection lost with calls out fails them with `DirectCallLost`, which means what
Ray's `ActorUnavailableError` means: the call may or may not have run. The next call asks Ray
for the endpoint again, which waits out a restart (or raises Ray's error if the actor is gone).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import os
import pickle
import secrets
import struct
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ray

_LENGTH = struct.Struct(">I")
log = logging.getLogger("paygate.direct")


class DirectCallLost(ConnectionError):
    """The connection to the actor closed with this call out: it may or may not have run."""


@dataclass(frozen=True)
class DirectEndpoint:
    node_id: str
    path: str
    token: bytes


def enabled() -> bool:
    return os.environ.get("PAYGATE_DIRECT_CALLS", "1") != "0"


def _length_prefixed(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _frame(message: Any) -> bytes:
    return _length_prefixed(pickle.dumps(message, protocol=5))


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return await reader.readexactly(length)


def _remove_stale(folder: Path) -> None:
    """Sockets left by processes that have died (each is named after its process id)."""
    for path in folder.glob("*.sock"):
        pid = path.name.split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass


class DirectServer:
    """Serves one actor's `methods` on a Unix socket, in the actor's event loop."""

    def __init__(self, target: object, methods: frozenset[str]) -> None:
        self.target, self.methods = target, methods
        self.token = secrets.token_bytes(32)
        self.endpoint: DirectEndpoint | None = None
        self.server: asyncio.AbstractServer | None = None
        self.answering: set[asyncio.Task[None]] = set()
        self.starting = asyncio.Lock()
        self.served: dict[str, int] = {}  # calls answered, by method

    async def start(self) -> DirectEndpoint:
        async with self.starting:
            if self.endpoint is None:
                folder = Path(tempfile.gettempdir()) / f"paygate-direct-{os.getuid()}"
                folder.mkdir(mode=0o700, exist_ok=True)
                if folder.stat().st_uid != os.getuid():
                    raise PermissionError(f"{folder} belongs to another user")
                folder.chmod(0o700)
                _remove_stale(folder)
                path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
                self.server = await asyncio.start_unix_server(self._serve, path=str(path))
                self.endpoint = DirectEndpoint(ray.get_runtime_context().get_node_id(), str(path), self.token)
        return self.endpoint

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if not hmac.compare_digest(await _read_frame(reader), self.token):
                return
            while True:
                call_id, method, args = pickle.loads(await _read_frame(reader))
                task = asyncio.create_task(self._answer(writer, call_id, method, args))
                self.answering.add(task)  # the loop holds tasks weakly
                task.add_done_callback(self.answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in self.methods:
                raise AttributeError(f"{type(self.target).__name__}.{method} is not a direct method")
            self.served[method] = self.served.get(method, 0) + 1
            ok, value = True, await getattr(self.target, method)(*args)
        except Exception as error:
            ok, value = False, error
        try:
            payload = pickle.dumps(value, protocol=5)
        except Exception as error:  # an answer pickle cannot carry: the caller learns why
            ok, payload = False, pickle.dumps(RuntimeError(f"{method} answered what cannot be sent: {error!r}"))
        if not writer.is_closing():
            writer.write(_frame((call_id, ok, payload)))


class DirectCallable:
    """Mixin for an actor class: serves `DIRECT_METHODS` directly once a caller asks for the endpoint."""

    DIRECT_METHODS: ClassVar[frozenset[str]] = frozenset()
    _direct: DirectServer | None = None

    async def direct_calls_served(self) -> dict[str, int]:
        """How many direct calls each method has answered (none yet: {})."""
        return dict(self._direct.served) if self._direct is not None else {}

    async def direct_endpoint(self) -> DirectEndpoint | None:
        """Where to call this actor directly; None: through Ray (switched off, or no socket here)."""
        if not enabled():
            return None
        if self._direct is None:
            self._direct = DirectServer(self, self.DIRECT_METHODS)
        try:
            return await self._direct.start()
        except OSError as error:
            log.warning("direct calls to %s unavailable, callers use Ray: %s", type(self).__name__, error)
            return None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, method: str, args: tuple[Any, ...]) -> Any:
        if self.closed:
            raise DirectCallLost(f"{method}: connection closed")
        call_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        try:
            self.writer.write(_frame((call_id, method, args)))
            return await future
        finally:
            self.waiting.pop(call_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, ok, payload = pickle.loads(await _read_frame(reader))
                future = self.waiting.get(call_id)
                if future is None or future.done():
                    continue
                try:
                    value = pickle.loads(payload)
                except Exception as error:  # e.g. an exception class whose __init__ pickle cannot call
                    ok, value = False, RuntimeError(f"an answer that cannot be read: {error!r}")
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as error:
            self._lose(error)
        except BaseException as error:
            self._lose(error)
            raise

    def _lose(self, error: BaseException) -> None:
        self.closed = True
        self.writer.close()
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(DirectCallLost(f"connection to the actor lost: {error!r}"))


class DirectClient:
    """Calls one actor's direct methods: over its socket when it shares this node, else through Ray."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.connection: _Connection | None = None
        self.through_ray = False
        self.connecting = asyncio.Lock()

    def sender(self, method: str) -> Callable[[list[Any]], Awaitable[Any]]:
        """`method` as a Batcher's send: one call per batch."""
        return functools.partial(self.call, method)

    async def call(self, method: str, *args: Any) -> Any:
        connection = await self._connect()
        if connection is None:
            return await getattr(self.handle, method).remote(*args)
        return await connection.call(method, args)

    async def _connect(self) -> _Connection | None:
        if self.through_ray:
            return None
        if self.connection is not None and not self.connection.closed:
            return self.connection
        async with self.connecting:
            if self.connection is None or self.connection.closed:
                try:
                    ask = self.handle.direct_endpoint
                except AttributeError:  # an actor class without direct methods (an older deploy)
                    self.through_ray = True
                    return None
                endpoint: DirectEndpoint | None = await ask.remote()
                if endpoint is None or endpoint.node_id != ray.get_runtime_context().get_node_id():
                    self.through_ray = True
                    return None
                try:
                    reader, writer = await asyncio.open_unix_connection(endpoint.path)
                except OSError as error:  # gone since it answered (died, restarting): as a lost call
                    raise DirectCallLost(f"cannot reach {endpoint.path}: {error!r}") from error
                writer.write(_length_prefixed(endpoint.token))
                self.connection = _Connection(reader, writer)
        return self.connection
