"""A database of schema 1 (before cancel, pause and retention) migrates forward on open and
keeps every job, attempt, worker and setting; so does one of schema 8 (before unique keys)."""

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import QUEUECTL, Queue

from queuectl.backends.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

# SQL functions the backend registers on its connections, which migrations from 4 on call.
_MIGRATION_FUNCTIONS = {"queuectl_boot_id": lambda: "b", "queuectl_uptime": lambda: 1.0,
                        "queuectl_wall": lambda: 1.0}


@contextmanager
def old_schema(db: Path, version: int) -> Iterator[sqlite3.Connection]:
    """A database file as queuectl left it at schema `version`, open for the test's rows
    (committed when the block ends)."""
    with sqlite3.connect(db) as conn:
        for name, fn in _MIGRATION_FUNCTIONS.items():
            conn.create_function(name, 0, fn)
        conn.execute("PRAGMA journal_mode=WAL")
        for v in range(1, version + 1):
            for statement in MIGRATIONS[v]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        yield conn


def test_a_version_1_database_migrates_keeping_everything(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with old_schema(db, 1) as conn:
        conn.execute("INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                     " created_at, updated_at, finished_at, exit_code) VALUES"
                     " ('done', 'echo hi', 'completed', 1, 3, 1, 1, 2, 2, 0),"
                     " ('wait', 'true', 'pending', 0, 3, 1, 1, 1, NULL, NULL)")
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output) VALUES"
                     " ('done', 1, 'w', 1, 2, 'completed', 0, X'68690a')")
        conn.execute("INSERT INTO config (key, value) VALUES ('max-retries', '7')")
    q = Queue(db)
    assert q.json("info")["schema_version"] == SCHEMA_VERSION
    done = q.job("done")
    assert done["state"] == "completed" and done["history"][0]["output"] == "hi\n"
    assert q.run("logs", "done").stdout == "hi\n"
    assert q.run("config", "get", "max-retries").stdout.strip() == "7"
    assert q.status()["pending"] == 1
    assert q.run("cancel", "wait").stdout.strip() == "wait: canceled"


def test_a_version_2_database_migrates_to_named_queues_keeping_everything(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    with old_schema(db, 2) as conn:
        conn.execute("INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                     " created_at, updated_at, finished_at, exit_code) VALUES"
                     " ('done', 'echo hi', 'completed', 1, 3, 1, 1, 2, 2, 0),"
                     " ('wait', 'true', 'pending', 0, 3, 1, 1, 1, NULL, NULL)")
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output, output_total) VALUES"
                     " ('done', 1, 'w', 1, 2, 'completed', 0, X'68690a', 3)")
        conn.execute("INSERT INTO flags (name, set_by, since) VALUES ('paused', 'alice@h', 5)")
        conn.execute("INSERT INTO workers (name, host, pid, pid_start, started_at,"
                     " heartbeat_at, state, job_id) VALUES ('old', 'h', 1, NULL, 1, 1, 'idle',"
                     " NULL)")
    q = Queue(db)
    assert q.json("info")["schema_version"] == SCHEMA_VERSION
    done = q.job("done")
    assert done["queue"] == "default" and done["history"][0]["output"] == "hi\n"
    assert q.status()["paused"] is True  # the global pause survives
    assert q.json("status", "--queue", "default")["pending"] == 1
    assert [r["queue"] for r in q.json("queue", "list")] == ["default"]
    q.run("resume")
    assert q.run("worker", "run", "--drain", "--queue", "default").returncode == 0
    assert q.job("wait")["state"] == "completed"


