"""Resource use while the load runs, sampled once a second in a thread: the whole stack's memory
(sum of RSS over its process tree: PostgreSQL, broker, banksim, Ray, gateway) and CPU time, the
machine's CPU use, and the client's own CPU (load generator and webhook receiver), so a result
can be read honestly on a machine the client shares with the system under test.

The sum of RSS counts shared pages (PostgreSQL's shared buffers) once per process that touched
them, so it over-states; the PSS sum (proportional share) is sampled alongside every 15 s and
when the load ends. Reading PSS walks every page table of every process (PostgreSQL's backends each
map its shared buffers): under load at rate 1,000 a sample took about 0.1 s of kernel time, so one
every 5 s cost the machine about 1% of its CPU, taken from the stack it measures.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import psutil

PSS_EVERY_S = 15


@dataclass
class Usage:
    peak_rss_bytes: int = 0
    peak_pss_bytes: int = 0
    processes: int = 0
    stack_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # the bench's own process(es), measured around the load window
    window_s: float = 0.0  # monitor start to the end of the load
    idle_cores: float | None = None  # CPU the stack used with no load, in cores
    machine_busy_cpu_s: float = 0.0  # all cores, everything running on the machine, over the load window
    machine_cpu_pct: list[float] = field(default_factory=list)
    cpu_by_component: dict[str, float] = field(default_factory=dict)  # over the load window: where the time goes
    rss_timeline: list[int] = field(default_factory=list)


def listener_pid(port: int) -> int | None:
    """The pid listening on a local TCP port (to find a running stack's process tree)."""
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except psutil.AccessDenied:
        return None
    return None


def stack_root(gateway_pid: int) -> int:
    """The process that started the gateway (`paygate up`, or a test session) owns the whole stack."""
    parent = psutil.Process(gateway_pid).ppid()
    return parent if parent > 1 else gateway_pid


class StackMonitor:
    """Samples the tree under `root_pid`, minus `exclude` (the bench's own helper processes) and
    the bench process itself when the stack was started in-process."""

    def __init__(self, root_pid: int | None, exclude: set[int], interval_s: float = 1.0) -> None:
        self.root_pid, self.exclude, self.interval_s = root_pid, exclude, interval_s
        self.usage = Usage()
        self._cpu: dict[int, float] = {}
        self._cpu_start: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._marked = False
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def start(self) -> StackMonitor:
        psutil.cpu_percent(None)
        self._machine0, self._t0 = machine_busy_cpu_s(), time.monotonic()
        if self.root_pid is not None:
            self._sample(pss=True)
            self._cpu_start = dict(self._cpu)
            self._thread.start()
        return self

    def components(self) -> dict[int, str]:
        """The stack's processes now, by pid, named by `component`."""
        return {process.pid: component(process) for process in self._processes()}

    def idle_probe(self, seconds: float) -> float | None:
        """The stack's CPU use (cores) with no load at all: its polling loops and timers."""
        if self.root_pid is None or seconds <= 0:
            return None
        self._sample(pss=False)
        before, started = sum(self._cpu.values()), time.monotonic()
        time.sleep(seconds)
        self._sample(pss=False)
        self.usage.idle_cores = round((sum(self._cpu.values()) - before) / (time.monotonic() - started), 3)
        return self.usage.idle_cores

    def mark_load_end(self) -> None:
        """The stack's CPU is counted over the load window; memory keeps being sampled (the drain)."""
        if self._thread.is_alive():
            self._sample(pss=True)  # memory is near its peak when the load ends
        self.usage.stack_cpu_s = round(sum(self._cpu.values()) - sum(self._cpu_start.values()), 2)
        self.usage.machine_busy_cpu_s = round(machine_busy_cpu_s() - self._machine0, 2)
        self.usage.window_s = time.monotonic() - self._t0
        by_component: dict[str, float] = {}
        for pid, total in self._cpu.items():
            name = self._names.get(pid, "?")
            by_component[name] = by_component.get(name, 0.0) + total - self._cpu_start.get(pid, 0.0)
        self.usage.cpu_by_component = {k: round(v, 2) for k, v in sorted(by_component.items(), key=lambda kv: -kv[1])
                                       if v >= 0.01}
        self._marked = True

    def stop(self) -> Usage:
        if not self._marked:
            self.mark_load_end()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        return self.usage

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval_s):
            tick += 1
            self._sample(pss=tick % max(1, round(PSS_EVERY_S / self.interval_s)) == 0)
            self.usage.machine_cpu_pct.append(psutil.cpu_percent(None))

    def _processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        skip = set(self.exclude)
        for pid in list(self.exclude):
            with contextlib.suppress(psutil.NoSuchProcess):
                skip.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        skip.add(os.getpid())  # the bench itself (the stack's parent when it runs in-process), not its children
        return [p for p in tree if p.pid not in skip]

    def _sample(self, pss: bool) -> None:
        rss = pss_total = 0
        processes = self._processes()
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    self._cpu[process.pid] = times.user + times.system  # a dead process keeps its last value
                    if self._names.get(process.pid, "ray::IDLE") == "ray::IDLE":  # idle workers become actors
                        self._names[process.pid] = component(process)
                if pss:
                    pss_total += getattr(process.memory_full_info(), "pss", 0)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        usage = self.usage
        usage.rss_timeline.append(rss)
        usage.peak_rss_bytes = max(usage.peak_rss_bytes, rss)
        usage.peak_pss_bytes = max(usage.peak_pss_bytes, pss_total)
        usage.processes = max(usage.processes, len(processes))


def component(process: psutil.Process) -> str:
    """What part of the stack a process is: its Ray actor class, which PostgreSQL, which module."""
    try:
        cmd, name = process.cmdline(), process.name()
        if cmd and cmd[0].startswith("ray::"):
            return cmd[0].split(".")[0].split(" ")[0]
        if name.startswith("postgres"):
            postmaster = process if "-D" in cmd else process.parent()
            pcmd = postmaster.cmdline() if postmaster else []
            data_dir = pcmd[pcmd.index("-D") + 1] if "-D" in pcmd else "?"
            return f"postgres ({data_dir.rstrip('/').rsplit('/', 1)[-1]})"
        if "-m" in cmd:
            module = cmd[cmd.index("-m") + 1]
            return {"cluster.cli": "paygate up (Ray driver)"}.get(module, module)
        if "tansu" in name:
            return "kafka broker (tansu)"
        joined = " ".join(cmd[:3])
        return "ray (system)" if "/ray/" in joined or name in ("raylet", "gcs_server") else name
    except (psutil.Error, ValueError, IndexError):
        return "?"


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all but idle, iowait and guest time)."""
    times = psutil.cpu_times()
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    return float(sum(times)) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)
