"""Every SQL statement the PostgreSQL store runs, by name: one block per verb of the storage
contract, in the order `queuectl/store.py` gives its sections.

Each statement is a template over the queue's schema, written as the server runs it but for
these fields, which `statements()` fills in once per store (cached per schema):

    {s}              the quoted schema, e.g. "queuectl" (`?schema=` in the URL)
    {channel}        the NOTIFY channel of that schema, e.g. queuectl_jobs
    {event}          the NOTIFY payload of news that brings no work (EVENT)
    {now}            the server's clock in epoch seconds (NOW)
    {columns}        the job columns Job.from_row reads, in its order (job.ROW_COLUMNS)
    {j_columns}      the same, of the table aliased j
    {o_columns}      every column of the job row o_job the worker's functions return, in
                     the table's order (the store picks them out by name: `(o_job).*` is
                     parsed and planned faster than the list)
    {worker_commit}  `SET LOCAL synchronous_commit TO off; ` in a worker's store, else empty:
                     workers' commits skip waiting for the WAL flush (as SQLite's
                     synchronous=NORMAL): a server crash may undo their last few state
                     changes, and those jobs run again. Not where the server has
                     synchronous standbys (synchronous_standbys, read as a worker opens
                     the store): there a worker's commits wait as everyone's do.
    {worker_async}   `true` in a worker's store, else `false`: the same, for the worker's
                     functions (their argument p_async)

Placeholders `%(name)s` and `%s` are psycopg2's, bound per call. A statement that is several
statements separated by `;` is sent as one simple query: PostgreSQL runs it as one implicit
transaction, in one round trip. The CTEs that several statements share (a claim's `held`,
`nxt` and `claimed`; a completion's `done`, `hist` and `gone`) are written once below and
composed when this module is imported; `python -m queuectl.backends.postgres_sql NAME`
prints a verb's or a statement's complete text, as the server receives it.

The schema's own DDL (tables, indexes, triggers) is in `postgres_schema`, as migrations.
"""

from __future__ import annotations

import binascii
import functools
import re
import sys

from queuectl.job import ROW_COLUMNS
from queuectl.policy import duration_bucket_sql

DEFAULT_SCHEMA = "queuectl"
NOW = "extract(epoch FROM clock_timestamp())::float8"
# NOTIFY payload of events that concern watchers (`wait`, `logs --follow`, a running job's
# cancel check) but bring no new work: idle workers' drain() ignores them.
EVENT = "e"
# The worker's functions' PL/pgSQL for that event (on the schema's channel).
_NOTIFY_EVENT = f"PERFORM pg_notify('{{channel}}', '{EVENT}');"
WORKER_COMMIT = "SET LOCAL synchronous_commit TO off; "

# What `verify` checks, table by table: the rights the verbs need. One check per right:
# has_table_privilege('a,b') is true if *any* is held.
PRIVILEGES = {
    "jobs":           "SELECT,INSERT,UPDATE,DELETE",
    "attempts":       "SELECT,INSERT,DELETE",
    "workers":        "SELECT,INSERT,UPDATE,DELETE",
    "config":         "SELECT,INSERT,UPDATE",
    "schema_version": "SELECT",
    "flags":          "SELECT,INSERT,DELETE",
    "duties":         "SELECT,INSERT,UPDATE",
    "live_output":    "SELECT,INSERT,UPDATE,DELETE",
    "queues":         "SELECT,INSERT,UPDATE,DELETE",
    "deps":           "SELECT,INSERT,UPDATE,DELETE",
    "notices":        "SELECT,INSERT,UPDATE,DELETE",
    "job_counts":     "SELECT,INSERT,UPDATE",  # every state change counts (version 10)
    "watchers":       "SELECT",  # a completion notifies only while one watches (version 13)
}

# -- shared pieces ---------------------------------------------------------------------------
_T = "t AS (SELECT {now} AS now)"  # one reading of the server's clock per statement

# Counter rows (job_counts, counters) are spread over this many shards (by server process
# id, summed when read), so workers completing jobs of one queue at once rarely wait on
# each other's row.
SHARDS = 16


def bucket(seconds: str) -> str:
    return duration_bucket_sql(seconds, "'Infinity'::float8")


# How long an ended attempt {a} ran.
SECONDS = "greatest(coalesce({a}.finished_at - {a}.started_at, 0), 0)"

# A claim must walk jobs_due in its order and stop at the first free job. With many
# finished jobs, ANALYZE's sample holds no waiting one, the planner expects a single waiting
# row, and it prefers reading every due job through jobs_next_due and sorting them: each
# claim then costs O(due jobs) (measured: 970 rows read and sorted, 0.48 ms against
# 0.08 ms). With sorting off for the claim's transaction the ordered scan of jobs_due is the
# only plan left, whatever the statistics say.
_CLAIM_PLAN = "{worker_commit}SET LOCAL enable_sort TO off;"

# The claim's CTEs (after `t`): `held` lists the queues with a limit or a pause, `nxt` is the
# best eligible job of the queues a worker serves (every queue, or `%(queues)s` in
# preference order), skipping paused queues, those at their limit and `%(skip)s` (queues
# let go of in a limited claim's turns, and the queues an all-queue worker excludes), and
# `claimed` takes it. A job of a limited queue is taken only when that queue's row was
# locked before this statement (`%(locked)s`), so its count of processing jobs is exact and
# no racing claimer can add to it; else `nxt` names the queue and the store locks it (the
# claim_limited statements). Unlimited queues never lock anything but the job: with no
# limit, no pause and no list a claim is an ordered scan of jobs_due.
#
# `held` counts in this statement's snapshot, taken after any lock the caller holds;
# `%(ending)s` is the job complete_and_claim ends in the same statement (a hint only: a
# limited queue's count that decides is taken under its lock).
_HELD = """held AS (
    SELECT q.name, q.paused_since IS NULL AND q.concurrency > 0 AS limited,
        q.paused_since IS NOT NULL OR (q.concurrency > 0 AND q.concurrency <=
            (SELECT count(*) FROM {s}.jobs r
             WHERE r.queue = q.name AND r.state = 'processing'
                 AND r.id IS DISTINCT FROM %(ending)s)) AS blocked
    FROM {s}.queues q WHERE q.concurrency > 0 OR q.paused_since IS NOT NULL)"""

_NEXT_ANY = """nxt AS (
    SELECT id, queue FROM {s}.jobs
    WHERE state IN ('pending', 'failed') AND waiting_on = 0
        AND run_at <= (SELECT now FROM t)
        AND NOT EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'paused')
        AND queue <> ALL(ARRAY(SELECT name FROM held WHERE blocked))
        AND queue <> ALL(%(skip)s::text[])
    ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"""

# The first listed queue with an eligible job: the nested loop walks the list in its order
# and stops at the first row (no sort, which would visit, and lock the best job of, every
# listed queue).
_NEXT_LISTED = """nxt AS (
    SELECT x.id, x.queue
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS p(name, n)
    CROSS JOIN LATERAL (
        SELECT id, queue FROM {s}.jobs
        WHERE queue = p.name AND state IN ('pending', 'failed') AND waiting_on = 0
            AND run_at <= (SELECT now FROM t)
        ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) x
    WHERE NOT EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'paused')
        AND p.name <> ALL(ARRAY(SELECT name FROM held WHERE blocked))
        AND p.name <> ALL(%(skip)s::text[])
    LIMIT 1)"""

# `claimed` returns the job's whole row (`j`, of the table's row type): the functions
# return it as is, and the caller picks Job.from_row's columns out of it.
_CLAIMED = """claimed AS (
    UPDATE {s}.jobs j SET state = 'processing', attempts = j.attempts + 1,
        worker = %(worker)s, lease_expires_at = t.now + %(lease)s,
        started_at = t.now, finished_at = NULL, updated_at = t.now
    FROM nxt, t WHERE j.id = nxt.id
        AND (nxt.queue <> ALL(ARRAY(SELECT name FROM held WHERE limited))
             OR nxt.queue = %(locked)s)
    RETURNING j)"""

# One row, always: the queue of the job `nxt` found (NULL: nothing eligible), then the
# claimed job (NULL: not taken, because its queue is limited and was not locked).
_CLAIM_RESULT = ("(SELECT queue FROM nxt) AS queue, claimed.j"
                 " FROM (SELECT 1) AS one LEFT JOIN claimed ON true")

# A limited queue's turn: its row locked first, then the claim in a new statement (a fresh
# snapshot, which sees every claim committed by whoever held the lock before).
_LOCK_QUEUE = "SELECT 1 FROM {s}.queues WHERE name = %(locked)s FOR UPDATE;"


def _claim(nxt: str) -> str:
    """A claim of the job `nxt` (_NEXT_ANY or _NEXT_LISTED) finds: the body of the claim
    function."""
    return f"""WITH {_T},
{_HELD},
{nxt},
{_CLAIMED}
SELECT {_CLAIM_RESULT}"""


def _complete_and_claim(nxt: str) -> str:
    """Completing the held attempt and a claim of the job `nxt` finds, in one statement:
    the body of the complete_and_claim function."""
    return f"""WITH {_T},
{_COMPLETE},
{_HELD},
{nxt},
{_CLAIMED}
SELECT (SELECT count(*) FROM done) AS done, {_CLAIM_RESULT}"""


def _drop_live(ended: str) -> str:
    """The CTE that deletes the live output of the attempts `ended` returns (their `id`).
    %(live)s is a literal: the planner drops the DELETE when nothing was written live, so
    the many short jobs pay nothing for it."""
    return (f"gone AS (DELETE FROM {{s}}.live_output l USING {ended}"
            f" WHERE %(live)s AND l.job_id = {ended}.id)")


# Completing the held attempt %(id)s/%(job_worker)s/%(attempts)s with its history row.
_COMPLETE = f"""done AS (
    UPDATE {{s}}.jobs j SET state = 'completed', finished_at = t.now,
        updated_at = t.now, exit_code = %(exit_code)s, last_error = NULL,
        lease_expires_at = NULL
    FROM t WHERE j.id = %(id)s AND j.state = 'processing'
        AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
    RETURNING j.id, j.attempt_base, t.now),
hist AS (
    INSERT INTO {{s}}.attempts (job_id, attempt, worker, started_at, finished_at,
        outcome, exit_code, error, output, output_total, cpu_user_usec,
        cpu_system_usec, memory_peak_bytes)
    SELECT id, attempt_base + %(attempts)s, %(job_worker)s, coalesce(%(started_at)s, now), now,
        %(outcome)s, %(exit_code)s, NULL, %(output)s, %(total)s, %(cpu_user)s,
        %(cpu_system)s, %(memory_peak)s FROM done),
{_drop_live("done")}"""

# Ending the held attempt as failed (%(state)s: failed or dead, retried at
# t.now + %(delay)s unless %(dead)s), or as canceled when an operator asked for it (the
# job's flag decides, read in this very statement), with its history row; returns the job
# as updated and the time.
_FAIL = f"""WITH {_T},
upd AS (
    UPDATE {{s}}.jobs j SET
        state = CASE WHEN j.cancel_requested THEN 'canceled' ELSE %(state)s END,
        run_at = CASE WHEN j.cancel_requested OR %(dead)s THEN j.run_at
                      ELSE t.now + %(delay)s END,
        finished_at = t.now, updated_at = t.now, exit_code = %(exit_code)s,
        last_error = CASE WHEN j.cancel_requested THEN %(canceled_error)s
                          ELSE %(error)s END,
        lease_expires_at = NULL
    FROM t WHERE j.id = %(id)s AND j.state = 'processing'
        AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
    RETURNING {{j_columns}}, t.now),
hist AS (
    INSERT INTO {{s}}.attempts (job_id, attempt, worker, started_at,
        finished_at, outcome, exit_code, error, output, output_total,
        cpu_user_usec, cpu_system_usec, memory_peak_bytes)
    SELECT id, attempt_base + %(attempts)s, %(job_worker)s,
        coalesce(%(started_at)s, now), now,
        CASE WHEN state = 'canceled' THEN %(canceled_outcome)s
             ELSE %(outcome)s END,
        %(exit_code)s, last_error, %(output)s, %(total)s, %(cpu_user)s,
        %(cpu_system)s, %(memory_peak)s FROM upd),
{_drop_live("upd")}
SELECT * FROM upd"""

