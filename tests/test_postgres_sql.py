"""The PostgreSQL store's named statements (queuectl/backends/postgres_sql.py): printable by
name, built once per schema, and every one of them accepted by a real server against the
migrated schema, so a typo in a statement no other test reaches still fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from queuectl.backends.postgres_sql import TEMPLATES, VERBS, statements
from queuectl.locator import open_store

PRINT = [sys.executable, "-m", "queuectl.backends.postgres_sql"]


def test_every_statement_belongs_to_a_verb() -> None:
    listed = {name for names in VERBS.values() for name in names}
    assert listed == set(TEMPLATES)


def test_the_listing_names_every_verb_and_statement() -> None:
    out = subprocess.run(PRINT, capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert list(lines) == list(VERBS)
    assert {n for names in lines.values() for n in names.split(", ")} == set(TEMPLATES)


def test_a_verb_prints_its_statements_in_full() -> None:
    out = subprocess.run([*PRINT, "claim"], capture_output=True, text=True, check=True).stdout
    names = re.findall(r"^-- (\w+) --$", out, re.M)
    assert {"claim", "claim_any", "claim_listed", "claim_limited", "held_by"} <= set(names)
    assert len(names) == len(set(names))
    assert 'FROM "queuectl".jobs' in out and "FOR UPDATE SKIP LOCKED" in out
    assert "{" not in out  # every field filled in
    one = subprocess.run([*PRINT, "claim_listed"], capture_output=True, text=True,
                         check=True).stdout
    assert re.findall(r"^-- (\w+) --$", one, re.M) == ["claim_listed"]
    assert one.strip().endswith("LIMIT 1;")


def test_an_unknown_name_is_an_error() -> None:
    done = subprocess.run([*PRINT, "no_such_verb"], capture_output=True, text=True)
    assert done.returncode == 2 and "no_such_verb" in done.stderr


def test_statements_are_built_once_per_schema() -> None:
    assert statements("a") is statements("a")
    assert statements("a") is not statements("b")
    assert statements("a").claim_any.count('"a".jobs') >= 1
    assert statements("a").claim.count('"a".claim(') == 1
    # A worker's commits skip the WAL flush: its statements say so, its functions are told.
    assert "WHEN true" in statements("a", True).beat
    assert "WHEN true" not in statements("a", False).beat
    assert statements("a", True).claim.endswith(", true)")
    assert statements("a", False).complete_and_claim.endswith(", false)")


# -- every statement on a real server -----------------------------------------------------------
PLANNABLE = re.compile(r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE)\b", re.I)
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")


def _numbered(part: str) -> tuple[str, int]:
    """psycopg2's placeholders as $1, $2...: one number per name, one per bare %s (and
    `%%` a literal `%`, as psycopg2 sends it)."""
    numbers: dict[str, int] = {}
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        name = match.group(1)
        if name is None or name not in numbers:
            count += 1
            if name is not None:
                numbers[name] = count
            return f"${count}"
        return f"${numbers[name]}"

    return PLACEHOLDER.sub(number, part).replace("%%", "%"), count


def _check(cur: Any, part: str) -> None:
    """Parse and plan one statement: PREPARE it, then EXPLAIN (no ANALYZE: nothing runs) an
    EXECUTE with every parameter NULL. Utility statements (transaction control, SET LOCAL,
    NOTIFY, LISTEN, CREATE SCHEMA) run for real inside a transaction rolled back."""
    if PLANNABLE.match(part):
        text, count = _numbered(part)
        cur.execute(f"PREPARE checked AS {text}")
        nulls = f"({', '.join(['NULL'] * count)})" if count else ""
        try:
            cur.execute(f"EXPLAIN EXECUTE checked{nulls}")
            assert cur.fetchall()
        finally:
            cur.execute("DEALLOCATE checked")
        return
    assert "%" not in part, part
    if re.match(r"\s*(BEGIN|COMMIT|ROLLBACK)\s*($|ISOLATION)", part, re.I):
        cur.execute(part)  # on an autocommit connection: opens or ends nothing of ours
        cur.execute("ROLLBACK")
        return
    cur.execute("BEGIN")
    try:
        cur.execute("SAVEPOINT lane")
        if part.strip().upper().startswith("CREATE SCHEMA"):
            import psycopg2.errors

            with pytest.raises(psycopg2.errors.DuplicateSchema):  # parsed, and it exists
                cur.execute(part)
        else:
            cur.execute(part)
    finally:
        cur.execute("ROLLBACK")


@pytest.mark.parametrize("for_worker", [False, True], ids=["cli", "worker"])
def test_every_statement_parses_and_plans(pg_locator: str, for_worker: bool) -> None:
    store: Any = open_store(pg_locator, for_worker=for_worker)  # creates the schema
    try:
        sql = statements(store.target.schema, for_worker)
        assert store.sql is sql
        conn = store.target.connect()
        failures = []
        try:
            with conn.cursor() as cur:
                for name in TEMPLATES:
                    for part in filter(str.strip, getattr(sql, name).split(";")):
                        try:
                            _check(cur, part)
                        except Exception as exc:  # collect them all, fail once
                            if conn.get_transaction_status():
                                cur.execute("ROLLBACK")
                            failures.append(f"{name}: {part.strip()[:60]}...: {exc}")
        finally:
            conn.close()
        assert failures == []
    finally:
        store.close()


# -- plans with many blocked jobs -------------------------------------------------------------
BLOCKED = 100_000


def _plan(cur: Any, statement: str, params: dict[str, Any]) -> str:
    """EXPLAIN (nothing runs) of the statement's query part, with the claim's SET LOCAL
    applied as the store applies it, inside a transaction rolled back."""
    cur.execute("BEGIN")
    try:
        text = ""
        for part in filter(str.strip, statement.split(";")):
            if PLANNABLE.match(part):
                cur.execute("EXPLAIN " + cur.mogrify(part, params).decode())
                text += "\n".join(row[0] for row in cur.fetchall()) + "\n"
            elif part.strip().upper().startswith("SET LOCAL"):
                cur.execute(part)
        return text
    finally:
        cur.execute("ROLLBACK")


def _generic_plan(cur: Any, statement: str, params: dict[str, Any]) -> str:
    """EXPLAIN of the plan the worker's functions keep after their first calls: the body
    PREPAREd and planned generic (no parameter values known), with sorting off as the
    functions' SET clause has it, in a transaction rolled back."""
    names = list(dict.fromkeys(PLACEHOLDER.findall(statement)))
    text, _ = _numbered(statement)
    values = ", ".join(cur.mogrify("%s", (params[n],)).decode() for n in names)
    cur.execute("BEGIN")
    try:
        cur.execute("SET LOCAL plan_cache_mode TO force_generic_plan")
        cur.execute("SET LOCAL enable_sort TO off")
        cur.execute(f"PREPARE generic AS {text}")
        try:
            cur.execute(f"EXPLAIN EXECUTE generic({values})")
            return "\n".join(row[0] for row in cur.fetchall())
        finally:
            cur.execute("DEALLOCATE generic")
    finally:
        cur.execute("ROLLBACK")


