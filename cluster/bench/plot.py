"""The run's picture: throughput and latency over time, and the latency histogram (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram


def plot(report: dict[str, Any], histograms: dict[str, HdrHistogram], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    timeline = report["timeline"]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 11))
    _throughput(top, timeline, report)
    _latency_over_time(middle, timeline)
    _histogram(bottom, histograms)
    meta = report["meta"]
    fig.suptitle(f"paygate bench: {meta['scenario']} at {meta['rate']:g} payments/s "
                 f"(bank latency {meta['bank_latency_ms']} ms)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _throughput(ax: Any, timeline: list[dict[str, float]], report: dict[str, Any]) -> None:
    t = [row["t"] for row in timeline]
    ax.plot(t, [row["requests"] for row in timeline], label="requests/s")
    ax.plot(t, [row["payments"] for row in timeline], label="payments/s (ok)")
    ax.plot(t, [row["errors"] for row in timeline], label="errors/s", color="red")
    ax.axhline(report["meta"]["rate"], linestyle="--", color="grey", label="offered payments/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    ax.set_title("throughput")
    ax.legend(loc="upper right")


def _latency_over_time(ax: Any, timeline: list[dict[str, float]]) -> None:
    t = [row["t"] for row in timeline]
    ax.plot(t, [row["p50_ms"] for row in timeline], label="p50")
    ax.plot(t, [row["p99_ms"] for row in timeline], label="p99")
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms (all requests completed in that second)")
    ax.set_title("latency over time")
    ax.legend(loc="upper right")


def _histogram(ax: Any, histograms: dict[str, HdrHistogram]) -> None:
    """One outline per endpoint, from its HDR histogram (every recorded value, not a sample)."""
    import numpy as np

    series = {name: _recorded(h) for name, h in histograms.items() if h.get_total_count()}
    if not series:
        return
    low = max(0.05, min(float(v.min()) for v, _ in series.values()))
    high = max(float(v.max()) for v, _ in series.values()) * 1.01
    bins = np.logspace(np.log10(low), np.log10(max(high, low * 2)), 80)
    for name, (values, counts) in sorted(series.items()):
        ax.hist(values, bins=bins, weights=counts, histtype="step", linewidth=1.5, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("requests")
    ax.set_title("latency histogram per endpoint")
    ax.legend(loc="upper right", fontsize="small")


def _recorded(h: HdrHistogram) -> tuple[Any, Any]:
    import numpy as np

    points = [(item.value_iterated_to / 1000, item.count_added_in_this_iter_step) for item in h.get_recorded_iterator()]
    values, counts = zip(*points, strict=True)
    return np.array(values), np.array(counts)
