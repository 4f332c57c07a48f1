"""Direct calls (actors/direct.py): the socket protocol against an in-process server, then the
real stack's actors — the vault answering its direct methods only to its token, and an
AcquirerLink killed and restarted by Ray under a client that keeps calling."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import httpx
import pytest
import ray
from ray.exceptions import RayActorError

from actors.acquirer.messages import AcquirerRequest
from actors.direct import (
    DirectCallable,
    DirectCallLost,
    DirectClient,
    DirectEndpoint,
    DirectServer,
    _frame,
    _length_prefixed,
)
from actors.fraud import scorer_name
from actors.payments.shard import shard_index
from actors.registry import CARD_VAULT, link_name, shard_name
from cluster.stack import LocalStack, StackInfo
from tests.conftest import Merchant

_serial = itertools.count(int(time.time()) % 100_000)


class Picky(Exception):
    """Pickles, but cannot be unpickled: pickle calls Picky() without the keyword."""

    def __init__(self, *, needed: str) -> None:
        super().__init__()
        self.needed = needed


class Echo(DirectCallable):
    DIRECT_METHODS = frozenset({"echo", "fail", "slow", "picky"})

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def echo(self, items: list[Any], suffix: str = "") -> list[Any]:
        return [f"{item}{suffix}" for item in items]

    async def fail(self) -> None:
        raise LookupError("no such thing")

    async def slow(self) -> str:
        await self.release.wait()
        return "late"

    async def picky(self) -> None:
        raise Picky(needed="x")

    async def secret(self) -> str:
        return "never over the socket"


class _Method:
    def __init__(self, target: Any, name: str) -> None:
        self.target, self.name = target, name

    async def remote(self, *args: Any) -> Any:
        return await getattr(self.target, self.name)(*args)


class InProcessHandle:
    """What DirectClient needs of a Ray actor handle: `.method.remote(...)`, answered in-process."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.ray_calls = 0

    def __getattr__(self, name: str) -> _Method:
        if name != "direct_endpoint":
            self.ray_calls += 1
        return _Method(self.target, name)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_call_returns_its_result_and_an_error_comes_back_as_itself(stack_info: StackInfo) -> None:
    async def main() -> None:
        handle = InProcessHandle(Echo())
        client = DirectClient(handle)
        assert await client.call("echo", [1, 2], "!") == ["1!", "2!"]
        with pytest.raises(LookupError, match="no such thing"):
            await client.call("fail")
        assert handle.ray_calls == 0  # both went over the socket

    run(main())


def test_an_answer_the_caller_cannot_read_fails_only_its_own_call(stack_info: StackInfo) -> None:
    async def main() -> None:
        client = DirectClient(InProcessHandle(Echo()))
        picky, echo = await asyncio.gather(client.call("picky"), client.call("echo", [7]), return_exceptions=True)
        assert isinstance(picky, RuntimeError) and "cannot be read" in str(picky)
        assert echo == ["7"]
        assert client.connection is not None and not client.connection.closed

    run(main())


def test_only_the_listed_methods_answer(stack_info: StackInfo) -> None:
    async def main() -> None:
        client = DirectClient(InProcessHandle(Echo()))
        with pytest.raises(AttributeError, match="not a direct method"):
            await client.call("secret")

    run(main())


def test_a_connection_without_the_token_is_closed_unanswered(stack_info: StackInfo) -> None:
    async def main() -> None:
        endpoint = await DirectServer(Echo(), Echo.DIRECT_METHODS).start()
        assert os.stat(os.path.dirname(endpoint.path)).st_mode & 0o077 == 0  # only this user gets in
        reader, writer = await asyncio.open_unix_connection(endpoint.path)
        wrong = b"x" * len(endpoint.token)
        writer.write(_length_prefixed(wrong) + _frame((0, "echo", ([1],))))
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed, nothing answered
        writer.close()

    run(main())


def test_a_lost_connection_fails_the_calls_out_and_the_next_call_reconnects(stack_info: StackInfo) -> None:
    async def main() -> None:
        echo = Echo()
        client = DirectClient(InProcessHandle(echo))
        slow = asyncio.create_task(client.call("slow"))
        await asyncio.sleep(0.1)
        first = client.connection
        assert first is not None
        first.writer.transport.abort()  # the connection drops, as when the actor's process dies
        with pytest.raises(DirectCallLost):
            await asyncio.wait_for(slow, timeout=5)
        assert await client.call("echo", ["again"]) == ["again"]
        assert client.connection is not first
        echo.release.set()

    run(main())


