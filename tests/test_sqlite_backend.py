"""What only the SQLite backend promises: query plans, PRAGMAs, fencing by direct edits.

The promises every backend makes are in tests/contract/."""

import json
import os
import sqlite3
import threading
from pathlib import Path

from conftest import Queue

from queuectl.backends import sqlite_sql
from queuectl.backends.sqlite import SQLiteStore
from queuectl.backends.sqlite_schema import JOB_COUNTS_FROM_JOBS
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


def test_reads_of_one_snapshot_wait_for_a_busy_file_as_a_single_read_does(tmp_path: Path) -> None:
    """`show`, `status`, `queue list` and the metrics read several statements from one
    snapshot: the file busy at its start (here a writer's lock in rollback mode, the mode a
    restored backup was left in) is waited for, not reported at once as locked."""
    db = tmp_path / "q.db"
    store = SQLiteStore(db)
    store.enqueue([JobSpec("true", id="parent"), JobSpec("true", id="child", after=["parent"])])
    store._conn.execute("PRAGMA journal_mode=DELETE")  # where readers meet a writer's lock
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    reads = {"parents": lambda: [p.id for p in store.parents("child")],
             "queues": lambda: [q.name for q in store.queues()],
             "metrics": lambda: store.metrics().paused}
    answers = {}
    for name, read in reads.items():
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.5, holder.execute, ("ROLLBACK",))
        release.start()
        try:
            answers[name] = read()
        finally:
            release.join()
    holder.close()
    assert answers == {"parents": ["parent"], "queues": ["default"], "metrics": False}


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
        "INSERT INTO jobs ", "INSERT INTO jobs ", "INSERT INTO counters ",
        "INSERT INTO job_counts "]
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


# -- dependencies and reruns (schema 10) ------------------------------------------------------
def _ok():
    from queuectl.store import Outcome

    return Outcome(0, None, b"", 0.1)


def _bad():
    from queuectl.store import Outcome

    return Outcome(1, "exit code 1", b"", 0.1)


def _claim(store: SQLiteStore, job_id: str, worker: str = "w"):
    """Claim `job_id`, which must be the only eligible job."""
    job = store.claim_next(worker)
    assert job is not None and job.id == job_id, job
    return job


def _history_rows(store: SQLiteStore, job_id: str) -> int:
    return store._conn.execute("SELECT count(*) FROM attempts WHERE job_id = ?",
                               (job_id,)).fetchone()[0]


def _assert_canceled_by(store: SQLiteStore, child: str, parent: str, how: str) -> None:
    job = store.get(child)
    assert (job.state, job.last_error) == ("canceled", f"parent {parent} ended {how}"), job
    assert job.finished_at is not None and job.updated_at == job.finished_at
    assert _history_rows(store, child) == 0  # a dependent that never ran has no history


