"""Start servers for the benchmarks as child processes on loopback, port 0.

Each server prints "listening on HOST:PORT" on its first line; the helpers
wait for that line and stop the process with SIGTERM (SIGKILL after 15 s).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ServerProcess",
    "cpu_seconds",
    "rss_mb",
    "start_cmx_serve",
    "start_process",
]

_LISTENING = re.compile(r"listening on (\S+)")
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServerProcess:
    process: subprocess.Popen[bytes]
    target: str
    log_path: Path


@contextmanager
def start_process(command: Sequence[str], log_path: Path) -> Iterator[ServerProcess]:
    """Run `command`, wait for its "listening on" line, stop it on exit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        target = _wait_for(process, log_path, _LISTENING)
        yield ServerProcess(process, target, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def start_cmx_serve(log_path: Path, *args: str) -> Iterator[ServerProcess]:
    """Run `cmx serve --host 127.0.0.1 --port 0 ARGS...` as a child process."""
    command = [sys.executable, "-m", "cmx", "serve", "--host", "127.0.0.1"]
    with start_process([*command, "--port", "0", *args], log_path) as server:
        yield server


def _wait_for(
    process: subprocess.Popen[bytes], log_path: Path, pattern: re.Pattern[str]
) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = pattern.search(log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"server did not start; see {log_path}")


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MiB, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far, from /proc (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), utime and stime, in clock ticks.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
