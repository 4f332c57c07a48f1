"""The local stack: everything `paygate up` and the test fixtures start, in order, and stop.

Each external part is started here unless its environment variable points at a real one:
ledger and vault PostgreSQL (embedded), the Kafka-protocol broker (Tansu), the bank simulator,
Ray (local, or joined via RAY_ADDRESS) with the system's named detached actors, and the gateway
(uvicorn, a separate process that joins Ray as a driver).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import httpx
import ray

import banksim
from actors.registry import ensure_actors
from cluster.broker import LocalBroker, ensure_topics
from cluster.config import Config, HostPort
from cluster.merchants import create_merchant
from cluster.migrate import apply_migrations
from cluster.postgres import EmbeddedPostgres
from cluster.procs import ChildProcess, free_port, schedule_as_batch
from cluster.secrets import ensure_admin_key, write_secret_file

log = logging.getLogger("paygate.stack")


@dataclass(frozen=True)
class StackInfo:
    base_url: str
    data_dir: str
    ledger_dsn: str
    vault_dsn: str
    kafka_bootstrap: str
    acquirer: str
    ray_address: str
    admin_key: str
    test_secret_key: str
    bank_journal: str

    def public(self) -> dict[str, str]:
        """What may be written to disk for other CLI commands to find the stack (no secrets)."""
        return {k: v for k, v in asdict(self).items() if k not in ("admin_key", "test_secret_key")}


def run_file(config: Config) -> Path:
    return config.data_dir / "run" / "stack.json"


class LocalStack:
    def __init__(self, config: Config, progress: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.ledger: EmbeddedPostgres | None = None
        self.vault: EmbeddedPostgres | None = None
        self.broker: LocalBroker | None = None
        self.banksim: ChildProcess | None = None
        self.gateway: ChildProcess | None = None
        self.resolved: Config = config
        self.info: StackInfo | None = None
        self._ray_started_here = False

    def _say(self, message: str) -> None:
        log.info(message)
        if self.progress:
            print(f"  - {message}", flush=True)

    # ---- start -------------------------------------------------------------------------------
    def start(self) -> StackInfo:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        cfg.log_dir.mkdir(parents=True, exist_ok=True)
        if cfg.sched_batch and schedule_as_batch():  # before anything starts: every process inherits it
            self._say("processes run under SCHED_BATCH (PAYGATE_SCHED_BATCH=0: the default policy)")
        try:
            admin_key = ensure_admin_key(cfg)
            ledger_dsn = cfg.ledger_dsn or self._start_postgres("ledger")
            vault_dsn = cfg.vault_dsn or self._start_postgres("vault")
            asyncio.run(self._migrate(ledger_dsn, vault_dsn))
            kafka = cfg.kafka_bootstrap or self._start_broker()
            asyncio.run(ensure_topics(kafka))
            acquirer = cfg.acquirer or self._start_banksim()
            self.resolved = cfg.with_overrides(ledger_dsn=ledger_dsn, vault_dsn=vault_dsn,
                                               kafka_bootstrap=kafka, acquirer=acquirer)
            ray_address = self._start_ray()
            self.resolved = self.resolved.with_overrides(ray_address=ray_address)
            self._say("starting actors")
            asyncio.run(ensure_actors(self.resolved))
            test_key = asyncio.run(self._test_merchant_key(ledger_dsn))
            self._start_gateway()
            self.info = StackInfo(
                base_url=self.resolved.base_url, data_dir=str(cfg.data_dir), ledger_dsn=ledger_dsn,
                vault_dsn=vault_dsn, kafka_bootstrap=kafka, acquirer=str(acquirer), ray_address=ray_address,
                admin_key=admin_key, test_secret_key=test_key, bank_journal=str(self.bank_journal_path),
            )
            run_file(cfg).parent.mkdir(parents=True, exist_ok=True)
            run_file(cfg).write_text(json.dumps(self.info.public(), indent=2))
            self._wait_ready()
            return self.info
        except BaseException:
            self.stop()
            raise

    @property
    def bank_journal_path(self) -> Path:
        return self.config.data_dir / "banksim" / "journal.sqlite3"

    def _port(self, name: str) -> int:
        return self.config.local_ports.get(name) or free_port()

    def _start_postgres(self, name: str) -> str:
        self._say(f"starting {name} PostgreSQL (embedded)")
        preload = ("pg_stat_statements",) if name == "ledger" and self.config.pg_stat_statements else ()
        server = EmbeddedPostgres(name, self.config.data_dir / "pg" / name, self._port(name),
                                  self.config.log_dir / f"postgres-{name}.log", preload=preload).start()
        setattr(self, name, server)
        return server.dsn

    async def _migrate(self, ledger_dsn: str, vault_dsn: str) -> None:
        self._say("applying migrations")
        await apply_migrations(ledger_dsn, "ledger")
        await apply_migrations(vault_dsn, "vault")

    def _start_broker(self) -> str:
        self._say("starting Kafka-protocol broker (Tansu, in memory)")
        self.broker = LocalBroker(self._port("kafka"), self.config.log_dir / "kafka.log").start()
        return self.broker.bootstrap

    def start_broker_again(self) -> None:
        """Restart a stopped local broker on the same port (its data was in memory: topics are re-created)."""
        assert self.broker is not None
        self.broker.start()
        asyncio.run(ensure_topics(self.broker.bootstrap))

    def _start_banksim(self) -> HostPort:
        self._say("starting bank simulator (ISO 8583)")
        port = self._port("banksim")
        self.bank_journal_path.parent.mkdir(parents=True, exist_ok=True)
        argv = banksim.command(port, self.bank_journal_path, latency_ms=self.config.bank_latency_ms,
                               log_file=self.config.log_dir / "banksim.log", log_level=self.config.log_level)
        self.banksim = ChildProcess("banksim", argv, self.config.log_dir / "banksim.out").start()
        self.banksim.wait_listening("127.0.0.1", port)
        return HostPort("127.0.0.1", port)

    def _start_ray(self) -> str:
        if self.config.ray_address:
            self._say(f"joining Ray at {self.config.ray_address}")
            ray.init(address=self.config.ray_address, namespace=self.config.ray_namespace,
                     log_to_driver=False, logging_level=logging.WARNING, runtime_env=self._runtime_env())
        else:
            self._say("starting Ray (local)")
            # Ray runs its workers at nice 15 by default; here every actor is on the request path
            # and competes with PostgreSQL and the gateway, so they run at normal priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
            # Every worker here hosts an actor: a pool of idle workers kept for tasks paygate never
            # runs would cost about 6 ms of CPU a second each (Ray's core worker wakes every 10 ms).
            os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
            os.environ.setdefault("RAY_num_workers_soft_limit", "0")
            ray.init(namespace=self.config.ray_namespace, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, num_cpus=max(2, os.cpu_count() or 2),
                     runtime_env=self._runtime_env())
            self._ray_started_here = True
        return str(ray.get_runtime_context().gcs_address)

    def _runtime_env(self) -> dict[str, object]:
        # Every actor process installs the same redacting JSON logging and GC tuning as the other processes.
        return {"env_vars": {"PAYGATE_LOG_LEVEL": self.config.log_level,
                             "PAYGATE_DIRECT_CALLS": "1" if self.config.direct_calls else "0"},
                "worker_process_setup_hook": "cluster.runtime.setup_worker"}

    async def _test_merchant_key(self, ledger_dsn: str) -> str:
        """The local test merchant's key, kept (0600) in the data dir so each `paygate up` can print it."""
        path = self.config.data_dir / "secrets" / "test_merchant_key"
        if path.exists():
            return path.read_text().strip()
        conn = await asyncpg.connect(ledger_dsn)
        try:
            merchant = await create_merchant(conn, "Test merchant")
        finally:
            await conn.close()
        write_secret_file(path, merchant.secret_key)
        return merchant.secret_key

    def gateway_env(self) -> dict[str, str]:
        cfg = self.resolved
        env = dict(os.environ)
        env.update({
            "PAYGATE_DATA_DIR": str(cfg.data_dir), "PAYGATE_HTTP_HOST": cfg.http_host,
            "PAYGATE_HTTP_PORT": str(cfg.http_port), "PAYGATE_LEDGER_DSN": cfg.ledger_dsn or "",
            "PAYGATE_VAULT_DSN": cfg.vault_dsn or "", "PAYGATE_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap or "",
            "PAYGATE_ACQUIRER": str(cfg.acquirer or ""), "RAY_ADDRESS": cfg.ray_address or "",
            "PAYGATE_RAY_NAMESPACE": cfg.ray_namespace,
        })
        return env

    def _start_gateway(self) -> None:
        self._say(f"starting gateway on {self.resolved.base_url}")
        self.gateway = ChildProcess("gateway", [sys.executable, "-m", "gateway"],
                                    self.config.log_dir / "gateway.out", env=self.gateway_env()).start()
        self.gateway.wait_listening(self.resolved.http_host, self.resolved.http_port, timeout=120)

    def restart_gateway(self, kill: bool = False) -> None:
        assert self.gateway is not None
        if kill:
            self.gateway.kill()
        else:
            self.gateway.stop()
        self._start_gateway()
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        verify = not self.resolved.tls_cert  # a local self-signed certificate
        while time.monotonic() < deadline:
            if self.gateway and not self.gateway.alive():
                raise RuntimeError(f"gateway exited; see {self.gateway.log_path}:\n{self.gateway.tail()}")
            try:
                response = httpx.get(f"{self.resolved.base_url}/readyz", timeout=5, verify=verify)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as error:
                last = str(error)
            time.sleep(0.2)
        raise RuntimeError(f"paygate did not become ready in {timeout_s:.0f}s: {last}")

    # ---- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything this stack started, in reverse order. Safe to call twice."""
        if self.gateway:
            self.gateway.stop()
        if ray.is_initialized():
            if self._ray_started_here:
                self._say("stopping Ray")
            ray.shutdown()
        if self.banksim:
            self.banksim.stop()
        if self.broker:
            self.broker.stop()
        for server in (self.vault, self.ledger):
            if server:
                server.stop()
        run_file(self.config).unlink(missing_ok=True)