def test_a_parent_completing_unblocks_its_child_on_every_completion_path(tmp_path: Path) -> None:
    """record_success and complete_and_claim both satisfy the dependents; the claim of
    complete_and_claim already sees the child eligible, in the same transaction."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("true", id="p1"), JobSpec("true", id="c1", after=["p1"])])
    assert store.get("c1").waiting_on == 1 and store.counts()["blocked"] == 1
    assert store.seconds_until_due() == 0.0
    p1 = _claim(store, "p1")
    assert store.claim_next("w2") is None  # the child is blocked
    assert store.seconds_until_due() is None  # and is not due: the idle worker sleeps
    assert store.record_success(p1, _ok())
    assert store.get("c1").waiting_on == 0 and store.counts()["blocked"] == 0
    assert store.parents("c1")[0].satisfied
    store.record_success(_claim(store, "c1"), _ok())

    store.submit([JobSpec("true", id="p2"), JobSpec("true", id="c2", after=["p2"])])
    p2 = _claim(store, "p2")
    done, nxt = store.complete_and_claim(p2, _ok(), "w")
    assert done and nxt is not None and nxt.id == "c2" and nxt.attempts == 1


def test_a_retried_failure_decides_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("false", id="p", max_retries=1), JobSpec("true", id="c", after=["p"])])
    failed = store.record_failure(_claim(store, "p"), _bad())
    assert failed is not None and failed.state == "failed"
    assert (store.get("c").state, store.get("c").waiting_on) == ("pending", 1)
    store._conn.execute("UPDATE jobs SET run_at = 0 WHERE id = 'p'")
    assert store.record_failure(_claim(store, "p"), _bad()).state == "dead"
    _assert_canceled_by(store, "c", "p", "dead")


def test_a_parent_ending_dead_or_canceled_cancels_its_child_on_every_path(tmp_path: Path) -> None:
    """record_failure and reclaim_expired to dead, cancel and cancel_state (pending), and a
    processing parent whose cancel request its worker honours."""
    store = SQLiteStore(tmp_path / "q.db")
    store.set_config("lease-seconds", 2)
    specs = []
    for path in ("fail", "lost", "cancel", "state", "request"):
        specs += [JobSpec("x", id=f"{path}-p", max_retries=0, queue=path),
                  JobSpec("x", id=f"{path}-c", after=[f"{path}-p"], queue=path)]
    store.submit(specs)
    store.record_failure(store.claim_next("w", ["fail"]), _bad())
    _assert_canceled_by(store, "fail-c", "fail-p", "dead")

    store.claim_next("w", ["lost"])
    store._conn.execute("UPDATE jobs SET lease_expires_at = 0, lease_until = 0"
                        " WHERE id = 'lost-p'")
    assert [j.id for j in store.reclaim_expired()] == ["lost-p"]
    _assert_canceled_by(store, "lost-c", "lost-p", "dead")

    store.cancel("cancel-p")
    _assert_canceled_by(store, "cancel-c", "cancel-p", "canceled")

    # cancel_state picks pending jobs oldest first: the parent, not yet its child
    assert store.cancel_state("pending", 1, queue="state") == 1
    _assert_canceled_by(store, "state-c", "state-p", "canceled")

    held = store.claim_next("w", ["request"])
    assert store.cancel("request-p").cancel_requested
    assert store.get("request-c").state == "pending"  # only a request so far
    held.cancel_requested = True
    assert store.record_failure(held, _bad()).state == "canceled"
    _assert_canceled_by(store, "request-c", "request-p", "canceled")
    assert store.counts()["blocked"] == 0 and store.remaining() == 0


def test_a_three_deep_chain_is_canceled_down_to_its_end(tmp_path: Path) -> None:
    """a <- b <- c <- d (and e after both a and d): a dies, each dependent below ends
    canceled naming its own parent, in the transaction that made a dead."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="a", max_retries=0), JobSpec("x", id="b", after=["a"]),
                  JobSpec("x", id="c", after=["b"]), JobSpec("x", id="d", after=["c"]),
                  JobSpec("x", id="e", after=["a", "d"]), JobSpec("x", id="free")])
    assert store.counts()["blocked"] == 4
    a = store.claim_next("w")
    assert a is not None and a.id == "a"
    store.record_failure(a, _bad())
    _assert_canceled_by(store, "b", "a", "dead")
    _assert_canceled_by(store, "c", "b", "canceled")
    _assert_canceled_by(store, "d", "c", "canceled")
    _assert_canceled_by(store, "e", "a", "dead")  # its first parent to end decided it
    assert store.get("free").state == "pending"
    when = store.get("a").finished_at
    assert {store.get(j).finished_at for j in "bcde"} == {when}
    assert [j.id for j in store.canceled_dependents("a")] == ["b", "c", "d", "e"]
    assert [j.id for j in store.canceled_dependents("c")] == ["d"]
    assert store.canceled_dependents("free") == []
    assert store.counts()["blocked"] == 0
    # an operator's cancel of a child is not "because of" its parent
    store.submit([JobSpec("x", id="p2"), JobSpec("x", id="c2", after=["p2"])])
    store.cancel("c2")
    store.cancel("p2")
    assert store.canceled_dependents("p2") == []


