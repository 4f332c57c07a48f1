"""Child processes of the local stack: start, wait until they listen, stop without orphans."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("paygate.procs")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server about to start. Chosen below the kernel's range for
    outgoing connections' own ports: one from that range (what binding port 0 gives) can be taken
    by any outgoing connection between this probe and the server's bind, which once cost a test
    stack's gateway its port. Ports handed out here are not handed out again by this process."""
    low = _outgoing_ports_start()
    for port in random.sample(range(max(1024, low - 12_000), low), min(256, max(0, low - 1024))):
        if port not in _handed_out and _can_bind(host, port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below the range
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


_handed_out: set[int] = set()


def _outgoing_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def schedule_as_batch() -> bool:
    """Put this process, and every process it starts from now on, under Linux's SCHED_BATCH
    (sched(7): taken as CPU-bound, with a small penalty on wake-up): a process it wakes (the reader
    of what it just wrote) is less likely to preempt it, so on busy cores a hop finishes its turn
    of the event loop and the next one reads several messages at once. False, with a warning,
    where the OS has no such policy or refuses it."""
    if not hasattr(os, "SCHED_BATCH"):
        log.warning("this OS has no SCHED_BATCH; running under the default policy")
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:
        log.warning("could not switch to SCHED_BATCH (%s); running under the default policy", error)
        return False
    return True


def raise_open_file_limit(wanted: int | None = None) -> int:
    """Lift this process's soft limit on open files towards the hard one (children inherit it):
    a server or load client holding a thousand connections needs more than the usual soft 1,024.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    target = hard if wanted is None else max(soft, wanted)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class ChildProcess:
    """One long-running child, its output sent to a log file under the data dir."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    user: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        try:
            # start_new_session: Ctrl-C in the terminal reaches only `paygate up`, which then
            # stops the children in order instead of them dying in a race.
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                user=self.user,
                start_new_session=True,
            )
        finally:
            out.close()
        log.info("started %s pid=%s", self.name, self.popen.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_listening(self, host: str, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}:\n{self.tail()}")
            if port_open(host, port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {host}:{port} in {timeout}s; see {self.log_path}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing", self.name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        log.info("stopped %s", self.name)

    def kill(self) -> None:
        """Hard kill, as a crash would (used by failure tests)."""
        self.stop(signal.SIGKILL, grace=5.0)
