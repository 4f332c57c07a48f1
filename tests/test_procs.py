"""cluster/procs.py: ports for the servers a stack starts."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from cluster import procs
from cluster.procs import free_port


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
