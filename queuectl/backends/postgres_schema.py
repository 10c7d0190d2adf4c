"""The PostgreSQL schema, as numbered migrations inside the queue's own schema.

The version lives in `<schema>.schema_version` (one row). Opening a store reads it; when it
is behind, the migrations run in one transaction under an advisory lock keyed on the schema
name, so many workers starting at once on several hosts migrate it exactly once. Add a
change as the next number; never edit a released one. `{s}` stands for the quoted schema.
"""

from queuectl.policy import DURATION_BUCKETS

SCHEMA_VERSION = 6


def _bucket(seconds: str) -> str:
    """The upper bound of the duration bucket `seconds` falls in."""
    arms = " ".join(f"WHEN {seconds} <= {le!r} THEN {le!r}" for le in DURATION_BUCKETS)
    return f"CASE {arms} ELSE 'Infinity'::float8 END"


# How an ended attempt counts: its outcome, `dead` for a failed or lost one that left its
# job dead (policy.ATTEMPT_OUTCOMES).
_EVENT = ("CASE WHEN {a}.outcome IN ('failed', 'lost') AND j.state = 'dead' THEN 'dead'"
          " ELSE coalesce({a}.outcome, 'failed') END")
_SECONDS = "greatest(coalesce({a}.finished_at - {a}.started_at, 0), 0)"
# Counter rows are spread over this many shards (by server process id, summed at read
# time), so workers completing jobs of one queue at once rarely wait on each other's row.
SHARDS = 16

