"""A worker's integrity check (SQLite quick_check) runs once per database file and boot.

The check reads the whole file, so it is recorded in `<db>-checked` (device, inode, boot id)
and later starts on the same file in the same boot skip it: a start does not grow with the
queue. Observed through the worker's `integrity_checked` event and the record file. The same
under the private systemd, four instances at once on a large file: test_systemd_integrity.py.
"""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import Queue
from test_db_faults import _big_database, _digest, _one_line_error


def _start(q: Queue) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """One worker start on an empty queue (--drain: it exits at once), and its events."""
    result = q.run("--log-format", "json", "worker", "run", "--drain", check=False)
    events = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()
              if line.startswith("{")]
    return result, events


def _checks(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "integrity_checked"]


def _record(db: Path) -> str:
    return Path(f"{db}-checked").read_text()


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_a_second_start_on_the_same_file_and_boot_skips_the_check(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    q = Queue(db)
    result, events = _start(q)
    assert result.returncode == 0, result.stderr
    [checked] = _checks(events)
    assert checked["level"] == "info" and checked["seconds"] >= 0 and checked["db"] == str(db)
    st = db.stat()
    assert _record(db) == f"queuectl-checked {st.st_dev} {st.st_ino} {_boot_id()}\n"
    # 0660 less the umask (the CLI's 007): group members' workers update it too
    assert Path(f"{db}-checked").stat().st_mode & 0o777 == 0o660
    result, events = _start(q)
    assert result.returncode == 0, result.stderr
    assert _checks(events) == [] and any(e["event"] == "worker_ready" for e in events)


def test_workers_started_together_check_once(tmp_path: Path) -> None:
    """The first to take the record's lock checks; the others wait for it and skip."""
    q = Queue(tmp_path / "queue.db")
    _big_database(q, q.db)  # type: ignore[arg-type]
    with ThreadPoolExecutor(4) as pool:
        starts = list(pool.map(lambda _: _start(q), range(4)))
    assert all(result.returncode == 0 for result, _ in starts), starts
    assert sum(len(_checks(events)) for _, events in starts) == 1


def test_a_file_replaced_by_a_copy_is_checked_again(tmp_path: Path) -> None:
    """A new inode (mv of a copy, a restore) is a new file: checked at the next start."""
    db = tmp_path / "queue.db"
    q = Queue(db)
    assert _checks(_start(q)[1])
    shutil.copy(db, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", db)
    result, events = _start(q)
    assert result.returncode == 0, result.stderr
    assert len(_checks(events)) == 1
    assert _record(db).split()[2] == str(db.stat().st_ino)


def _damage(data: bytes) -> bytes:
    damaged = bytearray(data)
    middle = len(damaged) // 2 // 4096 * 4096
    damaged[middle:middle + 16384] = os.urandom(16384)  # garbage over four pages
    return bytes(damaged)


def test_a_damaged_file_put_in_place_of_a_checked_one_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    q = Queue(db)
    _big_database(q, db)
    assert _checks(_start(q)[1])
    record = _record(db)
    (tmp_path / "damaged.db").write_bytes(_damage(db.read_bytes()))
    os.replace(tmp_path / "damaged.db", db)
    before = _digest(db)
    result, _ = _start(q)
    assert "not a usable SQLite database" in _one_line_error(result)  # refuses to start
    assert _digest(db) == before and _record(db) == record  # a failed check records nothing


def test_damage_in_place_after_the_check_is_found_by_what_reaches_it(tmp_path: Path) -> None:
    """The same inode damaged after a worker checked it (same boot) is not checked again at
    start; a command that reads a damaged page fails with one line as before, and removing
    `<db>-checked` makes the next worker check (and refuse) it."""
    db = tmp_path / "queue.db"
    q = Queue(db)
    _big_database(q, db)
    assert _checks(_start(q)[1])
    db.write_bytes(_damage(db.read_bytes()))  # in place: same inode
    assert "not a usable SQLite database" in _one_line_error(q.run("list", check=False))
    Path(f"{db}-checked").unlink()
    result, _ = _start(q)
    assert "not a usable SQLite database" in _one_line_error(result)


def test_the_record_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    """The state directory is group-writable: a symlink planted as `<db>-checked` must not
    make a root worker truncate its target. Without a record the worker checks every time."""
    db = tmp_path / "queue.db"
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    Path(f"{db}-checked").symlink_to(target)
    q = Queue(db)
    for _ in range(2):
        result, events = _start(q)
        assert result.returncode == 0, result.stderr
        assert len(_checks(events)) == 1
    assert target.read_text() == "keep me\n"


def _notify_socket(tmp_path: Path) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    return sock


def test_a_worker_waiting_for_a_check_is_ready_but_claims_nothing_until_it_is_done(
        tmp_path: Path) -> None:
    """While another process checks the file (holds the record's lock), a starting worker
    sends READY=1 without waiting for it (so systemd's start job never waits for a long
    check after a reboot), claims nothing and writes nothing until the check is recorded,
    and stops at once if asked. Once the lock is free it checks itself and runs the job."""
    db = tmp_path / "queue.db"
    q = Queue(db)
    job = q.run("enqueue", "--cmd", "echo ran").stdout.strip()
    checked = Path(f"{db}-checked")
    checked.unlink(missing_ok=True)
    lock = os.open(checked, os.O_RDWR | os.O_CREAT, 0o660)
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another worker is checking"
    sock = _notify_socket(tmp_path)
    worker = q.worker(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        message = sock.recv(4096).decode()  # within the socket's 30 s, or TimeoutError
        assert "READY=1" in message and "STATUS=checking the database" in message, message
        assert q.job(job)["state"] == "pending" and q.status()["active_workers"] == 0
        before = _digest(db)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert q.job(job)["state"] == "pending" and _digest(db) == before
    finally:
        if worker.poll() is None:
            worker.kill()
        os.close(lock)  # the "checker" died without a record
        sock.close()
    result, events = _start(q)
    assert result.returncode == 0, result.stderr
    assert len(_checks(events)) == 1 and q.job(job)["state"] == "completed"
