"""All of paygate's configuration, read once from the environment.

Every external part has a local default (embedded, started by `paygate up`) and an
environment variable that points it at a real one instead. A bad value fails at start
with a `ConfigError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    http_keepalive_s: float = 75.0
    ledger_dsn: str | None = None
    vault_dsn: str | None = None
    kafka_bootstrap: str | None = None
    kafka_compression: str | None = "zstd"  # the relay's record batches (None: uncompressed)
    acquirer: HostPort | None = None
    ray_address: str | None = None
    ray_namespace: str = "paygate"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    admin_key_file: Path | None = None
    vault_kek_file: Path | None = None
    fingerprint_key_file: Path | None = None
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 200
    max_body_bytes: int = 1_048_576
    shards: int = 1  # one measured cheaper and faster on a 2-core machine; more on bigger ones (README)
    shard_connections: int = 20  # ledger connections per PaymentShard
    acquirer_links: int = 1
    acquirer_connections: int = 4
    acquirer_timeout_s: float = 10.0
    bank_latency_ms: int = 0
    log_level: str = "INFO"
    fraud_scorers: int = 1
    outbox_relays: int = 1
    outbox_republish_s: float = 30.0
    webhook_dispatchers: int = 1
    webhook_backoff_s: float = 60.0
    webhook_window_s: float = 3 * 24 * 3600.0
    webhook_timeout_s: float = 10.0
    webhook_slots: int = 1024  # deliveries each dispatcher sends at once, at most (README)
    direct_calls: bool = True  # hot actor calls over a Unix socket on the node (actors/direct.py)
    pg_stat_statements: bool = False  # local ledger PostgreSQL: load pg_stat_statements (bench --profile)
    sched_batch: bool = True  # a local stack's processes under Linux's SCHED_BATCH (cluster.procs.schedule_as_batch)
    # Ports used by the local stack for the parts it starts itself (0 = pick a free one).
    local_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def admin_key_path(self) -> Path:
        return self.admin_key_file or self.data_dir / "secrets" / "admin_key"

    @property
    def kek_path(self) -> Path:
        return self.vault_kek_file or self.data_dir / "secrets" / "vault_kek.json"

    @property
    def fingerprint_key_path(self) -> Path:
        return self.fingerprint_key_file or self.data_dir / "secrets" / "fingerprint_key"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.http_host}:{self.http_port}"

    def with_overrides(self, **changes: object) -> Config:
        return replace(self, **changes)  # type: ignore[arg-type]


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


# Codecs aiokafka writes (zstd, lz4 and snappy through cramjam); `none` sends batches as they are.
KAFKA_COMPRESSIONS = ("zstd", "lz4", "gzip", "snappy", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _one_of(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, whatever the case it was written in."""
    raw = env.get(name) or default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}")