# -- the worker's functions (postgres_schema, version 11) ---------------------------------
# A worker's per-job statements are big CTEs: sent as text, the server planned each one
# again on every call (half of their cost, measured). As PL/pgSQL functions their queries
# are prepared once per session (a generic plan after the first few calls) and a call is
# one short statement: one round trip, one transaction, nothing a transaction pooler keeps
# between transactions. The functions run the bodies below (whose placeholders become
# their arguments, p_NAME) unchanged, with sorting off for the claim (_CLAIM_PLAN) and, in
# a worker's store (p_async), its commit not waiting for the WAL flush ({worker_commit}).
_RECORD_SUCCESS = f"""WITH {_T},
{_COMPLETE}
SELECT count(*) FROM done"""

_COMPLETION_ARGS = (("id", "text"), ("job_worker", "text"), ("attempts", "integer"),
                    ("started_at", "float8"), ("exit_code", "integer"), ("outcome", "text"),
                    ("output", "bytea"), ("total", "bigint"), ("cpu_user", "bigint"),
                    ("cpu_system", "bigint"), ("memory_peak", "bigint"), ("live", "boolean"))
_CLAIM_ARGS = (("worker", "text"), ("lease", "float8"), ("queues", "text[]"),
               ("skip", "text[]"), ("locked", "text"))


def _call(function: str, args: tuple[tuple[str, str], ...], columns: str) -> str:
    """The statement a store sends: the function called with its placeholders, typed (so
    the call resolves whatever psycopg2 sends for None), and {worker_async}."""
    passed = ", ".join(f"%({name})s::{kind}" for name, kind in args)
    return f"SELECT {columns} FROM {{s}}.{function}({passed}, {{worker_async}})"


# Each function's argument types, for `verify` (EXECUTE is PUBLIC's unless revoked).
FUNCTION_ARGS = {
    name: ", ".join(kind for _, kind in args) + ", boolean"
    for name, args in (("claim", _CLAIM_ARGS),
                       ("complete_and_claim", _COMPLETION_ARGS + _CLAIM_ARGS),
                       ("record_success", _COMPLETION_ARGS))}

_CALL_CLAIM = _call("claim", _CLAIM_ARGS, "o_queue, {o_columns}")
_CALL_COMPLETE_AND_CLAIM = _call("complete_and_claim", _COMPLETION_ARGS + _CLAIM_ARGS,
                                 "o_done, o_queue, {o_columns}")
_CALL_RECORD_SUCCESS = _call("record_success", _COMPLETION_ARGS, "o_done")


def _body(query: str, ending: str) -> str:
    """A function body's query: its fields filled in but the schema's, each placeholder
    the function's argument of that name (%(ending)s: `ending`)."""
    names = {name: f"p_{name}" for name, _ in _COMPLETION_ARGS + _CLAIM_ARGS}
    return query.format_map({"s": "{s}", "now": NOW}) % {**names, "ending": ending}


def _signature(args: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"p_{name} {kind}" for name, kind in args)


_ASYNC = """IF p_async THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;"""


def functions() -> list[str]:
    """The CREATE FUNCTION statements of version 11, with `{s}` (the quoted schema) and
    `{channel}` (its NOTIFY channel) left for the migration to fill in. They are part of
    a released migration: a change to the bodies they run needs a new migration that
    replaces them (tests/test_postgres_functions.py pins their text)."""
    claim_any, claim_listed = (_body(_claim(nxt), "NULL::text") for nxt in (_NEXT_ANY,
                                                                            _NEXT_LISTED))
    both_any, both_listed = (_body(_complete_and_claim(nxt), "p_id")
                             for nxt in (_NEXT_ANY, _NEXT_LISTED))
    notify = _NOTIFY_EVENT
    # The claim's plans are made with sorting off (_CLAIM_PLAN says why), and generic from
    # the first call: no parameter changes the best plan (tests/test_postgres_sql.py checks
    # them with 100,000 blocked jobs), so each new connection plans each body once rather
    # than five times with its values first. The SET clause holds for the call only.
    claiming = ("LANGUAGE plpgsql SET enable_sort = off"
                " SET plan_cache_mode = force_generic_plan AS $f$")
    return [
        f"""CREATE FUNCTION {{s}}.claim({_signature(_CLAIM_ARGS)}, p_async boolean,
    OUT o_queue text, OUT o_job {{s}}.jobs) {claiming}
DECLARE
    res record;
BEGIN
    {_ASYNC}
    IF p_queues IS NULL THEN
        {claim_any}
        INTO res;
    ELSE
        {claim_listed}
        INTO res;
    END IF;
    o_queue := res.queue;
    o_job := res.j;
END $f$""",
        f"""CREATE FUNCTION {{s}}.complete_and_claim({_signature(_COMPLETION_ARGS)},
    {_signature(_CLAIM_ARGS)}, p_async boolean,
    OUT o_done bigint, OUT o_queue text, OUT o_job {{s}}.jobs) {claiming}
DECLARE
    res record;
BEGIN
    {_ASYNC}
    {notify}
    IF p_queues IS NULL THEN
        {both_any}
        INTO res;
    ELSE
        {both_listed}
        INTO res;
    END IF;
    o_done := res.done;
    o_queue := res.queue;
    o_job := res.j;
END $f$""",
        f"""CREATE FUNCTION {{s}}.record_success({_signature(_COMPLETION_ARGS)},
    p_async boolean, OUT o_done bigint) LANGUAGE plpgsql AS $f$
BEGIN
    {_ASYNC}
    {notify}
    {_body(_RECORD_SUCCESS, "NULL::text")}
    INTO o_done;
END $f$""",
    ]



# -- the worker's functions, version 12: small statements that keep their own books --------
# Measured (perf, pg_stat_statements and the backend's CPU per call on the bench's drain):
# a third of the server's CPU per job went to triggers, and much of the rest to setting up
# one big statement on every call (version 11's, with its own counting added: a plan of
# some sixty nodes, every CTE's table and indexes opened, whether or not it had anything
# to do: 210 µs for a call that completes and claims nothing). From version 12 each
# function is a few small statements with cached plans, and it counts what it changes
# itself (job_counts, the metrics' counters) with queuectl.bookkept on, which the
# triggers' WHEN clauses read: the triggers count every other writer's changes, whatever
# it is, and skip the functions'.
# The setting is set and put back around those statements (set_config, local to the
# transaction; an error rolls it back with the rest), not by a SET clause: PostgreSQL 15
# refuses a SET clause of a custom setting to a role that is not a superuser. A completed
# job's waiting dependents, the rare case, are satisfied afterwards, with the triggers on.
# Counter rows are locked in one order by every call (the completed job's, its attempt's,
# then the claimed job's): two calls never wait on each other in a cycle.
BOOKKEPT = "current_setting('queuectl.bookkept', true) IS DISTINCT FROM 'on'"


def _bookkept(statements: str) -> str:
    """PL/pgSQL: `statements` run with queuectl.bookkept on, then the setting as it was
    (needs `was` and `v_set`, text, declared). Assignments, not PERFORM: plain expressions,
    which PL/pgSQL evaluates without running a query."""
    return f"""was := current_setting('queuectl.bookkept', true);
    v_set := set_config('queuectl.bookkept', 'on', true);
    {statements}
    v_set := set_config('queuectl.bookkept', coalesce(was, ''), true);"""


# The pieces, with psycopg2 placeholders: the functions' arguments (p_*) and variables
# (v_*) in the functions, checked on their own by tests/test_postgres_sql.py.
# Completing the held attempt %(id)s/%(job_worker)s/%(attempts)s (fenced: still processing,
# by that worker, at that attempt) with its history row, its count (in the server
# process's shard) and its attempt's metrics counter (as the count_attempt trigger counts
# a completed attempt); then how many it completed (0 or 1).
COMPLETE = f"""WITH done AS (
    UPDATE {{s}}.jobs j SET state = 'completed', finished_at = %(now)s,
        updated_at = %(now)s, exit_code = %(exit_code)s, last_error = NULL,
        lease_expires_at = NULL
    WHERE j.id = %(id)s AND j.state = 'processing'
        AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
    RETURNING j.attempt_base, j.queue),
hist AS (
    INSERT INTO {{s}}.attempts (job_id, attempt, worker, started_at, finished_at,
        outcome, exit_code, error, output, output_total, cpu_user_usec,
        cpu_system_usec, memory_peak_bytes)
    SELECT %(id)s, attempt_base + %(attempts)s, %(job_worker)s, %(started)s, %(now)s,
        %(outcome)s, %(exit_code)s, NULL, %(output)s, %(total)s, %(cpu_user)s,
        %(cpu_system)s, %(memory_peak)s FROM done),
counted AS (
    INSERT INTO {{s}}.job_counts AS c (shard, queue, state, n)
    SELECT pg_backend_pid() %% {SHARDS}, queue, 'completed', 1 FROM done
    ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n + 1),
metered AS (
    INSERT INTO {{s}}.counters AS c (shard, queue, event, le, n, seconds)
    SELECT pg_backend_pid() %% {SHARDS}, queue, coalesce(%(outcome)s, 'failed'),
        {bucket("%(seconds)s")}, 1, %(seconds)s FROM done
    ON CONFLICT (shard, queue, event, le) DO UPDATE SET n = c.n + 1,
        seconds = c.seconds + excluded.seconds)
SELECT count(*) FROM done"""
# The queues a claim must leave alone (paused, or at their concurrency limit not counting
# the job %(ending)s) and the limited ones (claimed only under their lock: %(locked)s).
CLAIM_HELD = """SELECT coalesce(array_agg(name) FILTER (WHERE blocked), ARRAY[]::text[]),
        coalesce(array_agg(name) FILTER (WHERE limited), ARRAY[]::text[])
    FROM (SELECT q.name, q.paused_since IS NULL AND q.concurrency > 0 AS limited,
        q.paused_since IS NOT NULL OR (q.concurrency > 0 AND q.concurrency <=
            (SELECT count(*) FROM {s}.jobs r
             WHERE r.queue = q.name AND r.state = 'processing'
                 AND r.id IS DISTINCT FROM %(ending)s)) AS blocked
    FROM {s}.queues q WHERE q.concurrency > 0 OR q.paused_since IS NOT NULL) h"""
# The next eligible job, locked: the best of any queue but the held and skipped ones (the
# walk of jobs_due in its order, stopping at the first free job)...
CLAIM_ANY = """SELECT id, queue, state FROM {s}.jobs
    WHERE state IN ('pending', 'failed') AND waiting_on = 0 AND run_at <= %(now)s
        AND NOT EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'paused')
        AND queue <> ALL(%(blocked)s::text[]) AND queue <> ALL(%(skip)s::text[])
    ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED"""
