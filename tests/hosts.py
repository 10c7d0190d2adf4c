"""Hosts of a fleet on one machine: a group of workers (`worker start --count N
--foreground`) in a UTS namespace of its own (`unshare --uts`), so that its workers name
themselves after their host as on separate machines. Needs root (unshare).
Used by test_postgres_hosts.py and test_pgbouncer.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from conftest import QUEUECTL, process_alive
from waiting import wait_for


def can_make_hosts() -> bool:
    """Host names of their own need root and unshare."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def children(pid: int) -> list[int]:
    """Direct children of pid (the supervisor's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class Host:
    """One group of `count` workers in a UTS namespace named `name`."""

    def __init__(self, name: str, env: dict[str, str], log: Path, count: int = 2) -> None:
        self.name = name
        self.env = env
        self.log = log
        self.count = count
        self.supervisor: subprocess.Popen | None = None

    def _argv(self, *args: str) -> list[str]:
        # sh sets the host name of the new UTS namespace, then becomes queuectl.
        return ["unshare", "--uts", "sh", "-c", f'hostname {self.name} && exec "$0" "$@"',
                QUEUECTL, *args]

    def start(self, *options: str) -> None:
        """`worker start --count N --foreground`, with more `worker start` options."""
        with open(self.log, "ab") as out:
            self.supervisor = subprocess.Popen(
                self._argv("--log-format", "json", "worker", "start", "--count",
                           str(self.count), "--foreground", "--grace", "5", *options),
                env=self.env, stdout=out, stderr=out)

    def workers(self) -> list[int]:
        assert self.supervisor is not None
        return children(self.supervisor.pid)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """A queuectl command run on this host."""
        return subprocess.run(self._argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=120)

    def kill(self) -> list[int]:
        """SIGKILL the supervisor first (so nothing is restarted), then its workers."""
        assert self.supervisor is not None
        workers = self.workers()
        self.supervisor.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.supervisor.wait(timeout=30)
        wait_for(lambda: not any(process_alive(p) for p in workers), 30,
                 f"{self.name}'s workers to die")
        return workers

    def stop(self) -> None:
        """Graceful stop (the supervisor forwards SIGTERM); SIGKILL as the last resort."""
        proc = self.supervisor
        if proc is None or proc.poll() is not None:
            return
        workers = self.workers()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
