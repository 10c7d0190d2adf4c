"""The PostgreSQL store: one queue shared by workers on many hosts.

Driver: psycopg2, imported only here (so SQLite's `enqueue` never pays for it): about 26 ms
to import against psycopg 3's 115 ms, and cron pays that on every `enqueue`.

How it keeps the contract:
- One clock: every time comes from the server (`clock_timestamp()` as epoch seconds), never
  from the host, so hosts whose clocks differ agree on leases, delays and liveness.
- One round trip per verb where possible: the connection is in autocommit mode and a verb is
  one statement (data-modifying CTEs), or several statements sent as one simple query, which
  PostgreSQL runs as one implicit transaction. No session state (no SET, no prepared
  statements, advisory locks only per transaction), so a transaction-pooling pooler works.
- Claims take `FOR UPDATE SKIP LOCKED` on a partial index of waiting jobs.
- Enqueue, a scheduled retry, a released job and `dlq retry` send NOTIFY in their own
  transaction; idle workers LISTEN on their own connection, and poll as a safety net.
- Faults: a connection found dead (server restart) is replaced on the next call; "too many
  clients" and "starting up" are retried with jitter within the wait budget, then
  DatabaseBusy; everything else is one DatabaseUnavailable line without the password.
"""

from __future__ import annotations

import os
import re
import select
import time

from queuectl import policy
from queuectl import settings as cfg
from queuectl.backends import BUSY_TIMEOUT
from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from queuectl.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    Unsupported,
    ValidationError,
)
from queuectl.job import (
    CANCELED,
    CANCELLABLE,
    DEAD,
    DEFAULT_QUEUE,
    FAILED,
    PENDING,
    PROCESSING,
    ROW_COLUMNS,
    STATES,
    TERMINAL,
    Job,
    JobSpec,
)
from queuectl.redaction import redact, scrub, secrets_in, unquote
from queuectl.store import (
    USAGE,
    Metrics,
    Outcome,
    OutputSlice,
    PauseInfo,
    QueueInfo,
    Store,
    Wakeup,
    WorkerInfo,
    usage_of,
)

try:
    import psycopg2
    import psycopg2.extensions
except ImportError:  # reported by open_store, with the package to install
    psycopg2 = None  # type: ignore[assignment]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

# A burst of commands can meet "too many clients" for a while: connecting waits longer.
CONNECT_BUDGET = max(BUSY_TIMEOUT, 30.0)
DEFAULT_SCHEMA = "queuectl"
SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,47}\Z")
DRIVER_MISSING = (
    "a postgresql:// database needs the psycopg2 driver: install it with "
    "'apt install python3-psycopg2' (Debian) or \"pip install 'queuectl[postgres]'\"")

# Refusals worth retrying: too many connections, server starting/stopping or in recovery,
# serialization failure, deadlock, lock not available.
TRANSIENT_CODES = {"53300", "57P03", "40001", "40P01", "55P03"}
TRANSIENT_TEXT = (
    "too many clients", "remaining connection slots", "too many connections",
    "cannot connect now", "is starting up", "is shutting down", "in recovery mode",
    "not yet accepting connections", "not accepting connections",
)
# The server ended the session (restart, admin shutdown) or the socket broke.
LOST_CODES = {"57P01", "57P02", "08000", "08003", "08006", "08001"}

NOW = "extract(epoch FROM clock_timestamp())::float8"
COLUMNS = ROW_COLUMNS
# NOTIFY payload of events that concern watchers (`wait`, `logs --follow`, a running job's
# cancel check) but bring no new work: idle workers' drain() ignores them.
EVENT = "e"


def _cols(prefix: str) -> str:
    return ", ".join(f"{prefix}.{c}" for c in COLUMNS)


# -- the locator ---------------------------------------------------------------------------
class Target:
    """A parsed locator: what libpq gets, the queue's schema, and how to name it in errors."""

    def __init__(self, locator: str) -> None:
        self.display = redact(locator)
        base, _, query = locator.partition("?")
        params, schema = [], DEFAULT_SCHEMA
        for part in query.split("&") if query else []:
            key, _, value = part.partition("=")
            if key == "schema":
                schema = unquote(value)
            elif part:
                params.append(part)
        if not SCHEMA_RE.match(schema):
            raise ValidationError(
                f"invalid schema= {schema!r} in the database URL: use 1 to 48 lower-case "
                "letters, digits and _, not starting with a digit")
        self.schema = schema
        self.dsn = base + ("?" + "&".join(params) if params else "")
        self._secrets = secrets_in(locator)
        try:
            given = psycopg2.extensions.parse_dsn(self.dsn)
        except psycopg2.Error as exc:
            raise ValidationError(
                f"invalid database URL {self.display}: {self.scrub(_first_line(exc))}") from None
        # Defaults that keep a dead network from hanging a worker; the URL (or the PG*
        # environment) wins where it says otherwise.
        defaults = {
            "application_name": ("PGAPPNAME", "queuectl"),
            "connect_timeout": ("PGCONNECT_TIMEOUT", "10"),
            "keepalives_idle": (None, "15"),
            "keepalives_interval": (None, "5"),
            "keepalives_count": (None, "3"),
            "tcp_user_timeout": (None, "20000"),
        }
        self.kwargs = {key: value for key, (env, value) in defaults.items()
                       if key not in given and not (env and os.environ.get(env))}

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def connect(self) -> Any:
        conn = psycopg2.connect(self.dsn, **self.kwargs)
        conn.autocommit = True
        return conn


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text.replace("FATAL:  ", "").replace("ERROR:  ", "")


def _transient(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None)
    if code in TRANSIENT_CODES:
        return True
    low = str(exc).lower()
    return any(t in low for t in TRANSIENT_TEXT)


def _lost(exc: BaseException, conn: Any) -> bool:
    if conn is None or conn.closed:
        return True
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    return getattr(exc, "pgcode", None) in LOST_CODES


def _jitter(pause: float) -> float:
    return pause * (0.5 + int.from_bytes(os.urandom(2), "little") / 131072)


