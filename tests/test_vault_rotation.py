"""Vault key rotation against the real stack: a new key-encrypting key (KEK) while tokenizations keep
coming, the background re-wrap of every data key, and the `paygate vault` commands.

After a rotation every card must still be readable and chargeable, every data key must be wrapped
by the new KEK version (the status endpoint counts cards per version), and no request may fail.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from actors.registry import CARD_VAULT
from cluster.stack import LocalStack, StackInfo
from tests.cards import random_visa
from tests.conftest import Merchant

YEAR = datetime.now(UTC).year + 2
BURST = 300          # concurrent tokenizations in the rotation test
ROTATE_AFTER = 60    # ... the rotation is triggered once this many have completed
CONNECTIONS = 48


# ---- HTTP helpers ------------------------------------------------------------------------------

def rotation_status(admin: httpx.Client) -> dict[str, Any]:
    response = admin.get("/v1/admin/vault/rotation")
    assert response.status_code == 200, response.text
    body = dict(response.json())
    assert body["object"] == "vault_rotation"
    return body


def wait_rotation_done(admin: httpx.Client, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = rotation_status(admin)
        if status["status"] != "running":
            return status
        assert time.monotonic() < deadline, f"re-wrap still running after {timeout_s:.0f}s: {status}"
        time.sleep(0.2)


def assert_all_under(status: dict[str, Any], version: int) -> None:
    assert status["status"] == "complete", status
    assert status["last_error"] is None and status["cards_pending"] == 0
    assert status["active_version"] == version
    assert {v for v, n in status["cards_per_version"].items() if n} == {str(version)}, status


def card_body(number: str) -> dict[str, str]:
    return {"type": "card", "card[number]": number, "card[exp_month]": "9", "card[exp_year]": str(YEAR),
            "card[cvc]": "737"}


# ---- tokenizations racing a rotation -------------------------------------------------------------

@dataclass
class Burst:
    """The outcome of BURST tokenizations with a rotation fired in the middle."""

    cards: dict[str, str] = field(default_factory=dict)   # pm id -> number
    failures: list[str] = field(default_factory=list)
    completed_at_rotation: tuple[int, int] = (0, 0)        # completions when rotate_key was sent / answered
    rotation: dict[str, Any] = field(default_factory=dict)


async def _tokenize(client: httpx.AsyncClient, number: str, burst: Burst, done: asyncio.Event) -> None:
    try:
        response = await client.post("/v1/payment_methods", data=card_body(number))
    except httpx.HTTPError as error:
        burst.failures.append(f"…{number[-4:]}: {type(error).__name__}")
    else:
        if response.status_code == 200:
            burst.cards[response.json()["id"]] = number
        else:
            burst.failures.append(f"…{number[-4:]}: {response.status_code} {response.text[:200]}")
    if len(burst.cards) + len(burst.failures) >= ROTATE_AFTER:
        done.set()


async def _rotate_when(admin: httpx.AsyncClient, burst: Burst, reached: asyncio.Event) -> None:
    await reached.wait()
    sent_at = len(burst.cards) + len(burst.failures)
    response = await admin.post("/v1/admin/vault/rotate_key")
    assert response.status_code == 200, response.text
    burst.rotation = response.json()
    burst.completed_at_rotation = (sent_at, len(burst.cards) + len(burst.failures))


async def tokenize_during_rotation(base_url: str, merchant_key: str, admin_key: str, numbers: list[str]) -> Burst:
    burst, reached = Burst(), asyncio.Event()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with (httpx.AsyncClient(base_url=base_url, auth=(merchant_key, ""), timeout=60, limits=limits) as client,
                httpx.AsyncClient(base_url=base_url, timeout=60,
                                  headers={"Authorization": f"Bearer {admin_key}"}) as admin):
        await asyncio.gather(_rotate_when(admin, burst, reached),
                             *[_tokenize(client, number, burst, reached) for number in numbers])
    return burst


async def _get_all(base_url: str, merchant_key: str, ids: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, auth=(merchant_key, ""), timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*[client.get(f"/v1/payment_methods/{pm}") for pm in ids]))


def charge(api: httpx.Client, pm: str) -> dict[str, Any]:
    response = api.post("/v1/payment_intents", data={"amount": "1500", "currency": "usd", "payment_method": pm,
                                                      "confirm": "true"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def detokenize_all(tokens: list[str], namespace: str) -> dict[str, str]:
    """Every card's number straight from the vault actor (the test process is a Ray driver of the stack):
    proof that every data key unwraps under the current key ring. Audited like any detokenize."""
    vault = ray.get_actor(CARD_VAULT, namespace=namespace)
    requests = [(token, "test_vault_rotation", "rotation check") for token in tokens]
    cards: list[dict[str, Any] | None] = ray.get(vault.detokenize_many.remote(requests))
    return {token: card["pan"] for token, card in zip(tokens, cards, strict=True) if card is not None}


@pytest.fixture
def merchant_key(merchant: Merchant) -> str:
    return merchant.key


def test_rotation_under_concurrent_tokenizations(api: httpx.Client, admin: httpx.Client, base_url: str,
                                                 merchant_key: str, stack_info: StackInfo,
                                                 live_stack: LocalStack) -> None:
    rng = random.Random(20240611)
    before = wait_rotation_done(admin)  # no other rotation in flight
    old_cards = {}
    for _ in range(20):  # cards that exist before the rotation: their data keys must be re-wrapped
        number = random_visa(rng)
        response = api.post("/v1/payment_methods", data=card_body(number))
        assert response.status_code == 200, response.text
        old_cards[response.json()["id"]] = number

    numbers = [random_visa(rng) for _ in range(BURST)]
    burst = asyncio.run(tokenize_during_rotation(base_url, merchant_key, stack_info.admin_key, numbers))

    assert burst.failures == []
    assert len(burst.cards) == BURST
    new_version = burst.rotation["new_version"]
    assert new_version == before["active_version"] + 1
    assert burst.completed_at_rotation[1] < BURST, "the rotation must land while tokenizations are in flight"

    after = wait_rotation_done(admin)
    assert_all_under(after, new_version)
    assert new_version in after["versions"] and before["active_version"] in after["versions"]

    cards = {**old_cards, **burst.cards}
    responses = asyncio.run(_get_all(base_url, merchant_key, list(cards)))
    assert [r.status_code for r in responses] == [200] * len(cards)
    assert {r.json()["id"]: r.json()["card"]["last4"] for r in responses} == {
        pm: number[-4:] for pm, number in cards.items()}

    assert detokenize_all(list(cards), live_stack.config.ray_namespace) == cards
    for pm in [*list(old_cards)[:3], *list(burst.cards)[:3], *list(burst.cards)[-3:]]:
        assert charge(api, pm)["status"] == "succeeded"


def test_two_rotations_back_to_back(api: httpx.Client, admin: httpx.Client) -> None:
    """A second rotation while the first re-wrap runs: the running pass moves to the newest version."""
    for number in ("4242424242424242", "5555555555554444", "6011111111111117"):
        assert api.post("/v1/payment_methods", data=card_body(number)).status_code == 200
    first = admin.post("/v1/admin/vault/rotate_key")
    second = admin.post("/v1/admin/vault/rotate_key")
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json()["new_version"] == first.json()["new_version"] + 1
    assert_all_under(wait_rotation_done(admin), second.json()["new_version"])


def test_rotation_endpoints_need_the_admin_key(api: httpx.Client, base_url: str) -> None:
    for response in (api.post("/v1/admin/vault/rotate_key"), api.get("/v1/admin/vault/rotation"),
                     httpx.get(f"{base_url}/v1/admin/vault/rotation")):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"


def test_rotation_endpoints_are_in_the_openapi_document(base_url: str) -> None:
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    assert "post" in paths["/v1/admin/vault/rotate_key"]
    assert "get" in paths["/v1/admin/vault/rotation"]


# ---- the CLI -------------------------------------------------------------------------------------

@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    """The environment of an operator's shell: no PAYGATE_* settings, only --data-dir."""
    yield {k: v for k, v in os.environ.items() if not k.startswith("PAYGATE_")}


def paygate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          env=env, timeout=180, check=False)


def test_cli_rotate_key_and_status(admin: httpx.Client, stack_info: StackInfo, cli_env: dict[str, str]) -> None:
    before = wait_rotation_done(admin)
    rotated = paygate(cli_env, "vault", "rotate-key", "--data-dir", stack_info.data_dir, "--wait")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new_version = before["active_version"] + 1
    assert f"new key-encrypting key version {new_version}" in rotated.stdout
    assert f"vault KEK v{new_version} active; complete; cards per key version: v{new_version}: " in rotated.stdout
    assert_all_under(rotation_status(admin), new_version)

    status = paygate(cli_env, "vault", "status", "--data-dir", stack_info.data_dir)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"vault KEK v{new_version} active; complete" in status.stdout


def test_cli_says_when_the_stack_is_not_running(tmp_path: Path, cli_env: dict[str, str]) -> None:
    result = paygate(cli_env, "vault", "status", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "paygate is not running" in result.stderr and "paygate up" in result.stderr
    assert "Traceback" not in result.stderr
