"""`cancel` and `pause`/`resume` through the console script: real workers, real /bin/sh,
every backend."""

import json
import time
from pathlib import Path

import pytest
from conftest import Queue, process_alive
from waiting import holds_for, wait_for


def _pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


# -- cancel -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 3])
def test_cancel_stops_a_running_job_and_its_children_within_2_s(any_queue: Queue,
                                                                 tmp_path: Path,
                                                                 slots: int) -> None:
    """Also in a process of job slots, whose running job's watch shares one wakeup."""
    q = any_queue
    pids = tmp_path / "pids"
    q.worker("--slots", str(slots))
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
    holds_for(lambda: (j := q.job("long"))["state"] == "canceled" and j["attempts"] == 1, 0.5,
              "the job canceled after one attempt (nothing brings it back: no retry)")
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
@pytest.mark.slow
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