def test_purging_a_completed_parent_leaves_its_child_runnable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="p"), JobSpec("x", id="other"),
                  JobSpec("x", id="c", after=["p", "other"])])
    store.record_success(_claim_id(store, "p"), _ok())
    assert store.purge("completed", None, 10) == 1
    from queuectl.store import Parent

    assert store.parents("c") == [Parent("p", None, True), Parent("other", "pending", False)]
    assert store.get("c").waiting_on == 1
    store.record_success(_claim_id(store, "other"), _ok())
    assert store.purge("completed", None, 10) == 1
    assert store.parents("c") == [Parent("p", None, True), Parent("other", None, True)]
    c = _claim(store, "c")
    store.record_success(c, _ok())
    # deleting the child takes its own rows; rows naming a deleted parent stay until then
    assert store._conn.execute("SELECT count(*) FROM deps").fetchone()[0] == 2
    store.purge("completed", None, 10)
    assert store._conn.execute("SELECT count(*) FROM deps").fetchone()[0] == 0


def _claim_id(store: SQLiteStore, job_id: str):
    """Claim `job_id` among other eligible jobs: it is made the most urgent first."""
    store._conn.execute("UPDATE jobs SET priority = CASE WHEN id = ? THEN 100 ELSE 0 END"
                        " WHERE state IN ('pending', 'failed')", (job_id,))
    job = store.claim_next("w")
    assert job is not None and job.id == job_id
    return job


def test_deleting_a_parent_keeps_the_rows_that_name_it(tmp_path: Path) -> None:
    """A direct DELETE of the parent (any path) leaves the child's rows: the child keeps
    waiting for what it never saw complete, and parents() reports the parent gone."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="p"), JobSpec("x", id="c", after=["p"])])
    store._conn.execute("DELETE FROM jobs WHERE id = 'p'")
    from queuectl.store import Parent

    assert store.parents("c") == [Parent("p", None, False)]
    assert store.get("c").waiting_on == 1


def test_submit_checks_parents_after_key_and_id_and_stores_all_or_nothing(
        tmp_path: Path) -> None:
    import pytest

    from queuectl.errors import Conflict, NotFound
    from queuectl.store import Submitted

    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="done"), JobSpec("x", id="dead", max_retries=0),
                  JobSpec("x", id="gone")])
    store.record_success(_claim_id(store, "done"), _ok())
    store.record_failure(_claim_id(store, "dead"), _bad())
    store.cancel("gone")
    before = store.counts()
    with pytest.raises(NotFound, match="parent job 'nope' not found"):
        store.submit([JobSpec("x", id="n1"), JobSpec("x", id="n2", after=["done", "nope"])])
    with pytest.raises(Conflict, match="parent job 'dead' is dead: this job would never run"):
        store.submit([JobSpec("x", id="n1"), JobSpec("x", id="n2", after=["dead"])])
    with pytest.raises(Conflict, match="parent job 'gone' is canceled"):
        store.submit([JobSpec("x", id="n3", after=["gone"])])
    assert store.counts() == before and store._conn.execute(
        "SELECT count(*) FROM deps").fetchone()[0] == 0
    # a parent stored earlier in the same call; a completed one is satisfied at once
    store.submit([JobSpec("x", id="n1"), JobSpec("x", id="n2", after=["n1", "done"])])
    assert store.get("n2").waiting_on == 1
    assert [(p.id, p.satisfied) for p in store.parents("n2")] == [("n1", False), ("done", True)]
    store.submit([JobSpec("x", id="n4", after=["done"])])
    assert store.get("n4").waiting_on == 0
    # a spec that stores nothing checks and adds nothing: the id (if_absent) or the key decides
    assert store.submit([JobSpec("x", id="n4", after=["nope"])], if_absent=True) == [
        Submitted("n4", False)]
    store.submit([JobSpec("x", id="k1", unique="key")])
    assert store.submit([JobSpec("x", id="k2", unique="key", after=["nope"])]) == [
        Submitted("k1", False)]
    with pytest.raises(Conflict, match="already exists"):
        store.submit([JobSpec("x", id="n4", after=["nope"])])
    assert [p.id for p in store.parents("n4")] == ["done"]
    with pytest.raises(NotFound):
        store.parents("nope")
    assert store.parents("n1") == []


def test_a_spec_without_after_runs_no_extra_statement(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    store.enqueue([JobSpec("x", id="warm")])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.enqueue([JobSpec("x", id="a"), JobSpec("x", id="b")])
    store._conn.set_trace_callback(None)
    assert not any("deps" in s or "waiting_on" in s for s in statements), statements
    assert len(statements) == 6  # BEGIN, the config, two inserts, the two counters; no more


def test_retry_numbers_the_new_attempts_on(tmp_path: Path) -> None:
    """A job dead after two attempts is retried: its history keeps both, the next attempt
    is number 3 (history, live output, read_output), fencing still by attempts (1)."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="j", max_retries=1)])
    store.record_failure(_claim(store, "j"), _bad())
    store._conn.execute("UPDATE jobs SET run_at = 0")
    store.record_failure(_claim(store, "j"), _bad())
    again = store.retry("j", delay=0)
    assert (again.state, again.attempts, again.attempt_base, again.waiting_on) == (
        "pending", 0, 2, 0)
    assert again.finished_at is None and again.last_error is None and again.exit_code is None
    job = _claim(store, "j")
    assert (job.attempts, job.attempt_number) == (1, 3)
    assert store.append_output(job, 0, b"hello")
    live = store.read_output("j", 3, 0)
    assert live is not None and (live.attempt, live.data, live.running) == (3, b"hello", True)
    assert store.read_output("j", None, 0).attempt == 3
    from queuectl.store import Outcome

    assert store.record_success(job, Outcome(0, None, b"hello", 0.1, live=True))
    history = store.get("j", history=True).history
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert [h["outcome"] for h in history][-1] == "completed"
    ended = store.read_output("j", 3, 0)
    assert ended is not None and (ended.attempt, ended.data, ended.running) == (3, b"hello", False)
    assert store.read_output("j", 1, 0).attempt == 1
    # a later retry of the completed job numbers on again
    assert store.retry("j").attempt_base == 3
    assert store._conn.execute("SELECT count(*) FROM live_output").fetchone()[0] == 0


