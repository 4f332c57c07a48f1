"""`paygate bench --profile`: where each part of the stack spends its CPU during the load.

One `py-spy record` per Python process of a local stack (the gateway, every Ray actor, banksim),
sampling without pausing the process, from the start of the load to its end, and keeping only the
samples of the thread holding the GIL: Python at work, not a thread waiting in epoll or in Ray's
C++ core with the GIL released. (On a saturated machine a thread is also preempted while holding
the GIL, so samples measure GIL-held wall time, and shares are approximate.) Each writes its
stacks in the collapsed format (`frame;frame;… count`, what speedscope and flamegraph.pl read) to
`<results>/profiles/`; the summary folds a part's processes together (both PaymentShards are one
"PaymentShard") and says, by the innermost frame of each sample, which package the CPU went to and
which functions led. py-spy costs CPU itself, so a profiled run measures where the time goes, not
how fast the stack is: take throughput figures from runs without `--profile`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLES_PER_S = 100
TOP_FUNCTIONS = 5
_NOT_PYTHON = ("postgres", "kafka broker", "ray (system)", "?")
_RAY_HELPERS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), else one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profiled(components: dict[int, str]) -> dict[int, str]:
    """The processes worth sampling: Python ones doing the stack's work."""
    return {pid: name for pid, name in components.items()
            if not name.startswith(_NOT_PYTHON) and name not in _RAY_HELPERS}


@dataclass
class Part:
    """One part of the stack, summed over its processes."""

    samples: int = 0
    packages: Counter[str] = field(default_factory=Counter)
    functions: Counter[str] = field(default_factory=Counter)

    def add(self, stacks: Path) -> None:
        for line in stacks.read_text(errors="replace").splitlines():
            frames, _, count = line.rpartition(" ")
            if not frames or not count.isdigit():
                continue
            leaf = frames.rsplit(";", 1)[-1]
            self.samples += int(count)
            self.packages[package_of(leaf)] += int(count)
            self.functions[leaf] += int(count)

    def summary(self) -> dict[str, Any]:
        def shares(counter: Counter[str], n: int | None = None) -> list[dict[str, Any]]:
            return [{"name": name, "share": round(count / self.samples, 3)} for name, count in counter.most_common(n)]

        return {"samples": self.samples, "packages": shares(self.packages),
                "top_functions": shares(self.functions, TOP_FUNCTIONS)}


def package_of(frame: str) -> str:
    """`Connection._execute (asyncpg/connection.py:1904)` → `asyncpg`; our own packages as `paygate`."""
    _, _, where = frame.rpartition(" (")
    path = where.split(":", 1)[0]
    if "/" not in path:
        return "stdlib" if path.endswith(".py") else "native"
    top = path.split("/", 1)[0]
    if top in ("actors", "gateway", "cluster", "banksim"):
        return "paygate"
    return "stdlib" if top in ("asyncio", "json", "concurrent", "email", "http", "urllib", "logging") else top


class Profiler:
    """py-spy on each given process from `start()` to `stop()`; a process it cannot attach to
    (gone, or ptrace not allowed) is named in the summary's `errors`, the run goes on."""

    def __init__(self, processes: dict[int, str], out_dir: Path, rate: int = SAMPLES_PER_S) -> None:
        self.processes, self.out_dir, self.rate = processes, out_dir, rate
        self.running: dict[int, tuple[str, Path, subprocess.Popen[bytes]]] = {}
        self.errors: dict[str, str] = {}

    def start(self) -> Profiler:
        binary = py_spy()
        if binary is None:
            self.errors["py-spy"] = "not installed (pip install py-spy)"
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for pid, name in sorted(self.processes.items()):
            path = self.out_dir / f"{name.replace('ray::', '')}-{pid}.txt"
            argv = [binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                    "--gil", "--nonblocking", "--output", str(path)]
            self.running[pid] = (name, path, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                              stderr=subprocess.PIPE))
        return self

    def stop(self, timeout_s: float = 20.0) -> dict[str, Any]:
        for _, _, proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        parts: dict[str, Part] = {}
        for pid, (name, path, proc) in self.running.items():
            try:
                _, stderr = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            if not path.exists():
                self.errors[f"{name} ({pid})"] = _last_line(stderr) or f"py-spy exited with {proc.returncode}"
                continue
            parts.setdefault(name, Part()).add(path)
        return {"samples_per_s": self.rate, "dir": str(self.out_dir), "errors": self.errors,
                "parts": {name: part.summary() for name, part in
                          sorted(parts.items(), key=lambda kv: -kv[1].samples)}}


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
