"""Interpreter tuning shared by every paygate process: the gateway, banksim and each Ray worker."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# CPython runs its young-generation collection every 700 net allocations. Handling one payment
# allocates thousands of short-lived objects (dicts, records, futures), so under load each process
# collected many times a second, and every tenth collection also walked the middle generation.
# Nearly all of these objects die young by reference counting alone, so the collector mostly
# found nothing. Past saturation they stop dying young: requests wait seconds, and what older
# requests free offsets what new ones allocate, so the young generation holds a hundred thousand
# live objects or more by the time the net count trips. At 20,000 the gateway then spent 12-18% of
# its CPU in collections (25-29 ms each) at rate 1,000; at 100,000 it collected twice in a run.
# 100,000 still bounds what reference cycles can hold (tens of MB).
GC_THRESHOLDS = (100_000, 20, 20)


def tune_gc() -> None:
    """Collect less often, and never scan again what exists now (modules and their state)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """`tune_gc` for a stretch of work in a process that is not paygate's own (the bench's load
    runs in whatever process calls it, a test's among them), undone afterwards."""
    before = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def setup_worker() -> None:
    """Ray's `worker_process_setup_hook`: every actor process logs like the others and collects
    garbage like them."""
    from cluster.logs import setup_worker_logging

    setup_worker_logging()
    tune_gc()