# ... or of the first listed queue that has one: the nested loop walks the list in its
# order and stops at the first row (no sort, which would visit, and lock the best job of,
# every listed queue).
CLAIM_LISTED = """SELECT x.id, x.queue, x.state
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS p(name, n)
    CROSS JOIN LATERAL (
        SELECT id, queue, state FROM {s}.jobs
        WHERE queue = p.name AND state IN ('pending', 'failed') AND waiting_on = 0
            AND run_at <= %(now)s
        ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) x
    WHERE NOT EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'paused')
        AND p.name <> ALL(%(blocked)s::text[]) AND p.name <> ALL(%(skip)s::text[])
    LIMIT 1"""
# Taking the job found (locked by the pick), with its count: it leaves its state.
CLAIM_JOB = f"""WITH claimed AS (
    UPDATE {{s}}.jobs j SET state = 'processing', attempts = j.attempts + 1,
        worker = %(worker)s, lease_expires_at = %(now)s::float8 + %(lease)s::float8,
        started_at = %(now)s, finished_at = NULL, updated_at = %(now)s
    WHERE j.id = %(next)s
    RETURNING j),
counted AS (
    INSERT INTO {{s}}.job_counts AS c (shard, queue, state, n)
    VALUES (pg_backend_pid() %% {SHARDS}, %(next_queue)s, %(next_state)s, -1)
    ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n - 1)
SELECT (j).* FROM claimed"""

# What the pieces' placeholders are in the functions.
_LOCALS = {"now": "v_now", "started": "v_started", "seconds": "v_seconds",
           "blocked": "v_blocked", "next": "v_next", "next_queue": "v_next_queue",
           "next_state": "v_next_state"}


def _plpgsql(text: str, **fields: str) -> str:
    """`text` with `{s}` kept, each placeholder the function's argument or variable of that
    name, and `fields` (placeholders named otherwise here)."""
    names = {name: f"p_{name}" for name, _ in _COMPLETION_ARGS + _CLAIM_ARGS}
    return text.format_map({"s": "{s}"}) % {**names, **_LOCALS, **fields}


_DECLARED = """v_now float8 := {now};
    v_started float8;
    v_seconds float8;
    v_blocked text[];
    v_limited text[];
    v_next text;
    v_next_queue text;
    v_next_state text;
    v_set text;
    ready bigint;
    was text;""".replace("{now}", NOW)


_ASYNC_12 = _ASYNC.replace("PERFORM set_config", "v_set := set_config")  # no query


def _completing() -> str:
    """PL/pgSQL: the completion (o_done: 0 or 1), and its live output dropped if the
    attempt wrote any."""
    return f"""v_started := coalesce(p_started_at, v_now);
    v_seconds := greatest(v_now - v_started, 0);
    {_plpgsql(COMPLETE)}
    INTO o_done;
    IF p_live THEN
        DELETE FROM {{s}}.live_output WHERE job_id = p_id;
    END IF;"""


def _claiming(ending: str) -> str:
    """PL/pgSQL: the claim (o_queue: the queue of the job found, NULL if none; o_job: the
    claimed job, NULL if none or if its queue is limited and not locked) and its count."""
    return f"""{_plpgsql(CLAIM_HELD, ending=ending)}
    INTO v_blocked, v_limited;
    IF p_queues IS NULL THEN
        {_plpgsql(CLAIM_ANY)}
        INTO v_next, v_next_queue, v_next_state;
    ELSE
        {_plpgsql(CLAIM_LISTED)}
        INTO v_next, v_next_queue, v_next_state;
    END IF;
    o_queue := v_next_queue;
    IF v_next IS NOT NULL AND (v_next_queue <> ALL(v_limited) OR v_next_queue = p_locked) THEN
        {_plpgsql(CLAIM_JOB)}
        INTO o_job;
    END IF;"""


@functools.cache
def functions_12() -> list[str]:
    """Version 12's CREATE OR REPLACE FUNCTION statements (same names, arguments and
    results as version 11's), `{s}` and `{channel}` left for the migration to fill in.
    Released with that migration: never edited (tests/test_postgres_functions.py)."""
    notify = _NOTIFY_EVENT
    completing = _completing()
    # No JIT: a plan priced under enable_sort = off can cross jit_above_cost, and compiling
    # it costs a call half a second.
    settings = ("LANGUAGE plpgsql SET enable_sort = off SET jit = off"
                " SET plan_cache_mode = force_generic_plan AS $f$")
    return [
        f"""CREATE OR REPLACE FUNCTION {{s}}.claim({_signature(_CLAIM_ARGS)}, p_async boolean,
    OUT o_queue text, OUT o_job {{s}}.jobs) {settings}
DECLARE
    {_DECLARED}
BEGIN
    {_ASYNC_12}
    {_bookkept(_claiming("NULL::text"))}
END $f$""",
        f"""CREATE OR REPLACE FUNCTION {{s}}.complete_and_claim({_signature(_COMPLETION_ARGS)},
    {_signature(_CLAIM_ARGS)}, p_async boolean,
    OUT o_done bigint, OUT o_queue text, OUT o_job {{s}}.jobs) {settings}
DECLARE
    {_DECLARED}
BEGIN
    {_ASYNC_12}
    {notify}
    {_bookkept(completing + chr(10) + "    " + _claiming("p_id"))}
    {_DEPENDENTS}
END $f$""",
        f"""CREATE OR REPLACE FUNCTION {{s}}.record_success({_signature(_COMPLETION_ARGS)},
    p_async boolean, OUT o_done bigint) {settings}
DECLARE
    {_DECLARED}
BEGIN
    {_ASYNC_12}
    {notify}
    {_bookkept(completing)}
    {_DEPENDENTS}
END $f$""",
    ]


# -- the worker's functions, version 13: a completion notifies only while someone watches --
# Measured (perf and the bench's drain, 16 workers): every completion's NOTIFY took the
# server's one notification lock at its commit (PreCommit_Notify), so committing workers
# queued behind each other for it: about 60 µs of server CPU a job at 16 workers, and
# fewer jobs a second (at 2 workers, nothing to speak of). The event wakes watchers only
# (`wait`, `logs --follow`; idle workers ignore it), and they register in `watchers`
# while they watch (postgres.ListenWakeup, watch=True): a completion notifies when one is
# registered, after a probe of that small table.
def watched(now: str) -> str:
    """SQL: a watcher is registered (its row not expired at `now`)."""
    return f"EXISTS (SELECT 1 FROM {{s}}.watchers WHERE until > {now})"


WATCHED = watched("v_now")


def functions_13() -> list[str]:
    """Version 13's CREATE OR REPLACE FUNCTION statements: version 12's, their event NOTIFY
    sent only while a watcher is registered (WATCHED). Released with that migration: never
    edited (tests/test_postgres_functions.py)."""
    notify = _NOTIFY_EVENT
    gated = f"IF {WATCHED} THEN\n        {notify}\n    END IF;"
    made = [text.replace(notify, gated) for text in functions_12()]
    assert sum(gated in text for text in made) == 2  # complete_and_claim, record_success
    return made


# -- version 14: an enqueue wakes one idle worker a job, not every idle worker ------------
# Measured (a trickle of single enqueues, 20 a second, to idle workers on this 2-core host):
# each NOTIFY on the shared channel woke every idle worker, and each claimed, all but one
# for nothing: the server spent 4.3 ms of CPU a job with 2 idle workers, 9.1 ms with 16 and
# 12.5 ms with 32, where a fleet's idle capacity should cost a job next to nothing. So an
# idle worker (a process: its job slots share it) registers in `listeners` with a channel
# of its own, and an enqueue wakes as many registered listeners as it stored jobs, the
# latest idle first, each taken out of the table as it is woken (it registers again when it
# waits again). With too few registered it notifies the shared channel too. The
# table is UNLOGGED: it describes live connections, which a crash or a failover ends.
def wake_function() -> str:
    """Version 14's CREATE FUNCTION {s}.wake(queues, counts): for each queue, NOTIFY as
    many registered idle listeners that serve it as it has jobs stored (`counts`), each
    taken out of `listeners` (the payload: the registration's token, so that the worker
    tells this wake from one of an earlier registration); a row whose connection is gone
    (a killed worker's, until the next worker to connect sweeps it) is passed over.
    Fewer found than jobs for any queue: the shared channel too, for the idle workers not
    registered at the moment (between a wake and their next wait, or a role without the
    right). How many it woke. Released with that migration: never edited."""
    return """CREATE FUNCTION {s}.wake(p_queues text[], p_counts integer[]) RETURNS integer
    LANGUAGE plpgsql AS $f$
DECLARE
    v_queue text;
    v_n integer;
    v_channel text;
    v_token text;
    v_got integer;
    v_woken integer := 0;
    v_short boolean := false;
BEGIN
    FOR v_queue, v_n IN SELECT q, n FROM unnest(p_queues, p_counts) AS x(q, n) LOOP
        v_got := 0;
        FOR v_channel, v_token IN
            DELETE FROM {s}.listeners WHERE channel IN (
                SELECT channel FROM {s}.listeners
                WHERE (v_queue = ANY(queues)
                       OR (queues IS NULL AND v_queue <> ALL(coalesce(exclude, ARRAY[]::text[]))))
                    AND EXISTS (SELECT 1 FROM pg_stat_get_activity(backend))
                ORDER BY since DESC LIMIT v_n FOR UPDATE SKIP LOCKED)
            RETURNING channel, token
        LOOP
            PERFORM pg_notify(v_channel, v_token);
            v_got := v_got + 1;
        END LOOP;
        v_woken := v_woken + v_got;
        v_short := v_short OR v_got < v_n;
    END LOOP;
    IF v_short THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN v_woken;
END $f$"""


def satisfy(parents: str) -> str:
    """PL/pgSQL: the waiting dependents of the completed jobs `parents` (a query or a list)
    satisfied for good, each waiting for as many fewer, and idle workers woken (NOTIFY on
    the queue's channel) when one is ready. Needs `ready bigint` declared."""
    return f"""WITH sat AS (
            UPDATE {{s}}.deps SET satisfied = true
            WHERE parent IN ({parents}) AND NOT satisfied RETURNING child),
        less AS (
            UPDATE {{s}}.jobs j SET waiting_on = j.waiting_on - s.n
            FROM (SELECT child, count(*) AS n FROM sat GROUP BY child) s
            WHERE j.id = s.child
            RETURNING j.waiting_on, j.state)
        SELECT count(*) INTO ready FROM less WHERE waiting_on = 0 AND state = 'pending';
        IF ready > 0 THEN
            PERFORM pg_notify('{{channel}}', '');
        END IF;"""


# A completed job's waiting dependents, after the function's statements: none, almost
# always (one probe of the index deps_waiting); else satisfied with the triggers on, which
# count the dependents that stop being blocked. Looked up in a statement of its own, whose
# snapshot is taken after the completion's row lock was granted: a submit that held the
# parent FOR SHARE while adding its dependents has committed by then, and its rows are
# seen (a probe inside the completion's statement would miss them and strand the child).
_DEPENDENTS = f"""IF o_done > 0 AND EXISTS (SELECT 1 FROM {{s}}.deps
                                WHERE parent = p_id AND NOT satisfied) THEN
        {satisfy("p_id")}
    END IF;"""

# Lost attempts (the jobs the reclaim_*_lock statement locked) as the store decided them.
_RECLAIM_LOCK = "BEGIN; {worker_commit}SELECT {columns}, {now} FROM {s}.jobs WHERE state = 'processing'"

