"""The PostgreSQL schema, as numbered migrations inside the queue's own schema.

The version lives in `<schema>.schema_version` (one row). Opening a store reads it; when it
is behind, the migrations run in one transaction under an advisory lock keyed on the schema
name, so many workers starting at once on several hosts migrate it exactly once. Add a
change as the next number; never edit a released one. `{s}` stands for the quoted schema.
"""

from queuectl.backends.postgres_sql import (
    BOOKKEPT,
    NOW,
    SECONDS,
    SHARDS,
    bucket,
    functions,
    functions_12,
    functions_13,
    satisfy,
    wake_function,
)
from queuectl.policy import COUNTED_OUTCOME_SQL as ATTEMPT_EVENT

SCHEMA_VERSION = 14

# job_counts (version 10) built from the jobs themselves: what migration 10 runs once, and
# what a tool that wrote jobs rows with the triggers off (bench/fill.py) runs after it.
# Processing jobs are not counted: they are read off jobs_leases (the running jobs only).
JOB_COUNTS_FROM_JOBS = (
    "INSERT INTO {s}.job_counts (shard, queue, state, n) SELECT 0, queue, state, count(*)"
    " FROM {s}.jobs WHERE state <> 'processing' GROUP BY queue, state")

# The counted keys of a job row (of a transition table): its state, and `blocked` too
# while it is pending and waits for a parent (version 12). Processing jobs are not
# counted: they are read off jobs_leases (the running jobs only).
_KEYS = ("LATERAL (VALUES (state), (CASE WHEN state = 'pending' AND waiting_on > 0"
         " THEN 'blocked' END)) v(k)")
_COUNTED_KEY = "k IS NOT NULL AND k <> 'processing'"

# job_counts (version 12, with the `blocked` rows) built from the jobs themselves: what a
# tool that wrote jobs rows with the triggers off (bench/fill.py) runs after it.
JOB_COUNTS_FROM_JOBS_12 = (
    f"INSERT INTO {{s}}.job_counts (shard, queue, state, n) SELECT 0, queue, k, count(*)"
    f" FROM {{s}}.jobs, {_KEYS} WHERE {_COUNTED_KEY} GROUP BY queue, k")


def _upsert_counts(rows: str) -> str:
    """PL/pgSQL: the net change of `rows` (queue, k, d) per (queue, key) into job_counts:
    one upsert per statement, into the server process's shard, in (queue, key) order."""
    return f"""INSERT INTO {{s}}.job_counts AS c (shard, queue, state, n)
            SELECT pg_backend_pid() % {SHARDS}, queue, k, sum(d) FROM ({rows}) x
            WHERE {_COUNTED_KEY}
            GROUP BY queue, k HAVING sum(d) <> 0 ORDER BY queue, k
            ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n + excluded.n;"""


