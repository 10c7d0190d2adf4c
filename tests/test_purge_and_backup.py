"""`purge`, `dlq retry --all`, the retention settings and `backup` through the console
script: real workers, real database files and servers."""

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import Queue
from waiting import wait_for


# -- purge, dlq retry --all ---------------------------------------------------------------------
@pytest.mark.slow
def test_purge_counts_and_never_touches_waiting_jobs(any_queue: Queue) -> None:
    q = any_queue
    q.run("enqueue", "--file", "-", input="".join(
        json.dumps({"command": "true" if i % 3 else "false", "max_retries": 0}) + "\n"
        for i in range(30)))
    q.worker("--drain").wait(timeout=60)
    q.enqueue({"id": "waiting", "command": "true", "delay": 3600})
    assert q.run("purge", "--state", "completed", "--older-than", "1h").stdout.strip() == \
        "Deleted 0 completed jobs."
    assert q.run("purge", "--state", "dead", "--dry-run").stdout.strip() == \
        "Would delete 10 dead jobs."
    assert q.run("purge", "--state", "completed").stdout.strip() == "Deleted 20 completed jobs."
    assert q.status()["dead"] == 10 and q.status()["pending"] == 1
    assert q.run("dlq", "retry", "--all", "--dry-run").stdout.strip() == "Would retry 10 dead jobs."
    assert q.run("dlq", "retry", "--all").stdout.strip() == "Retried 10 dead jobs."
    assert q.status()["pending"] == 11
    for bad in (["purge", "--state", "pending"], ["purge", "--state", "failed"],
                ["purge", "--state", "completed", "--older-than", "3 weeks"],
                ["dlq", "retry"], ["dlq", "retry", "x", "--all"]):
        r = q.run(*bad, check=False)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, bad
    assert q.status()["pending"] == 11


def test_retention_settings_accept_durations_and_both_spellings(any_queue: Queue) -> None:
    q = any_queue
    assert q.run("config", "get", "keep-completed").stdout.strip() == str(7 * 86400)
    assert q.run("config", "get", "keep_dead").stdout.strip() == str(30 * 86400)
    assert q.run("config", "set", "keep_canceled", "12h").stdout.strip() == "keep-canceled = 43200"
    assert q.run("config", "set", "keep-completed", "0").stdout.strip() == "keep-completed = 0"
    r = q.run("config", "set", "keep-dead", "-5m", check=False)
    assert r.returncode == 2 and "keep-dead" in r.stderr


# -- backup -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_backup_taken_during_a_drain_is_consistent(queue: Queue, tmp_path: Path) -> None:
    q = queue
    q.run("enqueue", "--file", "-",
          input="".join(json.dumps({"command": "echo hi"}) + "\n" for _ in range(3000)))
    q.worker()
    q.worker()
    wait_for(lambda: q.status()["completed"] > 100, 60, "the drain to be under way")
    target = tmp_path / "copy.db"
    out = q.run("backup", str(target)).stdout
    assert str(target) in out
    assert q.status()["pending"] > 0, "the drain ended before the backup: not a live test"
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        total = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    assert total == 3000
    copy = Queue(target)
    assert sum(v for k, v in copy.status().items() if k not in ("active_workers", "paused")) \
        == 3000
    r = q.run("backup", str(target), check=False)
    assert r.returncode == 1 and "exists" in r.stderr


def test_backup_of_a_postgresql_queue_says_to_use_pg_dump(pg_locator: str,
                                                          tmp_path: Path) -> None:
    r = Queue(pg_locator).run("backup", str(tmp_path / "x.db"), check=False)
    assert r.returncode == 2 and "pg_dump" in r.stderr
    assert not (tmp_path / "x.db").exists()
