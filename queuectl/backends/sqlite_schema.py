"""The SQLite schema, as numbered migrations.

A database records its version in `PRAGMA user_version`; opening it applies the missing
migrations in order, in one transaction, so every process sees either the old schema or the
new one. Add a change as the next number; never edit a released one.
"""

from queuectl.policy import DURATION_BUCKETS

SCHEMA_VERSION = 9


def _bucket(seconds: str) -> str:
    """The upper bound of the duration bucket `seconds` falls in (9e999 is +Inf)."""
    arms = " ".join(f"WHEN {seconds} <= {le!r} THEN {le!r}" for le in DURATION_BUCKETS)
    return f"CASE {arms} ELSE 9e999 END"


# How an ended attempt counts: its outcome, `dead` for a failed or lost one that left its
# job dead (policy.ATTEMPT_OUTCOMES).
_EVENT = ("CASE WHEN {a}.outcome IN ('failed', 'lost') AND j.state = 'dead' THEN 'dead'"
          " ELSE coalesce({a}.outcome, 'failed') END")
_SECONDS = "max(coalesce({a}.finished_at - {a}.started_at, 0), 0)"

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
}
