"""Every read verb's SQL, at a size where the planner's choice is real, on both backends:
no full scan of jobs or of the attempt history, and no walk over rows whose number grows
with the table (issue 26, "Ten million jobs on one host").

A queue of ROWS jobs in the proportions of the issue's 10M case (98% completed, 1% pending,
a few failed, canceled and running, a tenth of them in a second queue, one history row per
finished job) and a dead-letter queue as large as the backlog (1% dead: `top` must not sort
it) is filled with direct SQL, once per backend. Each verb then runs as
the CLI runs it (the same store calls) while every statement it sends is recorded; each
recorded statement is then looked at on its own:
- SQLite: EXPLAIN QUERY PLAN must show no `SCAN` of jobs or attempts (a walk of the whole
  table or of a whole index of it: `SCAN jobs USING COVERING INDEX jobs_by_state` reads
  every job), except of jobs_leases, whose rows are the running jobs only. A plan can
  search an index and still walk a million rows of it (`state = 'completed'` and a filter),
  so each statement is also run under a progress handler that counts SQLite's VM
  instructions: at most MAX_STEPS, where a walk over the completed jobs takes several per
  row.
- PostgreSQL (ANALYZE after the fill, default planner settings): EXPLAIN (ANALYZE) must
  show no Seq Scan on jobs or attempts, and no scan node on them that returned or filtered
  out more than MAX_ROWS rows: fewer than the pending jobs, so neither the completed jobs
  nor the backlog may be walked.

Retention (queuectl/retention.py) deletes in batches of policy.BATCH_SIZE, each one purge()
call and so one short transaction: the last tests check that a batch finds its jobs through
an index, touching about the batch's rows, and deletes their history by job id.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queuectl import topview
from queuectl.check import read as check_read
from queuectl.job import JobSpec
from queuectl.metrics import render
from queuectl.operate import queue_rows, stream_output
from queuectl.policy import BATCH_SIZE
from queuectl.store import Outcome, Store

ROWS = 100_000
PENDING_EVERY = 100  # 1% pending: 1,000 of them
MAX_STEPS = 20_000  # SQLite VM instructions per statement (a walk of the pending jobs: more)
MAX_ROWS = 200  # rows a PostgreSQL scan node on jobs or attempts may touch (pending: 1,000)
TABLES = ("jobs", "attempts")


def _state_sql(x: str) -> str:
    """The state of filled job number x, in the issue's proportions."""
    return (f"CASE WHEN {x} % {PENDING_EVERY} = 1 THEN 'pending'"
            f" WHEN {x} % {PENDING_EVERY} = 2 THEN 'dead' WHEN {x} % 20000 = 3 THEN 'failed'"
            f" WHEN {x} % 20000 = 4 THEN 'canceled' ELSE 'completed' END")


def _fill_statements(series: str, t0: float, text_id: str) -> list[str]:
    """The jobs (a tenth in queue `mail`), then one history row per job that ran. `series`
    is a FROM clause yielding x = 1..ROWS; every finished job ended a day ago."""
    at = f"{t0} + x * 0.001"
    state = _state_sql("x")
    return [
        f"""INSERT INTO jobs (id, command, state, attempts, max_retries, priority, run_at,
                created_at, updated_at, started_at, finished_at, exit_code, queue)
            SELECT {text_id}, 'true', {state}, CASE WHEN {state} = 'pending' THEN 0 ELSE 1 END,
                3, 0, {at}, {at}, {at} + 0.004, {at} + 0.001,
                CASE WHEN {state} = 'pending' THEN NULL ELSE {at} + 0.004 END, 0,
                CASE WHEN x % 10 = 0 THEN 'mail' ELSE 'default' END
            FROM {series}""",
        f"""INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at, outcome,
                exit_code, output)
            SELECT {text_id}, 1, 'w', {at} + 0.001, {at} + 0.004,
                CASE WHEN {state} = 'completed' THEN 'completed' ELSE 'failed' END, 0, 'x'
            FROM {series} WHERE {state} <> 'pending'""",
    ]


def _run_live(store: Store) -> None:
    """Some real traffic on top: three running jobs, one completed a moment ago."""
    store.enqueue([JobSpec("true", id=f"live{i}", priority=9) for i in range(4)])
    running = [store.claim_next(f"w{i}") for i in range(4)]
    assert all(running)
    store.record_success(running[0], Outcome(0, None, b"done\n", 0.1))  # type: ignore[arg-type]