@pytest.mark.slow
def test_blocked_jobs_cost_the_claim_and_the_waits_nothing(pg_locator: str) -> None:
    """100,000 jobs waiting for a parent: the claims, seconds_until_due, the oldest wait
    and counts' blocked term all go through their indexes (no Seq Scan on jobs), and the
    claim still finds the one eligible job behind them."""
    from queuectl.job import JobSpec

    store: Any = open_store(pg_locator)
    try:
        s = f'"{store.target.schema}"'
        conn = store.target.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"INSERT INTO {s}.jobs (id, command, state, max_retries, priority, run_at,"
                    " created_at, updated_at, waiting_on, queue)"
                    " SELECT 'b' || g, 'true', 'pending', 0, 10, 0, 0, 0, 1,"
                    " CASE WHEN g % 2 = 0 THEN 'default' ELSE 'other' END"
                    f" FROM generate_series(1, {BLOCKED}) g")
                # As autovacuum leaves a table after a bulk insert: analyzed, and its
                # visibility map set (what makes an index-only count cheap).
                cur.execute(f"VACUUM ANALYZE {s}.jobs")
            store.enqueue([JobSpec("true", id="free")])
            sql = statements(store.target.schema)
            claim = {"worker": "w", "lease": 60.0, "queues": ["other", "default"],
                     "skip": [], "locked": None, "ending": None, "now": 4e9, "blocked": []}
            checked = {
                "claim_any": (sql.claim_any, claim),
                "claim_any_excluding": (sql.claim_any, {**claim, "skip": ["other"]}),
                "claim_listed": (sql.claim_listed, claim),
                "seconds_until_due": (sql.seconds_until_due, {}),
                "seconds_until_due_listed": (sql.seconds_until_due_listed,
                                             {"queues": ["default"]}),
                "seconds_until_due_except": (sql.seconds_until_due_except,
                                             {"exclude": ["other"]}),
                "queues": (sql.queues, {"window": 30.0}),
                "counts": (sql.counts, {"window": 30.0}),
                "counts_in_queue": (sql.counts_in_queue, {"window": 30.0,
                                                          "queue": "default"}),
            }
            plans = {}
            with conn.cursor() as cur:
                for name, (statement, params) in checked.items():
                    plans[name] = _plan(cur, statement, params)
                # What the claim and complete_and_claim functions run, as generic plans.
                ending = {"id": "gone", "job_worker": "w", "attempts": 1, "started_at": None,
                          "exit_code": 0, "outcome": "completed", "output": None,
                          "total": None, "cpu_user": None, "cpu_system": None,
                          "memory_peak": None, "live": False, "started": 0.0,
                          "seconds": 1.0, "next": "x", "next_queue": "default",
                          "next_state": "pending"}
                for name, statement, params in (
                        ("generic claim_any", sql.claim_any, claim),
                        ("generic claim_any_excluding", sql.claim_any,
                         {**claim, "skip": ["other"]}),
                        ("generic claim_listed", sql.claim_listed, claim),
                        ("generic complete", sql.complete, {**claim, **ending}),
                        ("generic claim_job", sql.claim_job, {**claim, **ending})):
                    plans[name] = _generic_plan(cur, statement, params)
        finally:
            conn.close()
        for name in ("claim_any", "claim_any_excluding", "claim_listed", "seconds_until_due",
                     "seconds_until_due_listed", "seconds_until_due_except",
                     "generic claim_any", "generic claim_any_excluding",
                     "generic claim_listed"):
            assert "Seq Scan on jobs" not in plans[name], (name, plans[name])
            # one of the partial indexes of eligible jobs, which hold no blocked job
            assert re.search(r"using jobs_(next_)?due\w* on jobs", plans[name]), plans[name]
        for name in ("generic complete", "generic claim_job"):  # the job through an index
            assert "Seq Scan" not in plans[name], (name, plans[name])
            assert re.search(r"Index Scan using jobs_\w+ on jobs", plans[name]), plans[name]
        # counts: the states and the blocked figure read job_counts (schema 12: `blocked`
        # is a key there), never jobs; queues: the oldest wait uses its index.
        for name in ("counts", "counts_in_queue"):
            assert "on job_counts" in plans[name], (name, plans[name])
            # jobs is read once, through an index: the processing ones
            assert plans[name].count(" on jobs") == 1, (name, plans[name])
            assert "Seq Scan on jobs" not in plans[name], (name, plans[name])
        assert re.search(r"using jobs_(next_)?due\w* on jobs", plans["queues"]), plans["queues"]
        assert store.claim_next("w").id == "free"
        assert store.claim_next("w") is None
        assert store.seconds_until_due() is None
        assert store.counts()["blocked"] == BLOCKED
        assert {q.name: q.oldest_waiting for q in store.queues()} == {"default": None,
                                                                      "other": None}
    finally:
        store.close()
