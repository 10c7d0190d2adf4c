"""The PostgreSQL schema, as numbered migrations inside the queue's own schema.

The version lives in `<schema>.schema_version` (one row). Opening a store reads it; when it
is behind, the migrations run in one transaction under an advisory lock keyed on the schema
name, so many workers starting at once on several hosts migrate it exactly once. Add a
change as the next number; never edit a released one. `{s}` stands for the quoted schema.
"""

SCHEMA_VERSION = 3

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
    # Issue 11: cancel, pause, retention, live output. Only additions (a column with a
    # constant default is a catalog change, no table rewrite): a version-1 queue keeps every
    # job, attempt, worker and setting.
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
    # Issue 12: named queues. Only additions (constant defaults, no rewrite): every existing
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
}

# The bookkeeping table itself, created with the schema before migration 1.
VERSION_TABLE = "CREATE TABLE {s}.schema_version (version integer NOT NULL)"
