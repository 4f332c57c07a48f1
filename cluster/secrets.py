"""Secrets kept outside the repo: generated into the data dir (mode 0600) on first start, or
supplied by file or environment."""

from __future__ import annotations

import os
from pathlib import Path

from actors.ids import random_token
from cluster.config import Config, ConfigError


def write_secret_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def ensure_admin_key(config: Config) -> str:
    if os.environ.get("PAYGATE_ADMIN_KEY"):
        return os.environ["PAYGATE_ADMIN_KEY"]
    path = config.admin_key_path
    if not path.exists():
        write_secret_file(path, "sk_admin_" + random_token(24))
    return read_admin_key(config)


def read_admin_key(config: Config) -> str:
    if os.environ.get("PAYGATE_ADMIN_KEY"):
        return os.environ["PAYGATE_ADMIN_KEY"]
    path = config.admin_key_path
    try:
        key = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"PAYGATE_ADMIN_KEY_FILE: cannot read {path}: {error.strerror}") from None
    if not key:
        raise ConfigError(f"PAYGATE_ADMIN_KEY_FILE: {path} is empty")
    return key