def test_a_version_3_database_moves_its_leases_to_the_boot_clock(tmp_path: Path) -> None:
    """Schema 4: running jobs keep what was left of their wall-clock lease (at most
    lease-seconds, so a lease written before a clock step back is not stretched), now on
    CLOCK_BOOTTIME with this boot's id; everything else stays."""
    db = tmp_path / "v3.db"
    wall = time.time()
    with old_schema(db, 3) as conn:
        conn.execute("INSERT INTO config (key, value) VALUES ('lease-seconds', '20')")
        for job_id, state, lease in (("live", "processing", wall + 10),
                                     ("expired", "processing", wall - 5),
                                     ("stretched", "processing", wall + 86400),
                                     ("waiting", "pending", None)):
            conn.execute("INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                         " created_at, updated_at, worker, lease_expires_at, queue) VALUES"
                         " (?, 'true', ?, 1, 3, 1, 1, 1, 'w', ?, 'mail')", (job_id, state, lease))
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output, output_total) VALUES"
                     " ('waiting', 1, 'w', 1, 2, 'failed', 1, X'6f6f7073', 4)")
        conn.execute("INSERT INTO workers (name, host, pid, pid_start, started_at,"
                     " heartbeat_at, state, job_id, queues) VALUES ('w', 'h', 1, NULL, 1, ?,"
                     " 'busy', 'live', 'mail')", (wall - 1,))
    q = Queue(db)
    assert q.json("info")["schema_version"] == SCHEMA_VERSION >= 4
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with sqlite3.connect(db) as conn:
        leases = {r[0]: (r[1], r[2] - uptime) for r in conn.execute(
            "SELECT id, lease_boot, lease_until FROM jobs WHERE state = 'processing'")}
        beat = conn.execute("SELECT beat_boot, beat_clock FROM workers").fetchone()
    assert {b for b, _ in leases.values()} == {boot}
    assert 0 < leases["live"][1] <= 10 and leases["expired"][1] < 0
    assert 10 < leases["stretched"][1] <= 20  # capped at lease-seconds
    assert beat[0] == boot and -30 < beat[1] - uptime < 0
    assert q.run("config", "get", "lease-seconds").stdout.strip() == "20"
    assert q.job("waiting")["history"][0]["output"] == "oops"
    assert q.json("status", "--queue", "mail")["processing"] == 3