def _verbs(store: Store) -> dict[str, Callable[[], Any]]:
    """Each read verb as the CLI runs it: the same store calls (cli.py, operate.py,
    metrics.py, topview.py, check.py)."""
    def metrics() -> str:
        with store.reading():
            return render(store.metrics(), store.workers())

    def logs() -> int:
        return stream_output(store, "live0", None, False, lambda _b: None, lambda _t: None)

    def old_logs() -> int:
        return stream_output(store, "j0090005", None, False, lambda _b: None, lambda _t: None)

    return {
        "status": lambda: (store.counts(), store.paused()),
        "status --queue mail": lambda: (store.counts("mail"), store.paused(),
                                        store.paused("mail")),
        "queue list": lambda: queue_rows(store, []),
        "metrics": metrics,
        "top --once": lambda: topview.collect(store),
        "info": lambda: store.info(),
        "check": lambda: check_read(store, None),
        "dlq list --limit 10": lambda: list(store.iter_jobs("dead", 10)),
        "dlq list --queue mail --limit 10": lambda: list(store.iter_jobs("dead", 10, "mail")),
        "list --state pending --limit 100": lambda: list(store.iter_jobs("pending", 100)),
        "list --state pending --queue mail --limit 100":
            lambda: list(store.iter_jobs("pending", 100, "mail")),
        "logs ID": logs,
        "logs ID (finished long ago)": old_logs,
    }


VERBS = list(_verbs(None).keys())  # type: ignore[arg-type]
_SKIP = re.compile(r"\s*(BEGIN|COMMIT|ROLLBACK|PRAGMA|SAVEPOINT|RELEASE)\b", re.I)


# -- SQLite -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from queuectl.backends.sqlite import SQLiteStore

    path = tmp_path_factory.mktemp("plans") / "q.db"
    SQLiteStore(path).close()
    series = (f"(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
              f" WHERE x < {ROWS}) SELECT x FROM c)")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for statement in _fill_statements(series, time.time() - 86_400, "printf('j%07d', x)"):
        conn.execute(statement)
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(path)
    _run_live(store)
    store.close()
    return path


def _sqlite_findings(path: Path, statements: list[str], run: bool = True) -> list[str]:
    conn = sqlite3.connect(path)
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    found = []
    try:
        for sql in statements:
            if _SKIP.match(sql):
                continue
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            scans = [p for p in plan if re.match(r"SCAN (jobs|attempts)\b", p)
                     and "jobs_leases" not in p]
            if scans:
                found.append(f"{scans} in {sql[:200]}")
            if not run or not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            steps[0] = 0
            conn.set_progress_handler(step, 1)
            conn.execute(sql).fetchall()
            conn.set_progress_handler(None, 1)
            if steps[0] > MAX_STEPS:
                found.append(f"{steps[0]} VM steps ({plan}) in {sql[:200]}")
    finally:
        conn.close()
    return found


@pytest.mark.parametrize("verb", VERBS)
def test_sqlite_read_verbs_never_walk_the_table(sqlite_db: Path, verb: str) -> None:
    from queuectl.backends.sqlite import SQLiteStore

    store = SQLiteStore(sqlite_db)
    statements: list[str] = []
    try:
        store._conn.set_trace_callback(statements.append)
        _verbs(store)[verb]()
        store._conn.set_trace_callback(None)
    finally:
        store.close()
    assert statements
    assert _sqlite_findings(sqlite_db, statements) == []


def test_sqlite_retention_batches_find_their_jobs_by_index(sqlite_db: Path) -> None:
    """One batch per terminal state, as retention runs them (jobs finished over an hour ago):
    no scan of jobs or attempts; the pick reads about a batch of rows."""
    from queuectl.backends.sqlite import SQLiteStore

    store = SQLiteStore(sqlite_db)
    statements: list[str] = []
    try:
        store._conn.set_trace_callback(statements.append)
        deleted = {state: store.purge(state, 3600, BATCH_SIZE)
                   for state in ("completed", "dead", "canceled")}
        store._conn.set_trace_callback(None)
    finally:
        store.close()
    assert deleted["completed"] == BATCH_SIZE and deleted["dead"] > 0
    picks = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(picks) == 3
    writes = list({re.sub(r"'[^']*'", "?", s): s for s in statements
                   if s.lstrip().upper().startswith("DELETE")}.values())
    assert len(writes) == 3  # history, live output, the job: each by id
    assert _sqlite_findings(sqlite_db, picks) == []
    assert _sqlite_findings(sqlite_db, writes, run=False) == []


