"""The `paygate` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import asyncpg

from cluster.config import Config, ConfigError, load_config
from cluster.logs import setup_logging
from cluster.merchants import create_merchant
from cluster.migrate import apply_migrations
from cluster.postgres import EmbeddedPostgres
from cluster.procs import free_port
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
    setup_logging("paygate-up", config.log_level, str(config.log_dir / "paygate-up.log"))
    print(f"paygate: starting the local stack (data dir {config.data_dir})", flush=True)
    stack = LocalStack(config, progress=True)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    info = stack.start()
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
    while not stopping.wait(0.5):
        if stack.gateway and not stack.gateway.alive():
            print("paygate: the gateway process exited; stopping", file=sys.stderr)
            break
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
             runtime_env={"worker_process_setup_hook": "cluster.logs.setup_worker_logging"})
    asyncio.run(ensure_actors(config))
    serve_gateway()
    return 0


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
