"""The live progress line (rich), refreshed twice a second from the load loop."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.text import Text

from cluster.bench.stats import Recorder


class ProgressLine:
    def __init__(self, recorder: Recorder, total: int, console: Console | None = None) -> None:
        self.recorder, self.total = recorder, total
        self.console = console or Console(stderr=True)
        if not self.console.is_terminal:
            self.console.width = max(self.console.width, 200)  # a log: one line per update, unwrapped
        self.live = Live(Text("starting…"), console=self.console, auto_refresh=False, transient=False)
        self._last_print = 0.0

    def start(self) -> None:
        if self.console.is_terminal:
            self.live.start()

    def stop(self) -> None:
        if self.console.is_terminal:
            self.live.stop()

    def tick(self, now: float, in_flight: int) -> None:
        text = self._line(now, in_flight)
        if self.console.is_terminal:
            self.live.update(Text(text), refresh=True)
        elif now - self._last_print >= 5.0:  # a log, not a terminal: a line every 5 s
            self._last_print = now
            self.console.print(text, highlight=False)

    def _line(self, now: float, in_flight: int) -> str:
        rec = self.recorder
        second = rec.last_second(now)
        latencies = sorted(second.latencies_ms)
        p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
        done = rec.payments_ok + rec.payments_failed
        return (f"{now - rec.t0:6.1f}s  payments {done}/{self.total} ({rec.payments_failed} failed, "
                f"{rec.dropped} dropped)  in flight {in_flight}  |  last 1s: {second.requests} req/s, "
                f"{second.payments} payments/s, p99 {p99:.0f} ms, {second.errors} errors")