# "Finished at least %(older)s seconds ago" (server clock). A scalar subquery is evaluated
# once (an InitPlan), so the cutoff bounds the index range; clock_timestamp() written in
# the condition would be a per-row filter. The bound on created_at (never after
# finished_at) lets the index range stop early.
_OLDER = (" AND created_at <= (SELECT {now} - %(older)s)"
          " AND finished_at <= (SELECT {now} - %(older)s)")
_IN_QUEUE = " AND queue = %(queue)s"

_REVIVE = """state = 'pending', attempts = 0, run_at = t.now,
    updated_at = t.now, worker = NULL, finished_at = NULL, exit_code = NULL,
    cancel_requested = false"""

# A dependent `c` that its parent `d.parent` canceled when it ended (the parent_ended
# trigger's words, postgres_schema version 7).
_CASCADED = ("c.state = 'canceled' AND c.last_error IN ('parent ' || d.parent || ' ended dead',"
             " 'parent ' || d.parent || ' ended canceled')")

_COUNT_MATCHING = "SELECT count(*) FROM {s}.jobs WHERE state = %(state)s"

# The jobs that hold their unique key: the predicate of the unique index jobs_unique_live
# (postgres_schema, version 6), word for word, so an ON CONFLICT clause can name that index
# as its arbiter.
_HOLDS = "unique_key IS NOT NULL AND state IN ('pending', 'processing', 'failed')"

# Keyed submits: the rows in input order (the first spec of a key is the one stored),
# each either stored or skipped because a live job holds its key (`_CONFLICT`: the unique
# index as the only arbiter, so a taken id still raises a unique violation) or, with
# --if-absent, because its key or its id is taken (every unique index). RETURNING names
# the stored rows by (id, key): two specs of one call may share an id.
_CONFLICT = f"ON CONFLICT (unique_key) WHERE {_HOLDS} DO NOTHING"


def _submit_rows(conflict: str) -> str:
    return f"""WITH {_T}
INSERT INTO {{s}}.jobs (id, command, state, attempts, max_retries, priority,
    timeout, run_at, created_at, updated_at, queue, memory_max, cpu_max, tasks_max,
    unique_key, waiting_on, cwd, env)
SELECT u.id, u.command, 'pending', 0, u.max_retries, u.priority, u.timeout,
    coalesce(u.run_at, t.now + u.delay), t.now, t.now, u.queue, u.memory_max,
    u.cpu_max, u.tasks_max, u.unique_key, u.waiting_on, u.cwd, u.env
FROM unnest(%(ids)s::text[], %(commands)s::text[], %(retries)s::int[],
            %(priorities)s::int[], %(timeouts)s::float8[], %(run_ats)s::float8[],
            %(delays)s::float8[], %(queues)s::text[], %(memory_maxes)s::int8[],
            %(cpu_maxes)s::float8[], %(tasks_maxes)s::int[], %(uniques)s::text[],
            %(waiting)s::int[], %(cwds)s::text[], %(envs)s::text[])
     WITH ORDINALITY AS u(id, command, max_retries, priority, timeout, run_at,
                          delay, queue, memory_max, cpu_max, tasks_max, unique_key,
                          waiting_on, cwd, env, n), t
ORDER BY u.n
{conflict}
RETURNING id, unique_key"""


def _purge(where: str) -> str:
    # SKIP LOCKED: a job someone is retrying right now is left for the next batch.
    return f"""WITH pick AS (
    SELECT id FROM {{s}}.jobs WHERE state = %(state)s{where}
    ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED),
hist AS (DELETE FROM {{s}}.attempts WHERE job_id IN (SELECT id FROM pick)),
live AS (DELETE FROM {{s}}.live_output WHERE job_id IN (SELECT id FROM pick)),
deps AS (DELETE FROM {{s}}.deps WHERE child IN (SELECT id FROM pick)),
gone AS (DELETE FROM {{s}}.jobs WHERE id IN (SELECT id FROM pick) RETURNING 1)
SELECT count(*) FROM gone"""


def _retry_dead_many(where: str) -> str:
    """Skipped, and so not counted: a dead job whose key a live job holds, or that an older
    dead job of its key (of this same filter) goes before: of one key, only the oldest is
    revived. A holder committed after this statement's snapshot still meets the unique
    index (a unique violation: the store runs it again)."""
    return f"""NOTIFY {{channel}}; WITH {_T},
pick AS (SELECT id FROM {{s}}.jobs d WHERE state = 'dead'{where}
             AND (unique_key IS NULL OR (
                 NOT EXISTS (SELECT 1 FROM {{s}}.jobs h
                             WHERE h.unique_key = d.unique_key AND {_HOLDS})
                 AND NOT EXISTS (SELECT 1 FROM {{s}}.jobs o
                                 WHERE o.unique_key = d.unique_key AND o.state = 'dead'{where}
                                     AND (o.created_at, o.seq) < (d.created_at, d.seq))))
         ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED)
UPDATE {{s}}.jobs j SET {_REVIVE}
FROM t, pick WHERE j.id = pick.id"""


# FOR UPDATE (not SKIP LOCKED): a job a worker is claiming right now is waited for and
# looked at again, so a batch is short only when nothing more is left.
def _cancel_processing(where: str) -> str:
    return f"""NOTIFY {{channel}}, '{{event}}'; WITH {_T},
pick AS (SELECT id FROM {{s}}.jobs WHERE state = 'processing'{where}
         AND NOT cancel_requested ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE)
UPDATE {{s}}.jobs j SET cancel_requested = true, updated_at = t.now
FROM t, pick WHERE j.id = pick.id"""


def _cancel_waiting(where: str) -> str:
    return f"""NOTIFY {{channel}}, '{{event}}'; WITH {_T},
pick AS (SELECT id FROM {{s}}.jobs WHERE state = %(state)s{where}
         ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE)
UPDATE {{s}}.jobs j SET state = 'canceled', finished_at = t.now,
    updated_at = t.now, last_error = %(error)s, lease_expires_at = NULL
FROM t, pick WHERE j.id = pick.id AND j.state = %(state)s"""


def _iter_jobs(where: str) -> str:
    """A page of jobs after (%(at)s, %(seq)s): pages by (created_at, seq), which never
    change."""
    return (f"SELECT {{columns}}, seq FROM {{s}}.jobs WHERE {where}(created_at, seq)"
            " > (%(at)s, %(seq)s) ORDER BY created_at, seq LIMIT %(n)s")


def _recent_jobs(where: str) -> str:
    return (f"SELECT {{columns}} FROM {{s}}.jobs WHERE state = %(state)s{where}"
            " ORDER BY updated_at DESC, seq DESC LIMIT %(n)s")


def _counts(jobs: str, workers: str) -> str:
    """Jobs per state and the blocked ones (pending, waiting for a parent), off job_counts
    (summed over its shards; `blocked` is a key of its own there, version 12), the
    processing ones (jobs_leases: the running jobs only), then the active workers, then the
    on-dead notices still to deliver (of the same jobs' queue): never a read of the jobs of
    a state."""
    running = jobs.replace("WHERE", "AND")
    return (f"SELECT state, sum(n)::bigint FROM {{s}}.job_counts {jobs} GROUP BY state"
            " UNION ALL SELECT 'processing', count(*) FROM {s}.jobs"
            f" WHERE state = 'processing' {running} UNION ALL"
            " SELECT 'active_workers', count(*) FROM {s}.workers"
            f" WHERE heartbeat_at >= {{now}} - %(window)s {workers} UNION ALL"
            f" SELECT 'notices', count(*) FROM {{s}}.notices {jobs}")


# A claimable job: the predicate of the claim's partial indexes (postgres_schema, version 7).
_WAITING = "state IN ('pending', 'failed') AND waiting_on = 0"
# Only the jobs a worker serving %(queues)s could take.
_LANE = " AND queue = ANY(%(queues)s::text[])"
# Only those a worker of every queue but %(exclude)s (a host's lane files' queues) could take.
_EXCEPT = " AND queue <> ALL(%(exclude)s::text[])"
# A worker that serves %(queue)s (store.serves).
_SERVES = ("CASE WHEN queues IS NULL THEN %(queue)s <> ALL(coalesce(exclude, '{{}}'))"
           " ELSE %(queue)s = ANY(queues) END")
_REMAINING = "SELECT count(*) FROM {s}.jobs WHERE state IN ('pending', 'failed', 'processing')"


def _seconds_until_due(lane: str) -> str:
    # Blocked jobs wait for a parent, not for a time: the completion that frees one wakes
    # workers, and counting them would make an idle worker spin on a job it cannot take.
    return ("SELECT (SELECT min(run_at) FROM {s}.jobs WHERE state IN ('pending', 'failed')"
            f" AND waiting_on = 0{lane}) - {{now}}")


# A beat's clock, and in a worker's store its commit not waiting for the WAL flush (as
# {worker_commit}, but within the one statement, so that a worker can prepare it).
_BEAT_NOW = """WITH t AS (SELECT {now} AS now, CASE WHEN {worker_async}
    THEN set_config('synchronous_commit', 'off', true) END AS async),"""
# A beat's registry row, and its reads (kind, key, value, since): `expired`, `paused`
# (set_by as key) and each `setting`.
_BEAT_WORKER = """beat AS (
    UPDATE {s}.workers SET heartbeat_at = t.now, state = %(state)s, job_id = %(job_id)s
    FROM t WHERE name = %(worker)s)"""
# A lease that ran out (reclaim_expired_probe, and the beat's `expired`).
_EXPIRED = "SELECT 1 FROM {s}.jobs WHERE state = 'processing' AND lease_expires_at < {now}"
_BEAT_READS = """SELECT 'expired'::text, NULL::text, NULL::text, NULL::float8 FROM t
    WHERE EXISTS (""" + _EXPIRED + """)
UNION ALL SELECT 'paused', set_by, NULL, since FROM {s}.flags WHERE name = 'paused'
UNION ALL SELECT 'setting', key, value, NULL FROM {s}.config"""


def _claim_or_due(lane: str) -> str:
    """The claim's call, and when it found nothing to take (no job, no limited queue's
    turn) how long until the next job of the lane is due, in one statement: an idle
    worker asks both on every pass. The due read comes first, in the statement's
    snapshot, and the claim is called only if a job is due now: an idle queue costs the
    server that index probe, not the claim's statements (a job stored after the snapshot
    wakes the worker by NOTIFY, as one stored just after the claim would)."""
    claim = _call("claim", _CLAIM_ARGS, "o_queue, o_job")
    return ("SELECT c.o_queue, CASE WHEN c.o_queue IS NULL THEN d.due END AS o_due,"
            f" (c.o_job).* FROM ({_seconds_until_due(lane)} AS due) d"
            f" LEFT JOIN LATERAL ({claim} WHERE d.due <= 0 OFFSET 0) c ON true")