# The jobs of an UPDATE statement that it ended (completed, dead or canceled), by state.
_ENDED = ("SELECT a.id, a.state FROM added a JOIN gone g ON g.id = a.id"
          " WHERE a.state IN ('completed', 'dead', 'canceled') AND a.state <> g.state")

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
                        FROM {{s}}.attempts WHERE job_id = j.id) THEN {ATTEMPT_EVENT.format(a="a")}
                    ELSE coalesce(a.outcome, 'failed') END AS event,
                    {bucket(SECONDS.format(a="a"))} AS le, {SECONDS.format(a="a")} AS d
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
            SELECT pg_backend_pid() % {SHARDS}, j.queue, {ATTEMPT_EVENT.format(a="NEW")},
                {bucket("d.d")}, 1, d.d
            FROM {{s}}.jobs j, (SELECT {SECONDS.format(a="NEW")} AS d) d
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
    # Dependencies and reruns. Additions (constant defaults: no rewrite) and the claim's
    # partial indexes recreated without blocked jobs (waiting_on > 0), so that any number
    # of them costs a claim, `seconds_until_due` and the oldest wait nothing. A job's
    # parents are rows of `deps`, in the order given; `satisfied` is recorded when the
    # parent completes and never derived from the parent's row again (purge and retention
    # may delete it, and the child must still run).
    7: [
        # Parents not completed yet: claimable only at 0.
        "ALTER TABLE {s}.jobs ADD COLUMN waiting_on integer NOT NULL DEFAULT 0",
        # Attempts made before the latest `retry`: the history numbers an attempt
        # attempt_base + attempts.
        "ALTER TABLE {s}.jobs ADD COLUMN attempt_base integer NOT NULL DEFAULT 0",
        """CREATE TABLE {s}.deps (
            child text NOT NULL,
            parent text NOT NULL,
            pos integer NOT NULL,
            satisfied boolean NOT NULL DEFAULT false,
            PRIMARY KEY (child, parent))""",
        # The waiting dependents of a parent, looked up when it ends: a job nobody waits
        # for costs one probe of an (almost always) empty index.
        "CREATE INDEX deps_waiting ON {s}.deps (parent) WHERE NOT satisfied",
        "DROP INDEX {s}.jobs_due",
        """CREATE INDEX jobs_due ON {s}.jobs (priority DESC, run_at, seq)
            WHERE state IN ('pending', 'failed') AND waiting_on = 0""",
        "DROP INDEX {s}.jobs_next_due",
        """CREATE INDEX jobs_next_due ON {s}.jobs (run_at)
            WHERE state IN ('pending', 'failed') AND waiting_on = 0""",
        "DROP INDEX {s}.jobs_due_by_queue",
        """CREATE INDEX jobs_due_by_queue ON {s}.jobs (queue, priority DESC, run_at, seq)
            WHERE state IN ('pending', 'failed') AND waiting_on = 0""",
        # `counts`' blocked jobs (pending, waiting_on > 0): a row per queue, however
        # many jobs are blocked. Kept in the writing transaction in two steps, so that
        # no transaction waits for a counter row while it still takes job-row locks
        # (which could deadlock), and so that a statement blocking or freeing n jobs
        # updates each counter row once (n updates of one row in one transaction each
        # walk the chain of its earlier versions: quadratic):
        # - row triggers (blocked_*), WHEN-gated: a job that is never blocked pays only
        #   for the WHEN, a job that becomes blocked or stops being blocked appends a
        #   +1 or -1 to blocked_deltas under the transaction's id (an insert: it waits
        #   for nobody);
        # - at commit, deferred constraint triggers (blocked_fold_*, same WHEN): the
        #   first folds the transaction's deltas into blocked_counts, queue by queue in
        #   queue order, skipping sums of 0 (a job inserted waiting then freed in its
        #   transaction); the others see the transaction-local flag and return. Folders
        #   lock counter rows last and in one order: they never deadlock.
        # A row stays (at 0) once its queue had a blocked job.
        """CREATE TABLE {s}.blocked_counts (
            queue text PRIMARY KEY,
            n bigint NOT NULL)""",
        """CREATE TABLE {s}.blocked_deltas (
            xact bigint NOT NULL,
            queue text NOT NULL,
            d integer NOT NULL)""",
        "CREATE INDEX blocked_deltas_xact ON {s}.blocked_deltas (xact)",
        """CREATE FUNCTION {s}.blocked_changed() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            IF TG_OP <> 'INSERT' AND OLD.state = 'pending' AND OLD.waiting_on > 0 THEN
                INSERT INTO {s}.blocked_deltas VALUES (txid_current(), OLD.queue, -1);
            END IF;
            IF TG_OP <> 'DELETE' AND NEW.state = 'pending' AND NEW.waiting_on > 0 THEN
                INSERT INTO {s}.blocked_deltas VALUES (txid_current(), NEW.queue, 1);
            END IF;
            RETURN NULL;
        END $f$""",
        """CREATE FUNCTION {s}.blocked_fold() RETURNS trigger LANGUAGE plpgsql AS $f$
        DECLARE
            me bigint := txid_current();
        BEGIN
            IF current_setting('queuectl.blocked_folded', true) = me::text THEN
                RETURN NULL;
            END IF;
            PERFORM set_config('queuectl.blocked_folded', me::text, true);
            WITH mine AS (
                DELETE FROM {s}.blocked_deltas WHERE xact = me RETURNING queue, d)
            INSERT INTO {s}.blocked_counts AS b (queue, n)
            SELECT queue, sum(d) FROM mine GROUP BY queue HAVING sum(d) <> 0 ORDER BY queue
            ON CONFLICT (queue) DO UPDATE SET n = b.n + excluded.n;
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER blocked_inserted AFTER INSERT ON {s}.jobs FOR EACH ROW
            WHEN (NEW.state = 'pending' AND NEW.waiting_on > 0)
            EXECUTE FUNCTION {s}.blocked_changed()""",
        """CREATE TRIGGER blocked_updated AFTER UPDATE OF state, waiting_on, queue
            ON {s}.jobs FOR EACH ROW
            WHEN ((OLD.state = 'pending' AND OLD.waiting_on > 0)
                  IS DISTINCT FROM (NEW.state = 'pending' AND NEW.waiting_on > 0)
                  OR (OLD.state = 'pending' AND OLD.waiting_on > 0
                      AND OLD.queue IS DISTINCT FROM NEW.queue))
            EXECUTE FUNCTION {s}.blocked_changed()""",
        """CREATE TRIGGER blocked_deleted AFTER DELETE ON {s}.jobs FOR EACH ROW
            WHEN (OLD.state = 'pending' AND OLD.waiting_on > 0)
            EXECUTE FUNCTION {s}.blocked_changed()""",
        """CREATE CONSTRAINT TRIGGER blocked_fold_inserted AFTER INSERT ON {s}.jobs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.state = 'pending' AND NEW.waiting_on > 0)
            EXECUTE FUNCTION {s}.blocked_fold()""",
        """CREATE CONSTRAINT TRIGGER blocked_fold_updated AFTER UPDATE OF state, waiting_on, queue
            ON {s}.jobs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN ((OLD.state = 'pending' AND OLD.waiting_on > 0)
                  IS DISTINCT FROM (NEW.state = 'pending' AND NEW.waiting_on > 0)
                  OR (OLD.state = 'pending' AND OLD.waiting_on > 0
                      AND OLD.queue IS DISTINCT FROM NEW.queue))
            EXECUTE FUNCTION {s}.blocked_fold()""",
        """CREATE CONSTRAINT TRIGGER blocked_fold_deleted AFTER DELETE ON {s}.jobs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (OLD.state = 'pending' AND OLD.waiting_on > 0)
            EXECUTE FUNCTION {s}.blocked_fold()""",
        # A parent's end, whatever statement writes it, in its transaction. The WHEN clause
        # is evaluated without calling the function: only a job that ends pays for it, one
        # probe of deps_waiting when nobody waits for it. Completed: its waiting
        # dependents are satisfied for good, each waits for one less, and idle workers
        # are woken (as the enqueue's NOTIFY; the channel is the schema's) when one is
        # ready. Dead or canceled: every dependent still pending that waits for it is
        # canceled; their own row trigger goes on down the chain.
        f"""CREATE FUNCTION {{s}}.parent_ended() RETURNS trigger LANGUAGE plpgsql AS $f$
        DECLARE
            ready bigint;
        BEGIN
            IF NEW.state = 'completed' THEN
                WITH sat AS (
                    UPDATE {{s}}.deps SET satisfied = true
                    WHERE parent = NEW.id AND NOT satisfied RETURNING child),
                less AS (
                    UPDATE {{s}}.jobs j SET waiting_on = j.waiting_on - 1
                    FROM sat WHERE j.id = sat.child
                    RETURNING j.waiting_on, j.state)
                SELECT count(*) INTO ready FROM less
                WHERE waiting_on = 0 AND state = 'pending';
                IF ready > 0 THEN
                    PERFORM pg_notify(TG_TABLE_SCHEMA || '_jobs', '');
                END IF;
            ELSE
                UPDATE {{s}}.jobs j SET state = 'canceled', finished_at = t.now,
                    updated_at = t.now, lease_expires_at = NULL,
                    last_error = 'parent ' || NEW.id || ' ended ' || NEW.state
                FROM {{s}}.deps d, (SELECT {NOW} AS now) t
                WHERE d.parent = NEW.id AND NOT d.satisfied AND j.id = d.child
                    AND j.state = 'pending';
            END IF;
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER parent_ended AFTER UPDATE OF state ON {s}.jobs FOR EACH ROW
            WHEN (NEW.state IN ('completed', 'dead', 'canceled')
                  AND OLD.state IS DISTINCT FROM NEW.state)
            EXECUTE FUNCTION {s}.parent_ended()""",
    ],
    # Directory and environment per job. Only additions (nullable, no default: no rewrite
    # of the table): every existing job runs where its worker is, with the worker's
    # environment (NULL). `env` is a JSON object as text, its keys in the order given.
    8: [
        "ALTER TABLE {s}.jobs ADD COLUMN cwd text",
        "ALTER TABLE {s}.jobs ADD COLUMN env text",
    ],
    # The dead-job hook (`on-dead`). Only additions: no existing job gets a notice.
    9: [
        # A queue's own on-dead command (NULL or '': none, the global setting applies).
        "ALTER TABLE {s}.queues ADD COLUMN on_dead text",
        # One row per dead job whose hook is still to run: what its environment needs,
        # snapshotted when the job went dead (the job may be retried, purged or deleted by
        # retention since: the notice stays), and its delivery state. `attempt` is the
        # history's number of the attempt whose output is the hook's stdin. Due at due_at,
        # held by `holder` until lease_until: the server's clock, as jobs' leases.
        """CREATE TABLE {s}.notices (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id text NOT NULL,
            queue text NOT NULL,
            command text NOT NULL,
            exit_code integer,
            attempts integer NOT NULL,
            attempt integer NOT NULL,
            last_error text,
            created_at double precision NOT NULL,
            due_at double precision NOT NULL,
            tries integer NOT NULL DEFAULT 0,
            error text,
            holder text,
            lease_until double precision)""",
        "CREATE INDEX notices_due ON {s}.notices (due_at, id)",
        # Written by the transaction that makes the job dead, whatever the path
        # (record_failure, reclaim_expired, reclaim_worker, a lost lease), and only while a
        # command is configured for its queue or globally: without one, none piles up.
        # Every other state change pays the WHEN only.
        """CREATE FUNCTION {s}.notice_dead() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            IF EXISTS (SELECT 1 FROM {s}.queues WHERE name = NEW.queue
                       AND coalesce(on_dead, '') <> '')
               OR EXISTS (SELECT 1 FROM {s}.config WHERE key = 'on-dead' AND value <> '')
            THEN
                INSERT INTO {s}.notices (job_id, queue, command, exit_code, attempts,
                                         attempt, last_error, created_at, due_at)
                VALUES (NEW.id, NEW.queue, NEW.command, NEW.exit_code, NEW.attempts,
                        NEW.attempt_base + NEW.attempts, NEW.last_error, NEW.updated_at,
                        NEW.updated_at);
            END IF;
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER notice_dead AFTER UPDATE OF state ON {s}.jobs FOR EACH ROW
            WHEN (NEW.state = 'dead' AND OLD.state IS DISTINCT FROM 'dead')
            EXECUTE FUNCTION {s}.notice_dead()""",
    ],
    # Ten million jobs: `status`, `queue list`, `metrics`, `top` and `check` read counters
    # and short index walks, never every job. Jobs per queue and state in job_counts, kept
    # by triggers in the writing transaction whatever the path (as blocked_counts is), but
    # per statement, not per row, and without blocked_counts' deltas and fold: a claim and
    # a completion are what every job pays, so each statement makes one upsert of its net
    # change per (queue, state) (a heartbeat's is none: nothing written), from its
    # transition tables; complete_and_claim, one statement, makes one for both. The rows
    # are sharded by server process (as `counters`, summed when read): workers completing
    # jobs of one queue at once do not queue on one hot row, and each statement locks its
    # rows in (queue, state) order. Not `processing`: the running jobs are read off
    # jobs_leases, so a claim or a completion alone touches one counter row.
    10: [
        """CREATE TABLE {s}.job_counts (
            shard smallint NOT NULL,
            queue text NOT NULL,
            state text NOT NULL,
            n bigint NOT NULL,
            PRIMARY KEY (shard, queue, state))""",
        JOB_COUNTS_FROM_JOBS,
        # Its own planner settings: the claim turns sorting off for its transaction, and the
        # plan cached at a session's first call (a claim's, in a worker) would keep that
        # (measured: 200 ms a statement instead of 0.1 ms).
        f"""CREATE FUNCTION {{s}}.count_states() RETURNS trigger LANGUAGE plpgsql
        SET enable_sort TO on AS $f$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO {{s}}.job_counts AS c (shard, queue, state, n)
                SELECT pg_backend_pid() % {SHARDS}, queue, state, sum(d) FROM (
                    SELECT queue, state, -1 AS d FROM gone WHERE state <> 'processing'
                    UNION ALL
                    SELECT queue, state, 1 FROM added WHERE state <> 'processing') x
                GROUP BY queue, state HAVING sum(d) <> 0 ORDER BY queue, state
                ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n + excluded.n;
            ELSIF TG_OP = 'INSERT' THEN
                INSERT INTO {{s}}.job_counts AS c (shard, queue, state, n)
                SELECT pg_backend_pid() % {SHARDS}, queue, state, count(*) FROM added
                WHERE state <> 'processing' GROUP BY queue, state ORDER BY queue, state
                ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n + excluded.n;
            ELSE
                INSERT INTO {{s}}.job_counts AS c (shard, queue, state, n)
                SELECT pg_backend_pid() % {SHARDS}, queue, state, -count(*) FROM gone
                WHERE state <> 'processing' GROUP BY queue, state ORDER BY queue, state
                ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n + excluded.n;
            END IF;
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER counts_inserted AFTER INSERT ON {s}.jobs
            REFERENCING NEW TABLE AS added FOR EACH STATEMENT
            EXECUTE FUNCTION {s}.count_states()""",
        """CREATE TRIGGER counts_updated AFTER UPDATE ON {s}.jobs
            REFERENCING OLD TABLE AS gone NEW TABLE AS added FOR EACH STATEMENT
            EXECUTE FUNCTION {s}.count_states()""",
        """CREATE TRIGGER counts_deleted AFTER DELETE ON {s}.jobs
            REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
            EXECUTE FUNCTION {s}.count_states()""",
        # `top`'s completions in the last minute: a walk of the last minute's completions,
        # not of every completed job. One entry per completion, dropped with the job.
        "CREATE INDEX jobs_completed ON {s}.jobs (finished_at, queue) WHERE state = 'completed'",
    ],
    # The worker's per-job statements as PL/pgSQL functions in the queue's schema (claim,
    # complete_and_claim, record_success; postgres_sql.functions): their queries are
    # planned once per session instead of once per call, and a call is one round trip.
    # Only additions: the tables stay as they are.
    11: functions(),
    # Half the server's CPU per job (issue 25). The worker's functions keep their own books
    # (postgres_sql.functions_12 says how and why) and every trigger on the jobs' path
    # becomes one statement-level trigger per event, jobs_written, which the functions'
    # statements skip (WHEN queuectl.bookkept is not on): the state counts, `blocked`
    # among them (job_counts rows of state `blocked`, in place of blocked_counts and its
    # deltas and folds), a job's end for its dependents (satisfied, or canceled down the
    # chain: the cancel is an UPDATE of jobs, which fires it again) and for the on-dead
    # hook (a notice), all from the statement's transition tables. A row trigger's WHEN
    # was prepared again by every UPDATE of jobs, a statement trigger runs once per
    # statement. The attempt's metrics counter trigger skips the functions too.
    12: [
        *(f"DROP TRIGGER {name} ON {{s}}.jobs" for name in (
            "blocked_inserted", "blocked_updated", "blocked_deleted",
            "blocked_fold_inserted", "blocked_fold_updated", "blocked_fold_deleted",
            "parent_ended", "notice_dead", "counts_inserted", "counts_updated",
            "counts_deleted")),
        "DROP TRIGGER count_attempt ON {s}.attempts",
        *(f"DROP FUNCTION {{s}}.{name}()" for name in (
            "blocked_changed", "blocked_fold", "parent_ended", "notice_dead", "count_states")),
        # blocked_deltas is empty between transactions (folded at each commit).
        """INSERT INTO {s}.job_counts AS c (shard, queue, state, n)
            SELECT 0, queue, 'blocked', n FROM {s}.blocked_counts WHERE n <> 0
            ON CONFLICT (shard, queue, state) DO UPDATE SET n = c.n + excluded.n""",
        "DROP TABLE {s}.blocked_counts",
        "DROP TABLE {s}.blocked_deltas",
        f"""CREATE FUNCTION {{s}}.jobs_written() RETURNS trigger LANGUAGE plpgsql
        SET enable_sort TO on AS $f$
        DECLARE
            ready bigint;
        BEGIN
            IF TG_OP = 'INSERT' THEN
                {_upsert_counts(f"SELECT queue, k, 1 AS d FROM added, {_KEYS}")}
                RETURN NULL;
            ELSIF TG_OP = 'DELETE' THEN
                {_upsert_counts(f"SELECT queue, k, -1 AS d FROM gone, {_KEYS}")}
                RETURN NULL;
            END IF;
            IF EXISTS ({_ENDED}) THEN
                {satisfy(f"SELECT id FROM ({_ENDED}) e WHERE state = 'completed'")}
                UPDATE {{s}}.jobs j SET state = 'canceled', finished_at = t.now,
                    updated_at = t.now, lease_expires_at = NULL,
                    last_error = 'parent ' || e.id || ' ended ' || e.state
                FROM ({_ENDED}) e, {{s}}.deps d, (SELECT {NOW} AS now) t
                WHERE e.state IN ('dead', 'canceled') AND d.parent = e.id
                    AND NOT d.satisfied AND j.id = d.child AND j.state = 'pending';
                -- Only while a command is configured for its queue or globally: without
                -- one, no notice piles up.
                INSERT INTO {{s}}.notices (job_id, queue, command, exit_code, attempts,
                                         attempt, last_error, created_at, due_at)
                SELECT a.id, a.queue, a.command, a.exit_code, a.attempts,
                    a.attempt_base + a.attempts, a.last_error, a.updated_at, a.updated_at
                FROM added a JOIN gone g ON g.id = a.id
                WHERE a.state = 'dead' AND g.state <> 'dead'
                    AND (EXISTS (SELECT 1 FROM {{s}}.queues q WHERE q.name = a.queue
                                 AND coalesce(q.on_dead, '') <> '')
                         OR EXISTS (SELECT 1 FROM {{s}}.config
                                    WHERE key = 'on-dead' AND value <> ''))
                ORDER BY a.seq;
            END IF;
            {_upsert_counts(f"SELECT queue, k, -1 AS d FROM gone, {_KEYS} UNION ALL "
                            f"SELECT queue, k, 1 FROM added, {_KEYS}")}
            RETURN NULL;
        END $f$""",
        """CREATE TRIGGER jobs_inserted AFTER INSERT ON {s}.jobs
            REFERENCING NEW TABLE AS added FOR EACH STATEMENT
            EXECUTE FUNCTION {s}.jobs_written()""",
        f"""CREATE TRIGGER jobs_updated AFTER UPDATE ON {{s}}.jobs
            REFERENCING OLD TABLE AS gone NEW TABLE AS added FOR EACH STATEMENT
            WHEN ({BOOKKEPT})
            EXECUTE FUNCTION {{s}}.jobs_written()""",
        """CREATE TRIGGER jobs_deleted AFTER DELETE ON {s}.jobs
            REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
            EXECUTE FUNCTION {s}.jobs_written()""",
        f"""CREATE TRIGGER count_attempt AFTER INSERT ON {{s}}.attempts FOR EACH ROW
            WHEN ({BOOKKEPT})
            EXECUTE FUNCTION {{s}}.count_attempt()""",
        *functions_12(),
    ],
    13: [
        # A queue's active workers (queue list, status --queue, metrics) leave out the
        # all-queue workers that exclude it (their host's lane files serve it). A column
        # without a default: a catalog change, no table rewrite.
        "ALTER TABLE {s}.workers ADD COLUMN exclude text[]",
        # `top`'s latest failed and dead jobs (recent_jobs: its state is a literal, so the
        # planner proves the condition), not a sort of the whole dead-letter queue. Not on
        # a job's way to completion: only a failure adds an entry.
        """CREATE INDEX jobs_latest_failures ON {s}.jobs (state, updated_at, seq)
            WHERE state IN ('failed', 'dead')""",
        # Who watches job events now (`wait`, `logs --follow`), each until its row
        # expires: the worker's functions notify only then (postgres_sql.functions_13).
        """CREATE TABLE {s}.watchers (
            name text PRIMARY KEY,
            until double precision NOT NULL)""",
        *functions_13(),
    ],
    14: [
        # Idle workers, each on a channel of its own, so that an enqueue wakes one a job
        # (postgres_sql.wake_function). Unlogged: its rows describe live connections,
        # which neither a crash nor a failover keeps; the workers register again.
        """CREATE UNLOGGED TABLE {s}.listeners (
            channel text PRIMARY KEY,
            token text NOT NULL,
            backend integer NOT NULL,
            queues text[],
            exclude text[],
            since double precision NOT NULL)""",
        "CREATE INDEX listeners_since ON {s}.listeners (since)",
        wake_function(),
    ],
}

# The bookkeeping table itself, created with the schema before migration 1.
VERSION_TABLE = "CREATE TABLE {s}.schema_version (version integer NOT NULL)"
