"""`python -m banksim --host 127.0.0.1 --port N --journal PATH [--latency-ms 0] [--slow-ms 3000]`."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

import uvloop

from banksim.server import Settings, run
from cluster.logs import setup_logging
from cluster.runtime import tune_gc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="banksim", description="Simulated acquiring bank (ISO 8583/TCP)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", type=Path, required=True, help="SQLite journal file")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before every answer")
    parser.add_argument("--slow-ms", type=int, default=3000, help="delay before answering SLOW_CARD")
    parser.add_argument("--log-file", default=None, help="also write JSON logs here")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging("banksim", level=args.log_level, log_file=args.log_file)
    settings = Settings(args.host, args.port, args.journal, args.latency_ms, args.slow_ms)
    tune_gc()
    uvloop.run(_serve(settings))  # the simulated network shares the cores with the stack: keep it lean


if __name__ == "__main__":
    main()
