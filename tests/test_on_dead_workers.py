"""The on-dead hook end to end: real workers, real /bin/sh, on each backend.

Every hook here writes one record file per run (its QUEUECTL_* environment, then its stdin)
into a directory, renamed into place whole, so a test counts runs by counting files. "Exactly
once" is checked after the queue says no notice is left: nothing could run it again then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Queue, process_alive
from waiting import wait_for

from queuectl.hook import run_hook
from queuectl.store import Notice

CRASHING_WORKER = Path(__file__).with_name("crashing_worker.py")
DEADLINE = 60.0


def _recording_hook(records: Path) -> str:
    records.mkdir(exist_ok=True)
    tmp = f'"{records}/.$QUEUECTL_JOB_ID.$$"'
    return (f'{{ env | grep "^QUEUECTL_" | sort; echo "--stdin--"; cat; }} > {tmp}'
            f' && mv {tmp} "{records}/$QUEUECTL_JOB_ID.$$"')


def _records(records: Path, job_id: str) -> list[tuple[dict[str, str], bytes]]:
    """Each run of the hook for this job: its QUEUECTL_* variables and its stdin."""
    found = []
    for path in sorted(records.glob(f"{job_id}.*")):
        head, _, stdin = path.read_bytes().partition(b"--stdin--\n")
        env = dict(line.split("=", 1) for line in head.decode().splitlines())
        found.append((env, stdin))
    return found


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == event]


def _no_notice_left(q: Queue) -> bool:
    return q.status()["notices"] == 0


@pytest.mark.slow  # real workers, or a dozen CLI calls: a second or more
def test_a_dying_job_runs_the_hook_once_with_its_environment_and_output(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    records = tmp_path / "records"
    q.run("config", "set", "on-dead", _recording_hook(records))
    q.run("config", "set", "backoff-max", "0")  # its retry is due at once
    command = "yes line | head -c 70000; echo; echo err-1 >&2; exit 7"
    q.enqueue({"id": "d1", "command": command, "max_retries": 1})
    log = tmp_path / "worker.log"
    q.worker(log=log)
    q.wait_state("d1", "dead", DEADLINE)
    wait_for(lambda: _no_notice_left(q), DEADLINE, "the notice to be delivered")
    [(env, stdin)] = _records(records, "d1")
    assert env["QUEUECTL_JOB_ID"] == "d1"
    assert env["QUEUECTL_QUEUE"] == "default"
    assert env["QUEUECTL_COMMAND"] == command
    assert env["QUEUECTL_EXIT_CODE"] == "7"
    assert env["QUEUECTL_ATTEMPTS"] == "2"
    assert env["QUEUECTL_LAST_ERROR"] == "exit status 7"
    assert len(stdin) == 65_536 and stdin.endswith(b"line\n\nerr-1\n")  # the last 64 KiB
    [delivered] = wait_for(lambda: _events(log, "hook_delivered"), DEADLINE, "hook_delivered")
    assert (delivered["job_id"], delivered["tries"]) == ("d1", 1)
    assert q.job("d1")["state"] == "dead"  # the hook never changes the job


@pytest.mark.slow  # real workers, or a dozen CLI calls: a second or more
def test_canceled_jobs_and_retried_attempts_run_no_hook(any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    records = tmp_path / "records"
    q.run("config", "set", "on-dead", _recording_hook(records))
    q.run("config", "set", "backoff-max", "0")
    flag = tmp_path / "failed-once"
    q.enqueue({"id": "flaky", "command": f"test -e {flag} || {{ touch {flag}; exit 1; }}",
               "max_retries": 2})
    q.enqueue({"id": "later", "command": "true", "delay": 3600})
    q.run("cancel", "later")
    q.worker()
    q.wait_state("flaky", "completed", DEADLINE)
    q.enqueue({"id": "long", "command": "sleep 60"})
    q.wait_state("long", "processing", DEADLINE)
    q.run("cancel", "long")
    q.wait_state("long", "canceled", DEADLINE)
    assert q.status()["notices"] == 0
    # The hook does run in this very setup: a job that dies afterwards is reported.
    q.enqueue({"id": "sentinel", "command": "exit 1", "max_retries": 0})
    wait_for(lambda: _records(records, "sentinel"), DEADLINE, "the sentinel's hook")
    wait_for(lambda: _no_notice_left(q), DEADLINE, "no notice left")
    assert sorted(p.name.split(".")[0] for p in records.iterdir()) == ["sentinel"]


@pytest.mark.slow  # real workers, or a dozen CLI calls: a second or more
def test_a_failing_hook_is_retried_until_it_exits_0(any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    counter = tmp_path / "count"
    hook = (f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {counter};'
            ' [ "$n" -ge 3 ]')
    q.run("config", "set", "on-dead", hook)
    q.run("config", "set", "on-dead-backoff", "0.05")  # documented knob: 0.05 s, 0.1 s...
    q.enqueue({"id": "d2", "command": "exit 1", "max_retries": 0})
    log = tmp_path / "worker.log"
    q.worker(log=log)
    [delivered] = wait_for(lambda: _events(log, "hook_delivered"), DEADLINE, "hook_delivered")
    assert (delivered["job_id"], delivered["tries"]) == ("d2", 3)
    assert counter.read_text().strip() == "3"
    assert [e["tries"] for e in _events(log, "hook_retry")] == [1, 2]
    assert _events(log, "hook_failed") == []
    assert _no_notice_left(q)


@pytest.mark.slow  # real workers, or a dozen CLI calls: a second or more
def test_a_hook_failing_five_times_is_dropped_with_hook_failed(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    tries = tmp_path / "tries"
    q.run("config", "set", "on-dead", f'echo "$QUEUECTL_JOB_ID" >> {tries}; echo broken; exit 1')
    q.run("config", "set", "on-dead-backoff", "0.05")
    q.enqueue({"id": "d3", "command": "exit 1", "max_retries": 0})
    log = tmp_path / "worker.log"
    q.worker(log=log)
    [failed] = wait_for(lambda: _events(log, "hook_failed"), DEADLINE, "hook_failed")
    assert (failed["job_id"], failed["tries"], failed["level"]) == ("d3", 5, "error")
    assert failed["error"] == "exit status 1" and "broken" in failed["output_tail"]
    assert tries.read_text().split() == ["d3"] * 5
    assert _no_notice_left(q)
    assert q.job("d3")["state"] == "dead"


@pytest.mark.slow  # real workers, or a dozen CLI calls: a second or more
def test_a_worker_killed_right_after_the_job_died_leaves_the_notice_to_the_next(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    records = tmp_path / "records"
    q.run("config", "set", "on-dead", _recording_hook(records))
    q.enqueue({"id": "d4", "command": "echo bye; exit 2", "max_retries": 0})
    crashing = subprocess.Popen([sys.executable, str(CRASHING_WORKER), "dead", "kw"],
                                env=q.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    q.procs.append(crashing)
    assert crashing.wait(timeout=DEADLINE) == -signal.SIGKILL
    assert q.job("d4")["state"] == "dead"
    assert q.status()["notices"] == 1  # committed with the job's death
    assert 'queuectl_notices_pending{queue="default"} 1' in q.run("metrics").stdout.splitlines()
    assert not records.exists() or not list(records.iterdir())
    q.worker("--name", "other")
    wait_for(lambda: _no_notice_left(q), DEADLINE, "the next worker to deliver it")
    [(env, stdin)] = _records(records, "d4")
    assert (env["QUEUECTL_EXIT_CODE"], stdin) == ("2", b"bye\n")
    assert 'queuectl_notices_pending{queue="default"} 0' in q.run("metrics").stdout.splitlines()


def test_a_hook_past_its_timeout_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    notice = Notice(1, "j", "default", "true", None, 1, "lost", 0,
                    f"sleep 60 & echo $! > {pidfile}; wait", b"", "w")
    started = time.monotonic()
    result = run_hook(notice, dict(os.environ), timeout=0.5)
    assert not result.ok and result.error == "timed out after 0.5 s"
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    wait_for(lambda: not process_alive(child), 10, "the hook's background child to be gone")


@pytest.mark.slow  # the 2 s between SIGTERM and SIGKILL
def test_a_hook_that_ignores_sigterm_is_waited_for_without_spinning() -> None:
    """Past its timeout, the hook gets SIGTERM and, as it ignores it, SIGKILL 2 s later
    (process.KILL_GRACE); meanwhile the worker sleeps until then (it used to poll in a
    loop without sleeping: a whole core for those 2 s)."""
    notice = Notice(1, "j", "default", "true", None, 1, "lost", 0,
                    "trap '' TERM; sleep 60", b"", "w")
    started, cpu = time.monotonic(), time.process_time()
    result = run_hook(notice, dict(os.environ), timeout=0.3)
    assert not result.ok and result.error == "timed out after 0.3 s"
    assert time.monotonic() - started >= 2  # it did wait for the SIGKILL
    assert time.process_time() - cpu < 0.5


@pytest.mark.slow  # real workers, or a dozen CLI calls: a second or more
def test_the_cli_sets_shows_and_removes_hooks(queue: Queue) -> None:
    q = queue
    cmd = 'mail -s "$QUEUECTL_JOB_ID died" root'
    assert q.run("config", "set", "on_dead", cmd).stdout.strip() == f"on-dead = {cmd}"
    assert q.run("config", "get", "on-dead").stdout.strip() == cmd
    assert q.json("config", "list")["on-dead"] == cmd
    assert q.json("config", "list")["on-dead-backoff"] == 2.0
    assert q.run("config", "set", "on-dead", "").stdout.strip() == "on-dead = ''"
    assert q.json("config", "list")["on-dead"] == ""
    bad = q.run("config", "set", "on-dead", "echo a\necho b", check=False)
    assert bad.returncode == 2 and "one-line shell command" in bad.stderr
    assert q.run("queue", "set", "mail", "--on-dead", "cat").stdout.strip() == "mail: on-dead = cat"
    [row] = q.json("queue", "list")
    assert (row["queue"], row["on_dead"], row["notices"], row["concurrency"]) == (
        "mail", "cat", 0, 0)
    q.run("queue", "set", "mail", "--concurrency", "2")
    q.run("queue", "set", "mail", "--on-dead", "")
    [row] = q.json("queue", "list")
    assert (row["on_dead"], row["concurrency"]) == (None, 2)
    q.run("queue", "set", "mail", "--concurrency", "0")
    assert q.json("queue", "list") == []  # nothing left to keep its row
    nothing = q.run("queue", "set", "mail", check=False)
    assert nothing.returncode == 2 and "nothing to set" in nothing.stderr
    assert q.status()["notices"] == 0


@pytest.mark.slow  # a real worker
def test_a_draining_worker_runs_the_due_hooks_before_it_exits(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    records = tmp_path / "records"
    q.run("queue", "set", "mail", "--on-dead", _recording_hook(records))
    for n in range(3):
        q.enqueue({"id": f"m{n}", "command": "exit 1", "max_retries": 0, "queue": "mail"})
    q.enqueue({"id": "other", "command": "exit 1", "max_retries": 0})  # no hook for it
    drained = q.worker("--drain")
    assert drained.wait(timeout=DEADLINE) == 0
    assert sorted(p.name.split(".")[0] for p in records.iterdir()) == ["m0", "m1", "m2"]
    assert q.status()["notices"] == 0 and q.status()["dead"] == 4
