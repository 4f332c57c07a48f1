"""The bench's resource monitor on a real process tree: it samples the root and every descendant,
leaves out an excluded helper with its own children, and follows the tree as it changes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from cluster.bench.monitor import StackMonitor

# A parent that starts children which sleep and prints their pids; then one more per line it reads.
_TREE = """
import subprocess, sys
def start(n):
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(n)]
    print(" ".join(str(k.pid) for k in kids), flush=True)
start(int(sys.argv[1]))
for _ in sys.stdin:
    start(1)
"""


def _start_tree(children: int) -> tuple[subprocess.Popen[str], list[int]]:
    parent = subprocess.Popen([sys.executable, "-c", _TREE, str(children)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    return parent, [int(pid) for pid in parent.stdout.readline().split()]


@pytest.fixture
def trees() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for parent in started:
        for child in psutil.Process(parent.pid).children(recursive=True) if parent.poll() is None else []:
            child.kill()
        parent.kill()
        parent.wait(5)


def test_the_tree_is_sampled_without_the_excluded_helper(trees: list[subprocess.Popen[str]]) -> None:
    """As in `paygate bench` with the stack started in-process: the root is this process, which
    is left out itself, and the webhook receiver is an excluded helper among its children."""
    stack, stack_children = _start_tree(2)
    helper, helper_children = _start_tree(1)
    trees.extend([stack, helper])
    pids = {p.pid for p in StackMonitor(os.getpid(), {helper.pid})._processes()}
    assert {stack.pid, *stack_children} <= pids
    assert not pids & {os.getpid(), helper.pid, *helper_children}

    monitor = StackMonitor(stack.pid, set()).start()
    monitor.mark_load_end()
    usage = monitor.stop()
    assert usage.processes == 3 and usage.peak_rss_bytes > 3 * 5 * 1024**2 and usage.peak_pss_bytes > 0


def test_the_monitor_follows_the_tree_as_it_changes(trees: list[subprocess.Popen[str]]) -> None:
    stack, children = _start_tree(1)
    trees.append(stack)
    monitor = StackMonitor(stack.pid, set())
    assert {p.pid for p in monitor._processes()} == {stack.pid, *children}
    assert stack.stdin is not None and stack.stdout is not None
    stack.stdin.write("one more\n")
    stack.stdin.flush()
    newcomer = int(stack.stdout.readline())
    assert {p.pid for p in monitor._processes()} == {stack.pid, *children, newcomer}
    for child in psutil.Process(stack.pid).children():
        child.kill()
    stack.kill()
    stack.wait(5)
    assert monitor._processes() == []
