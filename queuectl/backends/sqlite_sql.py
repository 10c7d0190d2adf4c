"""Every SQL statement the SQLite store runs, by name, one block per `Store` verb (or per
few verbs that share their statements).

The blocks follow `queuectl/store.py`'s order (after the two the store needs before any
verb: opening the file and its transactions); `SECTIONS` at the end lists them. Each
statement is a plain constant, complete as SQLite receives it, so a reviewer reads what
runs. A statement with variants is a tuple of complete statements, built here at import:

- the statements over the jobs of one state (a `ByState`, picked by `by_state`): every
  queue, the default queue (jobs_by_state), or one named queue (jobs_by_queue, which holds
  the named queues only);
- the statements over the jobs of one unique key (a `ByKey`, picked by `by_key`): any
  state and queue, one state, one queue, or both (jobs_by_unique);
- `PROBE`, the reads a worker makes at open to meet damage before its first claim.

Only one piece truly varies with the caller: the `IN (?, ?, ...)` list of the queues a
worker serves. A statement that holds `{queues}` is a template; `in_queues` completes it.

`python -m queuectl.backends.sqlite_sql` lists the statement names by verb;
`python -m queuectl.backends.sqlite_sql claim` (a verb or a statement name) prints them.
The schema itself (tables, indexes, migrations) is in `sqlite_schema.py`.
"""

from __future__ import annotations

from queuectl.backends.sqlite_schema import SCHEMA_VERSION
from queuectl.job import DEFAULT_QUEUE, ROW_COLUMNS

JOB_COLUMNS = ", ".join(ROW_COLUMNS)  # what Job.from_row reads, in its order

# -- pieces several statements share (not statements) --------------------------------------
# The condition of the partial indexes jobs_due*: waiting, and not blocked by a parent (schema
# 10), so blocked jobs cost the claim nothing. Every statement meant to use them says it all.
_WAITING = "state IN ('pending', 'failed') AND waiting_on = 0"
_NAMED = "queue <> 'default'"  # the condition of the partial index jobs_by_queue
# The conditions of the partial indexes jobs_unique_live (both) and jobs_by_unique (the first).
_KEYED = "unique_key IS NOT NULL"
_LIVE = "state IN ('pending', 'processing', 'failed')"  # a job that holds its unique key
_HELD = "id = ? AND state = 'processing' AND worker = ? AND attempts = ?"  # still our attempt
# A lease has expired: by the boot clock, or by the wall clock for a lease written by a
# queuectl older than schema 4 still running beside this one (lease_boot NULL).
# Parameters: wall-clock now, this boot's id, uptime now.
_EXPIRED = ("CASE WHEN lease_boot IS NULL THEN lease_expires_at < ?"
            " ELSE lease_boot <> ? OR lease_until < ? END")
# A worker heard from within policy.ACTIVE_WINDOW, on the same clocks.
# Parameters: the window's start on the wall clock, this boot's id, its start in uptime.
_ACTIVE = ("CASE WHEN beat_boot IS NULL THEN heartbeat_at >= ?"
           " ELSE beat_boot = ? AND beat_clock >= ? END")
# A worker that serves the queue named by the parameter (store.serves): by name, or all
# queues (NULL) but those it excludes.
_SERVES = ("((queues IS NOT NULL) = (instr(',' || coalesce(queues, exclude, '') || ',',"
           " ',' || ? || ',') > 0))")


class ByState(tuple[str, str, str]):
    """The three complete variants of a statement over the jobs of one state, in created_at
    order, in the order of LABELS: jobs_by_queue holds the named queues only (schema 8), the
    default queue's jobs are found through jobs_by_state."""

    LABELS = ("every queue", "the default queue", "a named queue")


def _by_state(template: str) -> ByState:
    """`{by_state}` (an index and a WHERE clause) becomes each of: every queue (parameter:
    the state), the default queue (the state, the queue), a named queue (the queue, the
    state)."""
    return ByState((
        template.replace("{by_state}", "INDEXED BY jobs_by_state WHERE state = ?"),
        template.replace("{by_state}", "INDEXED BY jobs_by_state WHERE state = ? AND queue = ?"),
        template.replace("{by_state}",
                         f"INDEXED BY jobs_by_queue WHERE queue = ? AND {_NAMED} AND state = ?"),
    ))


def by_state(variants: ByState, state: str, queue: str | None) -> tuple[str, tuple[str, ...]]:
    """The variant of a `_by_state` statement for `state` (of `queue`, if given) and the
    parameters its by-state condition takes, in their place's order."""
    if queue is None:
        return variants[0], (state,)
    if queue == DEFAULT_QUEUE:
        return variants[1], (state, queue)
    return variants[2], (queue, state)


class ByKey(tuple[str, str, str, str]):
    """The four complete variants of a statement over the jobs of one unique key, in
    created_at order off jobs_by_unique, in the order of LABELS."""

    LABELS = ("any state and queue", "one state", "one queue", "one state of one queue")


def _by_key(template: str) -> ByKey:
    """`{by_key}` (an index and a WHERE clause) becomes each of: the key (parameter: the
    key), the key and a state (the key, the state), the key and a queue (the key, the
    queue), the key, a state and a queue (the key, the state, the queue)."""
    where = f"INDEXED BY jobs_by_unique WHERE unique_key = ? AND {_KEYED}"
    return ByKey((
        template.replace("{by_key}", where),
        template.replace("{by_key}", f"{where} AND state = ?"),
        template.replace("{by_key}", f"{where} AND queue = ?"),
        template.replace("{by_key}", f"{where} AND state = ? AND queue = ?"),
    ))