class Statements:
    """The statements of one store, by name: the class holds the templates, an instance
    (from `statements()`) the text for one schema."""

    # == connections =========================================================================
    # -- (any verb) --
    begin = "BEGIN"
    commit = "COMMIT"
    rollback = "ROLLBACK"  # leaves no transaction open on a connection (an error cut it short)
    # One snapshot for several reads (`reading()`, `metrics`); read-only, so it never
    # blocks writers.
    read_snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    # == opening the store ===================================================================
    # -- open --
    # The schema version and the settings in one round trip (every `enqueue` pays for it).
    opening_read = ("SELECT '', max(version)::text FROM {s}.schema_version"
                    " UNION ALL SELECT key, value FROM {s}.config")
    # Creating or upgrading the schema: one transaction under an advisory lock keyed on
    # the schema name (postgres_schema holds the migrations themselves).
    migrate_lock = "BEGIN; SELECT pg_advisory_xact_lock(%s)"
    migrate_exists = ("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n"
                      " ON n.oid = c.relnamespace WHERE n.nspname = %s"
                      " AND c.relname = 'schema_version')")
    migrate_version = "SELECT max(version) FROM {s}.schema_version"
    migrate_foreign_tables = "SELECT count(*) FROM pg_tables WHERE schemaname = %s"
    migrate_schema_present = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
    migrate_create_schema = "CREATE SCHEMA {s}"
    migrate_first_version = "INSERT INTO {s}.schema_version VALUES (0)"
    migrate_set_version = "UPDATE {s}.schema_version SET version = %s"

    # == submitting ==========================================================================
    # -- submit --
    # Specs without a unique key: the rows in input order, in one statement (with
    # --if-absent, RETURNING the ids it stored); after the commit, `wake`.
    enqueue_rows = f"""WITH {_T}
INSERT INTO {{s}}.jobs (id, command, state, attempts, max_retries, priority,
    timeout, run_at, created_at, updated_at, queue, memory_max, cpu_max, tasks_max,
    cwd, env)
SELECT u.id, u.command, 'pending', 0, u.max_retries, u.priority, u.timeout,
    coalesce(u.run_at, t.now + u.delay), t.now, t.now, u.queue, u.memory_max,
    u.cpu_max, u.tasks_max, u.cwd, u.env
FROM unnest(%(ids)s::text[], %(commands)s::text[], %(retries)s::int[],
            %(priorities)s::int[], %(timeouts)s::float8[], %(run_ats)s::float8[],
            %(delays)s::float8[], %(queues)s::text[], %(memory_maxes)s::int8[],
            %(cpu_maxes)s::float8[], %(tasks_maxes)s::int[], %(cwds)s::text[],
            %(envs)s::text[])
     WITH ORDINALITY AS u(id, command, max_retries, priority, timeout, run_at,
                          delay, queue, memory_max, cpu_max, tasks_max, cwd, env, n), t
ORDER BY u.n"""
    enqueue_rows_if_absent = f"{enqueue_rows}\nON CONFLICT (id) DO NOTHING\nRETURNING id"
    enqueue = enqueue_rows  # up to a chunk of rows: one round trip
    enqueue_if_absent = enqueue_rows_if_absent
    # More rows: begin, enqueue_rows per chunk, then this.
    enqueue_commit = "COMMIT"
    # Which of these ids are taken, and by what command (a conflict, a lost commit).
    enqueue_taken = "SELECT id, command FROM {s}.jobs WHERE id = ANY(%s)"
    # Once the jobs are committed, in a transaction of its own (best effort: a wake lost
    # only delays a job to the next poll), one idle listener a stored job (version 14). Its
    # snapshot is taken after the commit, so a listener it does not see registered after
    # that, and its claim, which follows its registration, sees the jobs.
    wake = "SELECT {s}.wake(%(queues)s::text[], %(counts)s::integer[])"
    # If the wake failed (a role without the right to `listeners` or to wake): as before
    # version 14, every idle worker.
    wake_all = "NOTIFY {channel}"
    # Specs with a unique key (any in the call): one explicit transaction, since a skipped
    # spec's answer needs a statement of its own. submit (its first chunk), submit_rows
    # (later chunks, and again for specs whose holder ended before submit_holders saw it),
    # submit_holders after any skipped, then commit.
    submit_rows = _submit_rows(_CONFLICT)
    submit_rows_if_absent = _submit_rows("ON CONFLICT DO NOTHING")
    submit = f"BEGIN; {submit_rows}"
    submit_if_absent = f"BEGIN; {submit_rows_if_absent}"
    # A statement after the insert (READ COMMITTED: a fresh snapshot) sees the holder the
    # insert waited for and skipped on, and this transaction's own rows: the live holder
    # of each key, then which of the ids are taken (--if-absent).
    submit_holders = f"""SELECT 'k', unique_key, id FROM {{s}}.jobs
WHERE unique_key = ANY(%(keys)s::text[]) AND {_HOLDS}
UNION ALL
SELECT 'i', id, id FROM {{s}}.jobs WHERE id = ANY(%(ids)s::text[])"""

    # Specs with parents (`after`) go the keyed way (one explicit transaction) and are
    # inserted waiting for every parent; after the rows, their parents are locked
    # (FOR SHARE, in id order) and read: a parent's end committing meanwhile either
    # happened before the lock (its state is read here) or waits for this commit (and
    # its trigger, in a later snapshot, sees the rows below). Then submit_deps records
    # each dependency in order, satisfied where the parent is completed, and takes
    # those off the child's count.
    submit_parents = ("SELECT id, state FROM {s}.jobs WHERE id = ANY(%(parents)s::text[])"
                      " ORDER BY id FOR SHARE")
    submit_deps = """WITH w AS (
    SELECT * FROM unnest(%(children)s::text[], %(parents)s::text[], %(positions)s::int[],
                         %(satisfied)s::bool[]) AS w(child, parent, pos, satisfied)),
ins AS (INSERT INTO {s}.deps (child, parent, pos, satisfied)
        SELECT child, parent, pos, satisfied FROM w)
UPDATE {s}.jobs j SET waiting_on = j.waiting_on - c.n
FROM (SELECT child, count(*) AS n FROM w WHERE satisfied GROUP BY child) c
WHERE j.id = c.child"""

    # == the worker's verbs: claiming ========================================================
    # -- claim_next --
    # The server-side function claim (postgres_schema, version 11; its body is
    # claim_any or claim_listed below, by whether %(queues)s is NULL): one statement, whose
    # big query the server plans once per session, not once per call.
    claim = _CALL_CLAIM
    # -- claim_or_due --
    # The claim an idle worker's pass sends, with seconds_until_due's read of the same
    # lane (its three forms) when it takes nothing (_claim_or_due).
    claim_or_due = _claim_or_due("")
    claim_or_due_listed = _claim_or_due(_LANE)
    claim_or_due_except = _claim_or_due(_EXCEPT)
    # (claim_next and claim_or_due) The claim when the best job is in a limited queue:
    # claim_limited_begin, then claim_limited (which locks the queue's row first) while
    # fewer than its limit are processing; a queue that turned out full is let go of (the
    # savepoint) before the next is locked (claim_limited_next), so claimers hold one
    # queue row at a time and never deadlock. Claims of one limited queue thus take turns
    # on every host.
    claim_limited_begin = f"BEGIN; {_CLAIM_PLAN} SAVEPOINT lane"
    claim_limited = f"{_LOCK_QUEUE}\n{_CALL_CLAIM}"
    claim_limited_next = f"ROLLBACK TO SAVEPOINT lane; {claim_limited}"
    # The pieces of the functions (version 12), each a statement of its own there (run
    # with sorting off: _CLAIM_PLAN).
    claim_held = CLAIM_HELD
    claim_any = CLAIM_ANY
    claim_listed = CLAIM_LISTED
    claim_job = CLAIM_JOB
    complete = COMPLETE
    # After a lost commit: the job this worker holds and does not know of (a worker runs
    # one job at a time), besides the one it is ending.
    held_by = ("SELECT {columns} FROM {s}.jobs WHERE state = 'processing'"
               " AND worker = %s AND id IS DISTINCT FROM %s ORDER BY started_at DESC LIMIT 1")

    # -- complete_and_claim --
    # record_success and claim in one call, the function complete_and_claim (version 11;
    # its pieces since version 12 are above): one commit per job.
    complete_and_claim = _CALL_COMPLETE_AND_CLAIM

    # -- heartbeat, beat --
    # The worker's heartbeat (its registry row; with a job, that attempt's lease renewed:
    # one `held` row if it still is) and what it reads on every beat, in one round trip:
    # whether a lease has run out (as reclaim_expired_probe, in this statement's
    # snapshot: a hint, reclaim_expired looks again), the global pause and every setting.
    beat_idle = f"""{_BEAT_NOW}
{_BEAT_WORKER}
{_BEAT_READS}"""
    beat = f"""{_BEAT_NOW}
{_BEAT_WORKER},
renewed AS (
    UPDATE {{s}}.jobs j SET lease_expires_at = t.now + %(lease)s FROM t
    WHERE j.id = %(id)s AND j.state = 'processing' AND j.worker = %(worker)s
        AND j.attempts = %(attempts)s RETURNING 1)
SELECT 'held', NULL, NULL, NULL FROM renewed UNION ALL
{_BEAT_READS}"""

    # == the worker's verbs: recording =======================================================
    # -- record_success --
    # The function record_success (version 11): NOTIFY, then this body.
    record_success = _CALL_RECORD_SUCCESS
    # After a lost commit: did the attempt get the history row only its own ending writes?
    recorded = ("SELECT EXISTS (SELECT 1 FROM {s}.attempts WHERE job_id = %(id)s"
                " AND attempt = %(number)s AND worker = %(job_worker)s"
                " AND outcome = ANY(%(outcomes)s))")

    # -- record_failure --
    # A retry brings work: NOTIFY wakes idle workers. A dead (or canceled) job brings only
    # news for `wait`.
    record_failure = f"{{worker_commit}}NOTIFY {{channel}};\n{_FAIL}"
    record_failure_dead = f"{{worker_commit}}NOTIFY {{channel}}, '{{event}}';\n{_FAIL}"

    # -- release --
    # Back to pending without spending a retry; canceled instead if an operator asked.
    release = f"""{{worker_commit}}NOTIFY {{channel}}; WITH {_T},
upd AS (
    UPDATE {{s}}.jobs j SET
        state = CASE WHEN j.cancel_requested THEN 'canceled' ELSE 'pending' END,
        attempts = CASE WHEN j.cancel_requested THEN j.attempts ELSE j.attempts - 1 END,
        worker = CASE WHEN j.cancel_requested THEN j.worker END,
        started_at = CASE WHEN j.cancel_requested THEN j.started_at END,
        finished_at = CASE WHEN j.cancel_requested THEN t.now ELSE j.finished_at END,
        exit_code = CASE WHEN j.cancel_requested THEN NULL ELSE j.exit_code END,
        last_error = CASE WHEN j.cancel_requested THEN %(canceled_error)s
                          ELSE j.last_error END,
        lease_expires_at = NULL, updated_at = t.now
    FROM t WHERE j.id = %(id)s AND j.state = 'processing'
        AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
    RETURNING j.id, j.state, j.attempt_base, t.now),
hist AS (
    INSERT INTO {{s}}.attempts (job_id, attempt, worker, started_at,
        finished_at, outcome, exit_code, error, output)
    SELECT id, attempt_base + %(attempts)s, %(job_worker)s, coalesce(%(started_at)s, now), now,
        CASE WHEN state = 'canceled' THEN %(canceled_outcome)s
             ELSE %(outcome)s END,
        NULL, CASE WHEN state = 'canceled' THEN %(canceled_error)s
                   ELSE %(error)s END, NULL FROM upd),
{_drop_live("upd")}
SELECT count(*) FROM upd"""

    # -- reclaim_expired --
    # A read first: almost always nothing has expired, and a read locks nothing.
    reclaim_expired_probe = _EXPIRED + " LIMIT 1"
    # Lock the lost attempts (with the server's time); the store decides each one's end by
    # the queue's rules (failed, dead or canceled), and reclaim_end writes them.
    reclaim_expired_lock = f"{_RECLAIM_LOCK} AND lease_expires_at < {{now}} FOR UPDATE SKIP LOCKED"
    reclaim_end = """UPDATE {s}.jobs j SET state = u.state, run_at = u.run_at,
    finished_at = %(t)s, updated_at = %(t)s, exit_code = NULL,
    last_error = u.error, lease_expires_at = NULL
FROM unnest(%(ids)s::text[], %(states)s::text[], %(run_ats)s::float8[],
            %(errors)s::text[]) AS u(id, state, run_at, error)
WHERE j.id = u.id;
INSERT INTO {s}.attempts (job_id, attempt, worker, started_at,
    finished_at, outcome, error)
SELECT u.id, u.attempt, u.worker, coalesce(u.started_at, %(t)s), %(t)s,
    u.outcome, u.error
FROM unnest(%(ids)s::text[], %(attempts)s::int[], %(workers)s::text[],
            %(started)s::float8[], %(errors)s::text[], %(outcomes)s::text[])
     AS u(id, attempt, worker, started_at, error, outcome);
DELETE FROM {s}.live_output WHERE job_id = ANY(%(ids)s::text[]);
NOTIFY {channel}; COMMIT"""

    # -- reclaim_worker --
    reclaim_worker_lock = f"{_RECLAIM_LOCK} AND worker = %(worker)s FOR UPDATE SKIP LOCKED"

    # == operators ===========================================================================
    # -- retry_dead --
    retry_dead = f"""NOTIFY {{channel}}; WITH {_T}
UPDATE {{s}}.jobs j SET {_REVIVE}
FROM t WHERE j.id = %(id)s AND j.state = 'dead'
    AND (j.unique_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {{s}}.jobs h WHERE h.unique_key = j.unique_key AND {_HOLDS}))
RETURNING {{j_columns}}"""
    # Why it matched nothing: no such job, not dead, or the live job holding its key (a
    # holder committed after retry_dead's snapshot: its unique violation, then this).
    retry_dead_refusal = f"""SELECT j.state, j.unique_key, h.id, h.state FROM {{s}}.jobs j
LEFT JOIN LATERAL (SELECT id, state FROM {{s}}.jobs
                   WHERE unique_key = j.unique_key AND {_HOLDS} AND id <> j.id
                   LIMIT 1) h ON true
WHERE j.id = %s"""
    # Why a guarded UPDATE matched nothing: no such job, or its state forbids it.
    job_state = "SELECT state FROM {s}.jobs WHERE id = %s"
    # After a lost commit: the attempts the job made before (a retried job counts from 0).
    retry_dead_tried = "SELECT max(attempt) FROM {s}.attempts WHERE job_id = %s"

    # -- retry --
    # One explicit transaction: its unsatisfied parents locked FOR SHARE first (no parent
    # can end meanwhile; in the order a parent's end takes them, parent then child, so the
    # two never deadlock), then the job itself with the live holder of its key, if any;
    # then the parents read in a new statement (READ COMMITTED: a fresh snapshot, which
    # sees the satisfaction a parent's completion committed while we waited for its
    # lock), then the revival with the count of those still waited for, then commit.
    retry_lock = f"""BEGIN; NOTIFY {{channel}};
SELECT 1 FROM {{s}}.jobs WHERE id IN (
    SELECT parent FROM {{s}}.deps WHERE child = %(id)s AND NOT satisfied)
ORDER BY id FOR SHARE;
SELECT j.state, j.unique_key, h.id, h.state, j.attempts, j.attempt_base, j.updated_at
FROM {{s}}.jobs j
LEFT JOIN LATERAL (SELECT id, state FROM {{s}}.jobs
                   WHERE unique_key = j.unique_key AND {_HOLDS} AND id <> j.id
                   LIMIT 1) h ON true
WHERE j.id = %(id)s FOR UPDATE OF j"""
    retry_parents = """SELECT d.parent, p.state
FROM {s}.deps d LEFT JOIN {s}.jobs p ON p.id = d.parent
WHERE d.child = %(id)s AND NOT d.satisfied ORDER BY d.pos"""
    retry = f"""WITH {_T}
UPDATE {{s}}.jobs j SET state = 'pending', attempt_base = j.attempt_base + j.attempts,
    attempts = 0, run_at = t.now + %(delay)s, updated_at = t.now, worker = NULL,
    started_at = NULL, finished_at = NULL, exit_code = NULL, last_error = NULL,
    cancel_requested = false, lease_expires_at = NULL, waiting_on = %(waiting)s
FROM t WHERE j.id = %(id)s
RETURNING {{j_columns}}"""

    # -- parents --
    # The job (to tell "no parents" from "no such job"), then its parents by position.
    parents = """SELECT 0, NULL, NULL, NULL FROM {s}.jobs WHERE id = %(id)s
UNION ALL
SELECT d.pos, d.parent, p.state, d.satisfied
FROM {s}.deps d LEFT JOIN {s}.jobs p ON p.id = d.parent WHERE d.child = %(id)s"""

    # -- canceled_dependents --
    # Down the chain through deps_waiting: a dependent counts when it is canceled by that
    # parent's end (its last_error says so, as the trigger wrote it), not by an operator.
    canceled_dependents = f"""WITH RECURSIVE down(id) AS (
    SELECT d.child FROM {{s}}.deps d JOIN {{s}}.jobs c ON c.id = d.child
    WHERE d.parent = %(id)s AND NOT d.satisfied AND {_CASCADED}
UNION
    SELECT d.child FROM down JOIN {{s}}.deps d ON d.parent = down.id AND NOT d.satisfied
    JOIN {{s}}.jobs c ON c.id = d.child
    WHERE {_CASCADED})
SELECT {{columns}} FROM {{s}}.jobs WHERE id IN (SELECT id FROM down)
ORDER BY created_at, seq"""

    # -- retry_dead_many --
    retry_dead_many = _retry_dead_many("")
    retry_dead_many_older = _retry_dead_many(_OLDER)

    # -- cancel --
    # Waiting: canceled at once. Running: a request its worker acts on (woken by NOTIFY).
    cancel = f"""NOTIFY {{channel}}, '{{event}}'; WITH {_T}
UPDATE {{s}}.jobs j SET
    state = CASE WHEN j.state = 'processing' THEN j.state ELSE 'canceled' END,
    cancel_requested = j.state = 'processing',
    finished_at = CASE WHEN j.state = 'processing' THEN j.finished_at ELSE t.now END,
    last_error = CASE WHEN j.state = 'processing' THEN j.last_error ELSE %(error)s END,
    lease_expires_at = CASE WHEN j.state = 'processing' THEN j.lease_expires_at END,
    updated_at = t.now
FROM t WHERE j.id = %(id)s AND j.state IN ('pending', 'failed', 'processing')
RETURNING {{j_columns}}"""

    # -- cancel_state --
    cancel_state_processing = _cancel_processing("")
    cancel_state_processing_in_queue = _cancel_processing(_IN_QUEUE)
    cancel_state_waiting = _cancel_waiting("")
    cancel_state_waiting_in_queue = _cancel_waiting(_IN_QUEUE)

    # -- cancel_requested --
    cancel_requested = ("SELECT cancel_requested FROM {s}.jobs WHERE id = %s"
                        " AND state = 'processing' AND worker = %s AND attempts = %s")

    # -- pause --
    pause = ("INSERT INTO {s}.flags (name, set_by, since)"
             " VALUES ('paused', %(by)s, {now}) ON CONFLICT (name) DO NOTHING")
    # The queue's own flag, beside its limit; already paused: nothing changes.
    pause_queue = """INSERT INTO {s}.queues AS q (name, paused_by, paused_since)
VALUES (%(queue)s, %(by)s, {now})
ON CONFLICT (name) DO UPDATE
SET paused_by = excluded.paused_by, paused_since = excluded.paused_since
WHERE q.paused_since IS NULL"""

    # -- resume --
    resume = """NOTIFY {channel}; WITH gone AS (
    DELETE FROM {s}.flags WHERE name = 'paused' RETURNING 1)
SELECT count(*) FROM gone"""
    # A row without a limit left has nothing more to say: it goes.
    resume_queue = """NOTIFY {channel}; WITH
gone AS (DELETE FROM {s}.queues WHERE name = %(queue)s
         AND paused_since IS NOT NULL AND concurrency = 0 AND coalesce(on_dead, '') = ''
         RETURNING 1),
kept AS (UPDATE {s}.queues SET paused_by = NULL, paused_since = NULL
         WHERE name = %(queue)s AND paused_since IS NOT NULL
             AND (concurrency <> 0 OR coalesce(on_dead, '') <> '') RETURNING 1)
SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM kept)"""

    # -- paused --
    paused = "SELECT set_by, since FROM {s}.flags WHERE name = 'paused'"
    paused_queue = ("SELECT paused_by, paused_since FROM {s}.queues"
                    " WHERE name = %s AND paused_since IS NOT NULL")

    # == queues ==============================================================================
    # -- set_queue_concurrency --
    # 0 with no pause: the row goes (a queue needs no row to exist). Waiting workers are
    # woken: a raised or removed limit may have freed work.
    set_queue_concurrency = """NOTIFY {channel}; WITH
gone AS (DELETE FROM {s}.queues WHERE name = %(queue)s AND %(limit)s = 0
         AND paused_since IS NULL AND coalesce(on_dead, '') = '')
INSERT INTO {s}.queues AS q (name, concurrency)
SELECT %(queue)s, %(limit)s WHERE %(limit)s <> 0
    OR EXISTS (SELECT 1 FROM {s}.queues WHERE name = %(queue)s
               AND (paused_since IS NOT NULL OR coalesce(on_dead, '') <> ''))
ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency"""

    # -- queues --
    # One statement, so one snapshot: counts, settings, waits and lanes together.
    # Counts off job_counts (a queue whose jobs are all gone keeps rows at 0: left out) and
    # jobs_leases, as `counts`. Each queue's longest-due eligible job without a walk of the
    # backlog: jobs_due_by_queue is in (queue, priority, run_at) order, so the first entry
    # of each (queue, priority) group holds its earliest run_at, and `g` skips from group
    # to group (that queue's next lower priority, else the next queue): as many index
    # probes as groups (queues times distinct priorities waiting), however many jobs wait.
    queues = f"""WITH RECURSIVE {_T},
g(queue, priority, run_at) AS (
    (SELECT queue, priority, run_at FROM {{s}}.jobs
     WHERE {_WAITING} ORDER BY queue, priority DESC, run_at, seq LIMIT 1)
    UNION ALL
    SELECT x.queue, x.priority, x.run_at FROM g CROSS JOIN LATERAL (
        (SELECT queue, priority, run_at FROM {{s}}.jobs
         WHERE {_WAITING} AND queue = g.queue AND priority < g.priority
         ORDER BY queue, priority DESC, run_at, seq LIMIT 1)
        UNION ALL
        (SELECT queue, priority, run_at FROM {{s}}.jobs
         WHERE {_WAITING} AND queue > g.queue
         ORDER BY queue, priority DESC, run_at, seq LIMIT 1)
        LIMIT 1) x)
SELECT 'c', queue, state, sum(n)::float8, NULL::float8, NULL::text[]
    FROM {{s}}.job_counts WHERE state <> 'blocked' GROUP BY queue, state HAVING sum(n) <> 0
UNION ALL
SELECT 'c', queue, 'processing', count(*)::float8, NULL, NULL FROM {{s}}.jobs
    WHERE state = 'processing' GROUP BY queue
UNION ALL
SELECT 's', name, paused_by, concurrency, paused_since, NULL FROM {{s}}.queues
UNION ALL
SELECT 'o', queue, NULL, NULL, max(t.now - run_at), NULL FROM g, t
    WHERE run_at <= t.now GROUP BY queue
UNION ALL
SELECT 'w', NULL, array_to_string(exclude, ','), NULL, NULL, queues FROM {{s}}.workers, t
    WHERE heartbeat_at >= t.now - %(window)s
UNION ALL
SELECT 'd', name, on_dead, NULL, NULL, NULL FROM {{s}}.queues WHERE coalesce(on_dead, '') <> ''
UNION ALL
SELECT 'n', queue, NULL, count(*)::float8, NULL, NULL FROM {{s}}.notices GROUP BY queue"""

    # == metrics =============================================================================
    # -- metrics --
    # read_snapshot, queues, these three, commit.
    metrics_workers = ("SELECT host, count(*) FROM {s}.workers"
                       " WHERE heartbeat_at >= {now} - %(window)s GROUP BY host")
    metrics_paused = "SELECT EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'paused')"
    metrics_counters = ("SELECT queue, event, le, sum(n)::bigint, sum(seconds)"
                        " FROM {s}.counters GROUP BY queue, event, le ORDER BY queue, event, le")

    # == retention and purge =================================================================
    # -- count_matching --
    count_matching = _COUNT_MATCHING
    count_matching_in_queue = _COUNT_MATCHING + _IN_QUEUE
    count_matching_older = _COUNT_MATCHING + _OLDER
    count_matching_in_queue_older = _COUNT_MATCHING + _OLDER + _IN_QUEUE

    # -- purge --
    purge = _purge("")
    purge_in_queue = _purge(_IN_QUEUE)
    purge_older = _purge(_OLDER)
    purge_in_queue_older = _purge(_OLDER + _IN_QUEUE)

    # -- take_duty --
    take_duty = """INSERT INTO {s}.duties AS d (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, {now} + %(for)s)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
    expires_at = excluded.expires_at
WHERE d.holder = excluded.holder OR d.expires_at < {now}"""

    # == on-dead notices =====================================================================
    # -- set_queue_on_dead --
    # '' with no limit and no pause: the row goes (a queue needs no row to exist).
    set_queue_on_dead = """WITH
gone AS (DELETE FROM {s}.queues WHERE name = %(queue)s AND %(command)s = ''
         AND concurrency = 0 AND paused_since IS NULL)
INSERT INTO {s}.queues AS q (name, on_dead)
SELECT %(queue)s, %(command)s WHERE %(command)s <> ''
    OR EXISTS (SELECT 1 FROM {s}.queues WHERE name = %(queue)s
               AND (concurrency <> 0 OR paused_since IS NOT NULL))
ON CONFLICT (name) DO UPDATE SET on_dead = excluded.on_dead"""

    # -- take_notice --
    # A read first: almost always there is no notice at all.
    _NOTICE_FREE = "due_at <= {now} AND (holder IS NULL OR lease_until < {now})"
    any_notice_due = "SELECT 1 FROM {s}.notices WHERE " + _NOTICE_FREE + " LIMIT 1"
    # The oldest due and free notice (SKIP LOCKED: racing takers get different ones, or
    # none), held for %(for)s seconds of the server's clock, with the command configured
    # now (the queue's, else the global one, else '') and its attempt's output, if kept.
    take_notice = """WITH pick AS (
    SELECT id FROM {s}.notices WHERE """ + _NOTICE_FREE + """
    ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED),
took AS (
    UPDATE {s}.notices n SET holder = %(holder)s, lease_until = {now} + %(for)s
    FROM pick WHERE n.id = pick.id
    RETURNING n.id, n.job_id, n.queue, n.command, n.exit_code, n.attempts, n.attempt,
        n.last_error, n.tries)
SELECT took.id, took.job_id, took.queue, took.command, took.exit_code, took.attempts,
    took.last_error, took.tries,
    coalesce((SELECT nullif(on_dead, '') FROM {s}.queues WHERE name = took.queue),
             (SELECT value FROM {s}.config WHERE key = 'on-dead'), ''),
    (SELECT output FROM {s}.attempts a WHERE a.job_id = took.job_id
        AND a.attempt = took.attempt ORDER BY a.seq DESC LIMIT 1)
FROM took"""

    # -- notice_delivered --
    drop_notice = "DELETE FROM {s}.notices WHERE id = %(id)s AND holder = %(holder)s"

    # -- notice_failed --
    retry_notice = """UPDATE {s}.notices SET tries = tries + 1, error = %(error)s,
    due_at = {now} + %(delay)s, holder = NULL, lease_until = NULL
WHERE id = %(id)s AND holder = %(holder)s"""

    # == output ==============================================================================
    # -- append_output --
    # FOR SHARE on the job: an attempt that is ending (a reclaim) is waited for and looked
    # at again, so no chunk outlives its attempt.
    # Fenced on the attempts count; the chunks are kept under the attempt's number
    # (attempt_base + attempts), as read_output asks for them. The event wakes `logs
    # --follow`, so it is sent only while a watcher is registered (as a completion's,
    # version 13: a NOTIFY takes the server's notification lock at commit).
    append_output = ("SELECT pg_notify('{channel}', '{event}') WHERE " + watched("{now}")
                     + """; WITH held AS (
    SELECT id, attempt_base + attempts AS n FROM {s}.jobs WHERE id = %(id)s
        AND state = 'processing' AND worker = %(worker)s AND attempts = %(attempt)s
    FOR SHARE),
chunk AS (
    INSERT INTO {s}.live_output (job_id, attempt, start, data)
    SELECT id, n, %(start)s, %(data)s FROM held
    ON CONFLICT (job_id, attempt, start) DO UPDATE SET data = excluded.data),
old AS (
    DELETE FROM {s}.live_output WHERE job_id = %(id)s
        AND attempt = (SELECT n FROM held) AND start + length(data) <= %(cut)s)
SELECT count(*) FROM held""")

    # -- read_output --
    # One statement, so one snapshot: the job's state with its live chunks or the history
    # row, never the chunks of an attempt that ended in between.
    # Attempts by number (attempt_base + attempts), as the history numbers them.
    read_output = """WITH j AS (SELECT state, attempt_base + attempts AS n FROM {s}.jobs
           WHERE id = %(id)s)
SELECT 'j', j.n, NULL::bigint, NULL::bytea, NULL::bigint,
    (j.state = 'processing' AND (%(attempt)s::int IS NULL OR %(attempt)s = j.n))
FROM j
UNION ALL
SELECT 'l', l.attempt, l.start, l.data, NULL, NULL FROM j, {s}.live_output l
WHERE j.state = 'processing' AND (%(attempt)s::int IS NULL OR %(attempt)s = j.n)
    AND l.job_id = %(id)s AND l.attempt = j.n
    AND l.start + length(l.data) > %(offset)s
UNION ALL
(SELECT 'h', a.attempt, NULL, a.output, a.output_total, NULL
 FROM j, {s}.attempts a
 WHERE NOT (j.state = 'processing' AND (%(attempt)s::int IS NULL OR %(attempt)s = j.n))
     AND a.job_id = %(id)s AND (%(attempt)s::int IS NULL OR a.attempt = %(attempt)s)
 ORDER BY a.seq DESC LIMIT 1)"""

    # == reads ===============================================================================
    # Plain SELECTs: no row or advisory locks (`reading()` wraps several in read_snapshot).
    # -- get --
    get = "SELECT {columns} FROM {s}.jobs WHERE id = %s"
    get_history = ("SELECT attempt, worker, started_at, finished_at, outcome, exit_code,"
                   " error, output, cpu_user_usec, cpu_system_usec, memory_peak_bytes"
                   " FROM {s}.attempts WHERE job_id = %s ORDER BY seq")

    # -- iter_jobs --
    # No transaction stays open between pages (a pooler may hand the connection on).
    iter_jobs = _iter_jobs("")
    iter_jobs_of_state = _iter_jobs("state = %(state)s AND ")
    iter_jobs_in_queue = _iter_jobs("queue = %(queue)s AND ")
    iter_jobs_in_queue_of_state = _iter_jobs("queue = %(queue)s AND state = %(state)s AND ")
    # One key's jobs (jobs_by_unique), of any state and queue unless given.
    iter_jobs_with_key = _iter_jobs(
        "unique_key = %(unique)s AND (%(state)s::text IS NULL OR state = %(state)s)"
        " AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND ")

    # -- counts --
    counts = _counts("", "")
    # Its jobs, and the active workers that serve it (store.serves: by name, or all but
    # the queues they exclude).
    counts_in_queue = _counts("WHERE queue = %(queue)s", f"AND {_SERVES}")

    # -- remaining --
    remaining = _REMAINING
    remaining_listed = _REMAINING + _LANE
    remaining_except = _REMAINING + _EXCEPT

    # -- seconds_until_due --
    seconds_until_due = _seconds_until_due("")
    seconds_until_due_listed = _seconds_until_due(_LANE)
    seconds_until_due_except = _seconds_until_due(_EXCEPT)

    # -- now --
    now = "SELECT {now}"

    # -- recent_jobs --
    recent_jobs = _recent_jobs("")
    recent_jobs_in_queue = _recent_jobs(_IN_QUEUE)

    # -- completed_since --
    # The last minute's completions off jobs_completed (version 10), not every completed job:
    # the cutoff a scalar subquery (evaluated once), so it bounds the index range.
    completed_since = ("SELECT queue, count(*) FROM {s}.jobs WHERE state = 'completed'"
                       " AND finished_at >= (SELECT {now} - %(s)s) GROUP BY queue")

    # == configuration =======================================================================
    # -- config_items --
    config_items = "SELECT key, value FROM {s}.config"

    # -- set_config --
    set_config = ("INSERT INTO {s}.config (key, value) VALUES (%s, %s)"
                  " ON CONFLICT (key) DO UPDATE SET value = excluded.value")

    # == workers =============================================================================
    # -- register_worker --
    register_worker = f"""WITH {_T}
INSERT INTO {{s}}.workers (name, host, pid, pid_start, started_at,
    heartbeat_at, state, job_id, queues, exclude)
SELECT %s, %s, %s, %s, t.now, t.now, %s, %s, %s::text[], %s::text[] FROM t
ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    pid_start = excluded.pid_start, started_at = excluded.started_at,
    heartbeat_at = excluded.heartbeat_at, state = excluded.state,
    job_id = excluded.job_id, queues = excluded.queues, exclude = excluded.exclude
RETURNING started_at"""

    # -- unregister_worker --
    unregister_worker = "DELETE FROM {s}.workers WHERE name = %s"

    # -- workers --
    workers = ("SELECT name, host, pid, pid_start, started_at, heartbeat_at, state, job_id,"
               " queues, exclude FROM {s}.workers ORDER BY name")

    # -- seconds_since_heartbeat --
    seconds_since_heartbeat = "SELECT {now} - heartbeat_at FROM {s}.workers WHERE name = %s"

    # -- verify --
    # Every table reachable with the rights the verbs need (PRIVILEGES): the schema first,
    # then one row per table and right, then the worker's functions (EXECUTE).
    verify_privileges = "SELECT '', has_schema_privilege(%s, 'USAGE')" + "".join(
        f"\nUNION ALL SELECT '{table}', has_table_privilege('{{s}}.{table}', '{right}')"
        for table, rights in PRIVILEGES.items() for right in rights.split(",")) + "".join(
        f"\nUNION ALL SELECT '{name}()', has_function_privilege('{{s}}.{name}({args})',"
        " 'EXECUTE')" for name, args in FUNCTION_ARGS.items())
    # Then a read of each, sent together.
    verify_reads = "; ".join(f"SELECT 1 FROM {{s}}.{table} LIMIT 1" for table in PRIVILEGES)

    # -- open (a worker's store): does the server wait for standbys? --
    synchronous_standbys = "SELECT current_setting('synchronous_standby_names') <> ''"

    # -- info --
    info = ("SELECT (SELECT max(version) FROM {s}.schema_version),"
            " current_setting('server_version'), current_database(), current_user")
    # The server process's id, which a pooler's (the connection's, made up at connect)
    # does not match: whether LISTEN on this locator would be heard (see `listen`).
    server_pid = "SELECT pg_backend_pid()"

    # == waking ==============================================================================
    # -- wakeup --
    # On a connection of its own, for each idle worker, once server_pid said that no
    # pooler is in the way (a LISTEN through one would stay with a pooled server connection,
    # whose notifications go to whichever client holds it next).
    listen = "LISTEN {channel}"
    # While its worker is busy (disarm): see postgres.ListenWakeup.
    unlisten = "UNLISTEN {channel}"
    unlisten_all = "UNLISTEN *"
    # An idle worker (a claimer) also listens on a channel of its own and registers it
    # (version 14), with the queues it serves, so that an enqueue wakes it alone; again
    # each time it waits after a wake took it out. Its row, while it is still there, goes
    # with it when it stops waiting; gone, it was woken meanwhile (by a job it may not
    # take): that wake is passed on to every idle worker, on the shared channel.
    register = """SET LOCAL synchronous_commit TO off;
INSERT INTO {s}.listeners AS l (channel, token, backend, queues, exclude, since)
VALUES (%(own)s, %(token)s, pg_backend_pid(), %(queues)s::text[], %(exclude)s::text[], {now})
ON CONFLICT (channel) DO UPDATE
SET token = excluded.token, backend = excluded.backend, since = excluded.since"""
    unregister = """WITH gone AS (DELETE FROM {s}.listeners WHERE channel = %(own)s RETURNING 1)
SELECT pg_notify('{channel}', '') WHERE NOT EXISTS (SELECT 1 FROM gone)"""
    # At connect: the rows of listeners whose connection is gone (a killed worker's).
    sweep_listeners = """DELETE FROM {s}.listeners WHERE backend NOT IN
    (SELECT pid FROM pg_stat_get_activity(NULL) WHERE pid IS NOT NULL)"""
    # A watcher (`wait`, `logs --follow`: wakeup(watch=True)) registers while it watches,
    # so the worker's completions notify (version 13: WATCHED), and renews the row; the
    # rows of watchers that died expire, and the next registration drops them.
    watch = f"""WITH {_T}, gone AS (DELETE FROM {{s}}.watchers w USING t
    WHERE w.until < t.now AND w.name <> %(name)s)
INSERT INTO {{s}}.watchers AS w (name, until) SELECT %(name)s, t.now + %(lease)s FROM t
ON CONFLICT (name) DO UPDATE SET until = excluded.until"""
    unwatch = "DELETE FROM {s}.watchers WHERE name = %s"

    def __init__(self, schema: str, for_worker: bool) -> None:
        fields = {"s": f'"{schema}"', "channel": f"{schema}_jobs", "event": EVENT, "now": NOW,
                  "columns": ", ".join(ROW_COLUMNS),
                  "j_columns": ", ".join(f"j.{c}" for c in ROW_COLUMNS),
                  "o_columns": "(o_job).*",
                  "worker_commit": WORKER_COMMIT if for_worker else "",
                  "worker_async": "true" if for_worker else "false"}
        for name, template in TEMPLATES.items():
            setattr(self, name, template.format_map(fields))


