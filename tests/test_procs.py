"""cluster/procs.py: ports for the servers a stack starts, and the scheduling policy they run under."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from cluster import procs
from cluster.config import load_config
from cluster.procs import free_port
from cluster.stack import LocalStack


def _outgoing_ports_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_lie_below_the_outgoing_range_and_are_not_handed_out_twice() -> None:
    """A port from the range outgoing connections draw on could be taken before the server binds it."""
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < _outgoing_ports_start() for port in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    busy_port = free_port()
    procs._handed_out.discard(busy_port)  # only the listener may keep it from being handed out
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", busy_port))
        busy.listen()

        def busy_first(population: Sequence[int], k: int) -> list[int]:
            return [busy_port, *(port for port in population[:k] if port != busy_port)]

        monkeypatch.setattr(procs.random, "sample", busy_first)
        assert free_port() != busy_port


def test_every_process_of_the_stack_runs_under_sched_batch(live_stack: LocalStack) -> None:
    """Set before anything starts, the policy reaches each process the stack started: databases,
    broker, bank, Ray and its actors, the gateway."""
    stack = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
    assert live_stack.gateway is not None and live_stack.banksim is not None
    pids = {p.pid for p in stack}
    assert {live_stack.gateway.pid, live_stack.banksim.pid} <= pids
    assert {"postgres", "ray::PaymentShard", "ray::CardVault"} <= {p.name() for p in stack}
    policies = {(p.pid, p.name()): os.sched_getscheduler(p.pid) for p in stack}
    assert set(policies.values()) == {os.SCHED_BATCH}, policies


def test_the_policy_is_inherited_and_can_be_turned_off() -> None:
    child = ("import os; from cluster.procs import schedule_as_batch; assert schedule_as_batch(); "
             "import subprocess, sys; print(subprocess.run([sys.executable, '-c', "
             "'import os; print(os.sched_getscheduler(0))'], capture_output=True, text=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.stdout.strip() == str(os.SCHED_BATCH)
    assert load_config({"PAYGATE_SCHED_BATCH": "0"}).sched_batch is False
    assert load_config({}).sched_batch is True