READ_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class _Reading:
    """`with store.reading():` one read-only REPEATABLE READ transaction on one connection,
    so that every read inside it sees the same snapshot. A lost connection ends it with an
    error (reconnecting would read outside the snapshot). Inside another one it is that one."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._began = False

    def __enter__(self) -> None:
        store = self._store
        if not store._pinned:
            store._run(lambda cur: cur.execute(READ_SNAPSHOT), idempotent=True)
            store._pinned = self._began = True

    def __exit__(self, *_exc: object) -> None:
        if self._began:
            store = self._store
            store._pinned = self._began = False
            conn = store._conn
            if conn is not None:
                store._rollback(conn)  # read only: ending it any way releases the snapshot


# -- the store -----------------------------------------------------------------------------
class PostgresStore(Store):
    def __init__(self, target: Target, for_worker: bool = False) -> None:
        self.target = target
        self.for_worker = for_worker
        s = self.s = f'"{target.schema}"'
        self.channel = f"{target.schema}_jobs"
        self._notify = f"NOTIFY {self.channel}; "
        self._event = f"NOTIFY {self.channel}, '{EVENT}'; "
        # Workers' commits skip waiting for the WAL flush (as SQLite's synchronous=NORMAL):
        # a server crash may undo their last few state changes, and those jobs run again.
        self._prefix = "SET LOCAL synchronous_commit TO off; " if for_worker else ""
        # A claim must walk jobs_due in its order and stop at the first free job. With many
        # finished jobs, ANALYZE's sample holds no waiting one, the planner expects a single
        # waiting row, and it prefers reading every due job through jobs_next_due and
        # sorting them: each claim then costs O(due jobs) (measured: 970 rows read and
        # sorted, 0.48 ms against 0.08 ms). With sorting off for the claim's transaction the
        # ordered scan of jobs_due is the only plan left, whatever the statistics say.
        self._claiming = self._prefix + "SET LOCAL enable_sort TO off; "
        self._settings = cfg.SettingsCache()
        self._conn: Any = None
        self._pinned = False  # inside reading(): one transaction, one connection, no retry
        self._reconnect_budget = BUSY_TIMEOUT if for_worker else CONNECT_BUDGET
        self._build_sql(s)
        self._conn = self._connect(CONNECT_BUDGET)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------------
    def _describe(self, exc: BaseException, what: str = "") -> str:
        msg = self.target.scrub(_first_line(exc))
        low = msg.lower()
        hint = ""
        if "password authentication failed" in low or "no password supplied" in low:
            hint = " (check the password: PGPASSFILE, passfile= or the URL)"
        elif "permission denied" in low:
            hint = (" (the role needs the privileges listed in the README, "
                    "'PostgreSQL (many hosts)')")
        return f"PostgreSQL {self.target.display}: {what}{msg}{hint}"

    def _connect(self, budget: float) -> Any:
        deadline = time.monotonic() + budget
        pause = 0.01
        while True:
            try:
                return self.target.connect()
            except psycopg2.Error as exc:
                if not _transient(exc):
                    raise DatabaseUnavailable(self._describe(exc, "cannot connect: ")) from None
                if time.monotonic() >= deadline:
                    raise DatabaseBusy(self._describe(
                        exc, f"server refused new connections for {budget:g} s: ")) from None
            time.sleep(_jitter(pause))
            pause = min(pause * 2, 0.5)

    def _live(self) -> Any:
        """The connection, replaced if the server ended it while we were idle (a restart
        sends a FATAL message and closes: the socket turns readable)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            if self._pinned:
                return conn  # a new connection would not be in the snapshot: let it fail
            try:
                if select.select([conn], [], [], 0)[0]:
                    conn.poll()
                    del conn.notifies[:]
            except (psycopg2.Error, OSError, ValueError):
                self._drop()
            else:
                return conn
        self._drop()
        self._conn = self._connect(self._reconnect_budget)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def _run(self, fn: Callable[[Any], Any], idempotent: bool = False,
             settle: Callable[[Any], Any] | None = None) -> Any:
        """Run fn(cursor) as one unit: retry transient refusals within the wait budget;
        after a lost connection reconnect, and repeat fn only if it is idempotent (a
        commit in flight may have happened). Otherwise settle(cursor), if given, runs on
        the new connection instead: it finds out whether that commit happened and
        finishes the work (or raises)."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = 0.002
        retry_lost = idempotent and not self._pinned
        while True:
            conn = self._live()
            try:
                with conn.cursor() as cur:
                    return fn(cur)
            except psycopg2.Error as exc:
                if _lost(exc, conn):
                    self._drop()
                    if retry_lost:
                        retry_lost = False
                        continue
                    if settle is not None and not self._pinned:
                        fn, settle = settle, None
                        continue
                    raise DatabaseUnavailable(
                        self._describe(exc, "lost the connection: ")) from None
                self._rollback(conn)
                if _transient(exc):
                    if time.monotonic() < deadline:
                        time.sleep(_jitter(pause))
                        pause = min(pause * 2, 0.1)
                        continue
                    raise DatabaseBusy(self._describe(
                        exc, f"still busy after {BUSY_TIMEOUT:g} s: ")) from None
                raise DatabaseUnavailable(self._describe(exc)) from None
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: Any) -> None:
        """Leave no transaction open on the connection (explicit BEGIN ... cut short)."""
        try:
            if not conn.closed and conn.get_transaction_status() in (
                    psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
                    psycopg2.extensions.TRANSACTION_STATUS_INERROR):
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        except psycopg2.Error:
            pass

    def _fetch(self, sql: str, params: Any = None) -> list[tuple]:
        """A read: one statement, repeated on a new connection if the old one died."""
        def read(cur: Any) -> list[tuple]:
            cur.execute(sql, params)
            return cur.fetchall()

        return self._run(read, idempotent=True)

    # -- schema ------------------------------------------------------------------------------
    def _opening_read(self, cur: Any) -> int | None:
        """The schema version and the settings in one round trip (every `enqueue` pays
        for this); None when there is no queue in this schema yet."""
        try:
            cur.execute(f"SELECT '', max(version)::text FROM {self.s}.schema_version"
                        f" UNION ALL SELECT key, value FROM {self.s}.config")
        except psycopg2.Error as exc:
            if getattr(exc, "pgcode", None) in ("42P01", "3F000"):  # no table, no schema
                return None
            raise
        rows = cur.fetchall()
        version = int(rows[0][1] or 0)
        if version == SCHEMA_VERSION:
            self._settings.get(lambda: dict(rows[1:]))
        return version

    def _migrate(self) -> None:
        for _ in range(3):
            version = self._run(self._opening_read, idempotent=True)
            if version == SCHEMA_VERSION:
                return
            self._check_not_newer(version)
            if self._run(lambda cur, seen=version: self._migrate_locked(cur, seen)):
                return
        raise DatabaseUnavailable(
            f"PostgreSQL {self.target.display}: the queue schema {self.target.schema} "
            "keeps changing under us; try again")

    def _migrate_locked(self, cur: Any, seen: int | None) -> bool:
        """Create or upgrade the schema under the advisory lock; False when another process
        created it while we waited (read it again in a new transaction: this one's
        catalog caches may still say it is missing)."""
        import hashlib

        key = int.from_bytes(hashlib.blake2b(f"queuectl:{self.target.schema}".encode(),
                                             digest_size=8).digest(), "big", signed=True)
        schema = self.target.schema
        cur.execute("BEGIN; SELECT pg_advisory_xact_lock(%s)", (key,))
        cur.execute("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = %s"
                    " AND c.relname = 'schema_version')", (schema,))
        exists = cur.fetchone()[0]
        if seen is None and exists:
            cur.execute("COMMIT")
            return False
        if exists:
            cur.execute(f"SELECT max(version) FROM {self.s}.schema_version")
            current = cur.fetchone()[0] or 0
            self._check_not_newer(current)
        else:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,))
            if cur.fetchone()[0]:
                raise DatabaseUnavailable(
                    f"PostgreSQL {self.target.display}: schema {schema} holds tables of "
                    "another application; refusing to touch it (pick another with "
                    "?schema=NAME)")
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if cur.fetchone() is None:  # a least-privilege role may use one made for it
                cur.execute(f"CREATE SCHEMA {self.s}")
            cur.execute(VERSION_TABLE.format(s=self.s))
            cur.execute(f"INSERT INTO {self.s}.schema_version VALUES (0)")
            current = 0
        for v in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[v]:
                cur.execute(statement.format(s=self.s))
        cur.execute(f"UPDATE {self.s}.schema_version SET version = %s", (SCHEMA_VERSION,))
        cur.execute("COMMIT")
        return True

    def _check_not_newer(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"PostgreSQL {self.target.display}: queue schema {self.target.schema} has "
                f"version {version}, newer than this queuectl understands ({SCHEMA_VERSION}): "
                "upgrade queuectl")

    # -- statements --------------------------------------------------------------------------
    def _build_sql(self, s: str) -> None:
        self.sql_claim_all = self._claim_ctes(s, lane=False)
        self.sql_claim_lane = self._claim_ctes(s, lane=True)
        self.sql_complete_cte = f"""
            done AS (
                UPDATE {s}.jobs j SET state = 'completed', finished_at = t.now,
                    updated_at = t.now, exit_code = %(exit_code)s, last_error = NULL,
                    lease_expires_at = NULL
                FROM t WHERE j.id = %(id)s AND j.state = 'processing'
                    AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
                RETURNING j.id, t.now),
            hist AS (
                INSERT INTO {s}.attempts (job_id, attempt, worker, started_at, finished_at,
                    outcome, exit_code, error, output, output_total, cpu_user_usec,
                    cpu_system_usec, memory_peak_bytes)
                SELECT id, %(attempts)s, %(job_worker)s, coalesce(%(started_at)s, now), now,
                    %(outcome)s, %(exit_code)s, NULL, %(output)s, %(total)s, %(cpu_user)s,
                    %(cpu_system)s, %(memory_peak)s FROM done),
            {self._drop_live("done")}"""
        self.sql_t = f"t AS (SELECT {NOW} AS now)"

    @staticmethod
    def _claim_ctes(s: str, lane: bool) -> str:
        """The CTEs `held`, `nxt` and `claimed` of a claim (after `t`): the best eligible job
        of the queues a worker serves (every queue, or `%(queues)s` in preference order),
        skipping paused queues and those at their limit. A job of a limited queue is taken
        only when that queue's row was locked before this statement (`%(locked)s`), so
        its count of processing jobs is exact and no racing claimer can add to it; else
        `nxt` names the queue and the caller locks it (`_claim_limited`). Unlimited queues
        never lock anything but the job: with no limit, no pause and no list this is the
        one statement it always was, an ordered scan of jobs_due."""
        waiting = "state IN ('pending', 'failed')"
        due = f"{waiting} AND run_at <= (SELECT now FROM t)"
        # Counted in this statement's snapshot, taken after any lock the caller holds;
        # `%(ending)s` is the job complete_and_claim ends in the same statement (a hint
        # only: a limited queue's count that decides is taken under its lock).
        held = f"""held AS (
                SELECT q.name, q.paused_since IS NULL AND q.concurrency > 0 AS limited,
                    q.paused_since IS NOT NULL OR (q.concurrency > 0 AND q.concurrency <=
                        (SELECT count(*) FROM {s}.jobs r
                         WHERE r.queue = q.name AND r.state = 'processing'
                             AND r.id IS DISTINCT FROM %(ending)s)) AS blocked
                FROM {s}.queues q WHERE q.concurrency > 0 OR q.paused_since IS NOT NULL)"""

        def open_(col: str) -> str:
            return (f"NOT EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'paused')"
                    f" AND {col} <> ALL(ARRAY(SELECT name FROM held WHERE blocked))"
                    f" AND {col} <> ALL(%(skip)s::text[])")

        if lane:
            # The first listed queue with an eligible job: the nested loop walks the list in
            # its order and stops at the first row (no sort, which would visit, and lock the
            # best job of, every listed queue).
            nxt = f"""nxt AS (
                SELECT x.id, x.queue
                FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS p(name, n)
                CROSS JOIN LATERAL (
                    SELECT id, queue FROM {s}.jobs WHERE queue = p.name AND {due}
                    ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) x
                WHERE {open_('p.name')} LIMIT 1)"""
        else:
            nxt = f"""nxt AS (
                SELECT id, queue FROM {s}.jobs WHERE {due} AND {open_('queue')}
                ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"""
        return f"""{held}, {nxt},
            claimed AS (
                UPDATE {s}.jobs j SET state = 'processing', attempts = j.attempts + 1,
                    worker = %(worker)s, lease_expires_at = t.now + %(lease)s,
                    started_at = t.now, finished_at = NULL, updated_at = t.now
                FROM nxt, t WHERE j.id = nxt.id
                    AND (nxt.queue <> ALL(ARRAY(SELECT name FROM held WHERE limited))
                         OR nxt.queue = %(locked)s)
                RETURNING {_cols('j')})"""

    def _claim_params(self, worker: str, queues: list[str] | None) -> dict[str, Any]:
        return {"worker": worker, "lease": self._config().lease_seconds,
                "queues": queues, "skip": [], "locked": None, "ending": None}

    def _claim_limited(self, cur: Any, queue: str, params: dict[str, Any]) -> Job | None:
        """The claim when the best job is in a limited queue: lock that queue's row, then
        claim in a new statement (a fresh snapshot, which sees every claim committed by
        whoever held the lock before us) only while fewer than its limit are processing.
        Claims of one limited queue thus take turns on every host; a savepoint lets go of
        a queue that turned out full before locking the next (one queue row at a time, so
        claimers never deadlock)."""
        lane = params["queues"] is not None
        sql = (f"SELECT 1 FROM {self.s}.queues WHERE name = %(locked)s FOR UPDATE; "
               f"WITH {self.sql_t}, {self.sql_claim_lane if lane else self.sql_claim_all} "
               "SELECT (SELECT queue FROM nxt), claimed.* "
               "FROM (SELECT 1) AS one LEFT JOIN claimed ON true")
        skip: list[str] = []
        cur.execute(f"BEGIN; {self._claiming}SAVEPOINT lane")
        again = ""
        for _ in range(64):  # each turn skips one more full queue; bounded anyway
            cur.execute(again + sql, {**params, "locked": queue, "skip": skip})
            candidate, *row = cur.fetchone()
            if row[0] is not None or candidate is None:
                cur.execute("COMMIT")
                return None if row[0] is None else Job.from_row(row)
            skip.append(queue)  # full now (or outranked): let go of it, try the next
            queue, again = candidate, "ROLLBACK TO SAVEPOINT lane; "
        cur.execute("COMMIT")
        return None  # the worker polls again soon

    def _drop_live(self, ended: str) -> str:
        """A CTE that deletes the live output of the attempts `ended` returns (their `id`).
        %(live)s is a literal: the planner drops the DELETE when nothing was written live,
        so the many short jobs pay nothing for it."""
        return (f"gone AS (DELETE FROM {self.s}.live_output l USING {ended}"
                f" WHERE %(live)s AND l.job_id = {ended}.id)")

    def _params(self, job: Job, outcome: Outcome | None, result: str) -> dict[str, Any]:
        output = policy.output_tail(outcome.output) if outcome else None
        total = None
        if outcome is not None:
            total = outcome.total if outcome.total is not None else len(outcome.output)
        return {
            "id": job.id, "job_worker": job.worker, "attempts": job.attempts,
            "started_at": job.started_at, "exit_code": outcome.exit_code if outcome else None,
            "outcome": result, "output": None if output is None else psycopg2.Binary(output),
            "total": total, "live": outcome is None or outcome.live,
            "canceled_error": policy.CANCELED_ERROR, "canceled_outcome": policy.CANCELED_ATTEMPT,
            **dict(zip(("cpu_user", "cpu_system", "memory_peak"), usage_of(outcome), strict=True)),
        }

    def _config(self) -> cfg.QueueConfig:
        return self._settings.get(
            lambda: dict(self._fetch(f"SELECT key, value FROM {self.s}.config")))

    # -- submitting --------------------------------------------------------------------------
    def enqueue(self, specs: list[JobSpec], if_absent: bool = False) -> list[str]:
        conf = self._config()
        default_retries = conf.max_retries
        ids = [spec.id or policy.new_job_id() for spec in specs]
        rows = {
            "ids": ids,
            "commands": [spec.command for spec in specs],
            "retries": [default_retries if spec.max_retries is None else spec.max_retries
                        for spec in specs],
            "priorities": [spec.priority for spec in specs],
            "timeouts": [spec.timeout for spec in specs],
            "run_ats": [spec.run_at for spec in specs],
            "delays": [spec.delay or 0.0 for spec in specs],
            "queues": [spec.queue or DEFAULT_QUEUE for spec in specs],
            "memory_maxes": [spec.limits_with(conf)[0] for spec in specs],
            "cpu_maxes": [spec.limits_with(conf)[1] for spec in specs],
            "tasks_maxes": [spec.limits_with(conf)[2] for spec in specs],
        }
        insert = f"""WITH {self.sql_t}
            INSERT INTO {self.s}.jobs (id, command, state, attempts, max_retries, priority,
                timeout, run_at, created_at, updated_at, queue, memory_max, cpu_max, tasks_max)
            SELECT u.id, u.command, 'pending', 0, u.max_retries, u.priority, u.timeout,
                coalesce(u.run_at, t.now + u.delay), t.now, t.now, u.queue, u.memory_max,
                u.cpu_max, u.tasks_max
            FROM unnest(%(ids)s::text[], %(commands)s::text[], %(retries)s::int[],
                        %(priorities)s::int[], %(timeouts)s::float8[], %(run_ats)s::float8[],
                        %(delays)s::float8[], %(queues)s::text[], %(memory_maxes)s::int8[],
                        %(cpu_maxes)s::float8[], %(tasks_maxes)s::int[])
                 WITH ORDINALITY AS u(id, command, max_retries, priority, timeout, run_at,
                                      delay, queue, memory_max, cpu_max, tasks_max, n), t
            ORDER BY u.n
            {"ON CONFLICT (id) DO NOTHING" if if_absent else ""}"""
        chunk = 5000

        def add(cur: Any) -> None:
            if len(ids) <= chunk:  # one round trip, one implicit transaction
                cur.execute(self._notify + insert, rows)
                return
            cur.execute("BEGIN")
            for start in range(0, len(ids), chunk):
                cur.execute(insert, {k: v[start:start + chunk] for k, v in rows.items()})
            cur.execute(self._notify + "COMMIT")

        def conflict(cur: Any) -> Conflict:
            taken = self._commands_of(cur, ids)
            seen: set[str] = set()
            for job_id in ids:
                if job_id in taken or job_id in seen:
                    return Conflict(
                        f"job {job_id!r} already exists (use --if-absent to skip it)")
                seen.add(job_id)
            return Conflict("a job id is already taken (use --if-absent to skip it)")

        def run(cur: Any) -> None:
            try:
                add(cur)
            except psycopg2.Error as exc:
                if getattr(exc, "pgcode", None) != "23505":
                    raise
                self._rollback(cur.connection)
                raise conflict(cur) from None

        def settle(cur: Any) -> None:
            """The connection broke with the insert in flight: it committed whole or not
            at all, and the ids (ours, chosen before it) say which. Never twice, never
            reported lost when it is stored."""
            found = self._commands_of(cur, ids)
            if not found:
                run(cur)  # it did not commit: insert now
            elif not all(found.get(job_id) == spec.command
                         for job_id, spec in zip(ids, specs, strict=True)):
                raise DatabaseUnavailable(
                    "lost the connection while enqueueing, and cannot tell whether the jobs"
                    f" were stored (some of their ids exist): check with queuectl show {ids[0]}")

        # With --if-absent the insert is idempotent: after a lost connection just repeat it.
        self._run(run, idempotent=if_absent, settle=None if if_absent else settle)
        return ids

    def _commands_of(self, cur: Any, ids: list[str]) -> dict[str, str]:
        """The command of each of these ids that is taken."""
        cur.execute(f"SELECT id, command FROM {self.s}.jobs WHERE id = ANY(%s)", (ids,))
        return dict(cur.fetchall())

    def _find(self, cur: Any, job_id: str) -> Job | None:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {self.s}.jobs WHERE id = %s", (job_id,))
        row = cur.fetchone()
        return None if row is None else Job.from_row(row)

    # -- the worker's verbs ------------------------------------------------------------------
    # A connection that breaks while a worker's statement commits leaves the worker not
    # knowing whether it happened. Its settle step (see _run) asks the database: a
    # completion wrote its attempt's history row; a claim left a job held by this worker
    # that the worker does not know of (a worker runs one job at a time). So a result is
    # not logged lost when it was recorded, and a claimed job is not orphaned until its
    # lease runs out.
    def _held_by(self, cur: Any, worker: str, besides: str | None) -> Job | None:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {self.s}.jobs WHERE state = 'processing'"
                    " AND worker = %s AND id IS DISTINCT FROM %s ORDER BY started_at DESC"
                    " LIMIT 1", (worker, besides))
        row = cur.fetchone()
        return None if row is None else Job.from_row(row)

    def _recorded(self, cur: Any, params: dict[str, Any], *outcomes: str) -> bool:
        """Did the attempt get the history row that only its own ending writes?"""
        cur.execute(f"SELECT EXISTS (SELECT 1 FROM {self.s}.attempts WHERE job_id = %(id)s"
                    " AND attempt = %(attempts)s AND worker = %(job_worker)s"
                    " AND outcome = ANY(%(outcomes)s))",
                    {**params, "outcomes": list(outcomes)})
        return bool(cur.fetchone()[0])

    def claim_next(self, worker: str, queues: list[str] | None = None) -> Job | None:
        params = self._claim_params(worker, queues)
        ctes = self.sql_claim_all if queues is None else self.sql_claim_lane
        sql = (f"{self._claiming}WITH {self.sql_t}, {ctes} "
               "SELECT (SELECT queue FROM nxt), claimed.* "
               "FROM (SELECT 1) AS one LEFT JOIN claimed ON true")

        def claim(cur: Any) -> Job | None:
            cur.execute(sql, params)
            candidate, *row = cur.fetchone()
            if row[0] is not None:
                return Job.from_row(row)
            if candidate is None:
                return None
            return self._claim_limited(cur, candidate, params)

        def settle(cur: Any) -> Job | None:
            held = self._held_by(cur, worker, None)
            return held if held is not None else claim(cur)

        return self._run(claim, settle=settle)

    def heartbeat(self, worker: str, state: str, job: Job | None) -> bool:
        beat = (f"UPDATE {self.s}.workers SET heartbeat_at = t.now, state = %(state)s,"
                f" job_id = %(job_id)s FROM t WHERE name = %(worker)s")
        params = {"state": state, "job_id": job.id if job else None, "worker": worker}
        if job is None:
            sql = f"{self._prefix}WITH {self.sql_t} {beat}"
        else:
            params.update(lease=self._config().lease_seconds, id=job.id, attempts=job.attempts)
            sql = (f"{self._prefix}WITH {self.sql_t}, beat AS ({beat}) "
                   f"UPDATE {self.s}.jobs j SET lease_expires_at = t.now + %(lease)s FROM t"
                   f" WHERE j.id = %(id)s AND j.state = 'processing' AND j.worker = %(worker)s"
                   f" AND j.attempts = %(attempts)s")

        def beat_once(cur: Any) -> bool:
            cur.execute(sql, params)
            return job is None or cur.rowcount == 1

        return self._run(beat_once, idempotent=True)

    def record_success(self, job: Job, outcome: Outcome) -> bool:
        sql = (f"{self._prefix}{self._event}WITH {self.sql_t}, {self.sql_complete_cte} "
               "SELECT count(*) FROM done")
        params = self._params(job, outcome, policy.COMPLETED_ATTEMPT)

        def complete(cur: Any) -> bool:
            cur.execute(sql, params)
            return cur.fetchone()[0] == 1

        def settle(cur: Any) -> bool:
            return self._recorded(cur, params, policy.COMPLETED_ATTEMPT) or complete(cur)

        return self._run(complete, settle=settle)

    def complete_and_claim(self, job: Job, outcome: Outcome, worker: str,
                           queues: list[str] | None = None) -> tuple[bool, Job | None]:
        ctes = self.sql_claim_all if queues is None else self.sql_claim_lane
        sql = (f"{self._claiming}{self._event}WITH {self.sql_t}, {self.sql_complete_cte}, "
               f"{ctes} SELECT (SELECT count(*) FROM done), (SELECT queue FROM nxt), "
               "claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true")
        claim = self._claim_params(worker, queues)
        params = {**self._params(job, outcome, policy.COMPLETED_ATTEMPT), **claim,
                  "ending": job.id}

        def both(cur: Any) -> tuple[bool, Job | None, str | None]:
            cur.execute(sql, params)
            done, candidate, *row = cur.fetchone()
            return done == 1, None if row[0] is None else Job.from_row(row), candidate

        def settle(cur: Any) -> tuple[bool, Job | None, str | None]:
            # it committed, with whatever it claimed
            if self._recorded(cur, params, policy.COMPLETED_ATTEMPT):
                return True, self._held_by(cur, worker, job.id), None
            return both(cur)

        held, got, candidate = self._run(both, settle=settle)
        if got is None and candidate is not None:
            # A limited queue's turn: the completion is committed (so it no longer counts),
            # the claim takes that queue's lock in a transaction of its own.
            got = self._run(lambda cur: self._claim_limited(cur, candidate, claim),
                            settle=lambda cur: (self._held_by(cur, worker, job.id)
                                                or self._claim_limited(cur, candidate, claim)))
        return held, got

    def record_failure(self, job: Job, outcome: Outcome) -> Job | None:
        conf = self._config()
        dead = policy.retries_spent(job.attempts, job.max_retries)
        params = self._params(job, outcome, policy.FAILED_ATTEMPT)
        params.update(state=DEAD if dead else FAILED, dead=dead,
                      delay=0.0 if dead else conf.backoff_delay(job.attempts),
                      error=outcome.error or "failed")
        # A dead or canceled job brings no work, only news for `wait`.
        sql = self._sql_fail("%(state)s", "%(dead)s", "t.now + %(delay)s",
                             self._event if dead else self._notify)

        def fail(cur: Any) -> Job | None:
            cur.execute(sql, params)
            row = cur.fetchone()
            return None if row is None else Job.from_row(row[:-1])

        def settle(cur: Any) -> Job | None:
            if not self._recorded(cur, params, policy.FAILED_ATTEMPT, policy.CANCELED_ATTEMPT):
                return fail(cur)
            return self._find(cur, job.id)

        return self._run(fail, settle=settle)

    def _sql_fail(self, state: str, dead: str, retry_at: str, notify: str) -> str:
        """End the held attempt %(id)s/%(job_worker)s/%(attempts)s as `state`, or as
        canceled when an operator asked for it (the job's flag decides, read in this very
        statement), with its history row; the job as updated and the time."""
        canceled = "j.cancel_requested"
        return f"""{self._prefix}{notify}WITH {self.sql_t},
            upd AS (
                UPDATE {self.s}.jobs j SET
                    state = CASE WHEN {canceled} THEN 'canceled' ELSE {state} END,
                    run_at = CASE WHEN {canceled} OR {dead} THEN j.run_at ELSE {retry_at} END,
                    finished_at = t.now, updated_at = t.now, exit_code = %(exit_code)s,
                    last_error = CASE WHEN {canceled} THEN %(canceled_error)s
                                      ELSE %(error)s END,
                    lease_expires_at = NULL
                FROM t WHERE j.id = %(id)s AND j.state = 'processing'
                    AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
                RETURNING {_cols('j')}, t.now),
            hist AS (
                INSERT INTO {self.s}.attempts (job_id, attempt, worker, started_at,
                    finished_at, outcome, exit_code, error, output, output_total,
                    cpu_user_usec, cpu_system_usec, memory_peak_bytes)
                SELECT id, %(attempts)s, %(job_worker)s, coalesce(%(started_at)s, now), now,
                    CASE WHEN state = 'canceled' THEN %(canceled_outcome)s
                         ELSE %(outcome)s END,
                    %(exit_code)s, last_error, %(output)s, %(total)s, %(cpu_user)s,
                    %(cpu_system)s, %(memory_peak)s FROM upd),
            {self._drop_live("upd")}
            SELECT * FROM upd"""

    def release(self, job: Job, reason: str) -> bool:
        params = self._params(job, None, policy.INTERRUPTED_ATTEMPT)
        params["error"] = reason
        # Back to pending without spending a retry; canceled instead if an operator asked.
        c = "j.cancel_requested"
        sql = f"""{self._prefix}{self._notify}WITH {self.sql_t},
            upd AS (
                UPDATE {self.s}.jobs j SET
                    state = CASE WHEN {c} THEN 'canceled' ELSE 'pending' END,
                    attempts = CASE WHEN {c} THEN j.attempts ELSE j.attempts - 1 END,
                    worker = CASE WHEN {c} THEN j.worker END,
                    started_at = CASE WHEN {c} THEN j.started_at END,
                    finished_at = CASE WHEN {c} THEN t.now ELSE j.finished_at END,
                    exit_code = CASE WHEN {c} THEN NULL ELSE j.exit_code END,
                    last_error = CASE WHEN {c} THEN %(canceled_error)s ELSE j.last_error END,
                    lease_expires_at = NULL, updated_at = t.now
                FROM t WHERE j.id = %(id)s AND j.state = 'processing'
                    AND j.worker = %(job_worker)s AND j.attempts = %(attempts)s
                RETURNING j.id, j.state, t.now),
            hist AS (
                INSERT INTO {self.s}.attempts (job_id, attempt, worker, started_at,
                    finished_at, outcome, exit_code, error, output)
                SELECT id, %(attempts)s, %(job_worker)s, coalesce(%(started_at)s, now), now,
                    CASE WHEN state = 'canceled' THEN %(canceled_outcome)s
                         ELSE %(outcome)s END,
                    NULL, CASE WHEN state = 'canceled' THEN %(canceled_error)s
                               ELSE %(error)s END, NULL FROM upd),
            {self._drop_live("upd")}
            SELECT count(*) FROM upd"""

        def release_once(cur: Any) -> bool:
            cur.execute(sql, params)
            return cur.fetchone()[0] == 1

        return self._run(release_once, settle=lambda cur: self._recorded(
            cur, params, policy.INTERRUPTED_ATTEMPT, policy.CANCELED_ATTEMPT) or release_once(cur))

    def _reclaim(self, where: str, params: dict[str, Any], why: str) -> list[Job]:
        """Lost attempts become failed (or dead) ones; the queue's rules decide which."""
        conf = self._config()

        def reclaim(cur: Any) -> list[Job]:
            cur.execute(f"BEGIN; {self._prefix}SELECT {', '.join(COLUMNS)}, {NOW} FROM "
                        f"{self.s}.jobs WHERE state = 'processing' AND {where} "
                        "FOR UPDATE SKIP LOCKED", params)
            rows = cur.fetchall()
            if not rows:
                cur.execute("COMMIT")
                return []
            t = rows[0][-1]
            jobs, outcomes = [], []
            for row in rows:
                job = Job.from_row(row[:-1])
                error = policy.lost_error(job.worker, why)
                outcome = policy.LOST_ATTEMPT
                if job.cancel_requested:
                    job.state, error, outcome = CANCELED, policy.CANCELED_ERROR, \
                        policy.CANCELED_ATTEMPT
                elif policy.retries_spent(job.attempts, job.max_retries):
                    job.state = DEAD
                else:
                    job.state, job.run_at = FAILED, t + conf.backoff_delay(job.attempts)
                job.finished_at, job.updated_at, job.exit_code, job.last_error = t, t, None, error
                job.lease_expires_at = None
                jobs.append(job)
                outcomes.append(outcome)
            cur.execute(
                f"""UPDATE {self.s}.jobs j SET state = u.state, run_at = u.run_at,
                    finished_at = %(t)s, updated_at = %(t)s, exit_code = NULL,
                    last_error = u.error, lease_expires_at = NULL
                FROM unnest(%(ids)s::text[], %(states)s::text[], %(run_ats)s::float8[],
                            %(errors)s::text[]) AS u(id, state, run_at, error)
                WHERE j.id = u.id;
                INSERT INTO {self.s}.attempts (job_id, attempt, worker, started_at,
                    finished_at, outcome, error)
                SELECT u.id, u.attempt, u.worker, coalesce(u.started_at, %(t)s), %(t)s,
                    u.outcome, u.error
                FROM unnest(%(ids)s::text[], %(attempts)s::int[], %(workers)s::text[],
                            %(started)s::float8[], %(errors)s::text[], %(outcomes)s::text[])
                     AS u(id, attempt, worker, started_at, error, outcome);
                DELETE FROM {self.s}.live_output WHERE job_id = ANY(%(ids)s::text[]);
                {self._notify}COMMIT""",
                {"t": t, "ids": [j.id for j in jobs], "states": [j.state for j in jobs],
                 "run_ats": [j.run_at for j in jobs], "errors": [j.last_error for j in jobs],
                 "attempts": [j.attempts for j in jobs], "workers": [j.worker for j in jobs],
                 "started": [j.started_at for j in jobs], "outcomes": outcomes})
            return jobs

        return self._run(reclaim)

    def reclaim_expired(self) -> list[Job]:
        # A read first: almost always nothing has expired, and a read locks nothing.
        expired = f"lease_expires_at < {NOW}"
        if not self._fetch(f"SELECT 1 FROM {self.s}.jobs WHERE state = 'processing' AND "
                           f"{expired} LIMIT 1"):
            return []
        return self._reclaim(expired, {}, policy.LEASE_EXPIRED)

    def reclaim_worker(self, worker: str) -> list[Job]:
        return self._reclaim("worker = %(worker)s", {"worker": worker}, policy.WORKER_RESTARTED)

    # -- operators ---------------------------------------------------------------------------
    def _refusal(self, cur: Any, job_id: str,
                 conflict: Callable[[str, str], Conflict]) -> Exception:
        """Why a guarded UPDATE matched nothing: no such job, or the job's state forbids it."""
        cur.execute(f"SELECT state FROM {self.s}.jobs WHERE id = %s", (job_id,))
        found = cur.fetchone()
        return policy.no_such_job(job_id) if found is None else conflict(job_id, found[0])

    def retry_dead(self, job_id: str) -> Job:
        sql = f"""{self._notify}WITH {self.sql_t}
            UPDATE {self.s}.jobs j SET state = 'pending', attempts = 0, run_at = t.now,
                updated_at = t.now, worker = NULL, finished_at = NULL, exit_code = NULL,
                cancel_requested = false
            FROM t WHERE j.id = %(id)s AND j.state = 'dead' RETURNING {_cols('j')}"""

        def retry(cur: Any) -> Job:
            cur.execute(sql, {"id": job_id})
            row = cur.fetchone()
            if row is not None:
                return Job.from_row(row)
            raise self._refusal(cur, job_id, policy.not_dead)

        def settle(cur: Any) -> Job:
            """A retried job counts its attempts from 0 again, below those in its history
            (a job retried and claimed before we look, with one attempt in all, is the one
            case this cannot tell: it is refused as not dead)."""
            job = self._find(cur, job_id)
            if job is not None and job.state != DEAD:
                cur.execute(f"SELECT max(attempt) FROM {self.s}.attempts WHERE job_id = %s",
                            (job_id,))
                tried = cur.fetchone()[0] or 0
                if job.attempts < tried or (job.state == PENDING and job.attempts == 0):
                    return job
            return retry(cur)

        return self._run(retry, settle=settle)

    # -- issue 11: operators living with the queue -------------------------------------------
    def cancel(self, job_id: str) -> Job:
        # Waiting: canceled at once. Running: a request its worker acts on (woken by NOTIFY).
        run = "j.state = 'processing'"
        sql = f"""{self._event}WITH {self.sql_t}
            UPDATE {self.s}.jobs j SET
                state = CASE WHEN {run} THEN j.state ELSE 'canceled' END,
                cancel_requested = {run},
                finished_at = CASE WHEN {run} THEN j.finished_at ELSE t.now END,
                last_error = CASE WHEN {run} THEN j.last_error ELSE %(error)s END,
                lease_expires_at = CASE WHEN {run} THEN j.lease_expires_at END,
                updated_at = t.now
            FROM t WHERE j.id = %(id)s AND j.state IN ('pending', 'failed', 'processing')
            RETURNING {_cols('j')}"""

        def cancel_once(cur: Any) -> Job:
            cur.execute(sql, {"id": job_id, "error": policy.CANCELED_ERROR})
            row = cur.fetchone()
            if row is not None:
                return Job.from_row(row)
            raise self._refusal(cur, job_id, policy.not_cancellable)

        def settle(cur: Any) -> Job:
            """Canceled, or asked to stop: what the lost commit did (or another operator's
            cancel; the job ends the same way)."""
            job = self._find(cur, job_id)
            if job is not None and (job.state == CANCELED
                                    or (job.state == PROCESSING and job.cancel_requested)):
                return job
            return cancel_once(cur)

        return self._run(cancel_once, settle=settle)

    def cancel_state(self, state: str, limit: int, queue: str | None = None) -> int:
        if state not in CANCELLABLE:
            raise ValueError(f"cannot cancel {state} jobs")
        lane = "" if queue is None else " AND queue = %(queue)s"
        # FOR UPDATE (not SKIP LOCKED): a job a worker is claiming right now is waited for
        # and looked at again, so a batch is short only when nothing more is left.
        if state == PROCESSING:
            sql = f"""{self._event}WITH {self.sql_t},
                pick AS (SELECT id FROM {self.s}.jobs WHERE state = 'processing'{lane}
                         AND NOT cancel_requested ORDER BY created_at, seq LIMIT %(n)s
                         FOR UPDATE)
                UPDATE {self.s}.jobs j SET cancel_requested = true, updated_at = t.now
                FROM t, pick WHERE j.id = pick.id"""
        else:
            sql = f"""{self._event}WITH {self.sql_t},
                pick AS (SELECT id FROM {self.s}.jobs WHERE state = %(state)s{lane}
                         ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE)
                UPDATE {self.s}.jobs j SET state = 'canceled', finished_at = t.now,
                    updated_at = t.now, last_error = %(error)s, lease_expires_at = NULL
                FROM t, pick WHERE j.id = pick.id AND j.state = %(state)s"""

        def cancel_many(cur: Any) -> int:
            cur.execute(sql, {"state": state, "n": limit, "error": policy.CANCELED_ERROR,
                              "queue": queue})
            return cur.rowcount

        return self._run(cancel_many)

    def cancel_requested(self, job: Job) -> bool:
        rows = self._fetch(
            f"SELECT cancel_requested FROM {self.s}.jobs WHERE id = %s AND state = 'processing'"
            " AND worker = %s AND attempts = %s", (job.id, job.worker, job.attempts))
        return bool(rows and rows[0][0])

    def pause(self, by: str, queue: str | None = None) -> bool:
        if queue is None:
            sql = (f"INSERT INTO {self.s}.flags (name, set_by, since)"
                   f" VALUES ('paused', %(by)s, {NOW}) ON CONFLICT (name) DO NOTHING")
        else:  # the queue's own flag, beside its limit; already paused: nothing changes
            sql = (f"INSERT INTO {self.s}.queues AS q (name, paused_by, paused_since)"
                   f" VALUES (%(queue)s, %(by)s, {NOW}) ON CONFLICT (name) DO UPDATE"
                   " SET paused_by = excluded.paused_by, paused_since = excluded.paused_since"
                   " WHERE q.paused_since IS NULL")

        def pause_once(cur: Any) -> bool:
            cur.execute(sql, {"by": by, "queue": queue})
            return cur.rowcount == 1

        return self._run(pause_once)

    def resume(self, queue: str | None = None) -> bool:
        if queue is None:
            sql = (f"{self._notify}WITH gone AS (DELETE FROM {self.s}.flags"
                   " WHERE name = 'paused' RETURNING 1) SELECT count(*) FROM gone")
        else:  # a row without a limit left has nothing more to say: it goes
            sql = f"""{self._notify}WITH
                gone AS (DELETE FROM {self.s}.queues WHERE name = %(queue)s
                         AND paused_since IS NOT NULL AND concurrency = 0 RETURNING 1),
                kept AS (UPDATE {self.s}.queues SET paused_by = NULL, paused_since = NULL
                         WHERE name = %(queue)s AND paused_since IS NOT NULL
                             AND concurrency <> 0 RETURNING 1)
                SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM kept)"""

        def resume_once(cur: Any) -> bool:
            cur.execute(sql, {"queue": queue})
            return cur.fetchone()[0] == 1

        return self._run(resume_once)

    def paused(self, queue: str | None = None) -> PauseInfo | None:
        if queue is None:
            rows = self._fetch(f"SELECT set_by, since FROM {self.s}.flags WHERE name = 'paused'")
        else:
            rows = self._fetch(f"SELECT paused_by, paused_since FROM {self.s}.queues"
                               " WHERE name = %s AND paused_since IS NOT NULL", (queue,))
        return PauseInfo(*rows[0]) if rows else None

    def set_queue_concurrency(self, queue: str, limit: int) -> None:
        # 0 with no pause: the row goes (a queue needs no row to exist). Waiting workers
        # are woken: a raised or removed limit may have freed work.
        sql = f"""{self._notify}WITH
            gone AS (DELETE FROM {self.s}.queues WHERE name = %(queue)s AND %(limit)s = 0
                     AND paused_since IS NULL)
            INSERT INTO {self.s}.queues AS q (name, concurrency)
            SELECT %(queue)s, %(limit)s WHERE %(limit)s <> 0
                OR EXISTS (SELECT 1 FROM {self.s}.queues WHERE name = %(queue)s
                           AND paused_since IS NOT NULL)
            ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency"""
        self._run(lambda cur: cur.execute(sql, {"queue": queue, "limit": int(limit)}),
                  idempotent=True)

    def queues(self) -> list[QueueInfo]:
        return self._run(self._queues, idempotent=True)

    def _queues(self, cur: Any) -> list[QueueInfo]:
        # One statement, so one snapshot: counts, settings, waits and lanes together.
        cur.execute(f"""WITH {self.sql_t}
            SELECT 'c', queue, state, count(*)::float8, NULL::float8, NULL::text[]
                FROM {self.s}.jobs GROUP BY queue, state
            UNION ALL
            SELECT 's', name, paused_by, concurrency, paused_since, NULL FROM {self.s}.queues
            UNION ALL
            SELECT 'o', queue, NULL, NULL, max(t.now - run_at), NULL FROM {self.s}.jobs, t
                WHERE state IN ('pending', 'failed') AND run_at <= t.now GROUP BY queue
            UNION ALL
            SELECT 'w', NULL, NULL, NULL, NULL, queues FROM {self.s}.workers, t
                WHERE heartbeat_at >= t.now - %(window)s""", {"window": policy.ACTIVE_WINDOW})
        rows = cur.fetchall()
        found: dict[str, QueueInfo] = {}

        def entry(name: str) -> QueueInfo:
            if name not in found:
                found[name] = QueueInfo(name, dict.fromkeys(STATES, 0), None, 0, 0, None)
            return found[name]

        serving = []
        for kind, name, text, number, seconds, lanes in rows:
            if kind == "c":
                entry(name).counts[text] = int(number)
            elif kind == "s":
                info = entry(name)
                info.concurrency = int(number)
                info.paused = None if seconds is None else PauseInfo(text, seconds)
            elif kind == "o":
                entry(name).oldest_waiting = max(0.0, seconds)
            else:
                serving.append(lanes)
                for lane in lanes or ():
                    entry(lane)
        for info in found.values():
            info.workers = sum(lanes is None or info.name in lanes for lanes in serving)
        return [found[name] for name in sorted(found)]

    def metrics(self) -> Metrics:
        def read(cur: Any) -> Metrics:
            # One snapshot for the several statements (inside reading(), that one's);
            # read-only, so it never blocks writers.
            own = not self._pinned
            if own:
                cur.execute(READ_SNAPSHOT)
            queues = self._queues(cur)
            cur.execute(f"SELECT host, count(*) FROM {self.s}.workers"
                        f" WHERE heartbeat_at >= {NOW} - %(window)s GROUP BY host",
                        {"window": policy.ACTIVE_WINDOW})
            workers = dict(cur.fetchall())
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {self.s}.flags WHERE name = 'paused')")
            paused = cur.fetchone()[0]
            cur.execute(f"SELECT queue, event, le, sum(n)::bigint, sum(seconds)"
                        f" FROM {self.s}.counters GROUP BY queue, event, le"
                        " ORDER BY queue, event, le")
            counters = cur.fetchall()
            if own:
                cur.execute("COMMIT")
            return Metrics(queues, paused, workers, counters)

        return self._run(read, idempotent=True)

    def _finished(self, older_than: float | None) -> tuple[str, dict[str, Any]]:
        """The condition "finished at least older_than seconds ago" (server clock); the
        bound on created_at (never after finished_at) lets the index range stop early."""
        if older_than is None:
            return "", {}
        # A scalar subquery is evaluated once (an InitPlan), so the cutoff bounds the index
        # range; clock_timestamp() written in the condition would be a per-row filter.
        cutoff = f"(SELECT {NOW} - %(older)s)"
        return (f" AND created_at <= {cutoff} AND finished_at <= {cutoff}",
                {"older": float(older_than)})

    def count_matching(self, state: str, older_than: float | None = None,
                       queue: str | None = None) -> int:
        where, params = self._finished(older_than)
        if queue is not None:
            where += " AND queue = %(queue)s"
        return self._fetch(f"SELECT count(*) FROM {self.s}.jobs WHERE state = %(state)s"
                           f"{where}", {"state": state, "queue": queue, **params})[0][0]

    def purge(self, state: str, older_than: float | None, limit: int,
              queue: str | None = None) -> int:
        if state not in TERMINAL:
            raise ValueError(f"cannot purge {state} jobs")
        where, params = self._finished(older_than)
        if queue is not None:
            where += " AND queue = %(queue)s"
        # SKIP LOCKED: a job someone is retrying right now is left for the next batch.
        sql = f"""WITH pick AS (
                SELECT id FROM {self.s}.jobs WHERE state = %(state)s{where}
                ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED),
            hist AS (DELETE FROM {self.s}.attempts WHERE job_id IN (SELECT id FROM pick)),
            live AS (DELETE FROM {self.s}.live_output WHERE job_id IN (SELECT id FROM pick)),
            gone AS (DELETE FROM {self.s}.jobs WHERE id IN (SELECT id FROM pick) RETURNING 1)
            SELECT count(*) FROM gone"""

        def purge_once(cur: Any) -> int:
            cur.execute(sql, {"state": state, "n": limit, "queue": queue, **params})
            return cur.fetchone()[0]

        return self._run(purge_once)

    def retry_dead_many(self, older_than: float | None, limit: int) -> int:
        where, params = self._finished(older_than)
        sql = f"""{self._notify}WITH {self.sql_t},
            pick AS (SELECT id FROM {self.s}.jobs WHERE state = 'dead'{where}
                     ORDER BY created_at, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED)
            UPDATE {self.s}.jobs j SET state = 'pending', attempts = 0, run_at = t.now,
                updated_at = t.now, worker = NULL, finished_at = NULL, exit_code = NULL,
                cancel_requested = false
            FROM t, pick WHERE j.id = pick.id"""

        def retry_many(cur: Any) -> int:
            cur.execute(sql, {"n": limit, **params})
            return cur.rowcount

        return self._run(retry_many)

    def take_duty(self, name: str, holder: str, seconds: float) -> bool:
        sql = f"""INSERT INTO {self.s}.duties AS d (name, holder, expires_at)
            VALUES (%(name)s, %(holder)s, {NOW} + %(for)s)
            ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                expires_at = excluded.expires_at
            WHERE d.holder = excluded.holder OR d.expires_at < {NOW}"""

        def take(cur: Any) -> bool:
            cur.execute(sql, {"name": name, "holder": holder, "for": float(seconds)})
            return cur.rowcount == 1

        # Repeating it after a lost commit is harmless: the holder renews its own duty.
        return self._run(take, idempotent=True)

    def append_output(self, job: Job, offset: int, data: bytes) -> bool:
        # FOR SHARE on the job: an attempt that is ending (a reclaim) is waited for and
        # looked at again, so no chunk outlives its attempt.
        sql = f"""{self._event}WITH held AS (
                SELECT id FROM {self.s}.jobs WHERE id = %(id)s AND state = 'processing'
                    AND worker = %(worker)s AND attempts = %(attempt)s FOR SHARE),
            chunk AS (
                INSERT INTO {self.s}.live_output (job_id, attempt, start, data)
                SELECT id, %(attempt)s, %(start)s, %(data)s FROM held
                ON CONFLICT (job_id, attempt, start) DO UPDATE SET data = excluded.data),
            old AS (
                DELETE FROM {self.s}.live_output WHERE job_id = %(id)s
                    AND attempt = %(attempt)s AND start + length(data) <= %(cut)s
                    AND EXISTS (SELECT 1 FROM held))
            SELECT count(*) FROM held"""
        params = {"id": job.id, "worker": job.worker, "attempt": job.attempts,
                  "start": offset, "data": psycopg2.Binary(data),
                  "cut": offset + len(data) - policy.OUTPUT_LIMIT}

        def append(cur: Any) -> bool:
            cur.execute(sql, params)
            return cur.fetchone()[0] == 1

        # Idempotent: the same bytes at the same offset replace themselves.
        return self._run(append, idempotent=True)

    def read_output(self, job_id: str, attempt: int | None, offset: int) -> OutputSlice | None:
        # One statement, so one snapshot: the job's state with its live chunks or the
        # history row, never the chunks of an attempt that ended in between.
        live = "j.state = 'processing' AND (%(attempt)s::int IS NULL OR %(attempt)s = j.attempts)"
        sql = f"""WITH j AS (SELECT state, attempts FROM {self.s}.jobs WHERE id = %(id)s)
            SELECT 'j', j.attempts, NULL::bigint, NULL::bytea, NULL::bigint,
                ({live}) FROM j
            UNION ALL
            SELECT 'l', l.attempt, l.start, l.data, NULL, NULL FROM j, {self.s}.live_output l
            WHERE {live} AND l.job_id = %(id)s AND l.attempt = j.attempts
                AND l.start + length(l.data) > %(offset)s
            UNION ALL
            (SELECT 'h', a.attempt, NULL, a.output, a.output_total, NULL
             FROM j, {self.s}.attempts a WHERE NOT ({live}) AND a.job_id = %(id)s
                AND (%(attempt)s::int IS NULL OR a.attempt = %(attempt)s)
             ORDER BY a.seq DESC LIMIT 1)"""
        rows = self._fetch(sql, {"id": job_id, "attempt": attempt, "offset": offset})
        head = [r for r in rows if r[0] == "j"]
        if not head:
            raise policy.no_such_job(job_id)
        if head[0][5]:  # the running attempt: its live chunks, contiguous from offset
            start, data = offset, bytearray()
            for _, _, chunk_start, chunk, _, _ in sorted(
                    (r for r in rows if r[0] == "l"), key=lambda r: r[2]):
                chunk = bytes(chunk)
                if not data:
                    start = max(offset, chunk_start)
                elif chunk_start > start + len(data):
                    break  # a gap: the next call reports it
                data += chunk[start + len(data) - chunk_start:]
            return OutputSlice(head[0][1], start, bytes(data), True)
        found = [r for r in rows if r[0] == "h"]
        if not found:
            return None
        _, number, _, tail, total, _ = found[0]
        tail = b"" if tail is None else bytes(tail)
        total = len(tail) if total is None else total
        begins = total - len(tail)
        start = max(offset, begins)
        return OutputSlice(number, start, tail[start - begins:], False)

    def backup(self, path: str) -> None:
        raise Unsupported(
            "backup copies SQLite queues only: back up a PostgreSQL queue with pg_dump "
            f"(e.g. pg_dump --schema={self.target.schema} DBNAME > FILE)")

    def get(self, job_id: str, history: bool = False) -> Job:
        job = self._run(lambda cur: self._find(cur, job_id), idempotent=True)
        if job is None:
            raise policy.no_such_job(job_id)
        if history:
            job.history = [
                {"attempt": attempt, "worker": worker, "started_at": started,
                 "finished_at": finished, "outcome": result, "exit_code": code,
                 "error": error, "output": None if output is None else bytes(output),
                 **dict(zip(USAGE, used, strict=True))}
                for attempt, worker, started, finished, result, code, error, output, *used
                in self._fetch(
                    "SELECT attempt, worker, started_at, finished_at, outcome, exit_code,"
                    " error, output, cpu_user_usec, cpu_system_usec, memory_peak_bytes"
                    f" FROM {self.s}.attempts WHERE job_id = %s ORDER BY seq",
                    (job_id,))
            ]
        return job

    def iter_jobs(self, state: str | None = None, limit: int | None = None,
                  queue: str | None = None) -> Iterator[Job]:
        # Pages by (created_at, seq), which never change: memory stays flat, no transaction
        # stays open between pages (a pooler may hand the connection on), each job once.
        page = 500
        where = "state = %(state)s AND " if state else ""
        if queue is not None:
            where = "queue = %(queue)s AND " + where
        sql = (f"SELECT {', '.join(COLUMNS)}, seq FROM {self.s}.jobs WHERE {where}"
               "(created_at, seq) > (%(at)s, %(seq)s) ORDER BY created_at, seq LIMIT %(n)s")
        at, seq, left = float("-inf"), -1, limit
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            rows = self._fetch(sql, {"state": state, "queue": queue, "at": at, "seq": seq,
                                     "n": n})
            for row in rows:
                yield Job.from_row(row[:-1])
            if len(rows) < n:
                return
            at, seq = rows[-1][5], rows[-1][-1]
            if left is not None:
                left -= len(rows)

    def counts(self, queue: str | None = None) -> dict[str, int]:
        result = dict.fromkeys(STATES, 0)
        # With a queue: its jobs, and the active workers that serve it (by name or all).
        jobs, workers = ("", "") if queue is None else (
            "WHERE queue = %(queue)s", "AND (queues IS NULL OR %(queue)s = ANY(queues))")
        rows = self._fetch(
            f"SELECT state, count(*) FROM {self.s}.jobs {jobs} GROUP BY state UNION ALL "
            f"SELECT 'active_workers', count(*) FROM {self.s}.workers "
            f"WHERE heartbeat_at >= {NOW} - %(window)s {workers}",
            {"queue": queue, "window": policy.ACTIVE_WINDOW})
        for key, n in rows:
            result[key] = n
        return {k: result[k] for k in (*STATES, "active_workers")}

    # -- issue 13: reads for `queuectl top` (plain SELECTs: no row or advisory locks) ---------
    def reading(self) -> _Reading:
        return _Reading(self)

    def now(self) -> float:
        return self._fetch(f"SELECT {NOW}")[0][0]

    def recent_jobs(self, state: str, limit: int, queue: str | None = None) -> list[Job]:
        where = "state = %(state)s" + ("" if queue is None else " AND queue = %(queue)s")
        rows = self._fetch(f"SELECT {', '.join(COLUMNS)} FROM {self.s}.jobs WHERE {where}"
                           " ORDER BY updated_at DESC, seq DESC LIMIT %(n)s",
                           {"state": state, "queue": queue, "n": limit})
        return [Job.from_row(row) for row in rows]

    def completed_since(self, seconds: float) -> dict[str, int]:
        rows = self._fetch(f"SELECT queue, count(*) FROM {self.s}.jobs WHERE state = 'completed'"
                           f" AND finished_at >= {NOW} - %(s)s GROUP BY queue", {"s": seconds})
        return dict(rows)

    def remaining(self, queues: list[str] | None = None) -> int:
        lane = "" if queues is None else " AND queue = ANY(%(queues)s::text[])"
        return self._fetch(f"SELECT count(*) FROM {self.s}.jobs"
                           f" WHERE state IN ('pending', 'failed', 'processing'){lane}",
                           {"queues": queues})[0][0]

    def seconds_until_due(self, queues: list[str] | None = None) -> float | None:
        lane = "" if queues is None else " AND queue = ANY(%(queues)s::text[])"
        due = self._fetch(f"SELECT (SELECT min(run_at) FROM {self.s}.jobs WHERE state IN"
                          f" ('pending', 'failed'){lane}) - {NOW}", {"queues": queues})[0][0]
        return None if due is None else max(0.0, due)

    def wakeup(self) -> Wakeup:
        return ListenWakeup(self.target, self.channel)

    # -- configuration -----------------------------------------------------------------------
    def config_items(self) -> dict[str, float | int]:
        return cfg.merge(dict(self._fetch(f"SELECT key, value FROM {self.s}.config")))

    def set_config(self, key: str, value: float | int) -> None:
        self._settings.forget()
        self._run(lambda cur: cur.execute(
            f"INSERT INTO {self.s}.config (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, str(value))),
            idempotent=True)

    # -- workers -----------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        sql = f"""WITH {self.sql_t}
            INSERT INTO {self.s}.workers (name, host, pid, pid_start, started_at,
                heartbeat_at, state, job_id, queues)
            SELECT %s, %s, %s, %s, t.now, t.now, %s, %s, %s::text[] FROM t
            ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                pid_start = excluded.pid_start, started_at = excluded.started_at,
                heartbeat_at = excluded.heartbeat_at, state = excluded.state,
                job_id = excluded.job_id, queues = excluded.queues
            RETURNING started_at"""

        def register(cur: Any) -> float:
            cur.execute(sql, (info.name, info.host, info.pid, info.pid_start, info.state,
                              info.job_id, None if info.queues is None else list(info.queues)))
            return cur.fetchone()[0]

        info.started_at = info.heartbeat_at = self._run(register, idempotent=True)

    def unregister_worker(self, name: str) -> None:
        self._run(lambda cur: cur.execute(f"DELETE FROM {self.s}.workers WHERE name = %s",
                                          (name,)), idempotent=True)

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(*r) for r in self._fetch(
            "SELECT name, host, pid, pid_start, started_at, heartbeat_at, state, job_id,"
            f" queues FROM {self.s}.workers ORDER BY name")]

    def seconds_since_heartbeat(self, name: str) -> float | None:
        rows = self._fetch(f"SELECT {NOW} - heartbeat_at FROM {self.s}.workers WHERE name = %s",
                           (name,))
        return rows[0][0] if rows else None

    def verify(self) -> None:
        """Every table reachable with the rights the verbs need: a worker without them
        fails before READY, with one line, rather than on its first job."""
        needs = {"jobs": "SELECT,INSERT,UPDATE,DELETE", "attempts": "SELECT,INSERT,DELETE",
                 "workers": "SELECT,INSERT,UPDATE,DELETE", "config": "SELECT,INSERT,UPDATE",
                 "schema_version": "SELECT", "flags": "SELECT,INSERT,DELETE",
                 "duties": "SELECT,INSERT,UPDATE",
                 "live_output": "SELECT,INSERT,UPDATE,DELETE",
                 "queues": "SELECT,INSERT,UPDATE,DELETE"}
        # One check per right: has_table_privilege('a,b') is true if *any* is held.
        checks = " UNION ALL ".join(
            f"SELECT '{table}', has_table_privilege('{self.s}.{table}', '{right}')"
            for table, rights in needs.items() for right in rights.split(","))
        rows = self._fetch(f"SELECT '', has_schema_privilege(%s, 'USAGE') UNION ALL {checks}",
                           (self.target.schema,))
        if not rows[0][1]:
            raise DatabaseUnavailable(
                f"PostgreSQL {self.target.display}: permission denied for schema "
                f"{self.target.schema} (the role needs USAGE on it; see the README)")
        missing = sorted({name for name, ok in rows[1:] if not ok})
        if missing:
            raise DatabaseUnavailable(
                f"PostgreSQL {self.target.display}: the role lacks privileges on "
                f"{', '.join(f'{self.target.schema}.{m}' for m in missing)} (see the README, "
                "'PostgreSQL (many hosts)')")
        for table in needs:
            self._fetch(f"SELECT 1 FROM {self.s}.{table} LIMIT 1")

    def info(self) -> dict[str, Any]:
        version, server, database, user = self._fetch(
            f"SELECT (SELECT max(version) FROM {self.s}.schema_version),"
            " current_setting('server_version'), current_database(), current_user")[0]
        return {
            "database": self.target.display,
            "backend": "postgresql",
            "schema_version": version,
            "config": self.config_items(),
            "postgresql": {
                "server_version": server,
                "schema": self.target.schema,
                "database": database,
                "user": user,
                "driver": f"psycopg2 {psycopg2.__version__.split()[0]}",
                "wakeup": f"LISTEN {self.channel}, polling every "
                          f"{ListenWakeup.poll_interval:g} s as a safety net",
            },
        }

    def close(self) -> None:
        self._drop()


# -- waking idle workers -------------------------------------------------------------------
class ListenWakeup(Wakeup):
    """LISTEN on a connection of its own. Callers select on one descriptor that never
    changes: a duplicate of the connection's socket while it works, else the read end of a
    pipe nobody writes (so a broken connection can never spin the caller); it reconnects at
    most every RETRY_EVERY seconds, and the poll covers the gap. Behind a
    transaction-pooling pooler no notification arrives and the poll does all the work."""

    poll_interval = 1.0
    RETRY_EVERY = 5.0

    def __init__(self, target: Target, channel: str) -> None:
        self._target = target
        self._channel = channel
        self._quiet, self._quiet_w = os.pipe()
        self._fd = os.dup(self._quiet)
        self._conn: Any = None
        self._next_try = 0.0
        self._reconnect()

    def _reconnect(self) -> bool:
        self._next_try = time.monotonic() + self.RETRY_EVERY
        conn = None
        try:
            conn = self._target.connect()
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {self._channel}")
            os.dup2(conn.fileno(), self._fd)
        except Exception:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            return False
        self._conn = conn
        return True

    def _broken(self) -> None:
        os.dup2(self._quiet, self._fd)
        conn, self._conn = self._conn, None
        try:
            conn.close()
        except Exception:
            pass

    def fileno(self) -> int | None:
        if self._conn is None and time.monotonic() >= self._next_try:
            self._reconnect()  # a missed notification only delays a job: the poll finds it
        return self._fd

    def drain(self) -> bool:
        try:
            if self._conn is None:
                # Back after a gap: anything may have happened meanwhile.
                return time.monotonic() >= self._next_try and self._reconnect()
            self._conn.poll()
            # Events (an attempt ended, output appended) wake watchers, not idle workers.
            got = any(n.payload != EVENT for n in self._conn.notifies)
            del self._conn.notifies[:]
            return got
        except Exception:
            try:
                self._broken()
            except Exception:
                pass
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        for fd in (self._fd, self._quiet, self._quiet_w):
            try:
                os.close(fd)
            except OSError:
                pass


def open_store(locator: str, for_worker: bool = False) -> Store:
    """Open (creating and migrating if needed) the queue the postgresql:// locator names."""
    if psycopg2 is None:
        raise DatabaseUnavailable(DRIVER_MISSING)
    return PostgresStore(Target(locator), for_worker)
