"""Database faults: a full disk, a lock held too long, damaged and read-only files."""

import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue
from waiting import holds_for, wait_for


def _one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("queuectl: error: ")
    return result.stderr


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def test_full_disk_fails_enqueue_cleanly_and_workers_recover(small_fs: Path,
                                                            tmp_path: Path) -> None:
    q = Queue(small_fs / "queue.db")
    q.run("config", "set", "backoff-base", "1")
    q.enqueue({"id": "before", "command": "sleep 1"})
    q.enqueue({"id": "second", "command": "true"})
    log = tmp_path / "worker.log"
    w = q.worker(log=log)
    try:
        _survive_full_disk(q, small_fs, log, w)
    finally:
        q.stop_all()


def _survive_full_disk(q: Queue, small_fs: Path, log: Path, w: subprocess.Popen) -> None:
    q.wait_state("before", "processing")
    filler = _fill(small_fs)
    result = q.run("enqueue", "--cmd", "echo " + "x" * 60_000, "--id", "toomuch", check=False)
    assert "disk is full" in _one_line_error(result)
    # the job ends while the disk is full: the worker cannot record it, so it backs off
    wait_for(lambda: "database_error" in log.read_text(), 20, "the worker to hit the full disk")
    assert w.poll() is None
    filler.unlink()
    job = q.wait_state("before", "completed", timeout=30)
    assert [h["outcome"] for h in job["history"]] == ["completed"]  # not lost, not retried
    q.wait_state("second", "completed")
    assert "toomuch" not in {j["id"] for j in q.json("list")}
    assert w.poll() is None  # the worker carried on


@pytest.mark.slow
def test_lock_held_past_busy_timeout(queue: Queue, tmp_path: Path) -> None:
    queue.enqueue({"id": "j1", "command": "true"})
    queue.run("config", "set", "backoff-base", "1")
    holder = sqlite3.connect(queue.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    log = tmp_path / "worker.log"
    w = queue.worker(env={"QUEUECTL_BUSY_TIMEOUT": "0.5"}, log=log)
    try:
        queue.env["QUEUECTL_BUSY_TIMEOUT"] = "0.5"
        result = queue.run("enqueue", "--cmd", "true", check=False)
        assert "locked by another process" in _one_line_error(result)
        result = queue.run("config", "set", "max-retries", "5", check=False)
        assert "locked" in _one_line_error(result)
        del queue.env["QUEUECTL_BUSY_TIMEOUT"]
        wait_for(lambda: "database_error" in log.read_text(), 30, "the worker to meet the lock")
        # held on over several of the worker's busy timeouts, the worker waits, never exits
        holds_for(lambda: w.poll() is None, 4 * 0.5, "the worker waiting out the lock")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    queue.wait_state("j1", "completed")
    assert queue.json("config", "list")["max-retries"] == 3  # the failed set changed nothing
    assert len(queue.json("list")) == 1


def _refused_everywhere(q: Queue, path: Path, needle: str) -> None:
    before = _digest(path)
    for args in (("status",), ("enqueue", "--cmd", "true"), ("list",)):
        assert needle in _one_line_error(q.run(*args, check=False))
    worker = subprocess.run([QUEUECTL, "worker", "run"], env=q.env, capture_output=True,
                            text=True, timeout=30)
    assert needle in _one_line_error(worker)  # workers refuse to start
    assert _digest(path) == before  # never modified
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-journal").exists()


def test_non_sqlite_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"important notes, not a database\n" * 100)
    _refused_everywhere(Queue(path), path, "is not a SQLite database")


def test_truncated_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = Queue(path)
    _big_database(q, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused_everywhere(q, path, "not a usable SQLite database")


def _big_database(q: Queue, path: Path) -> None:
    q.run("enqueue", "--cmd", "true")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO jobs (id, command, state, max_retries, run_at, created_at,"
                     " updated_at) VALUES (?, ?, 'completed', 3, 0, 0, 0)",
                     ((f"f{i}", "y" * 400) for i in range(2000)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def test_corrupted_pages_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    q = Queue(path)
    _big_database(q, path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle:middle + 16384] = os.urandom(16384)  # garbage over four pages
    path.write_bytes(bytes(data))
    before = _digest(path)
    assert "not a usable SQLite database" in _one_line_error(q.run("list", check=False))
    worker = subprocess.run([QUEUECTL, "worker", "run"], env=q.env, capture_output=True,
                            text=True, timeout=30)
    assert "not a usable SQLite database" in _one_line_error(worker)  # refuses to start
    assert _digest(path) == before


def test_read_only_database_for_another_user(shared_tmp: Path, as_other_user) -> None:
    path = shared_tmp / "queue.db"
    Queue(path).run("status")
    path.chmod(0o644)
    before = _digest(path)
    result = as_other_user("--db", str(path), "enqueue", "--cmd", "true")
    assert "read-only for this user" in _one_line_error(result)
    worker = as_other_user("--db", str(path), "worker", "run")
    assert "read-only" in _one_line_error(worker)  # refuses to start
    assert _digest(path) == before


@pytest.mark.root
def test_read_only_filesystem(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount")
    src = tmp_path / "data"
    src.mkdir()
    Queue(src / "queue.db").run("enqueue", "--cmd", "true", "--id", "x")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], check=True)
    try:
        q = Queue(ro / "queue.db")
        assert "read-only" in _one_line_error(q.run("enqueue", "--cmd", "true", check=False))
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert [j["id"] for j in Queue(src / "queue.db").json("list")] == ["x"]



@pytest.mark.slow
def test_stop_while_the_database_is_locked_ends_within_grace(queue: Queue,
                                                             tmp_path: Path) -> None:
    queue.enqueue({"id": "j1", "command": "sleep 0.5"})
    log = tmp_path / "worker.log"
    w = queue.worker("--grace", "1", log=log, env={"QUEUECTL_BUSY_TIMEOUT": "0.3"})
    queue.wait_state("j1", "processing")
    holder = sqlite3.connect(queue.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the result cannot be written
    try:
        wait_for(lambda: "database_error" in log.read_text(), 15, "the worker to retry")
        w.send_signal(15)
        assert w.wait(timeout=20) == 0  # gave up after its grace period, did not hang
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert queue.job("j1")["state"] == "processing"  # its lease will bring it back
