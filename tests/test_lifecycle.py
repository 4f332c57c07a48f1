"""`paygate up` as a user runs it: a restart keeps the data, Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from cluster.procs import free_port


def _start_up(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str, list[psutil.Process]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYGATE_") and k != "RAY_ADDRESS"}
    env["PAYGATE_ACQUIRER_TIMEOUT"] = "2"
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "up", "--data-dir", str(data_dir),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    assert proc.stdout is not None
    output, deadline, key = [], time.monotonic() + 240, ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if match := re.search(r"test key\s+(sk_test_\w+)", line):
            key = match.group(1)
        if "Press Ctrl-C" in line:
            # The console carries the progress lines; INFO log records go to the log file only.
            assert not [text for text in output if '"level":"info"' in text], "".join(output)
            assert '"level":"info"' in (data_dir / "logs" / "paygate-up.log").read_text()
            descendants = psutil.Process(proc.pid).children(recursive=True)
            return proc, key, descendants
    proc.kill()
    raise AssertionError("paygate up did not come up:\n" + "".join(output[-40:]))


def _stop(proc: subprocess.Popen[str], descendants: list[psutil.Process], sig: int = signal.SIGINT) -> None:
    proc.send_signal(sig)
    assert proc.wait(120) == 0
    time.sleep(1)
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphans after Ctrl-C: {[(p.pid, p.name()) for p in alive]}"


def test_restart_keeps_merchants_and_leaves_no_orphans(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    proc, key, descendants = _start_up(data_dir, port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        admin_key = (data_dir / "secrets" / "admin_key").read_text().strip()
        created = httpx.post(f"{base}/v1/admin/merchants", data={"name": "kept"},
                             headers={"Authorization": f"Bearer {admin_key}"})
        assert created.status_code == 200
        merchant_key = created.json()["secret_key"]
        names = {p.name() for p in descendants}
        assert {"postgres", "python"} <= {n.split()[0] for n in names} or "postgres" in names
    finally:
        _stop(proc, descendants)

    proc, key_again, descendants = _start_up(data_dir, port)
    try:
        assert key_again == key
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/payment_intents", auth=(merchant_key, ""))
        assert listed.status_code == 200, listed.text
    finally:
        _stop(proc, descendants, signal.SIGTERM)  # as a service manager stops it