MIGRATIONS: dict[int, list[str]] = {
    1: [
        # Times are epoch seconds (double precision) from the server's clock, as in SQLite;
        # seq gives "insertion order" for the claim and for listings.
        """CREATE TABLE {s}.jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            id text PRIMARY KEY,
            command text NOT NULL,
            state text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            max_retries integer NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            timeout double precision,
            run_at double precision NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            worker text,
            lease_expires_at double precision,
            started_at double precision,
            finished_at double precision,
            exit_code integer,
            last_error text)""",
        # Only waiting jobs are in these partial indexes: a million finished jobs cost the
        # claim nothing.
        """CREATE INDEX jobs_due ON {s}.jobs (priority DESC, run_at, seq)
            WHERE state IN ('pending', 'failed')""",
        "CREATE INDEX jobs_next_due ON {s}.jobs (run_at) WHERE state IN ('pending', 'failed')",
        "CREATE INDEX jobs_leases ON {s}.jobs (lease_expires_at) WHERE state = 'processing'",
        "CREATE INDEX jobs_by_state ON {s}.jobs (state, created_at, seq)",
        "CREATE INDEX jobs_by_age ON {s}.jobs (created_at, seq)",
        """CREATE TABLE {s}.attempts (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id text NOT NULL,
            attempt integer NOT NULL,
            worker text,
            started_at double precision NOT NULL,
            finished_at double precision,
            outcome text,
            exit_code integer,
            error text,
            output bytea)""",
        "CREATE INDEX attempts_by_job ON {s}.attempts (job_id, seq)",
        """CREATE TABLE {s}.workers (
            name text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            pid_start text,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            state text NOT NULL,
            job_id text)""",
        "CREATE TABLE {s}.config (key text PRIMARY KEY, value text NOT NULL)",
    ],
    # Operators living with the queue: cancel, pause, retention, live output. Only
    # additions (a column with a constant default is a catalog change, no table rewrite):
    # a version-1 queue keeps every job, attempt, worker and setting.
    2: [
        # An operator asked a processing job to stop; its worker ends the attempt as canceled.
        "ALTER TABLE {s}.jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false",
        # Bytes the attempt printed in all (`output` keeps the tail), so `logs --follow` can
        # tell where that tail starts. NULL for older rows.
        "ALTER TABLE {s}.attempts ADD COLUMN output_total bigint",
        # Queue-wide flags (`paused`), with who set it and when (server clock).
        """CREATE TABLE {s}.flags (
            name text PRIMARY KEY,
            set_by text,
            since double precision NOT NULL)""",
        # Background duties one worker at a time does (retention), held like a lease.
        """CREATE TABLE {s}.duties (
            name text PRIMARY KEY,
            holder text NOT NULL,
            expires_at double precision NOT NULL)""",
        # The running attempt's recent output, in chunks by byte offset; dropped when the
        # attempt ends (its history row keeps the tail).
        """CREATE TABLE {s}.live_output (
            job_id text NOT NULL,
            attempt integer NOT NULL,
            start bigint NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (job_id, attempt, start))""",
    ],
    # Named queues. Only additions (constant defaults, no rewrite): every existing
    # job lands in `default`, every registered worker serves all queues.
    3: [
        "ALTER TABLE {s}.jobs ADD COLUMN queue text NOT NULL DEFAULT 'default'",
        # A lane worker's claim: the best waiting job of one queue, still only waiting jobs.
        """CREATE INDEX jobs_due_by_queue ON {s}.jobs (queue, priority DESC, run_at, seq)
            WHERE state IN ('pending', 'failed')""",
        # `list/status/purge/cancel --queue`, `queue list`, and the count of a limited
        # queue's processing jobs inside its claim.
        "CREATE INDEX jobs_by_queue ON {s}.jobs (queue, state, created_at, seq)",
        # Per-queue limit and pause; a row exists only while one is set. A claim from a
        # limited queue locks its row (FOR UPDATE), so such claims take turns.
        """CREATE TABLE {s}.queues (
            name text PRIMARY KEY,
            concurrency integer NOT NULL DEFAULT 0,
            paused_by text,
            paused_since double precision)""",
        # What each worker serves, in preference order; NULL: all queues.
        "ALTER TABLE {s}.workers ADD COLUMN queues text[]",
    ],
    # Metrics: counters for `queuectl metrics`, which only ever grow: purge and retention
    # delete jobs and history, never these rows. Triggers count in the transaction that
    # inserts jobs (once per statement, from its transition table) or an attempt's history
    # row (every way an attempt ends writes one): one small upsert each, into the shard of
    # the connection's server process, so concurrent workers do not queue on one hot row.
    # Seeded from what the database holds when it migrates: its jobs and attempt history.
    4: [
        """CREATE TABLE {s}.counters (
            shard smallint NOT NULL,
            queue text NOT NULL,
            event text NOT NULL,
            le double precision NOT NULL,
            n bigint NOT NULL,
            seconds double precision NOT NULL,
            PRIMARY KEY (shard, queue, event, le))""",
        """INSERT INTO {s}.counters (shard, queue, event, le, n, seconds)
            SELECT 0, queue, 'enqueued', 0, count(*), 0 FROM {s}.jobs GROUP BY queue""",
        # The last attempt of a dead job is the one that made it dead.
        f"""INSERT INTO {{s}}.counters (shard, queue, event, le, n, seconds)
            SELECT 0, queue, event, le, count(*), sum(d) FROM (
                SELECT j.queue AS queue, CASE WHEN a.seq = (SELECT max(seq)
                        FROM {{s}}.attempts WHERE job_id = j.id) THEN {_EVENT.format(a="a")}
                    ELSE coalesce(a.outcome, 'failed') END AS event,
                    {_bucket(_SECONDS.format(a="a"))} AS le, {_SECONDS.format(a="a")} AS d
                FROM {{s}}.attempts a JOIN {{s}}.jobs j ON j.id = a.job_id
                WHERE a.finished_at IS NOT NULL) x
            GROUP BY queue, event, le""",
        f"""CREATE FUNCTION {{s}}.count_enqueued() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            INSERT INTO {{s}}.counters AS c (shard, queue, event, le, n, seconds)
            SELECT pg_backend_pid() % {SHARDS}, queue, 'enqueued', 0, count(*), 0
            FROM added GROUP BY queue ORDER BY queue
            ON CONFLICT (shard, queue, event, le) DO UPDATE SET n = c.n + excluded.n;
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER count_enqueued AFTER INSERT ON {s}.jobs
            REFERENCING NEW TABLE AS added FOR EACH STATEMENT
            EXECUTE FUNCTION {s}.count_enqueued()""",
        f"""CREATE FUNCTION {{s}}.count_attempt() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            INSERT INTO {{s}}.counters AS c (shard, queue, event, le, n, seconds)
            SELECT pg_backend_pid() % {SHARDS}, j.queue, {_EVENT.format(a="NEW")},
                {_bucket("d.d")}, 1, d.d
            FROM {{s}}.jobs j, (SELECT {_SECONDS.format(a="NEW")} AS d) d
            WHERE j.id = NEW.job_id
            ON CONFLICT (shard, queue, event, le) DO UPDATE SET n = c.n + 1,
                seconds = c.seconds + excluded.seconds;
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER count_attempt AFTER INSERT ON {s}.attempts
            FOR EACH ROW EXECUTE FUNCTION {s}.count_attempt()""",
    ],
    # Resource limits and usage: each attempt in a cgroup of its own. Only additions (no
    # default, no rewrite): a job's limits (NULL or 0: none) and what each attempt used
    # (NULL where it was not measured: older rows, workers without a delegated cgroup).
    5: [
        "ALTER TABLE {s}.jobs ADD COLUMN memory_max bigint",
        "ALTER TABLE {s}.jobs ADD COLUMN cpu_max double precision",
        "ALTER TABLE {s}.jobs ADD COLUMN tasks_max integer",
        "ALTER TABLE {s}.attempts ADD COLUMN cpu_user_usec bigint",
        "ALTER TABLE {s}.attempts ADD COLUMN cpu_system_usec bigint",
        "ALTER TABLE {s}.attempts ADD COLUMN memory_peak_bytes bigint",
    ],
    # Unique keys ("cron without overlap"). Only additions (no default, no rewrite): every
    # existing job has none. The unique index over live jobs is the guarantee, whatever
    # code path writes and on however many hosts: never two live jobs (pending, processing
    # or failed) with one key. Submitting infers it as its ON CONFLICT arbiter (same
    # predicate, word for word, in postgres_sql); reviving a dead job meets it as a unique
    # violation. The second index lists a key's jobs, live and finished, oldest first.
    6: [
        "ALTER TABLE {s}.jobs ADD COLUMN unique_key text",
        """CREATE UNIQUE INDEX jobs_unique_live ON {s}.jobs (unique_key)
            WHERE unique_key IS NOT NULL AND state IN ('pending', 'processing', 'failed')""",
        """CREATE INDEX jobs_by_unique ON {s}.jobs (unique_key, created_at, seq)
            WHERE unique_key IS NOT NULL""",
    ],
}

# The bookkeeping table itself, created with the schema before migration 1.
VERSION_TABLE = "CREATE TABLE {s}.schema_version (version integer NOT NULL)"