# Name -> template, in the order above.
TEMPLATES: dict[str, str] = {name: value for name, value in vars(Statements).items()
                             if isinstance(value, str) and not name.startswith("_")}

# The statements of each verb (a statement several verbs run is listed under each), verbs in
# the order above: what `python -m queuectl.backends.postgres_sql` prints.
VERBS: dict[str, tuple[str, ...]] = {
    "(any verb)": ("begin", "commit", "rollback", "read_snapshot"),
    "open": ("opening_read", "migrate_lock", "migrate_exists", "migrate_version",
             "migrate_foreign_tables", "migrate_schema_present", "migrate_create_schema",
             "migrate_first_version", "migrate_set_version", "commit"),
    "submit": ("enqueue", "enqueue_if_absent", "begin", "enqueue_rows",
               "enqueue_rows_if_absent", "enqueue_commit", "enqueue_taken", "submit",
               "submit_if_absent", "submit_rows", "submit_rows_if_absent", "submit_holders",
               "submit_parents", "submit_deps", "commit", "wake", "wake_all"),
    "claim_next": ("claim", "claim_held", "claim_any", "claim_listed", "claim_job",
                   "claim_limited_begin", "claim_limited", "claim_limited_next", "commit",
                   "held_by"),
    "claim_or_due": ("claim_or_due", "claim_or_due_listed", "claim_or_due_except",
                     "claim_limited_begin", "claim_limited", "claim_limited_next", "commit",
                     "held_by", "seconds_until_due", "seconds_until_due_listed",
                     "seconds_until_due_except"),
    "complete_and_claim": ("complete_and_claim", "complete", "claim_held", "claim_any",
                           "claim_listed", "claim_job", "claim_limited_begin", "claim_limited",
                           "claim_limited_next", "commit", "recorded", "held_by"),
    "heartbeat": ("beat_idle", "beat"),
    "beat": ("beat_idle", "beat"),
    "record_success": ("record_success", "complete", "recorded"),
    "record_failure": ("record_failure", "record_failure_dead", "recorded", "get"),
    "release": ("release", "recorded"),
    "reclaim_expired": ("reclaim_expired_probe", "reclaim_expired_lock", "reclaim_end",
                        "commit"),
    "reclaim_worker": ("reclaim_worker_lock", "reclaim_end", "commit"),
    "retry_dead": ("retry_dead", "retry_dead_refusal", "get", "retry_dead_tried"),
    "retry": ("retry_lock", "retry_parents", "retry", "commit", "rollback", "get"),
    "parents": ("parents",),
    "canceled_dependents": ("canceled_dependents",),
    "retry_dead_many": ("retry_dead_many", "retry_dead_many_older"),
    "cancel": ("cancel", "job_state", "get"),
    "cancel_state": ("cancel_state_processing", "cancel_state_processing_in_queue",
                     "cancel_state_waiting", "cancel_state_waiting_in_queue"),
    "cancel_requested": ("cancel_requested",),
    "pause": ("pause", "pause_queue"),
    "resume": ("resume", "resume_queue"),
    "paused": ("paused", "paused_queue"),
    "set_queue_concurrency": ("set_queue_concurrency",),
    "queues": ("queues",),
    "metrics": ("read_snapshot", "queues", "metrics_workers", "metrics_paused",
                "metrics_counters", "commit"),
    "count_matching": ("count_matching", "count_matching_in_queue", "count_matching_older",
                       "count_matching_in_queue_older"),
    "purge": ("purge", "purge_in_queue", "purge_older", "purge_in_queue_older"),
    "take_duty": ("take_duty",),
    "set_queue_on_dead": ("set_queue_on_dead",),
    "take_notice": ("any_notice_due", "take_notice"),
    "notice_delivered": ("drop_notice",),
    "notice_failed": ("drop_notice", "retry_notice"),
    "append_output": ("append_output",),
    "read_output": ("read_output",),
    "get": ("get", "get_history"),
    "iter_jobs": ("iter_jobs", "iter_jobs_of_state", "iter_jobs_in_queue",
                  "iter_jobs_in_queue_of_state", "iter_jobs_with_key"),
    "counts": ("counts", "counts_in_queue"),
    "remaining": ("remaining", "remaining_listed", "remaining_except"),
    "seconds_until_due": ("seconds_until_due", "seconds_until_due_listed",
                          "seconds_until_due_except"),
    "reading": ("read_snapshot", "rollback"),
    "now": ("now",),
    "recent_jobs": ("recent_jobs", "recent_jobs_in_queue"),
    "completed_since": ("completed_since",),
    "config_items": ("config_items",),
    "set_config": ("set_config",),
    "register_worker": ("register_worker",),
    "unregister_worker": ("unregister_worker",),
    "workers": ("workers",),
    "seconds_since_heartbeat": ("seconds_since_heartbeat",),
    "verify": ("verify_privileges", "verify_reads"),
    "info": ("info", "config_items", "server_pid"),
    "open (a worker)": ("synchronous_standbys",),
    "wakeup": ("server_pid", "listen", "unlisten", "unlisten_all", "sweep_listeners",
               "register", "unregister", "watch", "unwatch"),
}


