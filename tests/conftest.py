"""Shared fixtures: one real stack per test session (the same code path as `paygate up`), and a
fresh merchant per test for isolation."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from cluster.config import load_config
from cluster.logs import redact
from cluster.procs import free_port
from cluster.stack import LocalStack, StackInfo

# Test-friendly settings: a short bank timeout so "the bank never answers" takes seconds, and a
# generous default rate limit so concurrency tests are not throttled (the 429 test sets its own).
TEST_ENV = {
    "PAYGATE_ACQUIRER_TIMEOUT": "2",
    "PAYGATE_RATE_LIMIT": "5000",
    "PAYGATE_RATE_LIMIT_BURST": "5000",
    # A compressed webhook retry schedule and quick re-publishing, so failure tests take seconds.
    "PAYGATE_WEBHOOK_BACKOFF_S": "0.2",
    "PAYGATE_WEBHOOK_TIMEOUT_S": "2",
    "PAYGATE_OUTBOX_REPUBLISH_S": "3",
    "PAYGATE_PG_STAT_STATEMENTS": "1",  # what `bench --profile` reads per statement
    # One ledger connection per shard: a code path that holds a connection while it waits for
    # another (the deadlock a saturated shard once hit) then hangs at once, in any test.
    "PAYGATE_SHARD_CONNECTIONS": "1",
    # Two shards (the default is one): routing, recovery and crashes across shards stay tested.
    "PAYGATE_SHARDS": "2",
}


@dataclass(frozen=True)
class Merchant:
    id: str
    key: str


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir = tmp_path_factory.mktemp("paygate-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYGATE_") and k != "RAY_ADDRESS"}
    env.update(TEST_ENV)
    env["PAYGATE_DATA_DIR"] = str(data_dir)
    env["PAYGATE_HTTP_PORT"] = str(free_port())
    os.environ.update(TEST_ENV)  # the gateway child inherits them
    stack = LocalStack(load_config(env))
    stack.start()
    yield stack
    stack.stop()
    _assert_no_orphans()


def _assert_no_orphans(grace_s: float = 15.0) -> None:
    """Every process the stack started (databases, broker, bank, Ray, gateway) is gone."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = [p for p in psutil.Process().children(recursive=True)
                 if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"processes left after the stack stopped: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="session")
def stack_info(live_stack: LocalStack) -> StackInfo:
    assert live_stack.info is not None
    return live_stack.info


@pytest.fixture(scope="session")
def base_url(stack_info: StackInfo) -> str:
    return stack_info.base_url


@pytest.fixture(scope="session")
def admin(base_url: str, stack_info: StackInfo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {stack_info.admin_key}"},
                      timeout=30) as client:
        yield client


@pytest.fixture
def merchant(admin: httpx.Client, request: pytest.FixtureRequest) -> Merchant:
    # Test names can carry card numbers (parametrized ids): never let one into the ledger.
    response = admin.post("/v1/admin/merchants", data={"name": redact(f"test {request.node.name}")[:200]})
    assert response.status_code == 200, response.text
    body = response.json()
    return Merchant(body["id"], body["secret_key"])


@pytest.fixture
def api(base_url: str, merchant: Merchant) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, auth=(merchant.key, ""), timeout=60) as client:
        yield client


@pytest.fixture
def data_dir(stack_info: StackInfo) -> Path:
    return Path(stack_info.data_dir)