def by_key(variants: ByKey, key: str, state: str | None,
           queue: str | None) -> tuple[str, tuple[str, ...]]:
    """The variant of a `_by_key` statement for `key` (of `state` and `queue`, if given) and
    the parameters its by-key condition takes, in their place's order."""
    if state and queue is not None:
        return variants[3], (key, state, queue)
    if state:
        return variants[1], (key, state)
    if queue is not None:
        return variants[2], (key, queue)
    return variants[0], (key,)


def in_queues(template: str, queues: list[str]) -> str:
    """A `{queues}` template completed for these queue names: `(?, ?, ...)`, one parameter
    per name, which the caller passes in the same order."""
    return template.replace("{queues}", "(" + ", ".join("?" * len(queues)) + ")")


# == opening ================================================================================
# The write-ahead log is copied into the database (two fsyncs) once it holds this many pages,
# by whichever writer's commit crosses it, inside that commit: while it lasts every other
# writer waits in line. SQLite's default, 1,000 pages, kept each of two draining workers
# about 6% of the time in checkpoints, the other often waiting; 4,000 pages (16 MiB) make
# them a quarter as frequent.
WAL_CHECKPOINT_PAGES = 4000

SYNCHRONOUS_FULL = "PRAGMA synchronous=FULL"  # every command: an enqueue survives power loss
SYNCHRONOUS_NORMAL = "PRAGMA synchronous=NORMAL"  # a worker opened with durable=False
WAL_AUTOCHECKPOINT = f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}"
SMALL_CACHE = "PRAGMA cache_size=-512"  # a worker: its hot set is a few index pages
# Every table and index the hot paths use, touched at a worker's open (see SQLiteStore._probe).
PROBE = (
    f"SELECT id FROM jobs INDEXED BY jobs_due WHERE {_WAITING}"
    " ORDER BY priority DESC, run_at LIMIT 1",
    "SELECT id FROM jobs INDEXED BY jobs_due_by_queue WHERE queue = 'default'"
    f" AND {_WAITING} ORDER BY priority DESC, run_at LIMIT 1",
    f"SELECT count(*) FROM jobs INDEXED BY jobs_by_queue WHERE {_NAMED}",
    "SELECT count(*) FROM queues",
    "SELECT count(*) FROM jobs INDEXED BY jobs_by_state WHERE state = 'processing'",
    # a claim, completion or failure of a job with a unique key moves it in this index
    f"SELECT count(*) FROM jobs INDEXED BY jobs_unique_live WHERE {_KEYED} AND {_LIVE}",
    "SELECT count(*) FROM workers",
    "SELECT count(*) FROM config",
    "SELECT max(seq) FROM attempts",
    "SELECT count(*) FROM flags",
    "SELECT count(*) FROM duties",
    "SELECT count(*) FROM live_output",
    # a completion or a failure looks here for waiting dependents (the triggers' WHEN)
    "SELECT count(*) FROM deps INDEXED BY deps_waiting WHERE satisfied = 0",
    # a claim, completion or failure moves one count (schema 13's triggers)
    "SELECT count(*) FROM job_counts",
)
SCHEMA_VERSION_OF = "PRAGMA user_version"  # 0: new, or not ours (see TABLES)
TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
# Every connection, said explicitly (it is SQLite's default, which its documentation says may
# change): the cancel trigger of schema 10 cancels a parent's whole chain of dependents in one
# statement, so it must not fire again for each of them (nested, level by level, it would
# fail past 1,000 levels). Also: REPLACE's deletions fire no DELETE trigger.
RECURSIVE_TRIGGERS = "PRAGMA recursive_triggers = OFF"
JOURNAL_MODE = "PRAGMA journal_mode"
WAL_MODE = "PRAGMA journal_mode=WAL"
# After the migrations (sqlite_schema.MIGRATIONS), in their transaction.
STAMP_SCHEMA_VERSION = f"PRAGMA user_version = {SCHEMA_VERSION}"