def test_direct_calls_switched_off_go_through_ray(stack_info: StackInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYGATE_DIRECT_CALLS", "0")

    async def main() -> None:
        handle = InProcessHandle(Echo())
        client = DirectClient(handle)
        assert await client.call("echo", ["x"]) == ["x"]
        assert handle.ray_calls == 1 and client.connection is None

    run(main())


def test_the_vault_answers_its_direct_methods_only_to_its_token(live_stack: LocalStack) -> None:
    vault = ray.get_actor(CARD_VAULT, namespace=live_stack.resolved.ray_namespace)

    async def main() -> None:
        endpoint: DirectEndpoint = await vault.direct_endpoint.remote()
        assert endpoint.node_id == ray.get_runtime_context().get_node_id()
        client = DirectClient(vault)
        assert await client.call("get_many", [("acct_nobody", "pm_nothing")]) == [None]
        assert client.connection is not None  # over the socket, not through Ray
        with pytest.raises(AttributeError):
            await client.call("rotate_key")
        reader, writer = await asyncio.open_unix_connection(endpoint.path)
        wrong = bytes(len(endpoint.token))
        writer.write(_length_prefixed(wrong) + _frame((0, "get_many", ([("a", "b")],))))
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        writer.close()

    run(main())


def test_a_restarted_link_is_called_again_through_its_new_socket(live_stack: LocalStack) -> None:
    link = ray.get_actor(link_name(0), namespace=live_stack.resolved.ray_namespace)

    def echo() -> AcquirerRequest:
        n = next(_serial)
        return AcquirerRequest("echo", f"{n % 1_000_000:06d}", f"D{n:011d}", 0, "usd", "paygate")

    async def main() -> None:
        client = DirectClient(link)
        [outcome] = await client.call("send_many", [echo()])
        assert outcome.status == "approved"
        before = client.connection
        assert before is not None
        ray.kill(link, no_restart=False)
        deadline, errors = time.monotonic() + 90, []
        while not before.closed:  # the process is gone once its end of the socket closes
            assert time.monotonic() < deadline, "the link's socket stayed open after ray.kill"
            await asyncio.sleep(0.05)
        while True:
            try:
                [outcome] = await client.call("send_many", [echo()])
                break
            except (DirectCallLost, RayActorError, ConnectionError) as error:
                errors.append(type(error).__name__)
                assert time.monotonic() < deadline, errors
                await asyncio.sleep(0.5)
        assert outcome.status == "approved"
        assert client.connection is not None and client.connection is not before

    run(main())


def test_a_checkout_takes_the_direct_path_at_every_hop(live_stack: LocalStack, api: httpx.Client,
                                                      merchant: Merchant) -> None:
    config = live_stack.resolved
    names = {"vault": CARD_VAULT, "shard": shard_name(shard_index(merchant.id, config.shards)),
             "scorer": scorer_name(0), "link": link_name(0)}
    actors = {part: ray.get_actor(name, namespace=config.ray_namespace) for part, name in names.items()}

    def served() -> dict[str, dict[str, int]]:
        return {part: ray.get(actor.direct_calls_served.remote()) for part, actor in actors.items()}

    before = served()
    pm = api.post("/v1/payment_methods", data={"type": "card", "card[number]": "4242424242424242",
                                               "card[exp_month]": "12", "card[exp_year]": "2034", "card[cvc]": "123"})
    assert pm.status_code == 200, pm.text
    paid = api.post("/v1/payment_intents", data={"amount": "1500", "currency": "usd", "confirm": "true",
                                                 "payment_method": pm.json()["id"]})
    assert paid.status_code == 200 and paid.json()["status"] == "succeeded", paid.text
    after = served()
    grew = {(part, method) for part in after for method, n in after[part].items() if n > before[part].get(method, 0)}
    assert {("vault", "tokenize_many"), ("shard", "execute_many"), ("scorer", "score_many"),
            ("link", "authorize_many"), ("vault", "detokenize_many")} <= grew, (before, after)
