"""cluster/runtime.py: every process of the stack runs with the same garbage-collector tuning."""

from __future__ import annotations

import gc
import subprocess
import sys

import ray

from actors.registry import dispatcher_name, link_name, shard_name
from cluster.runtime import GC_THRESHOLDS
from cluster.stack import LocalStack


def test_tune_gc_sets_the_thresholds_and_freezes_what_is_loaded() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import gc; from cluster.runtime import tune_gc; before = gc.get_threshold(); "
                               "tune_gc(); print(before, gc.get_threshold(), gc.get_freeze_count() > 0)"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert out == f"{(700, 10, 10)} {GC_THRESHOLDS} True"


def test_tuned_gc_applies_inside_and_is_undone_after() -> None:
    code = ("import gc; from cluster.runtime import tuned_gc\n"
            "with tuned_gc(): inside = (gc.get_threshold(), gc.get_freeze_count() > 0)\n"
            "print(inside, (gc.get_threshold(), gc.get_freeze_count()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.strip()
    assert out == f"{(GC_THRESHOLDS, True)} {((700, 10, 10), 0)}"


def test_every_actor_process_is_tuned_by_the_setup_hook(live_stack: LocalStack) -> None:
    namespace = live_stack.resolved.ray_namespace
    for name in (shard_name(0), link_name(0), dispatcher_name(0)):
        actor = ray.get_actor(name, namespace=namespace)
        threshold, frozen = ray.get(actor.__ray_call__.remote(lambda _: (gc.get_threshold(), gc.get_freeze_count())),
                                    timeout=30)
        assert tuple(threshold) == GC_THRESHOLDS, name
        assert frozen > 0, name