# == transactions ===========================================================================
# Every write: the write lock at once, so a transaction never has to upgrade a read snapshot
# (which fails at once under contention).
BEGIN_WRITE = "BEGIN IMMEDIATE"
BEGIN_READ = "BEGIN"  # several reads from one snapshot (`reading`, read_output)
TAKE_SNAPSHOT = "PRAGMA schema_version"  # the header: a read, so the snapshot starts here
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# == submitting: submit =====================================================================
_ENQUEUE = ("{verb} INTO jobs (id, command, state, attempts, max_retries, priority, timeout,"
            " run_at, created_at, updated_at, queue, memory_max, cpu_max, tasks_max,"
            " unique_key, cwd, env)"
            " VALUES (?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
ENQUEUE = _ENQUEUE.replace("{verb}", "INSERT")  # a taken id fails: Conflict
ENQUEUE_IF_ABSENT = _ENQUEUE.replace("{verb}", "INSERT OR IGNORE")  # a taken id: rowcount 0
# The live job that holds a unique key, if any (at most one: jobs_unique_live is UNIQUE),
# with its state; run only for a spec with a key, in the write transaction, before its
# insert. Also retry_dead's and retry_dead_many's.
LIVE_HOLDER = (f"SELECT id, state FROM jobs INDEXED BY jobs_unique_live"
               f" WHERE unique_key = ? AND {_KEYED} AND {_LIVE}")
# The jobs one enqueue added to one queue, counted for `queuectl metrics`.
COUNT_ENQUEUED = ("INSERT INTO counters (queue, event, le, n, seconds)"
                  " VALUES (?, 'enqueued', 0, ?, 0)"
                  " ON CONFLICT (queue, event, le) DO UPDATE SET n = n + excluded.n")
# ... and as pending jobs, for `counts` and `queues` (schema 13: no INSERT trigger counts them).
COUNT_PENDING = ("INSERT INTO job_counts (queue, state, n) VALUES (?, 'pending', ?)"
                 " ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n")
# Only for a spec with `after`, once its job is stored: each parent's state (none: NotFound),
# its dependency row in the order given (satisfied at once if the parent is completed), and
# the number of the others it waits for.
PARENT_STATE = "SELECT state FROM jobs WHERE id = ?"
ADD_DEP = "INSERT INTO deps (child, parent, pos, satisfied) VALUES (?, ?, ?, ?)"
SET_WAITING_ON = "UPDATE jobs SET waiting_on = ? WHERE id = ?"

# == the worker's verbs: claim_next (and complete_and_claim's claim) ========================
# The global pause and every queue that is paused or has a concurrency limit, read at each
# claim inside its write transaction. Rows: (queue or NULL for the global pause, limit,
# paused).
RESTRICTIONS = ("SELECT NULL, 0, 1 FROM flags WHERE name = 'paused' UNION ALL"
                " SELECT name, concurrency, paused_since IS NOT NULL FROM queues"
                " WHERE concurrency > 0 OR paused_since IS NOT NULL")
_CLAIM = """UPDATE jobs SET state = 'processing', attempts = attempts + 1, worker = ?,
        lease_expires_at = ?, lease_boot = ?, lease_until = ?, started_at = ?,
        finished_at = NULL, updated_at = ?"""
# A drain's claim while no queue is held back (no RESTRICTIONS row): one statement, the
# best waiting job of every queue off the partial index jobs_due. Returns its rowid too,
# which the completion uses (COMPLETE_ROW). Parameters: worker, lease (wall clock, boot,
# uptime), started_at, updated_at, now.
CLAIM_ANY = f"""{_CLAIM}
    WHERE rowid = (SELECT rowid FROM jobs INDEXED BY jobs_due
        WHERE {_WAITING} AND run_at <= ?
        AND NOT EXISTS ({RESTRICTIONS})
        ORDER BY priority DESC, run_at LIMIT 1)
    RETURNING rowid, {JOB_COLUMNS}"""
# Otherwise the job is picked first, then claimed by id (CLAIM_BY_ID). How many of a limited
# queue's jobs are processing now (its limit reached: the queue is skipped).
PROCESSING_IN_QUEUE = ("SELECT count(*) FROM jobs INDEXED BY jobs_leases"
                       " WHERE state = 'processing' AND queue = ?")
# The best eligible job of one queue, off the partial index of waiting jobs: a lane worker's
# queues in its order of preference, or each queue not held back in turn.
BEST_OF_QUEUE = (f"SELECT id, priority, run_at FROM jobs INDEXED BY jobs_due_by_queue"
                 f" WHERE queue = ? AND {_WAITING} AND run_at <= ?"
                 " ORDER BY priority DESC, run_at LIMIT 1")
# The best eligible job of every queue, for a worker of every queue while no queue is held
# back (a queue below its limit is not).
BEST_OF_ANY_QUEUE = (f"SELECT id FROM jobs INDEXED BY jobs_due WHERE {_WAITING} AND run_at <= ?"
                     " ORDER BY priority DESC, run_at LIMIT 1")
# Some queues are held back: the next queue after the parameter that has waiting jobs,
# skipping along the index from queue to queue (cheap however long a held queue is).
NEXT_WAITING_QUEUE = (f"SELECT min(queue) FROM jobs INDEXED BY jobs_due_by_queue"
                      f" WHERE {_WAITING} AND queue > ?")
CLAIM_BY_ID = f"""{_CLAIM}
    WHERE id = ?
    RETURNING {JOB_COLUMNS}"""

# == heartbeat ==============================================================================
BEAT = ("UPDATE workers SET heartbeat_at = ?, beat_boot = ?, beat_clock = ?, state = ?,"
        " job_id = ? WHERE name = ?")
RENEW_LEASE = ("UPDATE jobs SET lease_expires_at = ?, lease_boot = ?, lease_until = ?"
               f" WHERE {_HELD}")

# == record_success (and complete_and_claim's completion) ===================================
_COMPLETE = ("UPDATE jobs SET state = 'completed', finished_at = ?, updated_at = ?,"
             " exit_code = ?, last_error = NULL, lease_expires_at = NULL")
COMPLETE_ROW = f"{_COMPLETE} WHERE rowid = ? AND {_HELD}"  # the row our claim returned
COMPLETE_ID = f"{_COMPLETE} WHERE {_HELD}"  # the fallback: claimed elsewhere, or the row moved

# == every way an attempt ends (record_success, record_failure, release, reclaim_*) =========
# The attempt's history row, written once, when it ends.
RECORD_ATTEMPT = """INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at,
        outcome, exit_code, error, output, output_total, cpu_user_usec, cpu_system_usec,
        memory_peak_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# ... counted for `queuectl metrics` (see policy.counted_outcome and duration_bucket).
COUNT_ATTEMPT = ("INSERT INTO counters (queue, event, le, n, seconds) VALUES (?, ?, ?, 1, ?)"
                 " ON CONFLICT (queue, event, le) DO UPDATE SET n = n + 1,"
                 " seconds = seconds + excluded.seconds")
DROP_LIVE_OUTPUT = "DELETE FROM live_output WHERE job_id = ?"  # also purge's
# The job of an attempt still held, as it is now.
HELD_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {_HELD}"
# An attempt that did not complete: failed (a retry due at run_at), dead or canceled.
END_ATTEMPT = """UPDATE jobs SET state = ?, run_at = ?, finished_at = ?, updated_at = ?,
        exit_code = ?, last_error = ?, lease_expires_at = NULL
    WHERE id = ?"""

# == release ================================================================================
# Back to pending without spending a retry, unless an operator asked to cancel it meanwhile.
RELEASE = f"""UPDATE jobs SET state = 'pending', attempts = attempts - 1, worker = NULL,
        lease_expires_at = NULL, started_at = NULL, updated_at = ?
    WHERE {_HELD} AND cancel_requested = 0"""

# == reclaim_expired, reclaim_worker ========================================================
# A read first, without the write lock: almost always nothing has expired. It looks at every
# processing job (a partial index: as many rows as running jobs).
ANY_EXPIRED = ("SELECT 1 FROM jobs INDEXED BY jobs_leases WHERE state = 'processing'"
               f" AND ({_EXPIRED}) LIMIT 1")
EXPIRED_JOBS = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' AND ({_EXPIRED})"
JOBS_OF_WORKER = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'processing' AND worker = ?"

# == operators: retry_dead (and retry_dead_many) ============================================
# A job's state and unique key: a dead job with a key comes back only while no live job
# holds that key (LIVE_HOLDER).
JOB_STATE = "SELECT state, unique_key FROM jobs WHERE id = ?"
_RETRY_DEAD = ("UPDATE jobs SET state = 'pending', attempts = 0, run_at = ?, updated_at = ?,"
               " worker = NULL, finished_at = NULL, exit_code = NULL, cancel_requested = 0")
RETRY_DEAD = f"{_RETRY_DEAD} WHERE id = ?"
# retry_dead_many's pick: dead jobs finished at or before the cutoff (given twice, as in
# FINISHED_BEFORE), oldest first, with their keys, leaving out those whose key a live job
# holds; two of one key may both be in it (the store revives the older only).
REVIVABLE_DEAD = f"""SELECT id, unique_key FROM jobs INDEXED BY jobs_by_state
    WHERE state = 'dead' AND created_at <= ? AND finished_at <= ?
    AND (unique_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM jobs AS live INDEXED BY jobs_unique_live
        WHERE live.unique_key = jobs.unique_key AND live.{_KEYED}
        AND live.{_LIVE}))
    ORDER BY created_at LIMIT ?"""

# == get ====================================================================================
JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
HISTORY = ("SELECT attempt, worker, started_at, finished_at, outcome, exit_code, error,"
           " output, cpu_user_usec, cpu_system_usec, memory_peak_bytes FROM attempts"
           " WHERE job_id = ? ORDER BY seq")

# == iter_jobs ==============================================================================
# Oldest first; each with a `_LIMITED` twin that ends in `LIMIT ?`.
_LIST = f"SELECT {JOB_COLUMNS} FROM jobs{{filter}} ORDER BY created_at, rowid"
LIST_JOBS = _LIST.replace("{filter}", "")
LIST_JOBS_LIMITED = LIST_JOBS + " LIMIT ?"
LIST_JOBS_OF_STATE = _LIST.replace("{filter}", " WHERE state = ?")
LIST_JOBS_OF_STATE_LIMITED = LIST_JOBS_OF_STATE + " LIMIT ?"
LIST_JOBS_OF_QUEUE = _LIST.replace("{filter}", " WHERE queue = ?")
LIST_JOBS_OF_QUEUE_LIMITED = LIST_JOBS_OF_QUEUE + " LIMIT ?"
# One state of one queue (iter_jobs runs the default and the named queue's variants only).
LIST_JOBS_BY_STATE = _by_state(_LIST.replace("{filter}", " {by_state}"))
LIST_JOBS_BY_STATE_LIMITED = _by_state(_LIST.replace("{filter}", " {by_state}") + " LIMIT ?")
# The jobs of one unique key, live and finished (optionally of one state, one queue).
LIST_JOBS_OF_KEY = _by_key(_LIST.replace("{filter}", " {by_key}"))
LIST_JOBS_OF_KEY_LIMITED = _by_key(_LIST.replace("{filter}", " {by_key}") + " LIMIT ?")

# == counts =================================================================================
# Never a read of the jobs of a state: the states off job_counts (schema 13), a few rows per
# queue kept by triggers; `processing` off jobs_leases, whose rows are the running jobs
# only; "blocked" (pending jobs waiting for a parent) off blocked_counts (schema 10).
_PROCESSING = "SELECT {what} FROM jobs INDEXED BY jobs_leases WHERE state = 'processing'"
COUNTS = ("SELECT state, sum(n) FROM job_counts GROUP BY state UNION ALL "
          + _PROCESSING.replace("{what}", "'processing', count(*)")
          + " UNION ALL SELECT 'blocked', coalesce(sum(n), 0) FROM blocked_counts"
          f" UNION ALL SELECT 'active_workers', count(*) FROM workers WHERE {_ACTIVE}"
          " UNION ALL SELECT 'notices', count(*) FROM notices")
# Parameters: the queue, the queue (processing), the queue (blocked), the active window,
# the queue (serves), the queue (notices).
COUNTS_OF_QUEUE = ("SELECT state, n FROM job_counts WHERE queue = ? UNION ALL "
                   + _PROCESSING.replace("{what}", "'processing', count(*)") + " AND queue = ?"
                   " UNION ALL SELECT 'blocked', coalesce(sum(n), 0)"
                   " FROM blocked_counts WHERE queue = ?"
                   " UNION ALL SELECT 'active_workers', count(*) FROM workers"
                   f" WHERE ({_ACTIVE}) AND {_SERVES}"
                   " UNION ALL SELECT 'notices', count(*) FROM notices WHERE queue = ?")

# == remaining ==============================================================================
REMAINING = "SELECT count(*) FROM jobs WHERE state IN ('pending', 'failed', 'processing')"
REMAINING_IN_QUEUES = f"{REMAINING} AND queue IN {{queues}}"  # template: see in_queues
# A worker of every queue but some (a host's lane files reserve them): the others' jobs.
REMAINING_EXCEPT_QUEUES = f"{REMAINING} AND queue NOT IN {{queues}}"  # template: see in_queues

# == seconds_until_due ======================================================================
# Off the claim's partial indexes: blocked jobs are not in them (jobs_by_state would read
# every pending row, blocked ones too). Otherwise an idle worker would spin: due now, but
# nothing claimable.
FIRST_DUE = f"SELECT min(run_at) FROM jobs INDEXED BY jobs_due WHERE {_WAITING}"
FIRST_DUE_IN_QUEUES = (f"SELECT min(run_at) FROM jobs INDEXED BY jobs_due_by_queue"
                       f" WHERE {_WAITING} AND queue IN {{queues}}")  # template: see in_queues
# Every queue but some: the same read of jobs_due as FIRST_DUE, the excluded queues' rows
# filtered out as it goes.
FIRST_DUE_EXCEPT_QUEUES = f"{FIRST_DUE} AND queue NOT IN {{queues}}"  # template: see in_queues

# == configuration: config_items, set_config ================================================
CONFIG = "SELECT key, value FROM config"  # also every verb that reads a setting
SET_CONFIG = ("INSERT INTO config (key, value) VALUES (?, ?)"
              " ON CONFLICT (key) DO UPDATE SET value = excluded.value")

# == workers: register_worker, unregister_worker, workers, seconds_since_heartbeat ==========
REGISTER_WORKER = ("INSERT OR REPLACE INTO workers (name, host, pid, pid_start, started_at,"
                   " heartbeat_at, beat_boot, beat_clock, state, job_id, queues, exclude)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
UNREGISTER_WORKER = "DELETE FROM workers WHERE name = ?"
WORKERS = ("SELECT name, host, pid, pid_start, started_at, heartbeat_at, state, job_id,"
           " queues, exclude FROM workers ORDER BY name")
LAST_BEAT = "SELECT heartbeat_at, beat_boot, beat_clock FROM workers WHERE name = ?"

# == verify, info ===========================================================================
QUICK_CHECK = "PRAGMA quick_check"
SYNCHRONOUS = "PRAGMA synchronous"
# info also reads JOURNAL_MODE and SCHEMA_VERSION_OF (opening).

# == reads for `queuectl top`: recent_jobs, completed_since =================================
RECENT_JOBS = _by_state(f"SELECT {JOB_COLUMNS} FROM jobs {{by_state}}"
                        " ORDER BY updated_at DESC, rowid DESC LIMIT ?")
# The latest failed or dead jobs (what `top` shows) off jobs_latest_failures
# (schema 14), newest first: a walk of the index's first rows, not a sort of the whole
# dead-letter queue. The index's condition is written out, so SQLite knows it may use it.
_RECENT_FAILURES = (f"SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_latest_failures"
                   " WHERE state IN ('failed', 'dead') AND state = ?{queue}"
                   " ORDER BY updated_at DESC, rowid DESC LIMIT ?")
RECENT_FAILURES_ANY = _RECENT_FAILURES.replace("{queue}", "")
RECENT_FAILURES_IN_QUEUE = _RECENT_FAILURES.replace("{queue}", " AND queue = ?")
# The last minute's completions off jobs_completed (schema 13), not every completed job.
COMPLETED_SINCE = ("SELECT queue, count(*) FROM jobs INDEXED BY jobs_completed"
                   " WHERE state = 'completed' AND finished_at >= ? GROUP BY queue")

# == operators living with the queue: cancel, cancel_state, cancel_requested ================
REQUEST_CANCEL = "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?"
_CANCEL_WAITING = ("UPDATE jobs SET state = 'canceled', finished_at = ?, updated_at = ?,"
                   " last_error = ?, lease_expires_at = NULL")
CANCEL_WAITING = f"{_CANCEL_WAITING} WHERE id = ?"
REQUEST_CANCEL_IN_STATE = _by_state(
    """UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id IN (
        SELECT id FROM jobs {by_state}
        AND cancel_requested = 0 ORDER BY created_at LIMIT ?)""")
CANCEL_WAITING_IN_STATE = _by_state(
    f"""{_CANCEL_WAITING} WHERE id IN (
        SELECT id FROM jobs {{by_state}}
        ORDER BY created_at LIMIT ?)""")
CANCEL_REQUESTED = f"SELECT cancel_requested FROM jobs WHERE {_HELD}"

# == pause, resume, paused ==================================================================
PAUSE_QUEUE = ("INSERT INTO queues (name, paused_by, paused_since) VALUES (?, ?, ?)"
               " ON CONFLICT (name) DO UPDATE SET paused_by = excluded.paused_by,"
               " paused_since = excluded.paused_since WHERE queues.paused_since IS NULL")
PAUSE_ALL = "INSERT OR IGNORE INTO flags (name, set_by, since) VALUES ('paused', ?, ?)"
RESUME_QUEUE = ("UPDATE queues SET paused_by = NULL, paused_since = NULL"
                " WHERE name = ? AND paused_since IS NOT NULL")
RESUME_ALL = "DELETE FROM flags WHERE name = 'paused'"
PAUSE_OF_QUEUE = ("SELECT paused_by, paused_since FROM queues WHERE name = ?"
                  " AND paused_since IS NOT NULL")
PAUSE_OF_ALL = "SELECT set_by, since FROM flags WHERE name = 'paused'"
# A queue without a limit, a pause or an on-dead command needs no row (`queue list` shows
# it while it has jobs); also set_queue_concurrency's and set_queue_on_dead's.
DROP_EMPTY_QUEUE_ROW = ("DELETE FROM queues WHERE name = ? AND concurrency = 0"
                        " AND paused_since IS NULL AND coalesce(on_dead, '') = ''")

# == count_matching, purge ======================================================================
COUNT_IN_STATE = _by_state("SELECT count(*) FROM jobs {by_state}")
# finished_at >= created_at, so the index range on created_at bounds the scan.
# Parameters after the state's: the cutoff twice.
COUNT_FINISHED_BEFORE = _by_state("SELECT count(*) FROM jobs {by_state}"
                                  " AND created_at <= ? AND finished_at <= ?")
FINISHED_BEFORE = _by_state("SELECT id FROM jobs {by_state} AND created_at <= ?"
                            " AND finished_at <= ? ORDER BY created_at LIMIT ?")
PURGE_HISTORY = "DELETE FROM attempts WHERE job_id = ?"
# purge also deletes the live output (DROP_LIVE_OUTPUT) before the job.
PURGE_JOB = "DELETE FROM jobs WHERE id = ?"

# == take_duty ==============================================================================
TAKE_DUTY = """INSERT INTO duties (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
        WHERE duties.holder = excluded.holder OR duties.expires_at < ?"""

# == append_output, read_output =============================================================
HOLDS = f"SELECT 1 FROM jobs WHERE {_HELD}"
APPEND_OUTPUT = ("INSERT OR REPLACE INTO live_output (job_id, attempt, start, data)"
                 " VALUES (?, ?, ?, ?)")
TRIM_LIVE_OUTPUT = ("DELETE FROM live_output WHERE job_id = ? AND attempt = ?"
                    " AND start + length(data) <= ?")
# The state and the running (or latest) attempt's number (Job.attempt_number).
JOB_PROGRESS = "SELECT state, attempt_base + attempts FROM jobs WHERE id = ?"
LIVE_OUTPUT_FROM = ("SELECT start, data FROM live_output WHERE job_id = ? AND attempt = ?"
                    " AND start + length(data) > ? ORDER BY start")
_ENDED_OUTPUT = ("SELECT attempt, output, output_total FROM attempts WHERE job_id = ?{attempt}"
                 " ORDER BY seq DESC LIMIT 1")
LAST_ENDED_OUTPUT = _ENDED_OUTPUT.replace("{attempt}", "")
ENDED_OUTPUT_OF_ATTEMPT = _ENDED_OUTPUT.replace("{attempt}", " AND attempt = ?")

# == backup =================================================================================
VACUUM_INTO = "VACUUM INTO ?"  # copies one read snapshot: consistent while workers write

# == named queues: set_queue_concurrency, queues ============================================
SET_CONCURRENCY = ("INSERT INTO queues (name, concurrency) VALUES (?, ?)"
                   " ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency")
# Off the counters, as `counts` (a queue whose jobs are all gone keeps rows at 0: left out).
QUEUE_COUNTS = ("SELECT queue, state, n FROM job_counts WHERE n <> 0 UNION ALL "
                + _PROCESSING.replace("{what}", "queue, 'processing', count(*)")
                + " GROUP BY queue")
QUEUE_SETTINGS = "SELECT name, concurrency, paused_by, paused_since, on_dead FROM queues"
QUEUE_NOTICES = "SELECT queue, count(*) FROM notices GROUP BY queue"
# Each queue's longest-due eligible job without a walk of the backlog: jobs_due_by_queue is
# in (queue, priority, run_at) order, so the first entry of each (queue, priority) group
# holds its earliest run_at. The store skips from group to group: the first group of the
# next queue, then that queue's next lower priority; as many probes as there are groups
# (queues times distinct priorities waiting), however many jobs wait.
FIRST_WAITING_OF_NEXT_QUEUE = (f"SELECT queue, priority, run_at FROM jobs"
                               f" INDEXED BY jobs_due_by_queue WHERE {_WAITING} AND queue > ?"
                               " ORDER BY queue, priority DESC, run_at LIMIT 1")
FIRST_WAITING_OF_LOWER_PRIORITY = (f"SELECT queue, priority, run_at FROM jobs"
                                   f" INDEXED BY jobs_due_by_queue WHERE {_WAITING}"
                                   " AND queue = ? AND priority < ?"
                                   " ORDER BY priority DESC, run_at LIMIT 1")
ACTIVE_WORKER_QUEUES = f"SELECT queues, exclude FROM workers WHERE {_ACTIVE}"

# == metrics ================================================================================
# metrics also reads what `queues` does, in the same snapshot.
GLOBAL_PAUSE = "SELECT 1 FROM flags WHERE name = 'paused'"
ACTIVE_WORKERS_BY_HOST = f"SELECT host, count(*) FROM workers WHERE {_ACTIVE} GROUP BY host"
COUNTERS = "SELECT queue, event, le, n, seconds FROM counters ORDER BY queue, event, le"

# == dependencies and reruns: parents, canceled_dependents, retry ===========================
# A job's parents in the order given, with their state now (NULL: deleted since).
PARENTS = """SELECT d.parent, j.state, d.satisfied FROM deps AS d
    LEFT JOIN jobs AS j ON j.id = d.parent
    WHERE d.child = ? ORDER BY d.pos"""
JOB_EXISTS = "SELECT 1 FROM jobs WHERE id = ?"
# The dependents a job's end canceled, down the chain: each step follows the unsatisfied
# dependency rows of the jobs found so far (deps_waiting) to children canceled by that very
# parent (their last_error names it).
_CANCELED_BY = ("JOIN jobs AS j ON j.id = d.child WHERE d.satisfied = 0 AND j.state = 'canceled'"
                " AND j.last_error IN ('parent ' || d.parent || ' ended dead',"
                " 'parent ' || d.parent || ' ended canceled')")
CANCELED_DEPENDENTS = f"""WITH RECURSIVE down(id) AS (
        SELECT d.child FROM deps AS d INDEXED BY deps_waiting {_CANCELED_BY} AND d.parent = ?
        UNION
        SELECT d.child FROM down JOIN deps AS d INDEXED BY deps_waiting ON d.parent = down.id
        {_CANCELED_BY})
    SELECT {JOB_COLUMNS} FROM jobs WHERE id IN down ORDER BY created_at, rowid"""
# `retry`: a finished job runs again, its history kept (attempt_base grows by its attempts),
# waiting for the parents it has not seen complete. Parameters: run_at, updated_at,
# waiting_on, the id.
RETRY_JOB = """UPDATE jobs SET state = 'pending', attempt_base = attempt_base + attempts,
        attempts = 0, run_at = ?, updated_at = ?, worker = NULL, started_at = NULL,
        finished_at = NULL, exit_code = NULL, last_error = NULL, cancel_requested = 0,
        lease_expires_at = NULL, waiting_on = ?
    WHERE id = ?"""


# == on-dead notices: set_queue_on_dead, take_notice, notice_delivered, notice_failed =====
SET_ON_DEAD = ("INSERT INTO queues (name, on_dead) VALUES (?, ?)"
               " ON CONFLICT (name) DO UPDATE SET on_dead = excluded.on_dead")
# Free to take: never taken, or its holder's lease ran out (another boot, or past on the
# boot clock). Parameters: this boot's id, uptime now.
_NOTICE_FREE = "(holder IS NULL OR lease_boot <> ? OR lease_until < ?)"
# A read first (no write lock): almost always there is no notice at all.
# Parameters: wall-clock now, then _NOTICE_FREE's.
ANY_NOTICE_DUE = f"SELECT 1 FROM notices WHERE due_at <= ? AND {_NOTICE_FREE} LIMIT 1"
# Parameters: holder, boot id, lease end on the boot clock, wall-clock now, _NOTICE_FREE's.
TAKE_NOTICE = f"""UPDATE notices SET holder = ?, lease_boot = ?, lease_until = ?
    WHERE id = (SELECT id FROM notices WHERE due_at <= ? AND {_NOTICE_FREE}
                ORDER BY due_at, id LIMIT 1)
    RETURNING id, job_id, queue, command, exit_code, attempts, attempt, last_error, tries"""
# The command now: the queue's own, else the global setting, else none ('').
NOTICE_HOOK = """SELECT coalesce((SELECT nullif(on_dead, '') FROM queues WHERE name = ?),
    (SELECT value FROM config WHERE key = 'on-dead'), '')"""
# The hook's stdin: that attempt's history row (the job's last), if still kept.
NOTICE_OUTPUT = ("SELECT output FROM attempts WHERE job_id = ? AND attempt = ?"
                 " ORDER BY seq DESC LIMIT 1")
DROP_NOTICE = "DELETE FROM notices WHERE id = ? AND holder = ?"
# Parameters: the hook's error, when due again (wall clock), the id, the holder.
RETRY_NOTICE = """UPDATE notices SET tries = tries + 1, error = ?, due_at = ?, holder = NULL,
        lease_boot = NULL, lease_until = NULL
    WHERE id = ? AND holder = ?"""


# The blocks above: (name, the Store verbs that run them, their statements).
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("opening", "SQLiteStore() and migration", (
        "SYNCHRONOUS_FULL", "SYNCHRONOUS_NORMAL", "WAL_AUTOCHECKPOINT", "SMALL_CACHE", "PROBE",
        "SCHEMA_VERSION_OF", "TABLES", "RECURSIVE_TRIGGERS", "WAL_MODE",
        "STAMP_SCHEMA_VERSION")),
    ("transactions", "every verb", ("BEGIN_WRITE", "BEGIN_READ", "TAKE_SNAPSHOT", "COMMIT", "ROLLBACK")),
    ("submit", "submit, enqueue", (
        "ENQUEUE", "ENQUEUE_IF_ABSENT", "LIVE_HOLDER", "COUNT_ENQUEUED", "COUNT_PENDING",
        "PARENT_STATE",
        "ADD_DEP", "SET_WAITING_ON")),
    ("claim", "claim_next, complete_and_claim", (
        "RESTRICTIONS", "CLAIM_ANY", "PROCESSING_IN_QUEUE", "BEST_OF_QUEUE", "BEST_OF_ANY_QUEUE",
        "NEXT_WAITING_QUEUE", "CLAIM_BY_ID")),
    ("heartbeat", "heartbeat", ("BEAT", "RENEW_LEASE")),
    ("complete", "record_success, complete_and_claim", ("COMPLETE_ROW", "COMPLETE_ID")),
    ("end_attempt", "record_success, record_failure, release, reclaim_expired, reclaim_worker", (
        "RECORD_ATTEMPT", "COUNT_ATTEMPT", "DROP_LIVE_OUTPUT", "HELD_JOB", "END_ATTEMPT")),
    ("release", "release", ("RELEASE",)),
    ("reclaim", "reclaim_expired, reclaim_worker", ("ANY_EXPIRED", "EXPIRED_JOBS", "JOBS_OF_WORKER")),
    ("retry_dead", "retry_dead, retry_dead_many", ("JOB_STATE", "RETRY_DEAD", "REVIVABLE_DEAD")),
    ("get", "get, retry_dead, cancel", ("JOB", "HISTORY")),
    ("iter_jobs", "iter_jobs", (
        "LIST_JOBS", "LIST_JOBS_LIMITED", "LIST_JOBS_OF_STATE", "LIST_JOBS_OF_STATE_LIMITED",
        "LIST_JOBS_OF_QUEUE", "LIST_JOBS_OF_QUEUE_LIMITED", "LIST_JOBS_BY_STATE",
        "LIST_JOBS_BY_STATE_LIMITED", "LIST_JOBS_OF_KEY", "LIST_JOBS_OF_KEY_LIMITED")),
    ("counts", "counts", ("COUNTS", "COUNTS_OF_QUEUE")),
    ("remaining", "remaining", ("REMAINING", "REMAINING_IN_QUEUES", "REMAINING_EXCEPT_QUEUES")),
    ("seconds_until_due", "seconds_until_due", ("FIRST_DUE", "FIRST_DUE_IN_QUEUES",
                                                "FIRST_DUE_EXCEPT_QUEUES")),
    ("configuration", "config_items, set_config, every verb that reads a setting", (
        "CONFIG", "SET_CONFIG")),
    ("workers", "register_worker, unregister_worker, workers, seconds_since_heartbeat", (
        "REGISTER_WORKER", "UNREGISTER_WORKER", "WORKERS", "LAST_BEAT")),
    ("verify", "verify, info", ("QUICK_CHECK", "JOURNAL_MODE", "SYNCHRONOUS")),
    ("top", "recent_jobs, completed_since", ("RECENT_JOBS", "RECENT_FAILURES_ANY",
                                             "RECENT_FAILURES_IN_QUEUE", "COMPLETED_SINCE")),
    ("cancel", "cancel, cancel_state, cancel_requested", (
        "REQUEST_CANCEL", "CANCEL_WAITING", "REQUEST_CANCEL_IN_STATE", "CANCEL_WAITING_IN_STATE",
        "CANCEL_REQUESTED")),
    ("pause", "pause, resume, paused", (
        "PAUSE_QUEUE", "PAUSE_ALL", "RESUME_QUEUE", "RESUME_ALL", "PAUSE_OF_QUEUE", "PAUSE_OF_ALL",
        "DROP_EMPTY_QUEUE_ROW")),
    ("purge", "count_matching, purge", (
        "COUNT_IN_STATE", "COUNT_FINISHED_BEFORE", "FINISHED_BEFORE", "PURGE_HISTORY", "PURGE_JOB")),
    ("take_duty", "take_duty", ("TAKE_DUTY",)),
    ("output", "append_output, read_output", (
        "HOLDS", "APPEND_OUTPUT", "TRIM_LIVE_OUTPUT", "JOB_PROGRESS", "LIVE_OUTPUT_FROM",
        "LAST_ENDED_OUTPUT", "ENDED_OUTPUT_OF_ATTEMPT")),
    ("backup", "backup", ("VACUUM_INTO",)),
    ("queues", "set_queue_concurrency, queues, metrics", (
        "SET_CONCURRENCY", "QUEUE_COUNTS", "QUEUE_SETTINGS", "QUEUE_NOTICES",
        "FIRST_WAITING_OF_NEXT_QUEUE", "FIRST_WAITING_OF_LOWER_PRIORITY",
        "ACTIVE_WORKER_QUEUES")),
    ("metrics", "metrics", ("GLOBAL_PAUSE", "ACTIVE_WORKERS_BY_HOST", "COUNTERS")),
    ("dependencies", "parents, canceled_dependents, retry", (
        "PARENTS", "JOB_EXISTS", "CANCELED_DEPENDENTS", "RETRY_JOB")),
    ("on_dead", "set_queue_on_dead, take_notice, notice_delivered, notice_failed", (
        "SET_ON_DEAD", "ANY_NOTICE_DUE", "TAKE_NOTICE", "NOTICE_HOOK", "NOTICE_OUTPUT",
        "DROP_NOTICE", "RETRY_NOTICE")),
)


def statements(name: str) -> tuple[str, ...]:
    """The complete statements under one name: one, or its variants in order."""
    value = globals()[name]
    return value if isinstance(value, tuple) else (value,)


def _main(argv: list[str]) -> int:
    """Without an argument, every statement name by block; with a block name, a verb or a
    statement name, those statements in full."""
    if not argv:
        for section, verbs, names in SECTIONS:
            print(f"{section} ({verbs}):")
            for name in names:
                count = len(statements(name))
                print(f"  {name}" + (f"  [{count} statements]" if count > 1 else ""))
        return 0
    wanted = argv[0]
    found = False
    for section, verbs, names in SECTIONS:
        if wanted in (section, *verbs.split(", ")):
            chosen = names
        else:
            chosen = tuple(n for n in names if n == wanted.upper())
        for name in chosen:
            found = True
            variants = statements(name)
            for i, text in enumerate(variants):
                label = f" ({i + 1} of {len(variants)})" if len(variants) > 1 else ""
                if isinstance(variants, ByState | ByKey):
                    label = f" ({variants.LABELS[i]})"
                print(f"-- {name}{label} [{section}] --\n{text};\n")
    if not found:
        print(f"no block, verb or statement named {wanted!r}; "
              "without an argument the names are listed")
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
