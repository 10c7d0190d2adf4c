"""Bursts of `enqueue` (cron at the top of the minute on a busy host) never fail on SQLite.

300 `queuectl enqueue` processes started at once from a shell loop, while 2 idle workers wake
and drain, three times, the last two while a CPU hog keeps both cores busy: every enqueue
succeeds and every job runs exactly once. (PostgreSQL's burst is in test_postgres_faults.py.)
"""

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue

pytestmark = pytest.mark.slow  # hundreds of processes at once

BURST = 300


def _burst(queue: Queue, tag: str, out: Path, errors: Path) -> None:
    script = (
        f'for i in $(seq 1 {BURST}); do '
        f'( "$Q" enqueue --cmd "echo {tag}-$i >> {out}" >/dev/null 2>>{errors} '
        f'|| echo "exit $? for {tag}-$i" >> {errors} ) & done; wait')
    subprocess.run(["/bin/sh", "-c", script], env={**queue.env, "Q": QUEUECTL}, check=True,
                   timeout=600)


def _cpu_hogs() -> list[subprocess.Popen]:
    return [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"], start_new_session=True)
            for _ in range(os.cpu_count() or 2)]


def test_300_concurrent_enqueues_never_fail_even_on_a_busy_host(queue: Queue,
                                                                tmp_path: Path) -> None:
    out, errors = tmp_path / "ran.txt", tmp_path / "errors.txt"
    queue.run("status")  # the database exists before the burst, as on a real host
    queue.start("worker", "start", "--count", "2", "--foreground")
    queue.wait_counts(active_workers=2)
    _burst(queue, "quiet", out, errors)
    hogs = _cpu_hogs()
    try:
        _burst(queue, "busy1", out, errors)
        _burst(queue, "busy2", out, errors)
    finally:
        for hog in hogs:
            os.killpg(hog.pid, signal.SIGKILL)
            hog.wait()
    assert not errors.exists() or errors.read_text() == ""
    total = 3 * BURST
    queue.wait_counts(timeout=120, completed=total, pending=0, processing=0)
    runs = Counter(out.read_text().split())
    assert len(runs) == total and set(runs.values()) == {1}
