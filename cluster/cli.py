"""The `paygate` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx

from cluster.config import Config, ConfigError, load_config
from cluster.logs import setup_logging
from cluster.merchants import create_merchant
from cluster.migrate import apply_migrations
from cluster.postgres import EmbeddedPostgres
from cluster.procs import free_port
from cluster.secrets import read_admin_key
from cluster.stack import LocalStack, run_file


def _config(args: argparse.Namespace) -> Config:
    config = load_config()
    changes: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        changes["data_dir"] = Path(args.data_dir).expanduser().resolve()
    if getattr(args, "port", None) is not None:
        changes["http_port"] = args.port
    return config.with_overrides(**changes) if changes else config


def cmd_up(args: argparse.Namespace) -> int:
    config = _config(args)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    # The console shows the progress lines (and warnings); the full JSON log goes to the file.
    setup_logging("paygate-up", config.log_level, str(config.log_dir / "paygate-up.log"), console_level="WARNING")
    print(f"paygate: starting the local stack (data dir {config.data_dir})", flush=True)
    stack = LocalStack(config, progress=True)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopping.set()

    def interrupt_start(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # start() stops what it has started, then re-raises

    signal.signal(signal.SIGTERM, interrupt_start)
    info = stack.start()
    # After start(): ray.init installs its own SIGTERM handler, which would exit without stopping.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(
        "\npaygate is up\n"
        f"  URL          {info.base_url}\n"
        f"  data dir     {info.data_dir}\n"
        f"  test key     {info.test_secret_key}\n"
        f"  admin key    in {config.admin_key_path}\n"
        f"  logs         {config.log_dir}\n"
        f"\n  try: curl {info.base_url}/v1/payment_intents -u {info.test_secret_key}: "
        "-d amount=1000 -d currency=usd -d payment_method=pm_card_visa -d confirm=true\n"
        "\nPress Ctrl-C to stop.",
        flush=True,
    )
    try:
        while not stopping.wait(0.5):
            if stack.gateway and not stack.gateway.alive():
                print("paygate: the gateway process exited; stopping", file=sys.stderr)
                break
    finally:
        print("\npaygate: stopping…", flush=True)
        stack.stop()
        print("paygate: stopped", flush=True)
    return 0


async def _with_ledger(config: Config, action: Callable[[asyncpg.Connection], object]) -> object:
    """Run `action` on the ledger: the running stack's, the configured one, or a briefly started local one."""
    dsn = config.ledger_dsn
    if not dsn and run_file(config).exists():
        dsn = json.loads(run_file(config).read_text())["ledger_dsn"]
    server = None
    if not dsn:
        server = EmbeddedPostgres("ledger", config.data_dir / "pg" / "ledger", free_port(),
                                  config.log_dir / "postgres-ledger.log").start()
        dsn = server.dsn
    try:
        await apply_migrations(dsn, "ledger")
        conn = await asyncpg.connect(dsn)
        try:
            return await action(conn)  # type: ignore[misc]
        finally:
            await conn.close()
    finally:
        if server:
            server.stop()


