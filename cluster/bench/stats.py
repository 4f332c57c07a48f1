"""What the load generator measured: an HDR histogram per endpoint, status and error counts, and
one bucket per second of the run (completions and latencies) for the timeline and the plot; and
the latency summary the microbenchmarks print."""

from __future__ import annotations

import statistics
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_MAX_US = 600_000_000  # ten minutes: anything slower is clamped


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, _MAX_US, 3)


@dataclass
class EndpointStats:
    histogram: HdrHistogram = field(default_factory=_histogram)
    statuses: Counter[str] = field(default_factory=Counter)

    def summary(self, seconds: float) -> dict[str, Any]:
        h = self.histogram
        count = h.get_total_count()
        latency = {f"p{p:g}": h.get_value_at_percentile(p) / 1000 for p in PERCENTILES} if count else {}
        if count:
            latency.update(mean=round(h.get_mean_value() / 1000, 3), max=h.get_max_value() / 1000)
        return {"count": count, "per_s": round(count / seconds, 1) if seconds else 0.0,
                "latency_ms": latency, "statuses": dict(self.statuses)}


@dataclass
class Second:
    requests: int = 0
    payments: int = 0
    errors: int = 0
    latencies_ms: array = field(default_factory=lambda: array("f"))


class Recorder:
    """Fed by the flows on the event loop; times are `loop.time()` values."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.endpoints: dict[str, EndpointStats] = {}
        self.overall = EndpointStats()
        self.seconds: list[Second] = []
        self.errors: Counter[str] = Counter()
        self.payments_ok = 0
        self.payments_failed = 0
        self.dropped = 0  # arrivals not started: the client's own backlog was full

    def _second(self, at: float) -> Second:
        index = max(0, int(at - self.t0))
        while len(self.seconds) <= index:
            self.seconds.append(Second())
        return self.seconds[index]

    def request(self, label: str, started: float, finished: float, status: str, error: str | None) -> None:
        stats = self.endpoints.get(label)
        if stats is None:
            stats = self.endpoints[label] = EndpointStats()
        micros = min(_MAX_US, max(1, int((finished - started) * 1_000_000)))
        stats.histogram.record_value(micros)
        self.overall.histogram.record_value(micros)
        stats.statuses[status] += 1
        second = self._second(finished)
        second.requests += 1
        second.latencies_ms.append(micros / 1000)
        if error:
            second.errors += 1
            self.errors[f"{label}: {error}"] += 1

    def payment(self, finished: float, ok: bool) -> None:
        if ok:
            self.payments_ok += 1
            self._second(finished).payments += 1
        else:
            self.payments_failed += 1

    @property
    def requests(self) -> int:
        return int(self.overall.histogram.get_total_count())

    def last_second(self, now: float) -> Second:
        index = int(now - self.t0) - 1
        return self.seconds[index] if 0 <= index < len(self.seconds) else Second()

    def timeline(self) -> list[dict[str, float]]:
        rows = []
        for index, second in enumerate(self.seconds):
            values = sorted(second.latencies_ms)
            rows.append({"t": index, "requests": second.requests, "payments": second.payments,
                         "errors": second.errors, "p50_ms": _pick(values, 0.50), "p99_ms": _pick(values, 0.99)})
        return rows


def _at(sorted_values: Sequence[float], fraction: float) -> float:
    """The value at `fraction` of a sorted sample (nearest rank, rounding down); 0 for none."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))])


def _pick(sorted_values: list[float], fraction: float) -> float:
    return round(_at(sorted_values, fraction), 3)


def summary_us(latencies_us: Sequence[float]) -> dict[str, float]:
    """Count, percentiles, max and mean of a small sample of latencies in µs (the microbenchmarks)."""
    ordered = sorted(latencies_us)
    return {"n": len(ordered), "p50_us": round(_at(ordered, 0.50), 1), "p99_us": round(_at(ordered, 0.99), 1),
            "p999_us": round(_at(ordered, 0.999), 1),
            "max_us": round(ordered[-1], 1) if ordered else 0.0,
            "mean_us": round(statistics.fmean(ordered), 1) if ordered else 0.0}
