"""Every named statement of the SQLite store (queuectl/backends/sqlite_sql.py) is valid SQL
for the current schema, the claim path uses the indexes it was built around, and the
module prints them. A typo in a statement no other test reaches fails here, by name."""

import os
import subprocess
import sys

import pytest

from queuectl.backends import sqlite_sql
from queuectl.backends.sqlite import SQLiteStore

# Constants of sqlite_sql that are not statements (its own, and those it imports).
NOT_STATEMENTS = {"JOB_COLUMNS", "WAL_CHECKPOINT_PAGES", "SECTIONS", "DEFAULT_QUEUE", "ROW_COLUMNS"}

# What the plan of each variant of a statement must show (EXPLAIN QUERY PLAN's detail
# lines, joined). Beyond these, every `INDEXED BY x` must show `INDEX x` in its plan.
PLANS = {
    # the claim: waiting jobs off the partial indexes, the row by rowid or id
    "CLAIM_ANY": ["SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
                  "SCAN jobs USING INDEX jobs_due",
                  "SEARCH flags USING COVERING INDEX sqlite_autoindex_flags_1 (name=?)"],
    "BEST_OF_ANY_QUEUE": ["SCAN jobs USING INDEX jobs_due"],
    "BEST_OF_QUEUE": ["SEARCH jobs USING INDEX jobs_due_by_queue (queue=?)"],
    "NEXT_WAITING_QUEUE": ["SEARCH jobs USING INDEX jobs_due_by_queue (queue>?)"],
    "PROCESSING_IN_QUEUE": ["INDEX jobs_leases"],
    "CLAIM_BY_ID": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    # the attempt's end and the worker's writes
    "COMPLETE_ROW": ["SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"],
    "COMPLETE_ID": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "RENEW_LEASE": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "HELD_JOB": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "END_ATTEMPT": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "RELEASE": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "ANY_EXPIRED": ["INDEX jobs_leases"],
    "FIRST_WAITING_OF_NEXT_QUEUE": ["SEARCH jobs USING INDEX jobs_due_by_queue (queue>?)"],
    "FIRST_WAITING_OF_LOWER_PRIORITY": [
        "SEARCH jobs USING INDEX jobs_due_by_queue (queue=? AND priority<?)"],
    "COMPLETED_SINCE": ["SEARCH jobs USING INDEX jobs_completed (finished_at>?)"],
    "QUEUE_COUNTS": ["SCAN job_counts", "SCAN jobs USING INDEX jobs_leases"],
    # unique keys: the live holder off the unique partial index, a key's jobs off theirs
    "LIVE_HOLDER": ["SEARCH jobs USING INDEX jobs_unique_live (unique_key=?)"],
    "REVIVABLE_DEAD": ["SEARCH jobs USING INDEX jobs_by_state (state=?",
                       "SEARCH live USING INDEX jobs_unique_live (unique_key=?)"],
    "LIST_JOBS_OF_KEY": ["SEARCH jobs USING INDEX jobs_by_unique (unique_key=?)"],
    "LIST_JOBS_OF_KEY_LIMITED": ["SEARCH jobs USING INDEX jobs_by_unique (unique_key=?)"],
    # dependencies: blocked jobs counted off the triggers' counter (blocked_counts), never
    # a read of the blocked jobs; a job's parents by its key, its canceled dependents off
    # deps_waiting
    "FIRST_DUE": ["INDEX jobs_due"],
    "FIRST_DUE_IN_QUEUES": ["SEARCH jobs USING INDEX jobs_due_by_queue (queue=?)"],
    "FIRST_DUE_EXCEPT_QUEUES": ["INDEX jobs_due"],  # an all-queue worker's, lanes excluded
    "COUNTS": ["SCAN blocked_counts", "SCAN job_counts", "SCAN jobs USING INDEX jobs_leases"],
    "COUNTS_OF_QUEUE": ["SEARCH blocked_counts USING PRIMARY KEY (queue=?)",
                        "SEARCH job_counts USING PRIMARY KEY (queue=?)",
                        "SCAN jobs USING INDEX jobs_leases"],
    "PARENT_STATE": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "SET_WAITING_ON": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "PARENTS": ["SEARCH d USING PRIMARY KEY (child=?)",
                "SEARCH j USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "CANCELED_DEPENDENTS": ["SEARCH d USING INDEX deps_waiting (parent=?)",
                            "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "RETRY_JOB": ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"],
}
# A sort the index should have made unnecessary: the claim's picks never build one, nor
# does a key's listing (its index is in created_at order).
NO_SORT = {"CLAIM_ANY", "BEST_OF_ANY_QUEUE", "BEST_OF_QUEUE", "LIST_JOBS_OF_KEY",
           "LIST_JOBS_OF_KEY_LIMITED", "REVIVABLE_DEAD"}


