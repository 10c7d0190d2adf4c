"""A database file that is deleted or replaced under running workers is noticed: the old
worker says so in one line, finishes its job into the file it claimed it from, exits
non-zero to be restarted on the new file, and `worker stop` finds it without a registry."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue, process_alive
from waiting import wait_for

pytestmark = pytest.mark.slow  # workers that must notice, finish and restart

REPLACED_EXIT = 75


def _events(log: Path, event: str) -> list[dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e["event"] == event]


def _remove_database(db: Path) -> None:
    """`rm queue.db*`: an admin clearing out what looks like a stale database."""
    for path in db.parent.glob(db.name + "*"):
        path.unlink()


def test_deleted_database_is_noticed_and_the_supervisor_restarts_its_worker(
        queue: Queue, tmp_path: Path) -> None:
    out = tmp_path / "old-job"
    queue.enqueue({"id": "old", "command": f"sleep 2; echo done > {out}"})
    log = tmp_path / "supervisor.log"
    sup = queue.start("worker", "start", "--foreground", "--count", "1", log=log)
    queue.wait_state("old", "processing")
    _remove_database(Path(queue.db))
    queue.enqueue({"id": "new", "command": "true"})  # lands in a new file
    replaced = wait_for(lambda: _events(log, "database_replaced"), 30, "database_replaced")
    assert len(replaced) == 1 and replaced[0]["level"] == "error"
    assert "deleted or replaced" in replaced[0]["message"] and replaced[0]["job_id"] == "old"
    # the running job was let finish (its result went to the old, deleted file) ...
    wait_for(lambda: out.exists(), 30, "the old job to finish")
    wait_for(lambda: "exited with status 75; restarting it" in log.read_text(), 30,
             "the supervisor to restart the worker")
    # ... and the restarted worker serves the new file
    queue.wait_state("new", "completed", timeout=60)
    status = queue.wait_counts(completed=1, active_workers=1)
    assert status["pending"] == status["processing"] == 0
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=30) == 0


def _replaced_by_backup(queue: Queue, tmp_path: Path, how: str) -> None:
    queue.enqueue({"id": "before", "command": "true"})
    backup = tmp_path / "backup.db"
    queue.run("backup", str(backup))
    log = tmp_path / "worker.log"
    w = queue.worker(log=log)
    queue.wait_state("before", "completed")
    queue.enqueue({"id": "after-backup", "command": "true"})
    queue.wait_state("after-backup", "completed")
    db = Path(queue.db)
    if how == "mv":
        os.replace(backup, db)
    else:  # a copy that replaces the file (a new inode), as `cp --remove-destination` does
        subprocess.run(["cp", "--remove-destination", str(backup), str(db)], check=True)
    assert w.wait(timeout=30) == REPLACED_EXIT
    assert len(_events(log, "database_replaced")) == 1
    # a new worker serves the restored file
    queue.enqueue({"id": "restored", "command": "true"})
    # the backup was written in rollback mode, where readers wait for writers: the first
    # command that opened it in the database's place switched it to WAL
    assert queue.json("info")["sqlite"]["journal_mode"] == "wal"
    queue.worker()
    queue.wait_state("restored", "completed")
    assert queue.status()["active_workers"] == 1


def test_backup_moved_over_the_database_is_noticed(queue: Queue, tmp_path: Path) -> None:
    _replaced_by_backup(queue, tmp_path, "mv")


def test_backup_copied_over_the_database_is_noticed(queue: Queue, tmp_path: Path) -> None:
    _replaced_by_backup(queue, tmp_path, "cp")


def test_worker_stop_finds_a_worker_whose_registry_is_gone(queue: Queue, tmp_path: Path) -> None:
    queue.enqueue({"id": "long", "command": "sleep 300", "max_retries": 0})
    # a long grace: the worker notices the deleted file and keeps waiting for its job, so it
    # is still running, registered only in the deleted file, when `worker stop` comes
    log = tmp_path / "worker.log"
    w = queue.worker("--grace", "300", log=log)
    queue.wait_state("long", "processing")
    _remove_database(Path(queue.db))
    wait_for(lambda: _events(log, "database_replaced"), 30, "database_replaced")
    result = queue.run("worker", "stop", "--foreground", "--timeout", "30")
    assert "Stopped 1 worker." in result.stdout, result.stdout
    assert f"(pid {w.pid}) was found by process" in result.stdout
    assert "deleted or replaced" in result.stdout
    assert w.wait(timeout=5) == REPLACED_EXIT
    assert not process_alive(w.pid)


def test_worker_stop_leaves_workers_of_other_databases_alone(tmp_path: Path) -> None:
    mine, other = Queue(tmp_path / "mine.db"), Queue(tmp_path / "other.db")
    try:
        w = other.worker()
        wait_for(lambda: other.status()["active_workers"] == 1, 30, "the other worker")
        _remove_database(tmp_path / "mine.db")
        assert mine.run("worker", "stop", "--foreground").stdout.strip() == "No running workers."
        assert w.poll() is None
        # and a worker started with --db (no QUEUECTL_DB) is found by its argument
        env = {k: v for k, v in mine.env.items() if k != "QUEUECTL_DB"}
        by_arg = subprocess.Popen([QUEUECTL, "--log-format", "json", "worker", "run",
                                   "--db", str(tmp_path / "mine.db")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mine.procs.append(by_arg)
        wait_for(lambda: mine.status()["active_workers"] == 1, 30, "the --db worker")
        _remove_database(tmp_path / "mine.db")
        result = mine.run("worker", "stop", "--foreground")
        assert "Stopped 1 worker." in result.stdout and f"pid {by_arg.pid})" in result.stdout
        assert by_arg.wait(timeout=10) in (0, REPLACED_EXIT)
        assert w.poll() is None
    finally:
        mine.stop_all()
        other.stop_all()