# -- PostgreSQL --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_filled(pg_server: Any) -> tuple[str, str]:
    """A locator of the filled queue, and its schema."""
    from queuectl.locator import open_store

    schema = pg_server.fresh_schema()
    locator = pg_server.locator(schema=schema)
    open_store(locator).close()
    fill = _fill_statements(f"generate_series(1, {ROWS}) AS x", time.time() - 86_400,
                            "'j' || lpad(x::text, 7, '0')")
    # Triggers off for the fill (as bench/fill.py does): a row trigger per history row
    # would count 100k attempts into one counter row, in one transaction.
    pg_server.psql(f"SET search_path TO {schema}; BEGIN;"
                   " SET LOCAL session_replication_role = replica; " + "; ".join(fill)
                   + f"; COMMIT; ANALYZE {schema}.jobs; ANALYZE {schema}.attempts;")
    store = open_store(locator)
    _run_live(store)
    store.close()
    return locator, schema


def _pg_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node] + [n for child in node.get("Plans", []) for n in _pg_nodes(child)]


def _pg_findings(cur: Any, schema: str, sql: str, max_rows: int) -> list[str]:
    """What EXPLAIN ANALYZE of one statement shows against the rules (module docstring)."""
    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
    plan = cur.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found = []
    for n in (n for top in plan for n in _pg_nodes(top["Plan"])):
        if n.get("Relation Name") not in TABLES or n.get("Schema", schema) != schema:
            continue
        touched = (n.get("Actual Rows", 0) * n.get("Actual Loops", 1)
                   + n.get("Rows Removed by Filter", 0)
                   + n.get("Rows Removed by Index Recheck", 0))
        if n["Node Type"] == "Seq Scan" or touched > max_rows:
            found.append(f"{n['Node Type']} on {n['Relation Name']} ({n.get('Index Name')})"
                         f" touched {touched} rows in {sql[:300]}")
    return found


def _record_statements(store: Any) -> list[str]:
    """Every statement the store sends from now on, as the server receives it."""
    import psycopg2.extensions

    sent: list[str] = []

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query: Any, vars: Any = None) -> Any:
            sent.append(self.mogrify(query, vars).decode())
            return super().execute(query, vars)

    store._conn.cursor_factory = Recording
    return sent


def test_postgres_retention_batches_find_their_jobs_by_index(pg_filled: tuple[str, str]) -> None:
    """A batch as retention runs it, explained (and rolled back): the pick and the deletes
    of history, live output, dependencies and the jobs go by index, about a batch of rows
    each."""
    import psycopg2.extensions

    from queuectl.locator import open_store

    locator, schema = pg_filled
    store = open_store(locator)
    try:
        sent = _record_statements(store)
        assert store.purge("completed", 3600, BATCH_SIZE) == BATCH_SIZE
        conn = store._conn  # type: ignore[attr-defined]
        conn.cursor_factory = psycopg2.extensions.cursor
        [purge] = sent
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
                assert _pg_findings(cur, schema, purge, 2 * BATCH_SIZE) == []
        finally:
            conn.rollback()
            conn.autocommit = True
    finally:
        store.close()


@pytest.mark.parametrize("verb", VERBS)
def test_postgres_read_verbs_never_walk_the_table(pg_filled: tuple[str, str],
                                                  verb: str) -> None:
    import psycopg2
    import psycopg2.extensions

    from queuectl.locator import open_store

    locator, schema = pg_filled
    store = open_store(locator)
    try:
        sent = _record_statements(store)
        _verbs(store)[verb]()
        conn = store._conn  # type: ignore[attr-defined]
        conn.cursor_factory = psycopg2.extensions.cursor
        found = []
        with conn.cursor() as cur:
            for sql in sent:
                if not _SKIP.match(sql):
                    found += _pg_findings(cur, schema, sql, MAX_ROWS)
    finally:
        store.close()
    assert sent
    assert found == []
