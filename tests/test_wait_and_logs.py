"""`wait` and `logs` (`--follow`, live output) through the console script: real workers,
real /bin/sh, every backend where the command applies."""

import json
import sqlite3
import subprocess
import time

import pytest
from conftest import QUEUECTL, Queue
from waiting import holds_for, wait_for

pytestmark = pytest.mark.slow  # jobs that run for seconds while followed


# -- wait ---------------------------------------------------------------------------------------
def test_wait_exit_codes(any_queue: Queue) -> None:
    q = any_queue
    q.enqueue({"id": "ok", "command": "true"})
    q.enqueue({"id": "seven", "command": "exit 7", "max_retries": 0})
    q.enqueue({"id": "zero-dead", "command": "kill -9 $$", "max_retries": 0})
    q.enqueue({"id": "later", "command": "true", "delay": 3600})
    waiter = subprocess.Popen([QUEUECTL, "wait", "ok"], env=q.env, stdout=subprocess.PIPE,
                              text=True)
    holds_for(lambda: waiter.poll() is None, 0.3, "wait blocking while the job has not run")
    q.worker()
    assert waiter.wait(timeout=30) == 0
    assert json.loads(waiter.stdout.read())["state"] == "completed"
    waiter.stdout.close()
    r = q.run("wait", "seven", check=False)
    assert r.returncode == 7 and json.loads(r.stdout)["state"] == "dead"
    assert q.run("wait", "zero-dead", check=False).returncode == 1  # killed: no exit code
    assert q.run("wait", "ok", "ok").returncode == 0
    r = q.run("wait", "ok", "seven", check=False)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 2
    t0 = time.monotonic()
    r = q.run("wait", "later", "--timeout", "1", check=False)
    assert r.returncode == 124 and "timed out" in r.stderr
    assert 0.9 <= time.monotonic() - t0 < 10
    t0 = time.monotonic()
    r = q.run("wait", "ok", "ghost", "--timeout", "30", check=False)
    assert r.returncode == 1 and "ghost" in r.stderr and time.monotonic() - t0 < 10
    q.run("cancel", "later")
    assert q.run("wait", "later", check=False).returncode == 1


# -- logs ---------------------------------------------------------------------------------------
def test_logs_follow_streams_every_line_once_in_order_before_the_job_ends(
        any_queue: Queue) -> None:
    q = any_queue
    q.enqueue({"id": "talk", "command": 'for i in $(seq 1 30); do echo "line $i"; sleep 0.1; done'})
    follower = subprocess.Popen([QUEUECTL, "logs", "talk", "--follow"], env=q.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    q.worker()
    lines, states = [], {}
    assert follower.stdout is not None
    for raw in follower.stdout:
        lines.append(raw.decode())
        if len(lines) in (5, 15):
            states[len(lines)] = q.job("talk")["state"]
    assert follower.wait(timeout=30) == 0, follower.stderr.read()
    assert lines == [f"line {i}\n" for i in range(1, 31)]
    assert states == {5: "processing", 15: "processing"}  # live, not after the fact
    assert q.job("talk")["state"] == "completed"
    assert q.run("logs", "talk").stdout == "".join(lines)
    assert q.run("logs", "talk", "--attempt", "1").stdout == "".join(lines)
    r = q.run("logs", "talk", "--attempt", "2", check=False)
    assert r.returncode == 1 and "no attempt 2" in r.stderr


def test_a_chatty_job_keeps_bounded_live_output(queue: Queue) -> None:
    q = queue
    q.enqueue({"id": "chatty", "command": "head -c 20000000 /dev/zero | tr '\\0' x; sleep 2"})
    q.worker()

    def stored() -> int:
        with sqlite3.connect(q.db) as conn:
            return conn.execute("SELECT coalesce(sum(length(data)), 0) FROM live_output").fetchone()[0]

    wait_for(lambda: stored() > 0, 30, "the job's live output to be stored")
    # Bounded throughout; once the job ends (it may, within the window) none is left.
    holds_for(lambda: stored() <= 4 * 65_536, 1.5, "the live output bounded while the job runs")
    q.wait_state("chatty", "completed")
    with sqlite3.connect(q.db) as conn:
        assert conn.execute("SELECT count(*) FROM live_output").fetchone()[0] == 0
