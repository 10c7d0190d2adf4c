"""What only the SQLite backend promises: query plans, PRAGMAs, fencing by direct edits.

The promises every backend makes are in tests/contract/."""

import os
import sqlite3
from pathlib import Path

from queuectl.backends import sqlite_sql
from queuectl.backends.sqlite import SQLiteStore
from queuectl.job import JobSpec


def _plans(store: SQLiteStore, action) -> list[str]:
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    action()
    store._conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.split()[0].upper() in ("SELECT", "UPDATE"):
            rows = store._conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            plans.append(" | ".join(r[3] for r in rows))
    return plans


def test_claim_never_scans_or_sorts_finished_jobs(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    with sqlite3.connect(tmp_path / "q.db") as conn:  # 20k finished jobs, written directly
        conn.executemany(
            "INSERT INTO jobs (id, command, state, max_retries, run_at, created_at, updated_at)"
            " VALUES (?, 'true', 'completed', 3, 0, 0, 0)",
            ((f"done{i}",) for i in range(20_000)),
        )
    store.enqueue([JobSpec("true", id="low"), JobSpec("true", id="high", priority=5)])
    claimed = []
    plans = _plans(store, lambda: claimed.append(store.claim_next("w")))
    assert claimed[0].id == "high"  # priority first
    claim = next(p for p in plans if "jobs_due" in p)
    assert "TEMP B-TREE" not in claim and "SCAN jobs USING INDEX jobs_due" in claim
    assert not any(p.startswith("SCAN jobs") and "INDEX" not in p for p in plans)


def test_two_stores_never_claim_the_same_job(tmp_path: Path) -> None:
    a, b = SQLiteStore(tmp_path / "q.db"), SQLiteStore(tmp_path / "q.db")
    a.enqueue([JobSpec("true", id=f"j{i}") for i in range(50)])
    seen = []
    while True:
        ja, jb = a.claim_next("a"), b.claim_next("b")
        got = [j.id for j in (ja, jb) if j]
        if not got:
            break
        seen += got
    assert sorted(seen) == sorted(f"j{i}" for i in range(50))


def test_late_result_of_a_reclaimed_attempt_is_ignored(tmp_path: Path) -> None:
    from queuectl.store import Outcome

    store = SQLiteStore(tmp_path / "q.db")
    store.set_config("lease-seconds", 2)
    store.enqueue([JobSpec("true", id="x")])
    first = store.claim_next("w1")
    store._conn.execute("UPDATE jobs SET lease_expires_at = 0, lease_until = 0")  # lease ran out
    assert [j.id for j in store.reclaim_expired()] == ["x"]
    store._conn.execute("UPDATE jobs SET run_at = 0")
    second = store.claim_next("w2")
    assert second.attempts == 2
    assert store.record_success(first, Outcome(0, None, b"", 0.1)) is False
    assert store.record_success(second, Outcome(0, None, b"", 0.1)) is True
    assert store.get("x").state == "completed"


def test_a_result_is_recorded_on_its_own_row_even_after_the_rowids_moved(tmp_path: Path) -> None:
    """The worker's result goes to the row its claim returned, found by rowid without a
    lookup of the id; if that row was renumbered (VACUUM may) and another job now sits at
    the old rowid, the result still lands on the claimed job, and only there."""
    from queuectl.store import Outcome

    store = SQLiteStore(tmp_path / "q.db")
    store.enqueue([JobSpec("true", id="a"), JobSpec("true", id="b")])
    job = store.claim_next("w")
    plans = _plans(store, lambda: store.record_success(job, Outcome(0, None, b"", 0.1)))
    assert "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)" in plans[0]
    assert store.get(job.id).state == "completed"

    other = store.claim_next("w")
    with sqlite3.connect(tmp_path / "q.db") as conn:
        old = conn.execute("SELECT rowid FROM jobs WHERE id = ?", (other.id,)).fetchone()[0]
        conn.execute("UPDATE jobs SET rowid = rowid + 1000 WHERE id = ?", (other.id,))
        conn.execute(  # an impostor at the old rowid, as held by the same worker and attempt
            "INSERT INTO jobs (rowid, id, command, state, attempts, max_retries, run_at,"
            " created_at, updated_at, worker) VALUES (?, 'c', 'true', 'processing', 1, 3, 0, 0,"
            " 0, 'w')", (old,))
    assert store.record_success(other, Outcome(0, None, b"", 0.1)) is True
    assert store.get(other.id).state == "completed"
    assert store.get("c").state == "processing"
    assert [a["outcome"] for a in store.get(other.id, history=True).history] == ["completed"]


def test_enqueue_commits_with_synchronous_full(tmp_path: Path, monkeypatch) -> None:
    """`queuectl enqueue` runs in this process with every SQLite connection traced: the
    connection that commits the job has synchronous=FULL in force (fsync on commit, so the
    job survives power loss), while a worker's store uses NORMAL."""
    from queuectl.main import main

    real_connect = sqlite3.connect
    traces: list[list[str]] = []

    def traced_connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        statements: list[str] = []
        traces.append(statements)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    monkeypatch.delenv("QUEUECTL_CALLER_UMASK", raising=False)
    db = tmp_path / "q.db"
    umask = os.umask(0o022)  # main() sets the process umask: restore it afterwards
    try:
        assert main(["--db", str(db), "enqueue", "--cmd", "true", "--id", "d1"]) == 0
    finally:
        os.umask(umask)
    committing = [t for t in traces if any(s.upper() == "COMMIT" for s in t)]
    assert committing, traces
    for statements in committing:
        pragmas = [s.upper().replace(" ", "") for s in statements if "SYNCHRONOUS" in s.upper()]
        assert pragmas and pragmas[-1] == "PRAGMASYNCHRONOUS=FULL", statements
    from queuectl.locator import open_store

    worker_store = open_store(str(db), for_worker=True)
    assert worker_store.info()["sqlite"]["synchronous"] == "normal"
    worker_store.close()


# -- unique keys ----------------------------------------------------------------------------
def _insert(conn: sqlite3.Connection, job_id: str, state: str, key: str | None,
            created: float = 0) -> None:
    conn.execute("INSERT INTO jobs (id, command, state, max_retries, run_at, created_at,"
                 " updated_at, finished_at, unique_key) VALUES (?, 'true', ?, 0, 0, ?, ?, ?, ?)",
                 (job_id, state, created, created, created, key))


def test_the_unique_index_holds_whatever_writes_the_rows(tmp_path: Path) -> None:
    """Never two live jobs with one key, even by a direct edit: the partial unique index
    refuses a second live row and a revival, and lets finished ones share the key."""
    store = SQLiteStore(tmp_path / "q.db")
    store.enqueue([JobSpec("true", id="live", unique="k")])
    with sqlite3.connect(tmp_path / "q.db") as conn:
        for i, state in enumerate(("completed", "dead", "canceled", "dead")):
            _insert(conn, f"old{i}", state, "k")
        for state in ("pending", "processing", "failed"):
            try:
                _insert(conn, "again", state, "k")
            except sqlite3.IntegrityError as exc:
                assert "jobs.unique_key" in str(exc)
            else:
                raise AssertionError(f"a second {state} job with key k was stored")
        try:
            conn.execute("UPDATE jobs SET state = 'pending' WHERE id = 'old1'")
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("a dead job came back beside the live holder of its key")
    assert [j.id for j in store.iter_jobs(unique="k")] == ["old0", "old1", "old2", "old3", "live"]
    store.close()


def test_a_job_without_a_key_costs_no_look_up(tmp_path: Path) -> None:
    """Cold enqueue stays one INSERT per job; a key costs one look-up of its live holder,
    off jobs_unique_live, once per key per call."""
    store = SQLiteStore(tmp_path / "q.db")

    def traced(specs: list[JobSpec]) -> list[str]:
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        store.submit(specs)
        store._conn.set_trace_callback(None)
        return [s for s in statements if s.split()[0].upper() not in ("BEGIN", "COMMIT")
                and not s.startswith(sqlite_sql.CONFIG)]  # settings: read when the cache is stale

    assert [s.split("(")[0] for s in traced([JobSpec("true"), JobSpec("true")])] == [
        "INSERT INTO jobs ", "INSERT INTO jobs ", "INSERT INTO counters "]
    keyed = traced([JobSpec("true", unique="a"), JobSpec("true", unique="a"),
                    JobSpec("true", unique="b")])
    looked_up = [s for s in keyed if s.startswith("SELECT")]
    assert looked_up == [sqlite_sql.LIVE_HOLDER.replace("?", "'a'"),
                         sqlite_sql.LIVE_HOLDER.replace("?", "'b'")]
    plan = store._conn.execute("EXPLAIN QUERY PLAN " + looked_up[0]).fetchall()
    assert [r[3] for r in plan] == ["SEARCH jobs USING INDEX jobs_unique_live (unique_key=?)"]
    store.close()


def test_retry_dead_many_revives_what_it_can_and_never_a_held_key(tmp_path: Path) -> None:
    """Oldest first; of two dead jobs of one key only the older comes back, and none whose
    key a live job holds; a batch comes back short only when no other dead job could come
    back, whatever the skipped ones cost the pick."""
    store = SQLiteStore(tmp_path / "q.db")
    with sqlite3.connect(tmp_path / "q.db") as conn:
        for i, (job_id, key) in enumerate((("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c"),
                                           ("b2", "b"), ("a3", "a"), ("n1", None), ("n2", None),
                                           ("d1", "d"))):
            _insert(conn, job_id, "dead", key, created=i + 1)
        _insert(conn, "c-live", "failed", "c", created=20)
    assert store.retry_dead_many(None, 3) == 3
    revived = {j.id for j in store.iter_jobs(state="pending")}
    assert revived == {"a1", "b1", "n1"}
    assert store.retry_dead_many(None, 3) == 2  # n2, d1: the rest are held
    assert store.retry_dead_many(None, 3) == 0
    assert {j.id for j in store.iter_jobs(state="dead")} == {"a2", "a3", "b2", "c1"}
    store.close()


_SUBMIT_ONE = """
import sys
from queuectl.backends.sqlite import SQLiteStore
from queuectl.job import JobSpec
store = SQLiteStore(sys.argv[1])
for _ in range(20):
    [done] = store.submit([JobSpec("true", unique="nightly")])
    print(done.id, done.stored)
"""


def test_processes_submitting_one_key_at_once_store_one_job(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "q.db"
    SQLiteStore(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", _SUBMIT_ONE, str(db)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        answers += out.split("\n")[:-1]
    store = SQLiteStore(db)
    [job] = store.iter_jobs()
    assert job.unique == "nightly"
    assert sorted(answers) == sorted([f"{job.id} True"] + [f"{job.id} False"] * 119)
    store.close()