def cmd_merchant_create(args: argparse.Namespace) -> int:
    config = _config(args)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    merchant = asyncio.run(_with_ledger(config, lambda conn: create_merchant(conn, args.name)))
    print(f"merchant  {merchant.merchant_id}  ({merchant.name})")  # type: ignore[attr-defined]
    print(f"secret key (shown once, store it now): {merchant.secret_key}")  # type: ignore[attr-defined]
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    config = _config(args)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_with_ledger(config, lambda conn: asyncio.sleep(0)))
    print("ledger migrations applied")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Production mode: every part is external (DSNs, Kafka, acquirer, RAY_ADDRESS from the
    environment). Migrate, make sure the actors exist in the cluster, then serve HTTP here."""
    import logging

    import ray

    from actors.registry import ensure_actors
    from cluster.broker import ensure_topics
    from gateway.__main__ import main as serve_gateway

    config = _config(args)
    missing = [name for name, value in (("PAYGATE_LEDGER_DSN", config.ledger_dsn),
                                        ("PAYGATE_VAULT_DSN", config.vault_dsn),
                                        ("PAYGATE_KAFKA_BOOTSTRAP", config.kafka_bootstrap),
                                        ("PAYGATE_ACQUIRER", config.acquirer)) if not value]
    if missing:
        raise ConfigError(f"`paygate serve` needs {', '.join(missing)} (use `paygate up` for the local stack)")
    assert config.ledger_dsn and config.vault_dsn and config.kafka_bootstrap
    setup_logging("paygate-serve", config.log_level)
    asyncio.run(apply_migrations(config.ledger_dsn, "ledger"))
    asyncio.run(apply_migrations(config.vault_dsn, "vault"))
    asyncio.run(ensure_topics(config.kafka_bootstrap))
    ray.init(address=config.ray_address or "auto", namespace=config.ray_namespace, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={"worker_process_setup_hook": "cluster.runtime.setup_worker"})
    asyncio.run(ensure_actors(config))
    serve_gateway()
    return 0


# ---- vault key rotation (talks to the running stack's admin API) ------------------------------

def _admin_client(config: Config) -> httpx.Client:
    """An admin-authenticated client for the running stack (URL from run/stack.json)."""
    if not run_file(config).exists():
        raise ConfigError(f"paygate is not running with data dir {config.data_dir} (no {run_file(config)}); "
                          "start it with `paygate up`")
    base_url = json.loads(run_file(config).read_text())["base_url"]
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {read_admin_key(config)}"},
                        timeout=30, verify=not config.tls_cert)


def _vault_call(client: httpx.Client, method: str, path: str) -> dict[str, object]:
    try:
        response = client.request(method, path)
    except httpx.TransportError as error:
        raise ConfigError(f"cannot reach paygate at {client.base_url} ({type(error).__name__}): "
                          "is the stack running?") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:200]}}
    if response.status_code != 200:
        raise ConfigError(f"{method} {path} failed ({response.status_code}): {body['error']['message']}")
    return dict(body)


def _print_rotation(status: dict[str, object]) -> None:
    per_version = status["cards_per_version"]
    assert isinstance(per_version, dict)
    cards = ", ".join(f"v{v}: {n}" for v, n in sorted(per_version.items(), key=lambda kv: int(kv[0]))) or "none"
    print(f"vault KEK v{status['active_version']} active; {status['status']}; "
          f"cards per key version: {cards}; re-wrapped {status['rewrapped']}", flush=True)


def _wait_rotation(client: httpx.Client, timeout_s: float) -> dict[str, object]:
    deadline, last = time.monotonic() + timeout_s, ""
    while True:
        status = _vault_call(client, "GET", "/v1/admin/vault/rotation")
        if json.dumps(status, sort_keys=True) != last:
            _print_rotation(status)
            last = json.dumps(status, sort_keys=True)
        if status["status"] != "running" or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def cmd_vault_rotate_key(args: argparse.Namespace) -> int:
    with _admin_client(_config(args)) as client:
        status = _vault_call(client, "POST", "/v1/admin/vault/rotate_key")
        print(f"vault: new key-encrypting key version {status['new_version']}; re-wrapping data keys", flush=True)
        if args.wait:
            status = _wait_rotation(client, args.timeout)
        else:
            _print_rotation(status)
    done = ("complete",) if args.wait else ("complete", "running")
    return 0 if status["status"] in done else 1


def cmd_vault_status(args: argparse.Namespace) -> int:
    with _admin_client(_config(args)) as client:
        status = _vault_call(client, "GET", "/v1/admin/vault/rotation")
    _print_rotation(status)
    return 1 if status["status"] == "failed" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paygate", description="paygate: a Stripe-compatible payment gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole local stack and serve the API until Ctrl-C")
    up.add_argument("--data-dir", help="where data, logs and secrets live (default .paygate/)")
    up.add_argument("--port", type=int, help="HTTP port (default 8000)")
    up.set_defaults(func=cmd_up)

    merchant = sub.add_parser("merchant", help="merchant administration")
    msub = merchant.add_subparsers(dest="merchant_command", required=True)
    create = msub.add_parser("create", help="create a merchant and print its secret key once")
    create.add_argument("name")
    create.add_argument("--data-dir")
    create.set_defaults(func=cmd_merchant_create)

    serve = sub.add_parser("serve", help="production: join RAY_ADDRESS, create the actors, serve HTTP")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply ledger migrations")
    migrate.add_argument("--data-dir")
    migrate.set_defaults(func=cmd_migrate)

    vault = sub.add_parser("vault", help="card vault operations on the running stack")
    vsub = vault.add_subparsers(dest="vault_command", required=True)
    rotate = vsub.add_parser("rotate-key", help="add a new key-encrypting key and re-wrap every card's data key")
    rotate.add_argument("--data-dir")
    rotate.add_argument("--wait", action="store_true", help="print progress until the re-wrap is done")
    rotate.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most")
    rotate.set_defaults(func=cmd_vault_rotate_key)
    vstatus = vsub.add_parser("status", help="active key version and cards per key version")
    vstatus.add_argument("--data-dir")
    vstatus.set_defaults(func=cmd_vault_status)

    from actors.reconciler.cli import add_reconcile_parser  # `paygate reconcile`

    add_reconcile_parser(sub)

    from cluster.bench.cli import add_bench_parser  # `paygate bench`

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(f"paygate: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
