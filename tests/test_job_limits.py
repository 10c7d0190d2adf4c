"""Job limits without systemd: they are validated, stored with the job (their queue-wide
defaults applied at enqueue), and refused clearly by a worker that cannot enforce them;
older databases migrate forward keeping everything. Under systemd see test_systemd_cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Queue
from test_sqlite_migration import old_schema

from queuectl.backends import sqlite_schema


@pytest.mark.parametrize("key, value", [
    ("memory_max", "lots"), ("memory_max", 512), ("memory_max", -1), ("memory-max", "5X"),
    ("cpu_max", "1.5"), ("cpu_max", -2), ("cpu_max", 0.001), ("tasks_max", 1.5),
    ("tasks_max", True), ("tasks_max", 10**9),
])
def test_bad_limits_are_one_line_exit_2_and_change_nothing(any_queue: Queue, key: str,
                                                          value: object) -> None:
    result = any_queue.run("enqueue", f'{{"command": "true", "{key}": {_json(value)}}}',
                           check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and key.replace("-", "_") in result.stderr
    assert any_queue.status()["pending"] == 0


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def test_limits_are_stored_with_the_job_and_defaults_apply_at_enqueue(any_queue: Queue) -> None:
    q = any_queue
    q.enqueue({"id": "own", "command": "true", "memory-max": "512M", "cpu_max": 1.5,
               "tasks_max": 20})
    own = q.job("own")
    assert (own["memory_max"], own["cpu_max"], own["tasks_max"]) == (512 << 20, 1.5, 20)
    q.run("config", "set", "memory_max", "1G")
    q.run("config", "set", "cpu-max", "0.5")
    q.run("config", "set", "tasks-max", "64")
    assert q.run("config", "set", "memory-max", "huge", check=False).returncode == 2
    q.enqueue({"id": "dflt", "command": "true"})
    q.enqueue({"id": "none", "command": "true", "memory_max": 0, "cpu_max": 0, "tasks_max": 0})
    dflt = q.job("dflt")
    assert (dflt["memory_max"], dflt["cpu_max"], dflt["tasks_max"]) == (1 << 30, 0.5, 64)
    assert not {"memory_max", "cpu_max", "tasks_max"} & set(q.job("none"))


def test_a_foreground_worker_fails_a_limited_attempt_with_one_clear_error(
        any_queue: Queue) -> None:
    q = any_queue
    q.enqueue({"id": "limited", "command": "echo ran", "memory_max": "512M",
               "max_retries": 0})
    q.enqueue({"id": "plain", "command": "echo ran"})
    q.worker("--drain").wait(timeout=60)
    limited = q.job("limited")
    assert limited["state"] == "dead"
    assert limited["last_error"] == (
        "cannot enforce memory_max 512M: this worker has no delegated cgroup to enforce it in"
        " (run it under systemd: queuectl-worker@.service)")
    assert limited["history"][0]["output"] == ""  # never ran unlimited
    plain = q.job("plain")["history"][0]
    assert plain["output"] == "ran\n"
    # no cgroup, nothing measured (process groups as before)
    assert plain["cpu_user_usec"] is None and plain["memory_peak_bytes"] is None


def test_the_previous_sqlite_schema_migrates_keeping_everything(tmp_path: Path) -> None:
    db = tmp_path / "prev.db"
    with old_schema(db, 5) as conn:  # 5: the schema before job limits (6)
        conn.execute("INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                     " created_at, updated_at, finished_at, exit_code) VALUES"
                     " ('done', 'echo hi', 'completed', 1, 3, 1, 1, 2, 2, 0),"
                     " ('wait', 'true', 'pending', 0, 3, 1, 1, 1, NULL, NULL)")
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output, output_total) VALUES"
                     " ('done', 1, 'w', 1, 2, 'completed', 0, X'68690a', 3)")
    q = Queue(db)
    assert q.json("info")["schema_version"] == sqlite_schema.SCHEMA_VERSION
    done = q.job("done")
    assert done["history"][0]["output"] == "hi\n"
    assert done["history"][0]["cpu_user_usec"] is None and "memory_max" not in done
    assert q.status()["pending"] == 1