def test_retry_refuses_and_changes_nothing(tmp_path: Path) -> None:
    import pytest

    from queuectl.errors import Conflict, NotFound

    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="p", max_retries=0), JobSpec("x", id="c", after=["p"]),
                  JobSpec("x", id="run")])
    with pytest.raises(NotFound):
        store.retry("nope")
    with pytest.raises(Conflict, match="job 'c' is pending: only a completed, dead or canceled"):
        store.retry("c")
    store.record_failure(_claim_id(store, "p"), _bad())
    _claim_id(store, "run")
    with pytest.raises(Conflict, match="job 'run' is processing"):
        store.retry("run")
    with pytest.raises(Conflict, match="parent job 'p' is dead: retry it first"):
        store.retry("c")
    assert store.get("c").state == "canceled"
    # the parent first, then the child: it waits for it again
    assert store.retry("p").state == "pending"
    child = store.retry("c")
    assert (child.state, child.waiting_on, child.last_error) == ("pending", 1, None)
    assert store.canceled_dependents("p") == []
    store.cancel("c")
    store._conn.execute("DELETE FROM jobs WHERE id = 'p'")
    with pytest.raises(Conflict, match="parent job 'p' no longer exists"):
        store.retry("c")
    # a key a live job holds: named, as retry_dead names it
    store.submit([JobSpec("x", id="k1", unique="key")])
    store.cancel("k1")
    store.submit([JobSpec("x", id="k2", unique="key")])
    with pytest.raises(Conflict, match="held by live job 'k2'"):
        store.retry("k1")
    assert store.get("k1").state == "canceled"


