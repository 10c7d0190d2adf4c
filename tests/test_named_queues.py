"""Named queues through the console script, on every backend: lanes, per-queue concurrency
across workers, queue-scoped pause, status, purge and the queue overview."""

import json
import time
from pathlib import Path

import pytest
from conftest import Queue
from waiting import holds_for, wait_for


def _add(q: Queue, queue: str, command: str, **fields: object) -> str:
    return q.enqueue({"command": command, "queue": queue, **fields})


@pytest.mark.slow
def test_a_mail_job_behind_50_long_backups_starts_within_a_second(any_queue: Queue,
                                                                  tmp_path: Path) -> None:
    q = any_queue
    lines = "\n".join(json.dumps({"command": "sleep 60", "queue": "backups"})
                      for _ in range(50))
    q.run("enqueue", "--file", "-", input=lines)
    q.worker("--queue", "backups", "--grace", "0")
    q.worker("--queue", "mail", "--grace", "0")
    wait_for(lambda: q.status()["processing"] == 1 and q.status()["active_workers"] == 2, 30,
             "the backup worker busy and the mail worker idle")
    marker = tmp_path / "mail-started"
    q.run("enqueue", "--queue", "mail", "--cmd", f"touch {marker}")
    returned = time.monotonic()
    wait_for(marker.exists, 10, "the mail job to start", every=0.01)
    assert time.monotonic() - returned < 1.0
    assert q.json("status", "--queue", "backups")["pending"] == 49
    q.run("cancel", "--all", "--state", "pending", "--queue", "backups")
    assert q.json("status", "--queue", "backups")["canceled"] == 49


@pytest.mark.slow
def test_concurrency_1_with_4_workers_never_runs_two_at_once(any_queue: Queue,
                                                             tmp_path: Path) -> None:
    q = any_queue
    assert q.run("queue", "set", "backups", "--concurrency", "1").returncode == 0
    runs = tmp_path / "runs"
    runs.mkdir()
    command = (f"date +%s.%N > {runs}/$QUEUECTL_JOB_ID.start; sleep 0.1;"
               f" date +%s.%N > {runs}/$QUEUECTL_JOB_ID.end")
    for _ in range(4):
        q.worker()
    wait_for(lambda: q.status()["active_workers"] == 4, 30, "four idle workers")
    # all four are woken by this one commit and race for the first jobs
    lines = "\n".join(json.dumps({"id": f"b{i}", "command": command, "queue": "backups"})
                      for i in range(20))
    q.run("enqueue", "--file", "-", input=lines)
    _add(q, "other", "true", id="free")  # a queue without a limit is not held back
    q.wait_counts(completed=21, timeout=120)
    spans = sorted((float((runs / f"b{i}.start").read_text()),
                    float((runs / f"b{i}.end").read_text())) for i in range(20))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two backups ran at once: one ended at {end}, next began {start}"
    [row] = [r for r in q.json("queue", "list") if r["queue"] == "backups"]
    assert row["concurrency"] == 1 and row["completed"] == 20 and row["workers"] == 4


@pytest.mark.slow
def test_queue_scoped_pause_status_and_purge_touch_only_their_queue(any_queue: Queue) -> None:
    q = any_queue
    assert "Paused queue a" in q.run("pause", "--queue", "a").stdout
    for i in range(3):
        _add(q, "a", "true", id=f"a{i}")
        _add(q, "b", "true", id=f"b{i}")
    q.worker()
    q.wait_counts(completed=3, timeout=60)
    holds_for(lambda: q.json("status", "--queue", "a")["pending"] == 3, 1.0,
              "the paused queue's jobs left waiting while a worker is free")
    assert q.json("status", "--queue", "a") == {
        "pending": 3, "processing": 0, "completed": 0, "failed": 0, "dead": 0,
        "canceled": 0, "blocked": 0, "active_workers": 1, "notices": 0, "paused": True,
        "queue": "a"}
    assert q.json("status", "--queue", "b")["completed"] == 3
    assert q.json("status", "--queue", "b")["paused"] is False
    assert q.status()["paused"] is False  # the global pause is another flag
    assert [j["id"] for j in q.json("list", "--queue", "a")] == ["a0", "a1", "a2"]
    assert q.json("list", "--queue", "nobody") == []  # unknown: no error, nothing
    assert q.run("purge", "--state", "completed", "--queue", "a").stdout == "Deleted 0 completed jobs.\n"
    assert q.run("purge", "--state", "completed", "--queue", "b").stdout == "Deleted 3 completed jobs.\n"
    assert q.status()["pending"] == 3
    [row] = q.json("queue", "list")
    assert row["queue"] == "a" and row["paused"] and row["pending"] == 3
    assert row["oldest_waiting_seconds"] >= 1.0 and row["paused_by"]
    assert q.run("resume", "--queue", "a").stdout == "Resumed.\n"
    q.wait_counts(completed=3, pending=0, timeout=60)


def test_queue_names_are_checked_and_unknown_filters_are_not_errors(any_queue: Queue) -> None:
    q = any_queue
    bad = q.run("queue", "set", "no/slash", "--concurrency", "1", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert q.run("queue", "set", "x" * 65, "--concurrency", "1", check=False).returncode == 2
    assert q.run("enqueue", '{"command": "true", "queue": "a b"}', check=False).returncode == 2
    clash = q.run("enqueue", "--queue", "a", '{"command": "true", "queue": "b"}', check=False)
    assert clash.returncode == 2 and '"queue": "b"' in clash.stderr
    assert q.run("worker", "run", "--queue", "mail,b@d", check=False).returncode == 2
    assert q.json("status", "--queue", "never-seen")["pending"] == 0
    assert q.json("dlq", "list", "--queue", "never-seen") == []
    assert q.run("cancel", "--all", "--state", "pending", "--queue", "never-seen").returncode == 0
    job = q.job(q.run("enqueue", "--cmd", "true", "--queue", "a.b-c_D9").stdout.strip())
    assert job["queue"] == "a.b-c_D9"
    assert q.job(q.enqueue({"command": "true"}))["queue"] == "default"
