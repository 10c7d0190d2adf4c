"""Automatic retention through real workers: the database stops growing and history goes with
its jobs; a million-job `list` streams in flat memory."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

pytestmark = pytest.mark.slow  # thousands to a million jobs


def _rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def _batch(n: int) -> str:
    return "".join(json.dumps({"command": "true"}) + "\n" for _ in range(n))


def _waiting(db: Path) -> int:
    """Jobs not yet finished, read straight from the file: polling the console script this
    often would take the CPU the workers need."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE state IN ('pending', 'processing')"
                            ).fetchone()[0]


def test_retention_keeps_the_file_bounded_over_50000_jobs(queue: Queue) -> None:
    """keep-completed 1s: the first 5,000 jobs arrive at once, then 45,000 more a thousand at a
    time as the queue drains (two workers). The file ends no bigger than after the first
    5,000 (within a quarter; without retention it would be ten times), the table stays small
    and no attempt row outlives its job. 40-90 s on 2 cores."""
    q = queue
    q.run("config", "set", "keep-completed", "1s")
    q.run("enqueue", "--file", "-", input=_batch(5000))
    q.worker()
    q.worker()
    db = Path(q.db)
    wait_for(lambda: _waiting(db) == 0, 120, "the first 5,000 to finish")
    size_after_5000 = db.stat().st_size
    most = 0
    for chunk in range(45):
        q.run("enqueue", "--file", "-", input=_batch(1000))
        # the next thousand comes as this one drains: the queue never runs dry or floods
        wait_for(lambda: _waiting(db) < 200, 120, f"chunk {chunk} to drain", every=0.02)
        most = max(most, _rows(db))
    wait_for(lambda: _waiting(db) == 0, 120, "the last jobs to finish")
    final = db.stat().st_size
    with sqlite3.connect(db) as conn:
        jobs, attempts, orphans = conn.execute(
            "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM attempts),"
            " (SELECT count(*) FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs))"
        ).fetchone()
    assert orphans == 0 and attempts == jobs  # history goes with its jobs
    assert most < 5000, f"{most} jobs in the table at once: retention did not keep up"
    # Bounded: without retention 50,000 jobs need about ten times the space, and leaking even
    # one job in twenty would add half again. Freed pages are reused, but the mark after the
    # first 5,000 depends on how many had already expired when it was read, and the indexes
    # split a little differently each run: CI runs have ended 1.5% and 5.2% above it.
    assert final <= size_after_5000 * 1.25, (final, size_after_5000)
    # and once the queue is quiet, everything past its keep time goes
    wait_for(lambda: q.status()["completed"] == 0, 30, "the last completed jobs to expire")


def test_retention_is_off_with_0_and_applies_per_state(queue: Queue) -> None:
    q = queue
    q.run("config", "set", "keep-completed", "0")
    q.run("config", "set", "keep-dead", "1s")
    q.enqueue({"id": "ok", "command": "true"})
    q.enqueue({"id": "bad", "command": "false", "max_retries": 0})
    q.worker()
    wait_for(lambda: q.run("show", "bad", check=False).returncode == 1, 30,
             "the dead job to expire")
    assert q.job("ok")["state"] == "completed"


def _fill(db: Path, n: int) -> None:
    """n completed jobs written straight into a database queuectl created."""
    Queue(db).status()  # create and migrate
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO jobs (id, command, state, attempts, max_retries, run_at, created_at,"
            " updated_at, finished_at, exit_code) VALUES (?, 'echo hello world', 'completed',"
            " 1, 3, ?, ?, ?, ?, 0)",
            ((f"job{i:07d}", 1.7e9 + i, 1.7e9 + i, 1.7e9 + i, 1.7e9 + i) for i in range(n)))


# A fresh process whose only child is the `list`: its children's peak RSS is the list's own.
_MEASURE = """
import resource, subprocess, sys
with open(sys.argv[2], "wb") as out:
    code = subprocess.run([sys.argv[1], "list", "--jsonl"], stdout=out).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_list_of_a_million_jobs_streams_in_flat_memory(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    _fill(db, 1_000_000)
    out = tmp_path / "list.jsonl"
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _MEASURE, QUEUECTL, str(out)],
                            env={**os.environ, "QUEUECTL_DB": str(db)}, capture_output=True,
                            text=True, timeout=900)
    code, peak_kb = map(int, result.stdout.split())
    assert code == 0, result.stderr
    with open(out, "rb") as fh:
        assert sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) \
            == 1_000_000
    print(f"list of 1M jobs: {time.monotonic() - t0:.1f} s, peak RSS {peak_kb / 1024:.1f} MB")
    assert peak_kb <= 60 * 1024, f"peak RSS {peak_kb / 1024:.1f} MB"
