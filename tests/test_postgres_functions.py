"""The worker's per-job statements as server-side functions (postgres_schema, version 11):
created by the migration in the queue's own schema, reached on an upgraded queue, and one
statement (one round trip, one transaction) per job of a draining worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Queue

from queuectl.job import JobSpec
from queuectl.locator import open_store

FUNCTIONS = ["claim", "complete_and_claim", "record_success", "wake"]


def _schema(db: str) -> str:
    return db.rsplit("schema=", 1)[1]


def _functions_of(pg_server: Any, schema: str) -> list[str]:
    out = pg_server.psql("SELECT p.proname FROM pg_proc p JOIN pg_namespace n"
                         f" ON n.oid = p.pronamespace WHERE n.nspname = '{schema}'"
                         " AND p.prokind = 'f' AND p.prorettype <> 'trigger'::regtype"
                         " ORDER BY 1")
    return out.split()


def _enqueue(db: str, jobs: int) -> Queue:
    q = Queue(db)
    q.run("enqueue", "--file", "-", input='{"command": "true"}\n' * jobs, timeout=120)
    return q


def _drain(db: str, jobs: int) -> None:
    q = _enqueue(db, jobs) if jobs else Queue(db)
    q.run("worker", "run", "--drain", "--name", "w", timeout=300)


def test_the_migration_creates_the_functions_in_the_queue_schema(pg_server: Any) -> None:
    """A queue in a schema of its own gets its own functions (none anywhere else), and a
    worker drains it through them: every job completed with its history row and counted,
    and the jobs of another schema left alone."""
    db, other = pg_server.fresh_locator(), pg_server.fresh_locator()
    schema = _schema(db)
    assert schema != "queuectl"
    open_store(other).close()
    store = open_store(db)
    try:
        assert _functions_of(pg_server, schema) == FUNCTIONS
        assert _functions_of(pg_server, "public") == []
        other_store = open_store(other)
        try:
            other_store.enqueue([JobSpec("true", id="elsewhere")])
            _drain(db, 5)
            assert other_store.get("elsewhere").state == "pending"
        finally:
            other_store.close()
        assert store.counts()["completed"] == 5
        s = f'"{schema}"'
        assert pg_server.psql(f"SELECT count(*) FROM {s}.attempts WHERE outcome = 'completed'"
                              " AND worker = 'w'") == "5"
        assert store.metrics().counters  # the history rows' trigger counted them
    finally:
        store.close()


def test_a_version_9_queue_migrates_to_the_functions(pg_server: Any) -> None:
    """A schema 9 queue (before the functions) holding a waiting job: opened, it gets the
    functions, and a worker runs the job through them."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    schema = _schema(db)
    s = f'"{schema}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (9)"]
    old += [statement.format(s=s) for v in range(1, 10) for statement in MIGRATIONS[v]]
    old.append(f"INSERT INTO {s}.jobs (id, command, state, max_retries, run_at, created_at,"
               " updated_at) VALUES ('old', 'true', 'pending', 0, 0, 0, 0)")
    pg_server.psql("; ".join(old))
    assert _functions_of(pg_server, schema) == []
    _drain(db, 0)
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    assert _functions_of(pg_server, schema) == FUNCTIONS
    assert pg_server.psql(f"SELECT state FROM {s}.jobs WHERE id = 'old'") == "completed"


# The text of version 11's functions as released: a migration is never edited, so a change
# to what they run (the claim's or the completion's SQL) needs a new migration that replaces
# them, and this pin moves to it.
RELEASED = "de06917f0955628530105cfa61d0c9b376dd7fea757761011f09f4ad2ccbd962"


def test_the_released_functions_are_not_edited() -> None:
    import hashlib

    from queuectl.backends.postgres_schema import MIGRATIONS
    from queuectl.backends.postgres_sql import functions

    assert MIGRATIONS[11] == functions()
    assert hashlib.sha256("\n".join(functions()).encode()).hexdigest() == RELEASED


# Version 12's replacements (they count their own statement), pinned the same way.
RELEASED_12 = "abab9cddf43d6e451cd8dce18b766e80d854a571acf13f102c1fea2180a8d846"


def test_the_functions_of_version_12_are_not_edited() -> None:
    import hashlib

    from queuectl.backends.postgres_schema import MIGRATIONS
    from queuectl.backends.postgres_sql import functions_12

    assert MIGRATIONS[12][-len(functions_12()):] == functions_12()
    assert hashlib.sha256("\n".join(functions_12()).encode()).hexdigest() == RELEASED_12


# Version 13's (a completion notifies only while a watcher is registered), pinned the same way.
RELEASED_13 = "b8c5138c5160b847d4c865d5d523ebdf4546c5ffa620d6b3d4eaf6856345fcb6"


def test_the_functions_of_version_13_are_not_edited() -> None:
    import hashlib

    from queuectl.backends.postgres_schema import MIGRATIONS
    from queuectl.backends.postgres_sql import functions_13

    assert MIGRATIONS[13][-len(functions_13()):] == functions_13()
    assert hashlib.sha256("\n".join(functions_13()).encode()).hexdigest() == RELEASED_13


# Version 14's wake (an enqueue wakes one idle worker a job), pinned the same way.
RELEASED_14 = "51db0e71c521faa04219786ba0f86d89d8de23aad04c722b826f7beb849b35bb"


def test_the_function_of_version_14_is_not_edited() -> None:
    import hashlib

    from queuectl.backends.postgres_schema import MIGRATIONS
    from queuectl.backends.postgres_sql import wake_function

    assert MIGRATIONS[14][-1] == wake_function()
    assert hashlib.sha256(wake_function().encode()).hexdigest() == RELEASED_14


