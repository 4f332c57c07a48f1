"""The stack a bench runs against: a running one (`--url`), or by default a fresh local stack
started as `paygate up` in a child process with a temporary data dir, stopped afterwards.

A child process, not an in-process `LocalStack`, so the bench process stays a pure client (its
CPU time is the client's alone, and it is not a Ray driver) and the stack's process tree is
exactly the `paygate up` process and its descendants.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from cluster.procs import free_port

START_ATTEMPTS = 3
START_TIMEOUT_S = 240.0


@dataclass
class Target:
    base_url: str
    admin_key: str | None = None
    key: str | None = None  # bench as this merchant instead of creating merchants
    ledger_dsn: str | None = None
    bank_journal: str | None = None
    stack_pid: int | None = None  # root of the stack's process tree (for memory and CPU); None: remote
    started_here: bool = False


class LaunchError(RuntimeError):
    pass


class LaunchedStack:
    """`paygate up` in a temporary data dir, with the bench's settings in its environment."""

    def __init__(self, bank_latency_ms: int, keep_data: bool = False, env: dict[str, str] | None = None) -> None:
        self.bank_latency_ms, self.keep_data = bank_latency_ms, keep_data
        self.extra_env = env or {}
        self.data_dir = Path(tempfile.mkdtemp(prefix="paygate-bench-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.leftovers: list[str] = []

    def _env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PAYGATE_DATA_DIR", "PAYGATE_HTTP_PORT")}
        env.update({
            "PAYGATE_DATA_DIR": str(self.data_dir), "PAYGATE_HTTP_PORT": str(port),
            "PAYGATE_BANK_LATENCY_MS": str(self.bank_latency_ms),
            # The bench raises its merchants' limits itself; quick webhook retries keep the drain short.
            "PAYGATE_WEBHOOK_BACKOFF_S": env.get("PAYGATE_WEBHOOK_BACKOFF_S", "1"),
            "PAYGATE_OUTBOX_REPUBLISH_S": env.get("PAYGATE_OUTBOX_REPUBLISH_S", "5"),
        })
        env.update(self.extra_env)
        return env

    def start(self) -> Target:
        errors = []
        for _ in range(START_ATTEMPTS):
            try:
                return self._start_once()
            except LaunchError as error:
                errors.append(str(error))
                self._stop_process()
                self._stop_orphan_postgres()
                self._stop_leftovers()
        raise LaunchError("the local stack did not start:\n" + "\n---\n".join(errors))

    def _start_once(self) -> Target:
        port = free_port()
        log = open(self.data_dir / "paygate-up.out", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up"], env=self._env(port),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        run = self.data_dir / "run" / "stack.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"paygate up exited ({self.proc.returncode}):\n{self._tail()}")
            if run.exists() and _ready(f"http://127.0.0.1:{port}"):
                return self._target(json.loads(run.read_text()))
            time.sleep(0.5)
        raise LaunchError(f"paygate up was not ready in {START_TIMEOUT_S:.0f}s:\n{self._tail()}")

    def _target(self, info: dict[str, str]) -> Target:
        assert self.proc is not None
        admin_key = (self.data_dir / "secrets" / "admin_key").read_text().strip()
        return Target(info["base_url"], admin_key=admin_key, ledger_dsn=info["ledger_dsn"],
                      bank_journal=info["bank_journal"], stack_pid=self.proc.pid, started_here=True)

    def _tail(self, lines: int = 15) -> str:
        try:
            text = (self.data_dir / "paygate-up.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _stop_process(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Ctrl-C: `paygate up` then stops its children in order. (Not SIGTERM: `ray.init` replaces the
        # driver's SIGTERM handler with one that just exits, which would orphan the children.)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def _stop_orphan_postgres(self) -> None:
        """A failed start can leave an embedded PostgreSQL this stack started running: stop it by its pid."""
        for pidfile in self.data_dir.glob("pg/*/postmaster.pid"):
            with contextlib.suppress(ValueError, IndexError, OSError, psutil.Error):
                pid = int(pidfile.read_text().splitlines()[0])
                if str(pidfile.parent) not in " ".join(psutil.Process(pid).cmdline()):
                    continue  # a stale pid file: that pid is someone else's now
                os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)

    def _stop_leftovers(self) -> list[str]:
        """Whatever still runs with this stack's data dir in its environment was started by it: stop it."""
        mine = []
        for process in psutil.process_iter(["pid", "name"]):
            with contextlib.suppress(psutil.Error):
                if process.pid != os.getpid() and process.environ().get("PAYGATE_DATA_DIR") == str(self.data_dir):
                    mine.append(process)
        for process in mine:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(mine, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        return [f"{p.info['name']}[{p.pid}]" for p in mine]

    def stop(self) -> None:
        self._stop_process()
        self._stop_orphan_postgres()
        self.leftovers = self._stop_leftovers()
        if self.leftovers:
            print(f"paygate bench: warning: `paygate up` left {len(self.leftovers)} process(es) running after it "
                  f"stopped ({', '.join(self.leftovers[:8])}); stopped them", file=sys.stderr, flush=True)
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def running_stack(url: str, data_dir: str | None) -> dict[str, str]:
    """The public facts of a stack started by `paygate up` with this data dir, if it serves `url`."""
    path = Path(data_dir or os.environ.get("PAYGATE_DATA_DIR") or ".paygate").expanduser() / "run" / "stack.json"
    if not path.exists():
        return {}
    info = dict(json.loads(path.read_text()))
    return info if info.get("base_url", "").rstrip("/") == url.rstrip("/") else {}
