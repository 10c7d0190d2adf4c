"""The SQLite schema, as numbered migrations.

A database records its version in `PRAGMA user_version`; opening it applies the missing
migrations in order, in one transaction, so every process sees either the old schema or the
new one. Add a change as the next number; never edit a released one.
"""

from queuectl.policy import COUNTED_OUTCOME_SQL as _EVENT
from queuectl.policy import duration_bucket_sql

SCHEMA_VERSION = 14


def _bucket(seconds: str) -> str:
    return duration_bucket_sql(seconds, "9e999")  # SQLite's +Inf


# How long an ended attempt ran.
_SECONDS = "max(coalesce({a}.finished_at - {a}.started_at, 0), 0)"

# job_counts (schema 13) built from the jobs themselves: what migration 13 runs once, and
# what a tool that wrote jobs rows directly (bench/fill.py) runs after it. Processing jobs
# are not counted: they are read off jobs_leases, whose rows are the running jobs only.
JOB_COUNTS_FROM_JOBS = (
    "INSERT INTO job_counts (queue, state, n) SELECT queue, state, count(*) FROM jobs"
    " WHERE state <> 'processing' GROUP BY queue, state")

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY NOT NULL,
            command TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            timeout REAL,
            run_at REAL NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            worker TEXT,
            lease_expires_at REAL,
            started_at REAL,
            finished_at REAL,
            exit_code INTEGER,
            last_error TEXT)""",
        # Only waiting jobs are in these partial indexes, so a million finished jobs cost
        # the claim nothing.
        """CREATE INDEX jobs_due ON jobs (priority DESC, run_at)
            WHERE state IN ('pending', 'failed')""",
        "CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'processing'",
        "CREATE INDEX jobs_by_state ON jobs (state, created_at)",
        """CREATE TABLE attempts (
            seq INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            worker TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            outcome TEXT,
            exit_code INTEGER,
            error TEXT,
            output BLOB)""",
        "CREATE INDEX attempts_by_job ON attempts (job_id, seq)",
        """CREATE TABLE workers (
            name TEXT PRIMARY KEY NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_start TEXT,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            state TEXT NOT NULL,
            job_id TEXT)""",
        "CREATE TABLE config (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    ],
    # Operators living with the queue: cancel, pause, retention, live output. Only
    # additions: a database of version 1 keeps every job, attempt, worker and setting.
    2: [
        # An operator asked a processing job to stop; its worker ends the attempt as canceled.
        "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        # Bytes the attempt printed in all (its `output` keeps only the tail), so that
        # `logs --follow` can tell where that tail starts. NULL for older rows.
        "ALTER TABLE attempts ADD COLUMN output_total INTEGER",
        # Queue-wide flags: `paused`, with who set it and when.
        """CREATE TABLE flags (
            name TEXT PRIMARY KEY NOT NULL,
            set_by TEXT,
            since REAL NOT NULL)""",
        # Background duties one worker at a time does (retention), held like a lease.
        """CREATE TABLE duties (
            name TEXT PRIMARY KEY NOT NULL,
            holder TEXT NOT NULL,
            expires_at REAL NOT NULL)""",
        # The running attempt's recent output, in chunks by byte offset; dropped when the
        # attempt ends (its history row keeps the tail).
        """CREATE TABLE live_output (
            job_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            start INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (job_id, attempt, start)) WITHOUT ROWID""",
    ],
    # Named queues. Only additions: every existing job lands in `default`.
    3: [
        "ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'",
        # A lane worker's claim: the best waiting job of one queue, still only waiting jobs.
        """CREATE INDEX jobs_due_by_queue ON jobs (queue, priority DESC, run_at)
            WHERE state IN ('pending', 'failed')""",
        # `list/status/purge/cancel --queue` and `queue list` without a scan of the table.
        "CREATE INDEX jobs_by_queue ON jobs (queue, state, created_at)",
        # Per-queue settings and pause; a row exists only once one was set.
        """CREATE TABLE queues (
            name TEXT PRIMARY KEY NOT NULL,
            concurrency INTEGER NOT NULL DEFAULT 0,
            paused_by TEXT,
            paused_since REAL)""",
        # What each worker serves: NULL all queues, else names joined by ',' in preference order.
        "ALTER TABLE workers ADD COLUMN queues TEXT",
    ],
    # Clock steps: leases and heartbeats on a clock that never steps, CLOCK_BOOTTIME (seconds
    # since boot, counting suspend) with the boot it belongs to: a wall-clock step can no
    # longer expire a live lease or stretch a dead one, and a reboot expires every lease.
    # lease_expires_at / heartbeat_at stay, as wall-clock times to display. Only additions;
    # the migrating process supplies queuectl_boot_id(), queuectl_uptime(), queuectl_wall().
    4: [
        "ALTER TABLE jobs ADD COLUMN lease_boot TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until REAL",
        "ALTER TABLE workers ADD COLUMN beat_boot TEXT",
        "ALTER TABLE workers ADD COLUMN beat_clock REAL",
        # A running job keeps what was left of its lease, at most lease-seconds (its worker
        # renews it within 2 s; an expired one stays expired).
        """UPDATE jobs SET lease_boot = queuectl_boot_id(), lease_until = queuectl_uptime()
            + min(coalesce(lease_expires_at - queuectl_wall(), 0), coalesce(
                (SELECT CAST(value AS REAL) FROM config WHERE key = 'lease-seconds'), 30))
            WHERE state = 'processing'""",
        """UPDATE workers SET beat_boot = queuectl_boot_id(),
            beat_clock = queuectl_uptime() - max(queuectl_wall() - heartbeat_at, 0)""",
    ],
    # Metrics: counters for `queuectl metrics`, which only ever grow: purge and retention
    # delete jobs and history, never these rows. Triggers count in the transaction that
    # inserts the job or the attempt's history row (every way an attempt ends writes one),
    # one small upsert each, so no code path can forget them. Seeded from what the database
    # holds when it migrates: its jobs (purged ones are gone) and its attempt history.
    5: [
        """CREATE TABLE counters (
            queue TEXT NOT NULL,
            event TEXT NOT NULL,
            le REAL NOT NULL,
            n INTEGER NOT NULL,
            seconds REAL NOT NULL,
            PRIMARY KEY (queue, event, le)) WITHOUT ROWID""",
        """INSERT INTO counters (queue, event, le, n, seconds)
            SELECT queue, 'enqueued', 0, count(*), 0 FROM jobs GROUP BY queue""",
        # The last attempt of a dead job is the one that made it dead.
        f"""INSERT INTO counters (queue, event, le, n, seconds)
            SELECT queue, event, le, count(*), sum(d) FROM (
                SELECT j.queue AS queue, CASE WHEN a.seq = (SELECT max(seq) FROM attempts
                        WHERE job_id = j.id) THEN {_EVENT.format(a="a")}
                    ELSE coalesce(a.outcome, 'failed') END AS event,
                    {_bucket(_SECONDS.format(a="a"))} AS le, {_SECONDS.format(a="a")} AS d
                FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.finished_at IS NOT NULL)
            WHERE true GROUP BY queue, event, le""",
        """CREATE TRIGGER count_enqueued AFTER INSERT ON jobs BEGIN
            INSERT INTO counters (queue, event, le, n, seconds)
            VALUES (new.queue, 'enqueued', 0, 1, 0)
            ON CONFLICT (queue, event, le) DO UPDATE SET n = n + 1;
        END""",
        f"""CREATE TRIGGER count_attempt AFTER INSERT ON attempts BEGIN
            INSERT INTO counters (queue, event, le, n, seconds)
            SELECT j.queue, {_EVENT.format(a="new")}, {_bucket("d.d")}, 1, d.d
            FROM jobs j, (SELECT {_SECONDS.format(a="new")} AS d) d WHERE j.id = new.job_id
            ON CONFLICT (queue, event, le) DO UPDATE SET n = n + 1,
                seconds = seconds + excluded.seconds;
        END""",
    ],
    # Job limits and usage: each attempt in a cgroup of its own. Only additions: a job's
    # limits (NULL or 0: none) and what each attempt used (NULL where it was not measured:
    # older rows, workers without a delegated cgroup).
    6: [
        "ALTER TABLE jobs ADD COLUMN memory_max INTEGER",
        "ALTER TABLE jobs ADD COLUMN cpu_max REAL",
        "ALTER TABLE jobs ADD COLUMN tasks_max INTEGER",
        "ALTER TABLE attempts ADD COLUMN cpu_user_usec INTEGER",
        "ALTER TABLE attempts ADD COLUMN cpu_system_usec INTEGER",
        "ALTER TABLE attempts ADD COLUMN memory_peak_bytes INTEGER",
    ],
    # A row trigger per inserted job made `enqueue --file` 2.6x slower: `enqueue` now adds
    # its count to `counters` itself, once per queue, in the same transaction.
    7: [
        "DROP TRIGGER IF EXISTS count_enqueued",
    ],
    # Worker throughput, measured with two workers: each ended attempt's trigger looked its
    # job up again, and every state change moved a job in two full indexes. The store now counts
    # an ended attempt in the statement that records it (it knows queue, outcome and state),
    # and jobs_by_queue leaves out the default queue, whose jobs jobs_by_state finds.
    8: [
        "DROP TRIGGER IF EXISTS count_attempt",
        "DROP INDEX IF EXISTS jobs_by_queue",
        "CREATE INDEX jobs_by_queue ON jobs (queue, state, created_at)"
        " WHERE queue <> 'default'",
    ],
    # Unique keys ("cron without overlap"): at most one live job (pending, processing or
    # failed) per key. Only additions: every existing job has no key (NULL).
    9: [
        "ALTER TABLE jobs ADD COLUMN unique_key TEXT",
        # The guarantee itself, whatever code path writes: a second live job with a key a
        # live job holds fails to insert, or to come back to life. Also submit's look-up of
        # the holder. Jobs without a key, and finished ones, are not in it.
        """CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)
            WHERE unique_key IS NOT NULL AND state IN ('pending', 'processing', 'failed')""",
        # `list --unique KEY`: every job of a key, live or finished, oldest first.
        "CREATE INDEX jobs_by_unique ON jobs (unique_key, created_at) WHERE unique_key IS NOT NULL",
    ],
    # Dependencies (`after`) and reruns (`retry`). Only additions and rebuilt indexes: every
    # existing job waits for nothing (waiting_on 0) and has no attempts before a rerun.
    10: [
        # Parents not completed yet: a job is claimed only at 0 ("blocked" otherwise).
        "ALTER TABLE jobs ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0",
        # Attempts made before the latest `retry`: the history numbers attempt_base + attempts.
        "ALTER TABLE jobs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0",
        # One row per (child, parent), in the order given; `satisfied` is recorded when the
        # parent completes and never re-derived from the parent's row, which purge or
        # retention may delete later (the child must still run).
        """CREATE TABLE deps (
            child TEXT NOT NULL,
            parent TEXT NOT NULL,
            pos INTEGER NOT NULL,
            satisfied INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (child, parent)) WITHOUT ROWID""",
        # A parent's waiting dependents: the probe in the triggers' WHEN, empty for almost
        # every job, so a job nobody waits for pays one look at a tiny index.
        "CREATE INDEX deps_waiting ON deps (parent, child) WHERE satisfied = 0",
        # Blocked jobs cost the claim nothing: the claim's partial indexes leave them out.
        "DROP INDEX IF EXISTS jobs_due",
        """CREATE INDEX jobs_due ON jobs (priority DESC, run_at)
            WHERE state IN ('pending', 'failed') AND waiting_on = 0""",
        "DROP INDEX IF EXISTS jobs_due_by_queue",
        """CREATE INDEX jobs_due_by_queue ON jobs (queue, priority DESC, run_at)
            WHERE state IN ('pending', 'failed') AND waiting_on = 0""",
        # `counts`' "blocked" (pending, waiting_on > 0), per queue: a counter kept by the
        # triggers below in the writing transaction, whatever the path, so `status` reads
        # one row per queue however many jobs are blocked. A queue's row may stay at 0.
        # Every existing job waits for nothing: the table starts empty.
        """CREATE TABLE blocked_counts (
            queue TEXT PRIMARY KEY NOT NULL,
            n INTEGER NOT NULL) WITHOUT ROWID""",
        # No INSERT trigger: a job is always inserted unblocked (waiting_on 0) and blocked
        # afterwards by submit's SET_WAITING_ON, which blocked_updated counts. A row trigger
        # on INSERT, even one whose WHEN is false, runs its program for every row and took
        # `enqueue --file` from ~107,000 to ~66,000 jobs/s (see migration 7). A writer
        # outside queuectl that inserts a row already blocked is not counted.
        # WHEN-gated: a job that does not enter or leave "blocked" pays the WHEN and no body.
        # With recursive_triggers off these still fire for the rows the deps_* triggers
        # update (SQLite only keeps a trigger from firing itself).
        # Into or out of "blocked" (a job's queue never changes): +1 or -1. The IS NOT
        # compares two booleans, so a NULL state (none: NOT NULL) could not slip through.
        """CREATE TRIGGER blocked_updated AFTER UPDATE OF state, waiting_on ON jobs
            WHEN (old.state = 'pending' AND old.waiting_on > 0)
                IS NOT (new.state = 'pending' AND new.waiting_on > 0)
        BEGIN
            INSERT INTO blocked_counts (queue, n)
                VALUES (new.queue, iif(new.state = 'pending' AND new.waiting_on > 0, 1, -1))
                ON CONFLICT (queue) DO UPDATE SET n = n + excluded.n;
        END""",
        """CREATE TRIGGER blocked_deleted AFTER DELETE ON jobs
            WHEN old.state = 'pending' AND old.waiting_on > 0
        BEGIN
            UPDATE blocked_counts SET n = n - 1 WHERE queue = old.queue;
        END""",
        # A parent's end, in the transaction that changes its state, whatever the path. The
        # time is the one the parent row got (updated_at: the store's clock). Jobs nobody
        # waits for pay the WHEN: one probe of deps_waiting, empty for them.
        """CREATE TRIGGER deps_parent_completed AFTER UPDATE OF state ON jobs
            WHEN new.state = 'completed' AND old.state <> 'completed'
                AND EXISTS (SELECT 1 FROM deps WHERE parent = new.id AND satisfied = 0)
        BEGIN
            UPDATE jobs SET waiting_on = max(waiting_on - 1, 0)
                WHERE id IN (SELECT child FROM deps WHERE parent = new.id AND satisfied = 0);
            UPDATE deps SET satisfied = 1 WHERE parent = new.id AND satisfied = 0;
        END""",
        # Dead or canceled: every pending dependent down the chain, in one statement over the
        # closure (not by the trigger firing itself level by level: SQLite stops nested
        # triggers at 1,000 levels, and the parent's end would then fail). Each names the
        # parent that reached it first (the shortest path; then the earlier in its `after`).
        # `+j.state`: the children are found by id, never by a walk of every pending job.
        """CREATE TRIGGER deps_parent_ended AFTER UPDATE OF state ON jobs
            WHEN new.state IN ('dead', 'canceled') AND old.state <> new.state
                AND EXISTS (SELECT 1 FROM deps WHERE parent = new.id AND satisfied = 0)
        BEGIN
            UPDATE jobs SET state = 'canceled', finished_at = new.updated_at,
                    updated_at = new.updated_at, lease_expires_at = NULL,
                    last_error = 'parent ' || cut.parent || ' ended ' || cut.how
                FROM (SELECT child, parent, how, min(depth * 128 + pos) FROM (
                    WITH RECURSIVE down(child, parent, how, depth, pos) AS (
                        SELECT d.child, d.parent, new.state, 1, d.pos FROM deps AS d
                            JOIN jobs AS j ON j.id = d.child
                            WHERE d.parent = new.id AND d.satisfied = 0 AND +j.state = 'pending'
                        UNION
                        SELECT d.child, d.parent, 'canceled', down.depth + 1, d.pos FROM down
                            JOIN deps AS d ON d.parent = down.child AND d.satisfied = 0
                            JOIN jobs AS j ON j.id = d.child WHERE +j.state = 'pending')
                    SELECT child, parent, how, depth, pos FROM down) GROUP BY child) AS cut
                WHERE jobs.id = cut.child;
        END""",
        # A deleted job (purge, retention, any path) takes its own dependency rows, never
        # those that name it as a parent.
        """CREATE TRIGGER deps_child_deleted AFTER DELETE ON jobs BEGIN
            DELETE FROM deps WHERE child = old.id;
        END""",
    ],
    # Directory and environment per job. Only additions: every existing job runs where its
    # worker is, with the worker's environment (NULL). `env` is a JSON object (text).
    11: [
        "ALTER TABLE jobs ADD COLUMN cwd TEXT",
        "ALTER TABLE jobs ADD COLUMN env TEXT",
    ],
    # The dead-job hook (`on-dead`). Only additions: no existing job gets a notice.
    12: [
        # A queue's own on-dead command (NULL or '': none, the global setting applies).
        "ALTER TABLE queues ADD COLUMN on_dead TEXT",
        # One row per dead job whose hook is still to run: what its environment needs,
        # snapshotted when the job went dead (the job may be retried, purged or retention-
        # deleted since: the notice stays), and its delivery state. `attempt` is the
        # history's number of the attempt whose output is the hook's stdin. Due at due_at
        # (wall clock, the store's clock); held by `holder` until lease_until on
        # CLOCK_BOOTTIME of boot lease_boot, as jobs' leases are.
        """CREATE TABLE notices (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL,
            queue TEXT NOT NULL,
            command TEXT NOT NULL,
            exit_code INTEGER,
            attempts INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            last_error TEXT,
            created_at REAL NOT NULL,
            due_at REAL NOT NULL,
            tries INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            holder TEXT,
            lease_boot TEXT,
            lease_until REAL)""",
        "CREATE INDEX notices_due ON notices (due_at, id)",
        # The notice is written by the transaction that makes the job dead, whatever the
        # path (record_failure, reclaim_expired, reclaim_worker, a lost lease), and only
        # while a command is configured for its queue or globally: without one, none piles
        # up. Every other state change pays the WHEN's first comparison only.
        """CREATE TRIGGER notice_dead AFTER UPDATE OF state ON jobs
            WHEN new.state = 'dead' AND old.state <> 'dead'
                AND (EXISTS (SELECT 1 FROM queues WHERE name = new.queue
                             AND coalesce(on_dead, '') <> '')
                     OR EXISTS (SELECT 1 FROM config WHERE key = 'on-dead' AND value <> ''))
        BEGIN
            INSERT INTO notices (job_id, queue, command, exit_code, attempts, attempt,
                                 last_error, created_at, due_at)
            VALUES (new.id, new.queue, new.command, new.exit_code, new.attempts,
                    new.attempt_base + new.attempts, new.last_error, new.updated_at,
                    new.updated_at);
        END""",
    ],
    # Ten million jobs: `status`, `queue list`, `metrics`, `top` and `check` read counters
    # and short index walks, never every job (a count of a million jobs took 0.1-0.6 s).
    13: [
        # Jobs per queue and state, kept as blocked_counts is (schema 10): WHEN-gated
        # triggers in the writing transaction, whatever the path, one counter row per state
        # change; no INSERT trigger (submit adds what it inserted, per queue, itself). Not
        # `processing`: those are the running jobs, counted off jobs_leases, so a claim and
        # a completion each touch one counter row (the state left, the state entered).
        # A writer outside queuectl that inserts rows is not counted (JOB_COUNTS_FROM_JOBS).
        """CREATE TABLE job_counts (
            queue TEXT NOT NULL,
            state TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (queue, state)) WITHOUT ROWID""",
        JOB_COUNTS_FROM_JOBS,
        # A job's queue never changes; its row exists while it holds jobs, so leaving is
        # a plain update.
        """CREATE TRIGGER counts_left AFTER UPDATE OF state ON jobs
            WHEN old.state <> new.state AND old.state <> 'processing'
        BEGIN
            UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
        END""",
        """CREATE TRIGGER counts_entered AFTER UPDATE OF state ON jobs
            WHEN old.state <> new.state AND new.state <> 'processing'
        BEGIN
            INSERT INTO job_counts (queue, state, n) VALUES (new.queue, new.state, 1)
                ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
        END""",
        """CREATE TRIGGER counts_deleted AFTER DELETE ON jobs WHEN old.state <> 'processing'
        BEGIN
            UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
        END""",
        # `top`'s completions in the last minute: a walk of the last minute's completions,
        # not of every completed job. One entry per completion, dropped with the job.
        "CREATE INDEX jobs_completed ON jobs (finished_at, queue) WHERE state = 'completed'",
    ],
    14: [
        # A queue's active workers (queue list, status --queue, metrics) leave out the
        # all-queue workers that exclude it (their host's lane files serve it): names
        # joined by ',', NULL none.
        "ALTER TABLE workers ADD COLUMN exclude TEXT",
        # `top`'s latest failed and dead jobs (RECENT_FAILURES), not a sort of the whole
        # dead-letter queue. Not on a job's way to completion: only a failure adds an entry.
        """CREATE INDEX jobs_latest_failures ON jobs (state, updated_at)
            WHERE state IN ('failed', 'dead')""",
    ],
}