def _names() -> list[str]:
    return [name for _section, _verbs, names in sqlite_sql.SECTIONS for name in names]


def _complete(text: str) -> list[str]:
    """A statement as it can run: a `{queues}` template for one and for three names."""
    if "{queues}" not in text:
        return [text]
    return [sqlite_sql.in_queues(text, ["a"]), sqlite_sql.in_queues(text, ["a", "b", "c"])]


def _cases() -> list[tuple[str, int, str]]:
    return [(name, i, text)
            for name in _names()
            for i, variant in enumerate(sqlite_sql.statements(name))
            for text in _complete(variant)]


def _params() -> list[object]:
    """One test per complete statement, named after it: NAME, NAME-2 for its 2nd variant or
    completion."""
    seen: dict[str, int] = {}
    params = []
    for name, variant, text in _cases():
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        params.append(pytest.param(name, variant, text, id=label))
    return params


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    store = SQLiteStore(tmp_path_factory.mktemp("sql") / "q.db")  # created and migrated
    yield store._conn
    store.close()


def test_every_statement_is_listed_once():
    names = _names()
    assert len(names) == len(set(names)), "a statement listed in two sections"
    defined = {name for name, value in vars(sqlite_sql).items()
               if name.isupper() and not name.startswith("_") and name not in NOT_STATEMENTS
               and isinstance(value, str | tuple)}
    assert defined == set(names), "SECTIONS and the module's statements differ"


@pytest.mark.parametrize(("name", "variant", "text"), _params())
def test_statement_prepares(conn, name, variant, text):
    """EXPLAIN compiles the statement against the schema without running it."""
    assert "{" not in text, f"{name}: an unfilled template"
    try:
        conn.execute("EXPLAIN " + text, (None,) * text.count("?")).fetchall()
    except Exception as exc:
        pytest.fail(f"{name} (variant {variant}) does not prepare: {exc}\n{text}")


def _plan(conn, text: str) -> str:
    rows = conn.execute("EXPLAIN QUERY PLAN " + text, (None,) * text.count("?")).fetchall()
    return "\n".join(row[3] for row in rows)


@pytest.mark.parametrize("name", sorted({name for name, _i, text in _cases()
                                         if "INDEXED BY" in text or name in PLANS}))
def test_statement_uses_its_indexes(conn, name):
    for variant, statement in enumerate(sqlite_sql.statements(name)):
        for text in _complete(statement):
            plan = _plan(conn, text)
            wanted = list(PLANS.get(name, []))
            words = text.split()
            wanted += [f"INDEX {words[i + 2]}" for i, word in enumerate(words[:-2])
                       if word == "INDEXED" and words[i + 1] == "BY"]
            for expected in wanted:
                assert expected in plan, (
                    f"{name} (variant {variant}): the plan lost {expected!r}:\n{plan}")
            if name in NO_SORT:
                assert "TEMP B-TREE" not in plan, f"{name} sorts: its index order is lost:\n{plan}"


def test_by_state_picks_the_variant_and_its_parameters():
    variants = sqlite_sql.COUNT_IN_STATE
    assert sqlite_sql.by_state(variants, "dead", None) == (variants[0], ("dead",))
    assert sqlite_sql.by_state(variants, "dead", "default") == (variants[1], ("dead", "default"))
    assert sqlite_sql.by_state(variants, "dead", "mail") == (variants[2], ("mail", "dead"))
    assert "jobs_by_queue" in variants[2] and "jobs_by_state" in variants[1]