def test_blocked_jobs_cost_the_claim_counts_and_queues_nothing(tmp_path: Path) -> None:
    """100,000 blocked jobs, written directly: the claim, seconds_until_due, counts and
    queues read them through no index walk of theirs (the plans), and answer right."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="parent", run_at=1e12)])
    with sqlite3.connect(tmp_path / "q.db") as conn:
        # inserted unblocked, then blocked: as submit does it (the counter's trigger is on
        # UPDATE only: an INSERT trigger would cost every enqueued job)
        conn.executemany(
            "INSERT INTO jobs (id, command, state, max_retries, run_at, created_at, updated_at,"
            " queue, waiting_on, priority) VALUES (?, 'true', 'pending', 3, 0, 0, 0, ?, 0, 9)",
            ((f"b{i}", "default" if i % 2 else "mail") for i in range(100_000)))
        conn.execute("UPDATE jobs SET waiting_on = 1 WHERE id <> 'parent'")
        conn.executemany("INSERT INTO deps (child, parent, pos, satisfied)"
                         " VALUES (?, 'parent', 0, 0)", ((f"b{i}",) for i in range(100_000)))
        # a direct writer rebuilds the per-state counters (no INSERT trigger keeps them)
        conn.execute("DELETE FROM job_counts")
        conn.execute(JOB_COUNTS_FROM_JOBS)
    assert store.seconds_until_due() > 1e6  # only the far parent is due, some day
    assert store.seconds_until_due(["mail"]) is None
    store.enqueue([JobSpec("x", id="ready", queue="mail")])
    counts = store.counts()
    assert (counts["pending"], counts["blocked"]) == (100_002, 100_000)
    assert store.counts("mail")["blocked"] == 50_000
    assert store.remaining() == 100_002
    mail = next(q for q in store.queues() if q.name == "mail")
    assert mail.oldest_waiting is not None and mail.oldest_waiting < 60
    assert next(q for q in store.queues() if q.name == "default").oldest_waiting is None
    for queues in (None, ["mail"], ["default", "mail"]):
        plans = _plans(store, lambda q=queues: store.seconds_until_due(q))
        assert all("jobs_due" in p for p in plans), plans
    store.pause("w", queue="default")  # a held queue: the skip along jobs_due_by_queue
    for queues in (None, ["mail"]):
        claimed: list = []
        plans = _plans(store, lambda q=queues, got=claimed: got.append(store.claim_next("w", q)))
        assert claimed[0] is not None and claimed[0].id == "ready"
        assert any("jobs_due" in p for p in plans)
        assert not any("jobs_by_state" in p or p.startswith("SCAN jobs") for p in plans), plans
        store.release(claimed[0], "again")
    store.resume("default")
    plans = _plans(store, lambda: store.counts("mail"))
    assert any("blocked_counts" in p for p in plans), plans


def test_completing_a_parent_of_many_is_one_transaction(tmp_path: Path) -> None:
    """A parent with 1,000 dependents: its completion unblocks all of them at once."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="p")]
                 + [JobSpec("x", id=f"c{i}", after=["p"]) for i in range(1000)])
    assert store.counts()["blocked"] == 1000
    store.record_success(_claim(store, "p"), _ok())
    assert store.counts()["blocked"] == 0
    assert store.seconds_until_due() == 0.0


