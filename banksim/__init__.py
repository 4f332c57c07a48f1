"""A simulated acquiring bank speaking ISO 8583 over TCP, with a durable SQLite journal.

Run it with `python -m banksim --port N --journal PATH`; read its books with
`banksim.journal.Journal(PATH)`. Test card numbers are in `banksim.cards`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from banksim.cards import NEVER_ANSWER_CARD, SLOW_CARD
from banksim.journal import Authorization, Journal, Operation

__all__ = ["NEVER_ANSWER_CARD", "SLOW_CARD", "Authorization", "Journal", "Operation", "command"]


def command(
    port: int,
    journal: str | Path,
    *,
    host: str = "127.0.0.1",
    latency_ms: int = 0,
    slow_ms: int = 3000,
    log_file: str | Path | None = None,
    log_level: str = "INFO",
) -> list[str]:
    """The argv that starts banksim with this interpreter (for `cluster.procs.ChildProcess`);
    at DEBUG it logs every message (masked), which the journal holds anyway."""
    argv = [
        sys.executable, "-m", "banksim", "--host", host, "--port", str(port), "--journal", str(journal),
        "--latency-ms", str(latency_ms), "--slow-ms", str(slow_ms), "--log-level", log_level,
    ]  # fmt: skip
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    return argv