def test_a_version_8_database_migrates_to_unique_keys_keeping_every_job(tmp_path: Path) -> None:
    """Schema 9 adds unique keys: a database of schema 8 holding jobs of every state, in two
    queues, is migrated by the first processes that open it, all at once; every job keeps
    every column as it was and has no key, and keys work beside them."""
    from queuectl.backends.sqlite import SQLiteStore
    from queuectl.job import STATES, JobSpec
    from queuectl.store import Submitted

    db = tmp_path / "v8.db"
    with old_schema(db, 8) as conn:
        for i, state in enumerate(STATES):
            for queue in ("default", "mail"):
                finished = 2.0 if state in ("completed", "dead", "canceled", "failed") else None
                conn.execute(
                    "INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                    " created_at, updated_at, worker, lease_expires_at, lease_boot, lease_until,"
                    " finished_at, exit_code, last_error, queue, memory_max) VALUES"
                    " (?, 'true', ?, ?, 3, 1, ?, 2, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (f"{state}-{queue}", state, int(state != "pending"), 1 + i,
                     "w" if state == "processing" else None,
                     1e12 if state == "processing" else None,
                     "b" if state == "processing" else None,
                     1e9 if state == "processing" else None, finished,
                     1 if state in ("failed", "dead") else None,
                     "exit code 1" if state in ("failed", "dead") else None, queue,
                     1 << 20 if queue == "mail" else None))
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output, output_total) VALUES"
                     " ('dead-default', 1, 'w', 1, 2, 'failed', 1, X'6f6f7073', 4)")
        conn.execute("INSERT INTO config (key, value) VALUES ('max-retries', '7')")
        before = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    procs = [subprocess.Popen([QUEUECTL, "--db", str(db), "status"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out)["processing"] == 2
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION >= 9
    width = len(before[0])  # every column kept; unique_key next (then schema 10's columns)
    assert [row[:width] for row in after] == before
    assert {row[width] for row in after} == {None}
    assert {"jobs_unique_live", "jobs_by_unique"} <= names
    store = SQLiteStore(db)
    try:
        assert [(j.id, j.state, j.unique) for j in store.iter_jobs()] == [
            (f"{s}-{q}", s, None) for s in STATES for q in ("default", "mail")]
        assert store.get("dead-default", history=True).history[0]["output"] == b"oops"
        assert store.config_items()["max-retries"] == 7
        assert list(store.iter_jobs(unique="nightly")) == []
        assert store.submit([JobSpec("true", id="n1", unique="nightly"),
                             JobSpec("true", id="n2", unique="nightly")]) == [
            Submitted("n1", True), Submitted("n1", False)]
        assert store.retry_dead("dead-mail").state == "pending"  # no key: as before
        assert store.retry_dead_many(None, 10) == 1
        assert [j.id for j in store.iter_jobs(unique="nightly")] == ["n1"]
    finally:
        store.close()


def test_a_version_9_database_migrates_to_dependencies_keeping_every_job(tmp_path: Path) -> None:
    """Schema 10 adds dependencies and reruns: a database of schema 9 holding jobs of every
    state, in two queues, with a key and a history, is migrated by four processes opening it
    at once; every job keeps every column, waits for nothing and has no earlier attempts;
    the claim's indexes are rebuilt without blocked jobs; old jobs serve as parents."""
    import pytest

    from queuectl.backends.sqlite import SQLiteStore
    from queuectl.errors import Conflict
    from queuectl.job import STATES, JobSpec
    from queuectl.store import Outcome, Parent

    db = tmp_path / "v9.db"
    with old_schema(db, 9) as conn:
        for i, state in enumerate(STATES):
            for queue in ("default", "mail"):
                finished = 2.0 if state in ("completed", "dead", "canceled", "failed") else None
                conn.execute(
                    "INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                    " created_at, updated_at, worker, lease_expires_at, lease_boot, lease_until,"
                    " finished_at, exit_code, last_error, queue, memory_max, unique_key) VALUES"
                    " (?, 'true', ?, ?, 3, 1, ?, 2, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (f"{state}-{queue}", state, int(state != "pending"), 1 + i,
                     "w" if state == "processing" else None,
                     1e12 if state == "processing" else None,
                     "b" if state == "processing" else None,
                     1e9 if state == "processing" else None, finished,
                     1 if state in ("failed", "dead") else None,
                     "exit code 1" if state in ("failed", "dead") else None, queue,
                     1 << 20 if queue == "mail" else None,
                     f"key-{state}" if queue == "mail" else None))
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output, output_total) VALUES"
                     " ('dead-default', 1, 'w', 1, 2, 'failed', 1, X'6f6f7073', 4)")
        before = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    procs = [subprocess.Popen([QUEUECTL, "--db", str(db), "status"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        status = json.loads(out)
        assert status["processing"] == 2 and status["pending"] == 2
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        schema = dict(conn.execute("SELECT name, sql FROM sqlite_master"
                                   " WHERE type IN ('index', 'trigger', 'table')").fetchall())
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION >= 10
    width = len(before[0])
    assert [row[:width] for row in after] == before  # every column kept
    # waiting_on, attempt_base (then later schemas' columns)
    assert {row[width:width + 2] for row in after} == {(0, 0)}
    for index in ("jobs_due", "jobs_due_by_queue"):
        assert "waiting_on = 0" in schema[index]
    assert {"deps", "deps_waiting", "blocked_counts", "blocked_updated", "blocked_deleted",
            "deps_parent_completed", "deps_parent_ended", "deps_child_deleted"} <= set(schema)
    assert "jobs_blocked" not in schema  # the counter replaced the index
    with sqlite3.connect(db) as conn:  # no job waits for a parent: an empty counter
        assert conn.execute("SELECT count(*) FROM blocked_counts").fetchone()[0] == 0
    store = SQLiteStore(db)
    try:
        assert store.counts()["blocked"] == 0
        assert store.get("dead-default", history=True).history[0]["attempt"] == 1
        with pytest.raises(Conflict, match="parent job 'dead-mail' is dead"):
            store.submit([JobSpec("true", id="n0", after=["dead-mail"])])
        store.submit([JobSpec("true", id="n1", after=["completed-default", "pending-default",
                                                      "processing-mail", "failed-mail"])])
        assert store.get("n1").waiting_on == 3
        assert store.parents("n1")[0] == Parent("completed-default", "completed", True)
        # an old processing job ends dead through the trigger path: n1 is canceled
        store._conn.execute("UPDATE jobs SET lease_expires_at = 0, lease_until = 0,"
                            " max_retries = 0 WHERE id = 'processing-mail'")
        assert "processing-mail" in [j.id for j in store.reclaim_expired()]
        n1 = store.get("n1")
        assert (n1.state, n1.last_error) == ("canceled", "parent processing-mail ended dead")
        # an old dead job is retried: its one attempt is kept, the next is number 2
        again = store.retry("dead-default")
        assert (again.attempt_base, again.state) == (1, "pending")
        store._conn.execute("UPDATE jobs SET priority = 100 WHERE id = 'dead-default'")
        job = store.claim_next("w", ["default"])
        assert job is not None and job.id == "dead-default" and job.attempt_number == 2
        store.record_success(job, Outcome(0, None, b"", 0.1))
        assert [h["attempt"] for h in store.get("dead-default", history=True).history] == [1, 2]
    finally:
        store.close()


def test_a_version_10_database_migrates_to_cwd_and_env_keeping_every_job(
        tmp_path: Path) -> None:
    """Schema 11 adds each job's directory and environment: a database of schema 10 with jobs
    of every state (a key, a parent, a history) is migrated by four processes opening it at
    once; every job keeps every column and has neither (NULL: it runs where its worker is),
    old jobs are still claimed and run, and new jobs carry both beside them."""
    from queuectl.backends.sqlite import SQLiteStore
    from queuectl.job import STATES, JobSpec
    from queuectl.store import Outcome

    db = tmp_path / "v10.db"
    with old_schema(db, 10) as conn:
        for i, state in enumerate(STATES):
            finished = 2.0 if state in ("completed", "dead", "canceled", "failed") else None
            conn.execute(
                "INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                " created_at, updated_at, worker, lease_expires_at, lease_boot, lease_until,"
                " finished_at, exit_code, queue, unique_key, attempt_base) VALUES"
                " (?, 'true', ?, ?, 3, 1, ?, 2, ?, ?, ?, ?, ?, ?, 'mail', ?, ?)",
                (state, state, int(state != "pending"), 1 + i,
                 "w" if state == "processing" else None,
                 1e12 if state == "processing" else None,
                 "b" if state == "processing" else None,
                 1e9 if state == "processing" else None, finished,
                 1 if state in ("failed", "dead") else None, f"key-{state}", i))
        conn.execute("INSERT INTO deps (child, parent, pos, satisfied) VALUES"
                     " ('canceled', 'completed', 0, 1)")
        conn.execute("INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,"
                     " outcome, exit_code, output, output_total) VALUES"
                     " ('dead', 1, 'w', 1, 2, 'failed', 1, X'6f6f7073', 4)")
        before = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    procs = [subprocess.Popen([QUEUECTL, "--db", str(db), "status"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out)["processing"] == 1
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        columns = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION >= 11
    width = len(before[0])
    assert [row[:width] for row in after] == before  # every column kept
    assert columns[width:width + 2] == ["cwd", "env"]
    assert {row[width:width + 2] for row in after} == {(None, None)}
    store = SQLiteStore(db)
    try:
        jobs = {j.id: j for j in store.iter_jobs()}
        assert set(jobs) == set(STATES)
        assert all((j.cwd, j.env) == (None, None) for j in jobs.values())
        assert store.get("dead", history=True).history[0]["output"] == b"oops"
        assert store.parents("canceled")[0].satisfied
        store.submit([JobSpec("pwd", id="new", cwd="/srv", env={"MODE": "nightly"},
                              queue="mail", priority=-1)])
        old = store.claim_next("w2", ["mail"])
        assert old is not None and old.id in ("pending", "failed") and old.cwd is None
        store.record_success(old, Outcome(0, None, b"", 0.1))
        claimed = [store.claim_next("w2", ["mail"]) for _ in range(2)]
        new = next(j for j in claimed if j is not None and j.id == "new")
        assert (new.cwd, new.env) == ("/srv", {"MODE": "nightly"})
    finally:
        store.close()


def test_a_version_11_database_migrates_to_on_dead_notices_keeping_every_job(
        tmp_path: Path) -> None:
    """Schema 11 (before on-dead hooks): every job and setting is kept, no old dead job gets
    a notice, and a job that goes dead afterwards, with a hook set, gets one."""
    from queuectl.backends.sqlite import SQLiteStore
    from queuectl.store import Outcome

    db = tmp_path / "v11.db"
    with old_schema(db, 11) as conn:
        for i, state in enumerate(("pending", "processing", "dead", "completed")):
            conn.execute(
                "INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                " created_at, updated_at, worker, lease_expires_at, lease_boot, lease_until,"
                " queue) VALUES (?, 'true', ?, ?, 0, 1, ?, 2, ?, ?, ?, ?, 'mail')",
                (state, state, int(state != "pending"), 1 + i,
                 "w" if state == "processing" else None, 0 if state == "processing" else None,
                 "b" if state == "processing" else None, 0 if state == "processing" else None))
        conn.execute("INSERT INTO queues (name, concurrency) VALUES ('mail', 2)")
        conn.execute("INSERT INTO config (key, value) VALUES ('max-retries', '7')")
        before = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    q = Queue(db)
    assert q.status()["notices"] == 0
    assert q.run("config", "get", "max-retries").stdout.strip() == "7"
    assert q.run("config", "get", "on-dead").stdout == "\n"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 12
        assert conn.execute("SELECT * FROM jobs ORDER BY id").fetchall() == before
        assert conn.execute("SELECT count(*) FROM notices").fetchone()[0] == 0
    [mail] = [row for row in q.json("queue", "list") if row["queue"] == "mail"]
    assert (mail["concurrency"], mail["on_dead"], mail["notices"]) == (2, None, 0)
    q.run("queue", "set", "mail", "--on-dead", "cat")
    store = SQLiteStore(db)
    try:
        # the old processing job (its lease long gone) ends dead through the trigger
        assert [j.state for j in store.reclaim_expired()] == ["dead"]
        notice = store.take_notice("w", 60)
        assert notice is not None and (notice.job_id, notice.hook) == ("processing", "cat")
        job = store.claim_next("w")
        assert job is not None and job.id == "pending"
        store.record_failure(job, Outcome(1, "exit status 1", b"bye", 0.1))
        assert store.counts()["notices"] == 2
    finally:
        store.close()


def test_a_version_12_database_migrates_to_job_counters_counting_every_job(
        tmp_path: Path) -> None:
    """Schema 12 (before the counters of `status` and `queue list`): the migration counts
    the jobs it finds, per queue and state (the running ones are read off their index), and
    from then on the counters follow every change."""
    from queuectl.backends.sqlite import SQLiteStore
    from queuectl.store import Outcome

    db = tmp_path / "v12.db"
    states = ["pending"] * 3 + ["processing", "completed", "completed", "dead", "failed",
                                "canceled"]
    with old_schema(db, 12) as conn:
        for i, state in enumerate(states):
            conn.execute(
                "INSERT INTO jobs (id, command, state, attempts, max_retries, run_at,"
                " created_at, updated_at, finished_at, worker, lease_expires_at, lease_boot,"
                " lease_until, queue) VALUES (?, 'true', ?, ?, 0, 1, ?, 2, ?, ?, ?, ?, ?, ?)",
                (f"j{i}", state, int(state != "pending"), 1 + i,
                 None if state in ("pending", "processing") else 2.0,
                 "w" if state == "processing" else None, 0 if state == "processing" else None,
                 "b" if state == "processing" else None, 0 if state == "processing" else None,
                 "mail" if i % 2 else "default"))
        before = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    q = Queue(db)
    status = q.status()
    assert {k: status[k] for k in ("pending", "processing", "completed", "failed", "dead",
                                   "canceled")} == {
        "pending": 3, "processing": 1, "completed": 2, "failed": 1, "dead": 1, "canceled": 1}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 13
        assert conn.execute("SELECT * FROM jobs ORDER BY id").fetchall() == before
        counted = dict(((queue, state), n) for queue, state, n in conn.execute(
            "SELECT queue, state, n FROM job_counts"))
        direct = dict(((queue, state), n) for queue, state, n in conn.execute(
            "SELECT queue, state, count(*) FROM jobs WHERE state <> 'processing'"
            " GROUP BY queue, state"))
        assert counted == direct
    rows = {row["queue"]: row for row in q.json("queue", "list")}
    assert (rows["default"]["pending"], rows["mail"]["pending"]) == (2, 1)
    assert sum(r["processing"] for r in rows.values()) == 1
    store = SQLiteStore(db)
    try:
        assert [j.state for j in store.reclaim_expired()] == ["dead"]  # processing -> dead
        job = store.claim_next("w")
        assert job is not None
        store.record_success(job, Outcome(0, None, b"", 0.1))
        assert store.purge("completed", None, 10) == 3
        counts = store.counts()
        assert (counts["pending"], counts["processing"], counts["completed"], counts["dead"]) \
            == (2, 0, 0, 2)
    finally:
        store.close()