def test_the_triggers_hold_whatever_writes_the_rows(tmp_path: Path) -> None:
    """Another connection, with SQLite's defaults, ending a parent by direct SQL satisfies
    or cancels its dependents all the same."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="p"), JobSpec("x", id="c", after=["p"]),
                  JobSpec("x", id="d", after=["c"]), JobSpec("x", id="q"),
                  JobSpec("x", id="r", after=["q"])])
    with sqlite3.connect(tmp_path / "q.db") as conn:
        conn.execute("UPDATE jobs SET state = 'dead', updated_at = 5 WHERE id = 'p'")
        conn.execute("UPDATE jobs SET state = 'completed', updated_at = 5 WHERE id = 'q'")
    _assert_canceled_by(store, "c", "p", "dead")
    _assert_canceled_by(store, "d", "c", "canceled")
    assert store.get("d").finished_at == 5
    assert store.get("r").waiting_on == 0


def test_no_statement_replaces_a_row_of_a_table_with_a_delete_trigger() -> None:
    """REPLACE deletes the row it replaces: a job's dependency rows would go with it (its
    DELETE trigger, were recursive triggers on) or be left to a new job of that id."""
    for _section, _verbs, names in sqlite_sql.SECTIONS:
        for name in names:
            for text in sqlite_sql.statements(name):
                flat = " ".join(text.split()).upper()
                assert "REPLACE INTO JOBS" not in flat, name


def test_a_chain_deeper_than_sqlites_trigger_limit_is_canceled_whole(tmp_path: Path) -> None:
    """1,500 jobs each after the one before: the first dies and every other ends canceled in
    that same transaction (a trigger firing itself level by level stops at 1,000)."""
    store = SQLiteStore(tmp_path / "q.db")
    n = 1500
    store.submit([JobSpec("x", id="j0", max_retries=0)]
                 + [JobSpec("x", id=f"j{i}", after=[f"j{i - 1}"]) for i in range(1, n)])
    first = store.claim_next("w")
    assert first is not None and first.id == "j0"
    assert store.record_failure(first, _bad()).state == "dead"
    assert store.counts()["canceled"] == n - 1 and store.counts()["blocked"] == 0
    _assert_canceled_by(store, "j1", "j0", "dead")
    _assert_canceled_by(store, f"j{n - 1}", f"j{n - 2}", "canceled")
    assert len(store.canceled_dependents("j0")) == n - 1


def test_a_dependent_reached_twice_names_the_nearer_parent(tmp_path: Path) -> None:
    """e waits for d (three levels below a) and for b (one below a): a's death reaches it
    first through b. f waits for two children of a: it names the first in its `after`."""
    store = SQLiteStore(tmp_path / "q.db")
    store.submit([JobSpec("x", id="a"), JobSpec("x", id="b", after=["a"]),
                  JobSpec("x", id="c", after=["b"]), JobSpec("x", id="d", after=["c"]),
                  JobSpec("x", id="e", after=["d", "b"]), JobSpec("x", id="b2", after=["a"]),
                  JobSpec("x", id="f", after=["b2", "b"])])
    store.cancel("a")
    _assert_canceled_by(store, "e", "b", "canceled")
    _assert_canceled_by(store, "f", "b2", "canceled")
    _assert_canceled_by(store, "d", "c", "canceled")
    assert sorted(j.id for j in store.canceled_dependents("a")) == ["b", "b2", "c", "d", "e",
                                                                    "f"]


def _blocked_of(store: SQLiteStore, queue: str | None = None) -> int:
    """The blocked jobs as the table has them, counted row by row (what the counter keeps)."""
    where = "state = 'pending' AND waiting_on > 0"
    if queue is None:
        return store._conn.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0]
    return store._conn.execute(f"SELECT count(*) FROM jobs WHERE {where} AND queue = ?",
                               (queue,)).fetchone()[0]


def _assert_blocked(store: SQLiteStore, expected: int) -> None:
    """counts' blocked figure (the counter) matches the rows, in total and per queue."""
    assert store.counts()["blocked"] == _blocked_of(store) == expected
    for queue in ("default", "mail", "nowhere"):
        assert store.counts(queue)["blocked"] == _blocked_of(store, queue), queue