def _dsn(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    parsed = urlparse(raw)
    over_socket = "host=" in parsed.query  # postgresql://user@/db?host=/socket/dir&port=5432
    if parsed.scheme not in ("postgres", "postgresql") or not (parsed.hostname or over_socket):
        raise ConfigError(f"{name} must be a postgresql://user@host:port/db URL, got {raw!r}")
    return raw


def _host_port(env: Mapping[str, str], name: str) -> HostPort | None:
    raw = env.get(name)
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be host:port, got {raw!r}")
    return HostPort(host, int(port))


def _bootstrap(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if not raw:
        return None
    for part in raw.split(","):
        _host_port({name: part.strip()}, name)
    return raw


def _file(env: Mapping[str, str], name: str, must_exist: bool) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if must_exist and not path.is_file():
        raise ConfigError(f"{name}={raw!r} is not a readable file")
    return path


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("PAYGATE_DATA_DIR") or ".paygate").expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"PAYGATE_DATA_DIR={str(data_dir)!r} exists and is not a directory")
    tls_cert = _file(env, "PAYGATE_TLS_CERT", must_exist=True)
    tls_key = _file(env, "PAYGATE_TLS_KEY", must_exist=True)
    if bool(tls_cert) != bool(tls_key):
        missing = "PAYGATE_TLS_KEY" if tls_cert else "PAYGATE_TLS_CERT"
        raise ConfigError(f"{missing} must be set together with the other TLS variable")
    log_level = _one_of(env, "PAYGATE_LOG_LEVEL", "INFO", LOG_LEVELS)
    compression = _one_of(env, "PAYGATE_KAFKA_COMPRESSION", "zstd", KAFKA_COMPRESSIONS)
    return Config(
        data_dir=data_dir,
        http_host=env.get("PAYGATE_HTTP_HOST") or "127.0.0.1",
        http_port=_int(env, "PAYGATE_HTTP_PORT", 8000, 0, 65535),
        http_keepalive_s=_float(env, "PAYGATE_HTTP_KEEPALIVE_S", 75.0, 1, 3600),
        ledger_dsn=_dsn(env, "PAYGATE_LEDGER_DSN"),
        vault_dsn=_dsn(env, "PAYGATE_VAULT_DSN"),
        kafka_bootstrap=_bootstrap(env, "PAYGATE_KAFKA_BOOTSTRAP"),
        kafka_compression=None if compression == "none" else compression,
        acquirer=_host_port(env, "PAYGATE_ACQUIRER"),
        ray_address=env.get("RAY_ADDRESS") or None,
        ray_namespace=env.get("PAYGATE_RAY_NAMESPACE") or "paygate",
        tls_cert=tls_cert,
        tls_key=tls_key,
        admin_key_file=_file(env, "PAYGATE_ADMIN_KEY_FILE", must_exist=False),
        vault_kek_file=_file(env, "PAYGATE_VAULT_KEK_FILE", must_exist=False),
        fingerprint_key_file=_file(env, "PAYGATE_FINGERPRINT_KEY_FILE", must_exist=False),
        rate_limit_per_s=_float(env, "PAYGATE_RATE_LIMIT", 100.0, 0.1, 1_000_000),
        rate_limit_burst=_int(env, "PAYGATE_RATE_LIMIT_BURST", 200, 1, 10_000_000),
        max_body_bytes=_int(env, "PAYGATE_MAX_BODY_BYTES", 1_048_576, 1024, 64 * 1_048_576),
        shards=_int(env, "PAYGATE_SHARDS", 1, 1, 256),
        shard_connections=_int(env, "PAYGATE_SHARD_CONNECTIONS", 20, 1, 1000),
        acquirer_links=_int(env, "PAYGATE_ACQUIRER_LINKS", 1, 1, 64),
        acquirer_connections=_int(env, "PAYGATE_ACQUIRER_CONNECTIONS", 4, 1, 256),
        acquirer_timeout_s=_float(env, "PAYGATE_ACQUIRER_TIMEOUT", 10.0, 0.05, 600),
        bank_latency_ms=_int(env, "PAYGATE_BANK_LATENCY_MS", 0, 0, 60_000),
        log_level=log_level,
        fraud_scorers=_int(env, "PAYGATE_FRAUD_SCORERS", 1, 1, 64),
        outbox_relays=_int(env, "PAYGATE_OUTBOX_RELAYS", 1, 1, 64),
        outbox_republish_s=_float(env, "PAYGATE_OUTBOX_REPUBLISH_S", 30.0, 0.5, 86400),
        webhook_dispatchers=_int(env, "PAYGATE_WEBHOOK_DISPATCHERS", 1, 1, 64),
        webhook_backoff_s=_float(env, "PAYGATE_WEBHOOK_BACKOFF_S", 60.0, 0.01, 86400),
        webhook_window_s=_float(env, "PAYGATE_WEBHOOK_RETRY_WINDOW_S", 3 * 24 * 3600.0, 0.1, 30 * 86400),
        webhook_timeout_s=_float(env, "PAYGATE_WEBHOOK_TIMEOUT_S", 10.0, 0.1, 120),
        webhook_slots=_int(env, "PAYGATE_WEBHOOK_SLOTS", 1024, 1, 100_000),
        direct_calls=_int(env, "PAYGATE_DIRECT_CALLS", 1, 0, 1) == 1,
        pg_stat_statements=_int(env, "PAYGATE_PG_STAT_STATEMENTS", 0, 0, 1) == 1,
        sched_batch=_int(env, "PAYGATE_SCHED_BATCH", 1, 0, 1) == 1,
    )