def test_by_key_picks_the_variant_and_its_parameters():
    variants = sqlite_sql.LIST_JOBS_OF_KEY
    assert sqlite_sql.by_key(variants, "k", None, None) == (variants[0], ("k",))
    assert sqlite_sql.by_key(variants, "k", "dead", None) == (variants[1], ("k", "dead"))
    assert sqlite_sql.by_key(variants, "k", None, "mail") == (variants[2], ("k", "mail"))
    assert sqlite_sql.by_key(variants, "k", "dead", "mail") == (
        variants[3], ("k", "dead", "mail"))
    for i, text in enumerate(variants):  # one parameter per filter, and the key's index
        assert text.count("?") == 1 + (i in (1, 3)) + (i in (2, 3))
        assert "INDEXED BY jobs_by_unique" in text


def test_in_queues_has_one_parameter_per_name():
    assert sqlite_sql.in_queues("x IN {queues}", ["a", "b"]) == "x IN (?, ?)"
    assert sqlite_sql.in_queues("x IN {queues}", []) == "x IN ()"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    return subprocess.run([sys.executable, "-m", "queuectl.backends.sqlite_sql", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_module_lists_and_prints_statements():
    listing = _run()
    assert listing.returncode == 0, listing.stderr
    for section, verbs, names in sqlite_sql.SECTIONS:
        assert f"{section} ({verbs}):" in listing.stdout
        for name in names:
            assert f"  {name}" in listing.stdout
    claim = _run("claim")
    assert claim.returncode == 0, claim.stderr
    assert "-- CLAIM_ANY [claim] --" in claim.stdout
    assert sqlite_sql.CLAIM_ANY + ";" in claim.stdout
    assert "-- BEST_OF_QUEUE [claim] --" in claim.stdout
    by_verb = _run("complete_and_claim")  # a Store verb prints every block it runs
    assert "-- CLAIM_ANY [claim] --" in by_verb.stdout
    assert "-- COMPLETE_ROW [complete] --" in by_verb.stdout
    one = _run("recent_jobs")
    assert one.stdout.count("-- RECENT_JOBS (") == 3
    assert "-- RECENT_JOBS (a named queue) [top] --" in one.stdout
    by_key = _run("iter_jobs")
    assert "-- LIST_JOBS_OF_KEY (one state of one queue) [iter_jobs] --" in by_key.stdout
    assert "-- LIVE_HOLDER [submit] --" in _run("submit").stdout
    assert "-- CANCELED_DEPENDENTS [dependencies] --" in _run("canceled_dependents").stdout
    named = _run("claim_by_id")
    assert named.returncode == 0 and named.stdout.startswith("-- CLAIM_BY_ID [claim] --")
    missing = _run("no_such_thing")
    assert missing.returncode == 1 and "no block, verb or statement" in missing.stdout


# The statements the triggers of schema 10 run (with new.id / old.id as the parameter), as
# the trigger bodies state them: each an index probe, never a walk of the jobs.
TRIGGER_PLANS = {
    "deps_parent_completed": ["SEARCH deps USING INDEX deps_waiting (parent=?)",
                              # covering since jobs_blocked went: no index reads waiting_on
                              "SEARCH jobs USING COVERING INDEX sqlite_autoindex_jobs_1 (id=?)"],
    "deps_parent_ended": ["SEARCH d USING INDEX deps_waiting (parent=?)",
                          "SEARCH j USING INDEX sqlite_autoindex_jobs_1 (id=?)",
                          "SEARCH jobs USING COVERING INDEX sqlite_autoindex_jobs_1 (id=?)",
                          "SEARCH deps USING INDEX deps_waiting (parent=?)"],
    "deps_child_deleted": ["SEARCH deps USING PRIMARY KEY (child=?)"],
    # the blocked counter: an upsert of one queue's row (no plan), or its update by key
    "blocked_updated": [],
    "blocked_deleted": ["SEARCH blocked_counts USING PRIMARY KEY (queue=?)"],
    # the per-state counter (schema 13): one row by key, or an upsert of it (no plan)
    "counts_left": ["SEARCH job_counts USING PRIMARY KEY (queue=? AND state=?)"],
    "counts_entered": [],
    "counts_deleted": ["SEARCH job_counts USING PRIMARY KEY (queue=? AND state=?)"],
}


@pytest.mark.parametrize("name", sorted(TRIGGER_PLANS))
def test_trigger_bodies_are_index_probes(conn, name):
    import re

    text = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                        (name,)).fetchone()[0]
    when = re.search(r"WHEN (.*?)\s+BEGIN", text, re.S)
    body = re.search(r"BEGIN(.*)END", text, re.S).group(1)
    parts = [s.strip() for s in body.split(";") if s.strip()]
    if when:  # the WHEN's probe, as its own statement
        parts.append("SELECT " + re.sub(r"\bnew\.state\b", "'completed'", when.group(1)))
    plan = "\n".join(_plan(conn, re.sub(r"\b(new|old)\.(id|updated_at|state|queue|waiting_on)\b", "?", part))
                     for part in parts)
    for expected in TRIGGER_PLANS[name]:
        assert expected in plan, f"{name}: {expected!r} missing:\n{plan}"
    assert "SCAN jobs" not in plan and "jobs_by_state" not in plan, plan


def test_the_claim_and_counts_plans_hold_with_blocked_jobs(tmp_path):
    """With 20,000 blocked jobs and ANALYZE's statistics, the claim still walks jobs_due
    and the blocked count reads blocked_counts: no scan of the jobs table."""
    store = SQLiteStore(tmp_path / "q.db")
    c = store._conn
    c.executemany("INSERT INTO jobs (id, command, state, max_retries, run_at, created_at,"
                  " updated_at, waiting_on) VALUES (?, 'x', 'pending', 0, 0, 0, 0, 1)",
                  ((f"b{i}",) for i in range(20_000)))
    c.execute("INSERT INTO jobs (id, command, state, max_retries, run_at, created_at,"
              " updated_at) VALUES ('ready', 'x', 'pending', 0, 0, 0, 0)")
    c.execute("ANALYZE")
    try:
        for name in ("CLAIM_ANY", "BEST_OF_ANY_QUEUE", "BEST_OF_QUEUE", "NEXT_WAITING_QUEUE",
                     "FIRST_DUE", "COUNTS", "FIRST_WAITING_OF_NEXT_QUEUE"):
            plan = _plan(c, sqlite_sql.statements(name)[0])
            assert "jobs_due" in plan or "blocked_counts" in plan, f"{name}:\n{plan}"
            assert "SCAN jobs\n" not in plan + "\n", f"{name}:\n{plan}"
        assert c.execute(sqlite_sql.BEST_OF_ANY_QUEUE, (1,)).fetchone()[0] == "ready"
    finally:
        store.close()


@pytest.mark.parametrize("name", ["COUNTS", "COUNTS_OF_QUEUE"])
def test_counts_reads_blocked_off_the_counter_not_the_jobs(conn, name):
    """The states are counted off job_counts and the running jobs off jobs_leases (schema
    13); the blocked term reads blocked_counts (one row per queue) and never the jobs
    table or one of its indexes. (The fifth part counts on-dead notices, in their own
    table.)"""
    plan = _plan(conn, sqlite_sql.statements(name)[0]).split("\n")
    terms: list[list[str]] = [[]]
    for line in plan:
        if line == "UNION ALL":
            terms.append([])
        elif line not in ("COMPOUND QUERY", "LEFT-MOST SUBQUERY"):
            terms[-1].append(line)
    assert len(terms) == 5, plan
    states, running, blocked, workers, notices = terms
    assert notices and all("notices" in line for line in notices), plan
    assert states and all("job_counts" in line or "TEMP B-TREE" in line for line in states), plan
    assert running == ["SCAN jobs USING INDEX jobs_leases"], plan
    assert blocked and all("blocked_counts" in line for line in blocked), plan
    assert not any("jobs" in line for line in blocked), plan


def test_every_connection_keeps_recursive_triggers_off(tmp_path):
    """The cancel trigger covers a whole chain in one statement; it must not nest."""
    store = SQLiteStore(tmp_path / "q.db")
    try:
        assert store._conn.execute("PRAGMA recursive_triggers").fetchone()[0] == 0
    finally:
        store.close()
