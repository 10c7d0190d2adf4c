"""Issue 11 through the console script: cancel, pause/resume, wait, logs --follow, purge,
dlq retry --all, backup. Real workers, real /bin/sh, every backend where the verb applies."""

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue, process_alive, wait_for


def _pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


# -- cancel -------------------------------------------------------------------------------------
def test_cancel_stops_a_running_job_and_its_children_within_2_s(any_queue: Queue,
                                                                 tmp_path: Path) -> None:
    q = any_queue
    pids = tmp_path / "pids"
    q.worker()
    q.enqueue({"id": "long", "max_retries": 3,
               "command": f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait"})
    started = wait_for(lambda: len(_pids(pids)) == 2 and _pids(pids), 30, "the job and its child")
    assert all(process_alive(p) for p in started)
    t0 = time.monotonic()
    out = q.run("cancel", "long").stdout
    assert "long" in out
    wait_for(lambda: not any(process_alive(p) for p in started), 2.0,
             "the job's process group to be gone")
    job = q.wait_state("long", "canceled", timeout=5)
    assert time.monotonic() - t0 < 5
    assert job["attempts"] == 1 and job["history"][-1]["outcome"] == "canceled"
    time.sleep(0.5)  # nothing brings it back: no retry
    job = q.job("long")
    assert job["state"] == "canceled" and job["attempts"] == 1
    assert q.status()["canceled"] == 1


def test_a_canceled_pending_job_never_starts(any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    marker = tmp_path / "ran"
    q.enqueue({"id": "nope", "command": f"touch {marker}"})
    q.enqueue({"id": "yes", "command": "true"})
    assert q.run("cancel", "nope").stdout.strip() == "nope: canceled"
    q.worker("--drain").wait(timeout=30)
    assert not marker.exists()
    assert q.job("nope")["state"] == "canceled" and q.job("yes")["state"] == "completed"


def test_cancel_reports_each_job_and_refuses_finished_ones(any_queue: Queue) -> None:
    q = any_queue
    q.enqueue({"id": "a", "command": "true"})
    q.enqueue({"id": "b", "command": "true"})
    q.run("cancel", "a")
    r = q.run("cancel", "a", "b", "ghost", check=False)
    assert r.returncode == 1
    assert r.stdout.strip() == "b: canceled"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "already canceled" in lines[0] and "ghost" in lines[1]


def test_cancel_all_says_how_many_and_dry_run_changes_nothing(any_queue: Queue) -> None:
    q = any_queue
    q.run("enqueue", "--file", "-",
          input="".join(json.dumps({"command": "true"}) + "\n" for _ in range(1200)))
    assert q.run("cancel", "--all", "--state", "pending", "--dry-run").stdout.strip() == \
        "Would cancel 1200 pending jobs."
    assert q.status()["pending"] == 1200
    assert q.run("cancel", "--all", "--state", "pending").stdout.strip() == \
        "Canceled 1200 pending jobs."
    assert q.status()["canceled"] == 1200
    for bad in (["cancel"], ["cancel", "--state", "pending"], ["cancel", "x", "--all"],
                ["cancel", "--all", "--state", "completed"]):
        r = q.run(*bad, check=False)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, bad


# -- pause --------------------------------------------------------------------------------------
def test_pause_holds_new_jobs_and_resume_runs_them_all(any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    log = tmp_path / "worker.log"
    q.worker(log=log)
    q.worker()
    wait_for(lambda: q.status()["active_workers"] == 2, 30, "two workers")
    assert q.run("pause").stdout.startswith("Paused")
    assert q.status()["paused"] is True
    q.run("enqueue", "--file", "-",
          input="".join(json.dumps({"command": "true"}) + "\n" for _ in range(20)))
    end = time.monotonic() + 3
    while time.monotonic() < end:
        s = q.status()
        assert s["pending"] == 20 and s["processing"] == 0 and s["completed"] == 0, s
        time.sleep(0.2)
    # the journal (here: the worker's JSON log) records who paused and when
    event = wait_for(lambda: [e for e in map(json.loads, log.read_text().splitlines())
                              if e["event"] == "queue_paused"], 10, "a queue_paused event")[0]
    assert "@" in event["paused_by"] and event["paused_at"]
    assert q.run("resume").stdout.strip() == "Resumed."
    q.wait_counts(timeout=60, completed=20, paused=False)


# -- wait ---------------------------------------------------------------------------------------
def test_wait_exit_codes(any_queue: Queue) -> None:
    q = any_queue
    q.enqueue({"id": "ok", "command": "true"})
    q.enqueue({"id": "seven", "command": "exit 7", "max_retries": 0})
    q.enqueue({"id": "zero-dead", "command": "kill -9 $$", "max_retries": 0})
    q.enqueue({"id": "later", "command": "true", "delay": 3600})
    waiter = subprocess.Popen([QUEUECTL, "wait", "ok"], env=q.env, stdout=subprocess.PIPE,
                              text=True)
    time.sleep(0.3)
    assert waiter.poll() is None  # blocks while the job has not run
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
    q.wait_state("chatty", "processing")
    time.sleep(1.5)
    with sqlite3.connect(q.db) as conn:
        stored = conn.execute("SELECT coalesce(sum(length(data)), 0) FROM live_output").fetchone()
    assert 0 < stored[0] <= 4 * 65_536
    q.wait_state("chatty", "completed")
    with sqlite3.connect(q.db) as conn:
        assert conn.execute("SELECT count(*) FROM live_output").fetchone()[0] == 0


# -- purge, dlq retry --all ---------------------------------------------------------------------
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


@pytest.mark.parametrize("verb", ["status", "list"])
def test_status_and_list_know_canceled(queue: Queue, verb: str) -> None:
    queue.enqueue({"id": "a", "command": "true"})
    queue.run("cancel", "a")
    if verb == "status":
        s = queue.status()
        assert set(s) >= {"pending", "processing", "completed", "failed", "dead",
                          "active_workers", "canceled", "paused"} and s["canceled"] == 1
    else:
        assert [j["id"] for j in queue.json("list", "--state", "canceled")] == ["a"]