def test_the_blocked_counter_follows_every_path(tmp_path: Path) -> None:
    """The triggers' counter equals a count of the blocked rows after each way a job enters
    or leaves "blocked": submit in two queues, a parent completing partially then fully, a
    dead parent canceling a chain in one statement, a direct cancel, cancel_state, a retry
    making a canceled dependent blocked again, purge, and direct SQL (a delete, updates).
    The chain's cancel shows blocked_updated firing for the rows of deps_parent_ended's
    own UPDATE although recursive_triggers is off."""
    store = SQLiteStore(tmp_path / "q.db")
    _assert_blocked(store, 0)
    # two parents; c waits for both, d for c (mail), e for p1 (mail)
    store.submit([JobSpec("x", id="p1"), JobSpec("x", id="p2"),
                  JobSpec("x", id="c", after=["p1", "p2"]),
                  JobSpec("x", id="d", after=["c"], queue="mail"),
                  JobSpec("x", id="e", after=["p1"], queue="mail")])
    _assert_blocked(store, 3)
    assert store.counts("mail")["blocked"] == 2
    store.record_success(_claim(store, "p1"), _ok())  # c still waits for p2; e is free
    assert store.get("c").waiting_on == 1
    _assert_blocked(store, 2)
    store.record_success(_claim(store, "p2"), _ok())  # c is free, d still blocked
    _assert_blocked(store, 1)
    while (job := store.claim_next("w")) is not None:  # c, e, then d (freed by c)
        store.record_success(job, _ok())
        assert store.counts()["blocked"] == _blocked_of(store)
    _assert_blocked(store, 0)
    # a chain canceled by a dead parent, in the deps trigger's one UPDATE: f -> g -> h
    store.submit([JobSpec("x", id="f", max_retries=0, queue="mail"),
                  JobSpec("x", id="g", after=["f"]),
                  JobSpec("x", id="h", after=["g"], queue="mail")])
    _assert_blocked(store, 2)
    assert store.record_failure(_claim(store, "f"), _bad()).state == "dead"
    assert store.get("h").state == "canceled"
    # g and h left "blocked" in deps_parent_ended's own UPDATE: with recursive_triggers off
    # that statement still fires blocked_updated (only a trigger never fires itself)
    assert store._conn.execute("PRAGMA recursive_triggers").fetchone()[0] == 0
    _assert_blocked(store, 0)
    # a direct cancel of a blocked job (which cancels its own dependents too)
    store.submit([JobSpec("x", id="q", run_at=1e12), JobSpec("x", id="r", after=["q"]),
                  JobSpec("x", id="s", after=["r"], queue="mail")])
    _assert_blocked(store, 2)
    store.cancel("r")
    assert store.get("s").state == "canceled"
    _assert_blocked(store, 0)
    # cancel_state: pending jobs, blocked ones among them
    store.submit([JobSpec("x", id=f"t{i}", after=["q"], queue="mail") for i in range(3)])
    _assert_blocked(store, 3)
    assert store.cancel_state("pending", 2, queue="mail") == 2
    _assert_blocked(store, 1)
    assert store.cancel_state("pending", 100) >= 2  # q and the last t
    _assert_blocked(store, 0)
    # retry: a canceled dependent of a parent that runs again is blocked again
    store.retry("q")
    store.retry("r")
    assert store.get("r").waiting_on == 1
    _assert_blocked(store, 1)
    store.retry("s")  # s waits for r, canceled before and pending now: blocked too
    _assert_blocked(store, 2)
    # purge: finished jobs only, blocked ones never; the counter is untouched
    assert store.purge("canceled", None, 1000) > 0
    assert store.purge("completed", None, 1000) > 0
    _assert_blocked(store, 2)
    # any writer, by direct SQL: a delete and updates of blocked rows (a job is inserted
    # unblocked and blocked by an update, as submit does: there is no INSERT trigger)
    with sqlite3.connect(tmp_path / "q.db") as conn:
        conn.execute("DELETE FROM jobs WHERE id = 's'")
        conn.execute("INSERT INTO jobs (id, command, state, max_retries, run_at, created_at,"
                     " updated_at, queue) VALUES ('u', 'x', 'pending', 0, 0, 0, 0, 'mail')")
        conn.execute("UPDATE jobs SET waiting_on = 2 WHERE id = 'u'")
        conn.execute("UPDATE jobs SET waiting_on = 1 WHERE id = 'u'")  # still blocked: no change
    _assert_blocked(store, 2)
    with sqlite3.connect(tmp_path / "q.db") as conn:
        conn.execute("UPDATE jobs SET waiting_on = 0 WHERE id = 'u'")
        conn.execute("UPDATE jobs SET state = 'processing' WHERE id = 'r'")
    _assert_blocked(store, 0)
    assert store.counts("mail")["blocked"] == 0  # a queue's row at 0 reads 0


def test_a_worker_says_at_start_how_it_hears_of_new_work(queue: Queue, tmp_path: Path) -> None:
    """inotify on the database's directory, with a slow safety-net poll, unless
    --poll-interval says otherwise; PostgreSQL's modes: tests/test_pgbouncer.py."""
    q = queue
    q.enqueue({"command": "true"})
    for args, poll in (((), 1.0), (("--poll-interval", "0.2"), 0.2)):
        log = tmp_path / f"w{poll}.log"
        worker = q.start("worker", "run", "--drain", *args, log=log)
        assert worker.wait(timeout=30) == 0
        started = next(json.loads(line) for line in log.read_text().splitlines()
                       if '"worker_started"' in line)
        assert started["wakeup"] == "inotify on the database's directory", started
        assert started["poll_interval"] == poll, started