@functools.cache
def statements(schema: str, for_worker: bool = False) -> Statements:
    """The statements for the queue in `schema` (a checked name), built once per process."""
    return Statements(schema, for_worker)


# -- a worker's calls, prepared ------------------------------------------------------------
# On a direct connection, a worker's store sends its calls (one per job) as statements
# prepared once per connection: the server then parses, analyses and plans each call once,
# not on every job (measured on the bench's 2-worker drain, five pairs of runs with and
# without: 3 to 38 µs of the server's CPU a job, about 20 on average, of some 580). Never
# through a pooler: a transaction pooler would hand an EXECUTE a server connection that
# never saw its PREPARE (the store tells a pooler by the process id it made up: server_pid).


class Prepared:
    """A call as a prepared statement: its name, the PREPARE (placeholders $1..$n, the
    types the call's casts give) and the EXECUTE (psycopg2's placeholders, bound per call).
    A plain class: dataclasses would cost every command's start-up 9 ms of imports."""

    __slots__ = ("name", "prepare", "execute")

    def __init__(self, name: str, prepare: str, execute: str) -> None:
        self.name, self.prepare, self.execute = name, prepare, execute


@functools.cache
def prepared(text: str) -> Prepared:
    """The call `text` (psycopg2's %(name)s placeholders) as a prepared statement, named
    after a checksum of its text: another schema, version or setting is another name."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}"

    body = re.sub(r"%\((\w+)\)s", number, text).replace("%%", "%")
    name = f"queuectl_{binascii.crc32(text.encode()):08x}"
    passed = ", ".join(f"%({n})s" for n in names)
    execute = f"EXECUTE {name}({passed})" if names else f"EXECUTE {name}"
    return Prepared(name, f"PREPARE {name} AS {body}", execute)


# -- printing ------------------------------------------------------------------------------
def _matches(pattern: str) -> list[str]:
    """The statements a verb, a statement name, or a prefix of them (`claim`) names, in
    the order above."""
    names: list[str] = []
    for verb, members in VERBS.items():
        if verb == pattern or verb.startswith(pattern + "_"):
            names.extend(members)
    names.extend(name for name in TEMPLATES
                 if name == pattern or name.startswith(pattern + "_"))
    return [name for name in TEMPLATES if name in names]


def main(argv: list[str]) -> int:
    """No argument: every verb with its statements' names. A verb or statement name (or a
    prefix such as `claim`): their full text, for the default schema, as a worker's store
    sends them."""
    if not argv:
        for verb, members in VERBS.items():
            print(f"{verb}: {', '.join(members)}")
        return 0
    sql = statements(DEFAULT_SCHEMA, for_worker=True)
    status = 0
    for pattern in argv:
        names = _matches(pattern)
        if not names:
            print(f"no verb or statement named {pattern!r}", file=sys.stderr)
            status = 2
        for name in names:
            print(f"-- {name} --\n{getattr(sql, name)};\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