# -- statements per job --------------------------------------------------------------------
@pytest.fixture(scope="module")
def counted_server() -> Iterator[Any]:
    """A server of its own that counts every statement (pg_stat_statements)."""
    from pgserver import TEST_SETTINGS, Unavailable, _unavailable, start_server

    try:
        server = start_server(prefix="queuectl-pgss-", settings=(
            *TEST_SETTINGS, "shared_preload_libraries=pg_stat_statements",
            "pg_stat_statements.track=top"))
    except Unavailable as exc:
        _unavailable(str(exc))
        raise
    try:
        server.psql("CREATE EXTENSION pg_stat_statements")
        yield server
    finally:
        server.stop()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_draining_worker_sends_one_statement_per_job(counted_server: Any) -> None:
    """200 jobs drained by one worker: one statement that runs 199 or 200 times (the call
    of complete_and_claim: completing a job and claiming the next, in one transaction),
    every other statement of the worker a fixed few."""
    jobs = 200
    db = counted_server.fresh_locator()
    open_store(db).close()
    q = _enqueue(db, jobs)
    counted_server.psql("SELECT pg_stat_statements_reset()")
    q.run("worker", "run", "--drain", "--name", "w", timeout=300)
    rows = [line.split("|", 1) for line in counted_server.psql(
        "SELECT calls, regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements"
        " WHERE query NOT LIKE '%pg_stat%'"
        " ORDER BY calls DESC").splitlines()]
    [(top, query), *rest] = [(int(calls), query) for calls, query in rows]
    assert jobs - 1 <= top <= jobs and ".complete_and_claim(" in query, rows[:3]
    assert sum(calls for calls, _ in rest) < 50, rest  # (per worker, not per job)
    # The call is a transaction of its own: no BEGIN or COMMIT per job.
    assert sum(calls for calls, q in rest if q.strip() in ("BEGIN", "COMMIT")) < 10, rest
    store = open_store(db)
    try:
        assert store.counts()["completed"] == jobs
    finally:
        store.close()


@pytest.mark.postgres
def test_the_functions_skip_the_triggers_for_their_own_statement_only(pg_server: Any) -> None:
    """Version 12's functions count their own statement and turn the counting triggers
    off for it alone: a claim then a plain UPDATE in one transaction, and a completion
    whose statement fails (rolled back to a savepoint) then a plain UPDATE, leave every
    counter equal to a direct count."""
    import psycopg2
    import psycopg2.errors

    db = pg_server.fresh_locator()
    schema = _schema(db)
    s = f'"{schema}"'
    store = open_store(db, for_worker=True)
    try:
        store.enqueue([JobSpec("true", id=f"j{n}") for n in range(4)])
    finally:
        store.close()
    # a history row the server refuses: the completion's statement fails inside the call
    pg_server.psql(f"ALTER TABLE {s}.attempts ADD CONSTRAINT refused"
                   " CHECK (outcome <> 'refused')")
    conn = psycopg2.connect(pg_server.locator())
    claim = (f"SELECT (o_job).id FROM {s}.claim('w', 60::float8, NULL::text[],"
             " '{}'::text[], NULL::text, false)")
    try:
        with conn.cursor() as cur:
            cur.execute(claim)
            claimed = cur.fetchone()[0]
            cur.execute(f"UPDATE {s}.jobs SET state = 'canceled' WHERE id = 'j3'")
            cur.execute("SAVEPOINT a")
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute(f"SELECT * FROM {s}.record_success('{claimed}', 'w', 1,"
                            " NULL, 0, 'refused', NULL, NULL, NULL, NULL, NULL,"
                            " false, false)")
            cur.execute("ROLLBACK TO SAVEPOINT a")
            cur.execute(f"UPDATE {s}.jobs SET state = 'canceled' WHERE id = 'j2'")
            cur.execute("SELECT current_setting('queuectl.bookkept', true)")
            assert cur.fetchone()[0] in (None, "")
        conn.commit()
    finally:
        conn.close()
    kept = pg_server.psql(f"SELECT state, sum(n) FROM {s}.job_counts GROUP BY state"
                          " HAVING sum(n) <> 0 ORDER BY state")
    assert kept == pg_server.psql(f"SELECT state, count(*) FROM {s}.jobs WHERE state <>"
                                  " 'processing' GROUP BY state ORDER BY state")
    assert kept.split() == ["canceled|2", "pending|1"]


@pytest.mark.postgres
def test_a_completion_whose_job_waits_again_takes_it_as_a_new_attempt(pg_server: Any) -> None:
    """complete_and_claim for an attempt whose job was put back meanwhile (lost lease, the
    job waiting again): the completion completes nothing, and the job it picks is that job,
    taken as its next attempt; every counter still equals a direct count."""
    from queuectl.store import Outcome

    db = pg_server.fresh_locator()
    s = f'"{_schema(db)}"'
    store = open_store(db, for_worker=True)
    try:
        store.enqueue([JobSpec("true", id="again")])
        first = store.claim_next("w")
        assert first is not None and first.attempts == 1
        # put back as a reclaim would, ready at once
        pg_server.psql(f"UPDATE {s}.jobs SET state = 'pending', worker = NULL,"
                       " lease_expires_at = NULL WHERE id = 'again'")
        done, got = store.complete_and_claim(
            first, Outcome(exit_code=0, error=None, output=b"", duration=0.0), "w")
        assert done is False
        assert got is not None and (got.id, got.attempts, got.state) == ("again", 2,
                                                                        "processing")
        counts = store.counts()
        assert (counts["pending"], counts["processing"], counts["completed"]) == (0, 1, 0)
        assert pg_server.psql(f"SELECT count(*) FROM {s}.attempts") == "0"
    finally:
        store.close()
