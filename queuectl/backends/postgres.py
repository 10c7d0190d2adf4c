"""The PostgreSQL store: one queue shared by workers on many hosts.

Driver: psycopg2, imported only by these postgres* modules (so SQLite's `enqueue` never pays
for it): about 26 ms to import against psycopg 3's 115 ms, and cron pays that on every
`enqueue`. The store is three modules: `postgres_connection` (the locator, the connection
and its faults), `postgres_sql` (every statement it runs, by name, one block per verb) and
this one (the verbs, in the contract's order), with the schema's migrations in
`postgres_schema`.

How it keeps the contract:
- One clock: every time comes from the server (`clock_timestamp()` as epoch seconds), never
  from the host, so hosts whose clocks differ agree on leases, delays and liveness.
- One round trip per verb where possible: the connection is in autocommit mode and a verb is
  one statement (data-modifying CTEs), or several statements sent as one simple query, which
  PostgreSQL runs as one implicit transaction. No session state (no SET, no prepared
  statements, advisory locks only per transaction), so a transaction-pooling pooler works.
- Claims take `FOR UPDATE SKIP LOCKED` on a partial index of waiting jobs.
- Unique keys: a unique index over live jobs with a key (schema 6) is the guarantee on every
  host and every path. `submit` inserts with ON CONFLICT on it (the server decides, waiting
  for a holder not yet committed) and reads the holders of skipped specs in the same
  transaction; reviving a dead job checks for a holder and meets the index when it loses
  a race. Specs without a key keep their one-statement insert.
- Dependencies (schema 7): `deps` rows record each child's parents and whether each is
  satisfied; blocked jobs (waiting_on > 0) are outside the claim's partial indexes. A
  trigger on a job's end satisfies (and wakes) or cancels its waiting dependents in the
  transaction that ends it, whatever verb or statement does; `submit` locks the parents
  FOR SHARE while it reads them, so a completion committing at the same time either came
  first (and is read) or waits for the new rows (and its trigger sees them). Specs
  without parents keep their one-statement insert.
- Counts (schema 12): job_counts holds a row per (shard, queue, state), `blocked` (pending
  and waiting for a parent) a key of its own. The worker's functions count what their
  statements change in those statements and run them with `queuectl.bookkept` on; one
  statement-level trigger per event (jobs_written, WHEN that setting is off) counts every
  other writer's changes and ends a job for its dependents (satisfied, or canceled down the
  chain) and for the on-dead hook (a notice), off the statement's transition tables.
- Enqueue, a scheduled retry, a released job and `dlq retry` send NOTIFY in their own
  transaction; idle workers LISTEN on their own connection, and poll as a safety net.
  Through a pooler (PgBouncer in transaction mode) a LISTEN is never heard: workers see
  that at connect (the server's process id is not the one the pooler announced) and poll,
  unless the locator's `listen=` names the server itself (or says `off`: poll).
- Faults (`postgres_connection`): a connection found dead (server restart) is replaced on
  the next call; "too many clients" and "starting up" are retried with jitter within the
  wait budget, then DatabaseBusy; everything else is one DatabaseUnavailable line without
  the password. A verb whose commit may have been lost with the connection settles it: it
  asks the database what happened before it repeats anything.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter

from queuectl import policy
from queuectl import settings as cfg
from queuectl.backends import BUSY_TIMEOUT
from queuectl.backends.postgres_connection import (
    CONNECT_BUDGET,
    LISTEN_OFF,
    Connected,
    OutcomeUnknown,
    Reading,
    Target,
)
from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from queuectl.backends.postgres_sql import EVENT, Statements, prepared, statements
from queuectl.errors import (
    Conflict,
    DatabaseBusy,
    DatabaseUnavailable,
    NotFound,
    Unsupported,
)
from queuectl.job import (
    CANCELED,
    CANCELLABLE,
    COMPLETED,
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
from queuectl.procinfo import hostname
from queuectl.store import (
    USAGE,
    Beat,
    Metrics,
    Notice,
    Outcome,
    OutputSlice,
    Parent,
    PauseInfo,
    PollOnly,
    QueueInfo,
    Store,
    Submitted,
    Wakeup,
    WorkerInfo,
    serves,
    usage_of,
)

try:
    import psycopg2
    import psycopg2.errors
except ImportError:  # reported by open_store, with the package to install
    psycopg2 = None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

DRIVER_MISSING = (
    "a postgresql:// database needs the psycopg2 driver: install it with "
    "'apt install python3-psycopg2' (Debian) or \"pip install 'queuectl[postgres]'\"")


def _older(older_than: float | None) -> dict[str, Any]:
    """The parameter of the statements' `_older` variants (finished at least
    %(older)s seconds ago); none for the others."""
    return {} if older_than is None else {"older": float(older_than)}


# Rows per statement of a large submit.
_CHUNK = 5000
# How many times a keyed submit inserts a spec again whose key's holder ended between
# skipping it and looking it up (each time a new holder came and went): practically once.
_KEY_ROUNDS = 8


def _answers(ids: list[str], stored: set[str]) -> list[Submitted]:
    """Submitted per spec: of specs with one id, only the first can have been stored."""
    seen: set[str] = set()
    answers = []
    for job_id in ids:
        answers.append(Submitted(job_id, job_id in stored and job_id not in seen))
        seen.add(job_id)
    return answers


def _maybe_stored(exc: OutcomeUnknown, ids: list[str]) -> OutcomeUnknown:
    """An enqueue whose commit may or may not have happened: the error names the ids
    (chosen before the insert, generated ones too), so the caller can look."""
    which = f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]} ... {ids[-1]} ({len(ids)})"
    return OutcomeUnknown(f"{exc}; {which} may or may not be stored: check with "
                          f"queuectl show {ids[0]}")


@functools.cache
def _layout(names: tuple[str, ...]) -> tuple[int, list[int]]:
    """Where a worker's function's answer puts things: its own leading values (o_NAME),
    then the job's columns in the table's order, picked out in Job.from_row's."""
    lead = sum(1 for name in names if name.startswith("o_"))
    return lead, [names.index(column) for column in ROW_COLUMNS]


def _called(cur: Any) -> tuple[tuple[Any, ...], Job | None]:
    """The answer of a call of claim (claim_or_due's too) or complete_and_claim: the
    leading values, and the job it claimed (None: none)."""
    row = cur.fetchone()
    lead, order = _layout(tuple(column[0] for column in cur.description))
    values = [row[i] for i in order]
    return tuple(row[:lead]), None if values[0] is None else Job.from_row(values)


def _key_held(job_id: str, key: str, holder: str, state: str) -> Conflict:
    return Conflict(f"job {job_id!r} has unique key {key!r}, held by live job {holder!r}"
                    f" ({state}): it cannot run again until that one ends")


def migrate_lock_key(schema: str) -> int:
    """The transaction-level advisory lock migrating `schema` takes (the same on every
    host: a hash of the name, not Python's per-process one)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"queuectl:{schema}".encode(), digest_size=8)
                          .digest(), "big", signed=True)


# -- the store -----------------------------------------------------------------------------
class PostgresStore(Connected, Store):
    def __init__(self, target: Target, for_worker: bool = False) -> None:
        self.for_worker = for_worker
        # Every statement it runs, for its schema (and, for a worker, with its commits
        # not waiting for the WAL flush): built once per process, see postgres_sql.
        self.sql: Statements = statements(target.schema, for_worker)
        self.channel = f"{target.schema}_jobs"
        self._settings = cfg.SettingsCache()
        # The connection the worker's calls were last sent on, and the calls prepared on it
        # (None: sent as text there). See _call.
        self._prepared_on: Any = None
        self._prepared: set[str] | None = None
        super().__init__(target, BUSY_TIMEOUT if for_worker else CONNECT_BUDGET)
        try:
            if for_worker and self._fetch(Statements.synchronous_standbys)[0][0]:
                # The server waits for a standby before it answers a commit: so do the
                # worker's, or a failover to that standby could undo a claim or a result
                # the worker acted on, and the job would run twice.
                self.sql = statements(target.schema, False)
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- opening: the schema -----------------------------------------------------------------
    def _opening_read(self, cur: Any) -> int | None:
        """The schema version and the settings in one round trip (every `enqueue` pays
        for this); None when there is no queue in this schema yet."""
        try:
            cur.execute(self.sql.opening_read)
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

            def migrate(cur: Any, seen: int | None = version) -> bool:
                return self._migrate_locked(cur, seen)

            if self._run(migrate):
                return
        raise DatabaseUnavailable(
            f"PostgreSQL {self.target.display}: the queue schema {self.target.schema} "
            "keeps changing under us; try again")

    def _migrate_locked(self, cur: Any, seen: int | None) -> bool:
        """Create or upgrade the schema under the advisory lock; False when another process
        created it while we waited (read it again in a new transaction: this one's
        catalog caches may still say it is missing)."""
        schema, sql = self.target.schema, self.sql
        cur.execute(sql.migrate_lock, (migrate_lock_key(schema),))
        cur.execute(sql.migrate_exists, (schema,))
        exists = cur.fetchone()[0]
        if seen is None and exists:
            cur.execute(sql.commit)
            return False
        if exists:
            cur.execute(sql.migrate_version)
            current = cur.fetchone()[0] or 0
            self._check_not_newer(current)
        else:
            cur.execute(sql.migrate_foreign_tables, (schema,))
            if cur.fetchone()[0]:
                raise DatabaseUnavailable(
                    f"PostgreSQL {self.target.display}: schema {schema} holds tables of "
                    "another application; refusing to touch it (pick another with "
                    "?schema=NAME)")
            cur.execute(sql.migrate_schema_present, (schema,))
            if cur.fetchone() is None:  # a least-privilege role may use one made for it
                cur.execute(sql.migrate_create_schema)
            cur.execute(VERSION_TABLE.format(s=f'"{schema}"'))
            cur.execute(sql.migrate_first_version)
            current = 0
        for v in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[v]:
                cur.execute(statement.format(s=f'"{schema}"', channel=self.channel))
        cur.execute(sql.migrate_set_version, (SCHEMA_VERSION,))
        cur.execute(sql.commit)
        return True

    def _check_not_newer(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"PostgreSQL {self.target.display}: queue schema {self.target.schema} has "
                f"version {version}, newer than this queuectl understands ({SCHEMA_VERSION}): "
                "upgrade queuectl")

    # -- what several verbs share ------------------------------------------------------------
    def _config(self) -> cfg.QueueConfig:
        return self._settings.get(lambda: dict(self._fetch(self.sql.config_items)))

    def _find(self, cur: Any, job_id: str) -> Job | None:
        cur.execute(self.sql.get, (job_id,))
        row = cur.fetchone()
        return None if row is None else Job.from_row(row)

    def _params(self, job: Job, outcome: Outcome | None, result: str) -> dict[str, Any]:
        """The parameters of a statement that ends the held attempt of `job`."""
        output = policy.output_tail(outcome.output) if outcome else None
        total = None
        if outcome is not None:
            total = outcome.total if outcome.total is not None else len(outcome.output)
        return {
            "id": job.id, "job_worker": job.worker, "attempts": job.attempts,
            "number": job.attempt_number,  # the history's number of the attempt
            "started_at": job.started_at, "exit_code": outcome.exit_code if outcome else None,
            "outcome": result, "output": None if output is None else psycopg2.Binary(output),
            "total": total, "live": outcome is None or outcome.live,
            "canceled_error": policy.CANCELED_ERROR, "canceled_outcome": policy.CANCELED_ATTEMPT,
            **dict(zip(("cpu_user", "cpu_system", "memory_peak"), usage_of(outcome), strict=True)),
        }

    # -- submitting --------------------------------------------------------------------------
    def submit(self, specs: list[JobSpec], if_absent: bool = False) -> list[Submitted]:
        conf = self._config()
        default_retries = conf.max_retries
        ids = [spec.id or policy.new_job_id() for spec in specs]
        rows: dict[str, list[Any]] = {
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
            "cwds": [spec.cwd for spec in specs],
            "envs": [spec.env_json() for spec in specs],
        }
        if any(spec.unique is not None or spec.after for spec in specs):
            # Keys and parents need an explicit transaction (their answers and checks
            # are statements of their own); specs with neither never pay for it.
            rows["uniques"] = [spec.unique for spec in specs]
            rows["waiting"] = [len(spec.after or ()) for spec in specs]
            try:
                return self._submit_keyed(specs, ids, rows, if_absent)
            except OutcomeUnknown as exc:
                raise _maybe_stored(exc, ids) from None
        sql = self.sql
        whole, chunk_rows = ((sql.enqueue_if_absent, sql.enqueue_rows_if_absent) if if_absent
                             else (sql.enqueue, sql.enqueue_rows))

        def add(cur: Any) -> set[str]:
            """The ids stored (with --if-absent; else all or a unique violation)."""
            if len(ids) <= _CHUNK:  # one round trip, one implicit transaction
                cur.execute(whole, rows)
                return {row[0] for row in cur.fetchall()} if if_absent else set(ids)
            stored: set[str] = set()
            cur.execute(sql.begin)
            for start in range(0, len(ids), _CHUNK):
                cur.execute(chunk_rows, {k: v[start:start + _CHUNK] for k, v in rows.items()})
                if if_absent:
                    stored.update(row[0] for row in cur.fetchall())
            cur.execute(sql.enqueue_commit)
            return stored if if_absent else set(ids)

        def run(cur: Any) -> set[str]:
            try:
                return add(cur)
            except psycopg2.Error as exc:
                if getattr(exc, "pgcode", None) != "23505":
                    raise
                self._rollback(cur.connection)
                raise self._id_conflict(cur, ids) from None

        def settle(cur: Any) -> set[str]:
            """The connection broke with the insert in flight: it committed whole or not
            at all, and the ids (ours, chosen before it) say which. Never twice, never
            reported lost when it is stored."""
            found = self._commands_of(cur, ids)
            if not found:
                return run(cur)  # it did not commit: insert now
            if not all(found.get(job_id) == spec.command
                       for job_id, spec in zip(ids, specs, strict=True)):
                raise DatabaseUnavailable(
                    "lost the connection while enqueueing, and cannot tell whether the jobs"
                    f" were stored (some of their ids exist): check with queuectl show {ids[0]}")
            return set(ids)

        def settle_if_absent(cur: Any) -> set[str]:
            """With --if-absent the insert is idempotent: repeat it. A generated id found
            now can only be ours (the lost commit stored it); a given id found is answered
            as there already: whether the lost commit or someone before stored it cannot
            be told."""
            return run(cur) | {job_id for job_id, spec in zip(ids, specs, strict=True)
                               if spec.id is None}

        try:
            stored = self._run(run, settle=settle_if_absent if if_absent else settle)
        except OutcomeUnknown as exc:
            raise _maybe_stored(exc, ids) from None
        answers = _answers(ids, stored)
        self._wake(specs, answers)
        return answers

    def _wake(self, specs: list[JobSpec], answers: list[Submitted]) -> None:
        """Wake one idle worker for each job stored, once they are committed (version 14:
        Statements.wake). Best effort, one try: a wake lost only delays a job to the poll,
        and the jobs are stored whatever happens here."""
        stored = Counter(spec.queue or DEFAULT_QUEUE
                         for spec, done in zip(specs, answers, strict=True) if done.stored)
        conn = self._conn
        if not stored or conn is None or conn.closed or self._pinned:
            return
        queues = sorted(stored)
        wanted = {"queues": queues, "counts": [stored[q] for q in queues]}
        for statement in (self.sql.wake, self.sql.wake_all):  # the second if the first fails
            try:
                with conn.cursor() as cur:
                    cur.execute(statement, wanted)
                return
            except psycopg2.Error:
                if conn.closed:
                    self._drop()  # the next call reconnects
                    return
                self._rollback(conn)

    def _submit_keyed(self, specs: list[JobSpec], ids: list[str], rows: dict[str, list[Any]],
                      if_absent: bool) -> list[Submitted]:
        """Specs of which some have a unique key, in one explicit transaction: insert
        (skipping a spec whose key a live job holds: the unique index decides, atomically,
        waiting for a holder not yet committed), then for the skipped ones read the holder
        in a new statement (READ COMMITTED: it sees the committed holder, and our own rows
        for a key given twice); a holder that ended in between is no longer there, and
        such a spec is inserted again, a bounded number of times. Then commit."""
        sql = self.sql
        keys: list[str | None] = rows["uniques"]
        first, again = ((sql.submit_if_absent, sql.submit_rows_if_absent) if if_absent
                        else (sql.submit, sql.submit_rows))
        decided: list[Submitted] | None = None  # set just before the COMMIT is sent

        def insert(cur: Any, todo: list[int], opening: bool) -> set[int]:
            """Insert the specs `todo` (their indexes); the ones stored."""
            stored: set[int] = set()
            for start in range(0, len(todo), _CHUNK):
                part = todo[start:start + _CHUNK]
                cur.execute(first if opening and start == 0 else again,
                            {k: [v[i] for i in part] for k, v in rows.items()})
                # RETURNING names a row by (id, key); of specs alike, the first is stored
                waiting: dict[tuple[str, str | None], list[int]] = {}
                for i in part:
                    waiting.setdefault((ids[i], keys[i]), []).append(i)
                for job_id, key in cur.fetchall():
                    stored.add(waiting[(job_id, key)].pop(0))
            return stored

        def decide(cur: Any) -> list[Submitted]:
            answers: dict[int, Submitted] = {}
            todo = list(range(len(specs)))
            for round_ in range(_KEY_ROUNDS):
                stored = insert(cur, todo, round_ == 0)
                answers.update((i, Submitted(ids[i], True)) for i in stored)
                skipped = [i for i in todo if i not in stored]
                if not skipped:
                    break
                cur.execute(sql.submit_holders, {
                    "keys": sorted({k for i in skipped if (k := keys[i]) is not None}),
                    "ids": [ids[i] for i in skipped] if if_absent else []})
                holders: dict[str, str] = {}
                taken: set[str] = set()
                for kind, name, job_id in cur.fetchall():
                    if kind == "k":
                        holders[name] = job_id
                    else:
                        taken.add(job_id)
                todo = []
                for i in skipped:
                    key = keys[i]
                    if key is not None and key in holders:  # the key first, then the id
                        answers[i] = Submitted(holders[key], False)
                    elif ids[i] in taken:
                        answers[i] = Submitted(ids[i], False)
                    else:
                        todo.append(i)  # its holder ended in between: try it again
                if not todo:
                    break
            else:
                raise DatabaseBusy(
                    f"unique key {keys[todo[0]]!r} kept changing hands while enqueueing; "
                    "try again")
            done = [answers[i] for i in range(len(specs))]
            self._add_parents(cur, specs, done)
            return done

        def run(cur: Any) -> list[Submitted]:
            nonlocal decided
            decided = None
            try:
                answers = decide(cur)
            except psycopg2.Error as exc:
                if getattr(exc, "pgcode", None) != "23505":
                    raise
                self._rollback(cur.connection)
                raise self._id_conflict(cur, ids) from None
            decided = answers
            cur.execute(sql.commit)
            return answers

        def settle(cur: Any) -> list[Submitted]:
            """The connection broke: before the COMMIT was sent nothing is stored (the
            server rolls back what the session left open); during it, the ids we stored
            (ours, chosen before) say whether it committed."""
            answers = decided
            if answers is None:
                return run(cur)
            mine = {done.id: spec.command
                    for done, spec in zip(answers, specs, strict=True) if done.stored}
            found = self._commands_of(cur, list(mine))
            if not found:
                return run(cur)  # it did not commit (or stored nothing): decide again
            if found != mine:
                raise DatabaseUnavailable(
                    "lost the connection while enqueueing, and cannot tell whether the jobs"
                    f" were stored (some of their ids exist): check with queuectl show {ids[0]}")
            return answers

        answers = self._run(run, settle=settle)
        self._wake(specs, answers)
        return answers

    def _add_parents(self, cur: Any, specs: list[JobSpec], done: list[Submitted]) -> None:
        """The dependencies of the stored specs with `after`, in the submit's transaction
        (after the rows: a parent may be stored earlier in the same call). Each parent
        must exist (stored before, or by an earlier spec of this call) and not be dead or
        canceled; else NotFound or Conflict for the first that fails, and the caller's
        transaction is rolled back whole. The rows were inserted waiting for every parent;
        completed ones are satisfied at once."""
        wanted = [(i, spec.after) for i, (spec, answer) in enumerate(zip(specs, done,
                                                                        strict=True))
                  if spec.after and answer.stored]
        if not wanted:
            return
        # Where each id of this call was stored: a later spec's job is not a parent yet.
        stored_at: dict[str, int] = {}
        for i, answer in enumerate(done):
            if answer.stored:
                stored_at.setdefault(answer.id, i)
        cur.execute(self.sql.submit_parents,
                    {"parents": sorted({p for _, after in wanted for p in after})})
        states = dict(cur.fetchall())
        children: list[str] = []
        parents: list[str] = []
        positions: list[int] = []
        satisfied: list[bool] = []
        for i, after in wanted:
            for pos, parent in enumerate(after, 1):
                state = states.get(parent)
                if state is None or stored_at.get(parent, -1) > i:
                    raise NotFound(f"parent job {parent!r} not found")
                if state in (DEAD, CANCELED):
                    raise Conflict(f"parent job {parent!r} is {state}: this job would never"
                                   " run")
                children.append(done[i].id)
                parents.append(parent)
                positions.append(pos)
                satisfied.append(state == COMPLETED)
        cur.execute(self.sql.submit_deps, {"children": children, "parents": parents,
                                           "positions": positions, "satisfied": satisfied})

    def _id_conflict(self, cur: Any, ids: list[str]) -> Conflict:
        """After a unique violation on the id: the first id taken (or given twice)."""
        taken = self._commands_of(cur, ids)
        seen: set[str] = set()
        for job_id in ids:
            if job_id in taken or job_id in seen:
                return Conflict(f"job {job_id!r} already exists (use --if-absent to skip it)")
            seen.add(job_id)
        return Conflict("a job id is already taken (use --if-absent to skip it)")

    def _commands_of(self, cur: Any, ids: list[str]) -> dict[str, str]:
        """The command of each of these ids that is taken."""
        cur.execute(self.sql.enqueue_taken, (ids,))
        return dict(cur.fetchall())

    # -- the worker's verbs: claiming --------------------------------------------------------
    # A connection that breaks while a worker's statement commits leaves the worker not
    # knowing whether it happened. Its settle step (see _run) asks the database: a
    # completion wrote its attempt's history row; a claim left a job held by this worker
    # that the worker does not know of (a worker runs one job at a time). So a result is
    # not logged lost when it was recorded, and a claimed job is not orphaned until its
    # lease runs out.
    def _held_by(self, cur: Any, worker: str, besides: str | None) -> Job | None:
        cur.execute(self.sql.held_by, (worker, besides))
        row = cur.fetchone()
        return None if row is None else Job.from_row(row)

    def _call(self, cur: Any, text: str, params: dict[str, Any] | None) -> None:
        """Send one of a worker's calls (claim, claim_or_due, complete_and_claim,
        record_success, the beat, and the reads an idle worker makes on every pass:
        statements on jobs, whose planning over a dozen indexes was most of their cost):
        on a direct
        connection, a statement prepared on it at first use; as text through a pooler, for
        any other store, and on a connection that lost what it prepared (a session reset,
        a pooler that did not show) or whose plan no longer fits (the schema changed under
        it). A refused EXECUTE ran nothing: the call is sent again as text."""
        conn = cur.connection
        if conn is not self._prepared_on:
            self._prepared_on = conn
            self._prepared = set() if self.for_worker and not behind_pooler(cur) else None
        if self._prepared is None:
            cur.execute(text, params)
            return
        call = prepared(text)
        try:
            if call.name not in self._prepared:
                cur.execute(call.prepare)
                self._prepared.add(call.name)
            cur.execute(call.execute, params)
        except (psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.FeatureNotSupported,
                psycopg2.errors.DuplicatePreparedStatement):
            self._prepared = None
            cur.execute(text, params)

    def _claim_params(self, worker: str, queues: list[str] | None,
                      exclude: list[str] | None) -> dict[str, Any]:
        """`skip` starts as the excluded queues (only with every queue): the claim passes
        them over as it passes over a full limited queue, with no statement of its own."""
        skip = list(exclude) if exclude and queues is None else []
        return {"worker": worker, "lease": self._config().lease_seconds,
                "queues": queues, "skip": skip, "locked": None, "ending": None}

    def claim_next(self, worker: str, queues: list[str] | None = None,
                   exclude: list[str] | None = None) -> Job | None:
        return self._claim(self.sql.claim, worker, queues, exclude)[0]

    def claim_or_due(self, worker: str, queues: list[str] | None = None,
                     exclude: list[str] | None = None) -> tuple[Job | None, float | None]:
        sql = (self.sql.claim_or_due_listed if queues is not None
               else self.sql.claim_or_due_except if exclude else self.sql.claim_or_due)
        job, lead = self._claim(sql, worker, queues, exclude)
        if job is not None:
            return job, 0.0
        if lead is None:  # a limited queue's turn came to nothing: ask on its own
            return None, self.seconds_until_due(queues, exclude)
        return None, None if lead[1] is None else max(0.0, float(lead[1]))

    def _claim(self, sql: str, worker: str, queues: list[str] | None,
               exclude: list[str] | None) -> tuple[Job | None, tuple[Any, ...] | None]:
        """The claim `sql` calls (claim, or a claim_or_due): the job it took, and when
        there was nothing to take, the call's leading values (None after a limited
        queue's turn, taken in statements of its own)."""
        params = {**self._claim_params(worker, queues, exclude), "exclude": exclude}

        def claim(cur: Any) -> tuple[Job | None, tuple[Any, ...] | None]:
            self._call(cur, sql, params)
            lead, got = _called(cur)
            if got is not None:
                return got, None
            if lead[0] is None:
                return None, lead
            return self._claim_limited(cur, lead[0], params), None

        def settle(cur: Any) -> tuple[Job | None, tuple[Any, ...] | None]:
            held = self._held_by(cur, worker, None)
            return (held, None) if held is not None else claim(cur)

        return self._run(claim, settle=settle)

    def _claim_limited(self, cur: Any, queue: str, params: dict[str, Any]) -> Job | None:
        """The claim when the best job is in a limited queue (the claim_limited statements
        say how it takes turns)."""
        sql = self.sql
        first, then = sql.claim_limited, sql.claim_limited_next
        skip: list[str] = list(params["skip"])  # the excluded queues, if any
        cur.execute(sql.claim_limited_begin)
        for turn in range(64):  # each turn skips one more full queue; bounded anyway
            cur.execute(then if turn else first, {**params, "locked": queue, "skip": skip})
            (candidate,), got = _called(cur)
            if got is not None or candidate is None:
                cur.execute(sql.commit)
                return got
            skip.append(queue)  # full now (or outranked): let go of it, try the next
            queue = candidate
        cur.execute(sql.commit)
        return None  # the worker polls again soon

    def complete_and_claim(self, job: Job, outcome: Outcome, worker: str,
                           queues: list[str] | None = None,
                           exclude: list[str] | None = None) -> tuple[bool, Job | None]:
        claim = self._claim_params(worker, queues, exclude)
        params = {**self._params(job, outcome, policy.COMPLETED_ATTEMPT), **claim,
                  "ending": job.id}

        def both(cur: Any) -> tuple[bool, Job | None, str | None]:
            self._call(cur, self.sql.complete_and_claim, params)
            (done, candidate), got = _called(cur)
            return done == 1, got, candidate

        def settle(cur: Any) -> tuple[bool, Job | None, str | None]:
            # it committed, with whatever it claimed
            if self._recorded(cur, params, policy.COMPLETED_ATTEMPT):
                return True, self._held_by(cur, worker, job.id), None
            return both(cur)

        held, got, candidate = self._run(both, settle=settle)
        if got is None and candidate is not None:
            # A limited queue's turn: the completion is committed (so it no longer counts),
            # the claim takes that queue's lock in a transaction of its own.
            turn = candidate

            def limited(cur: Any) -> Job | None:
                return self._claim_limited(cur, turn, claim)

            def settle_limited(cur: Any) -> Job | None:
                return self._held_by(cur, worker, job.id) or limited(cur)

            got = self._run(limited, settle=settle_limited)
        return held, got

    def heartbeat(self, worker: str, state: str, job: Job | None) -> bool:
        return self.beat(worker, state, job).held

    def beat(self, worker: str, state: str, job: Job | None) -> Beat:
        params: dict[str, Any] = {"state": state, "job_id": job.id if job else None,
                                  "worker": worker}
        if job is None:
            sql = self.sql.beat_idle
        else:
            params.update(lease=self._config().lease_seconds, id=job.id, attempts=job.attempts)
            sql = self.sql.beat

        def beat_once(cur: Any) -> list[tuple[Any, ...]]:
            self._call(cur, sql, params)
            return list(cur.fetchall())

        rows = self._run(beat_once, idempotent=True)
        kinds = {row[0] for row in rows}
        items = cfg.merge({key: value for kind, key, value, _ in rows if kind == "setting"})
        paused = [PauseInfo(key, since) for kind, key, _, since in rows if kind == "paused"]
        self._settings.fill(items)
        return Beat(held=job is None or "held" in kinds, settings=items,
                    paused=paused[0] if paused else None, expired="expired" in kinds)

    # -- the worker's verbs: recording -------------------------------------------------------
    def _recorded(self, cur: Any, params: dict[str, Any], *outcomes: str) -> bool:
        """Did the attempt get the history row that only its own ending writes?"""
        cur.execute(self.sql.recorded, {**params, "outcomes": list(outcomes)})
        return bool(cur.fetchone()[0])

    def record_success(self, job: Job, outcome: Outcome) -> bool:
        params = self._params(job, outcome, policy.COMPLETED_ATTEMPT)

        def complete(cur: Any) -> bool:
            self._call(cur, self.sql.record_success, params)
            return bool(cur.fetchone()[0] == 1)

        def settle(cur: Any) -> bool:
            return self._recorded(cur, params, policy.COMPLETED_ATTEMPT) or complete(cur)

        return self._run(complete, settle=settle)

    def record_failure(self, job: Job, outcome: Outcome) -> Job | None:
        conf = self._config()
        dead = policy.retries_spent(job.attempts, job.max_retries)
        params = self._params(job, outcome, policy.FAILED_ATTEMPT)
        params.update(state=DEAD if dead else FAILED, dead=dead,
                      delay=0.0 if dead else conf.backoff_delay(job.attempts),
                      error=outcome.error or "failed")
        sql = self.sql.record_failure_dead if dead else self.sql.record_failure

        def fail(cur: Any) -> Job | None:
            cur.execute(sql, params)
            row = cur.fetchone()
            return None if row is None else Job.from_row(row[:-1])

        def settle(cur: Any) -> Job | None:
            if not self._recorded(cur, params, policy.FAILED_ATTEMPT, policy.CANCELED_ATTEMPT):
                return fail(cur)
            return self._find(cur, job.id)

        return self._run(fail, settle=settle)

    def release(self, job: Job, reason: str) -> bool:
        params = self._params(job, None, policy.INTERRUPTED_ATTEMPT)
        params["error"] = reason

        def release_once(cur: Any) -> bool:
            cur.execute(self.sql.release, params)
            return bool(cur.fetchone()[0] == 1)

        def settle(cur: Any) -> bool:
            return (self._recorded(cur, params, policy.INTERRUPTED_ATTEMPT,
                                   policy.CANCELED_ATTEMPT) or release_once(cur))

        return self._run(release_once, settle=settle)

    def _reclaim(self, lock: str, params: dict[str, Any], why: str) -> list[Job]:
        """Lost attempts become failed (or dead) ones; the queue's rules decide which."""
        conf = self._config()

        def reclaim(cur: Any) -> list[Job]:
            cur.execute(lock, params)
            rows = cur.fetchall()
            if not rows:
                cur.execute(self.sql.commit)
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
            cur.execute(self.sql.reclaim_end, {
                "t": t, "ids": [j.id for j in jobs], "states": [j.state for j in jobs],
                "run_ats": [j.run_at for j in jobs], "errors": [j.last_error for j in jobs],
                "attempts": [j.attempt_number for j in jobs],
                "workers": [j.worker for j in jobs],
                "started": [j.started_at for j in jobs], "outcomes": outcomes})
            return jobs

        return self._run(reclaim)

    def reclaim_expired(self) -> list[Job]:
        if not self._fetch(self.sql.reclaim_expired_probe, send=self._call):
            return []
        return self._reclaim(self.sql.reclaim_expired_lock, {}, policy.LEASE_EXPIRED)

    def reclaim_worker(self, worker: str) -> list[Job]:
        return self._reclaim(self.sql.reclaim_worker_lock, {"worker": worker},
                             policy.WORKER_RESTARTED)

    # -- operators ---------------------------------------------------------------------------
    def _refusal(self, cur: Any, job_id: str,
                 conflict: Callable[[str, str], Conflict]) -> Exception:
        """Why a guarded UPDATE matched nothing: no such job, or the job's state forbids it."""
        cur.execute(self.sql.job_state, (job_id,))
        found = cur.fetchone()
        return policy.no_such_job(job_id) if found is None else conflict(job_id, found[0])

    def retry_dead(self, job_id: str) -> Job:
        def retry(cur: Any) -> Job:
            for _ in range(_KEY_ROUNDS):
                try:
                    cur.execute(self.sql.retry_dead, {"id": job_id})
                except psycopg2.Error as exc:
                    # A holder of its key committed after the statement's snapshot: the
                    # unique index refused it. The refusal below names that holder.
                    if getattr(exc, "pgcode", None) != "23505":
                        raise
                    self._rollback(cur.connection)
                else:
                    row = cur.fetchone()
                    if row is not None:
                        return Job.from_row(row)
                cur.execute(self.sql.retry_dead_refusal, (job_id,))
                found = cur.fetchone()
                if found is None:
                    raise policy.no_such_job(job_id)
                state, key, holder, holder_state = found
                if state != DEAD:
                    raise policy.not_dead(job_id, state)
                if holder is not None:
                    raise _key_held(job_id, key, holder, holder_state)
                # the holder ended in between: try again
            raise DatabaseBusy(f"the unique key of job {job_id!r} kept changing hands; "
                               "try again")

        def settle(cur: Any) -> Job:
            """A retried job counts its attempts from 0 again, below those in its history
            (a job retried and claimed before we look, with one attempt in all, is the one
            case this cannot tell: it is refused as not dead)."""
            job = self._find(cur, job_id)
            if job is not None and job.state != DEAD:
                cur.execute(self.sql.retry_dead_tried, (job_id,))
                tried = cur.fetchone()[0] or 0
                if job.attempt_number < tried or (job.state == PENDING and job.attempts == 0):
                    return job
            return retry(cur)

        return self._run(retry, settle=settle)

    def retry(self, job_id: str, delay: float | None = None) -> Job:
        sql = self.sql
        decided: tuple[float, int] | None = None  # (updated_at before, attempt_base after)

        def retry_once(cur: Any) -> Job:
            nonlocal decided
            decided = None
            for _ in range(_KEY_ROUNDS):
                cur.execute(sql.retry_lock, {"id": job_id})
                found = cur.fetchone()
                if found is None:
                    raise policy.no_such_job(job_id)
                state, key, holder, holder_state, attempts, base, updated_at = found
                if state not in TERMINAL:
                    raise Conflict(f"job {job_id!r} is {state}: only a completed, dead or"
                                   " canceled job can be retried")
                if holder is not None:
                    raise _key_held(job_id, key, holder, holder_state)
                cur.execute(sql.retry_parents, {"id": job_id})
                waiting = 0
                for parent, parent_state in cur.fetchall():
                    if parent_state is None:
                        raise Conflict(f"parent job {parent!r} no longer exists: this job"
                                       " would never run")
                    if parent_state in (DEAD, CANCELED):
                        raise Conflict(f"parent job {parent!r} is {parent_state}: retry it"
                                       " first")
                    waiting += parent_state != COMPLETED
                try:
                    cur.execute(sql.retry, {"id": job_id, "delay": float(delay or 0.0),
                                            "waiting": waiting})
                except psycopg2.Error as exc:
                    # A holder of its key committed after retry_lock's snapshot: the
                    # unique index refused it; the next round names that holder.
                    if getattr(exc, "pgcode", None) != "23505":
                        raise
                    self._rollback(cur.connection)
                    continue
                job = Job.from_row(cur.fetchone())
                decided = (updated_at, base + attempts)
                cur.execute(sql.commit)
                return job
            raise DatabaseBusy(f"the unique key of job {job_id!r} kept changing hands; "
                               "try again")

        def settle(cur: Any) -> Job:
            """The connection broke. Before the COMMIT was sent nothing happened; during
            it, the row says: changed since we read it, with the attempt base we set,
            it is our retry (or one just like it)."""
            if decided is not None:
                before, base = decided
                job = self._find(cur, job_id)
                if job is not None and job.updated_at != before and job.attempt_base == base:
                    return job
            return retry_once(cur)

        return self._run(retry_once, settle=settle)

    def parents(self, job_id: str) -> list[Parent]:
        rows = self._fetch(self.sql.parents, {"id": job_id})
        if not rows:
            raise policy.no_such_job(job_id)
        return [Parent(parent, state, bool(satisfied))
                for pos, parent, state, satisfied in sorted(rows, key=lambda r: r[0]) if pos]

    def canceled_dependents(self, job_id: str) -> list[Job]:
        return [Job.from_row(row)
                for row in self._fetch(self.sql.canceled_dependents, {"id": job_id})]

    def retry_dead_many(self, older_than: float | None, limit: int) -> int:
        sql = self.sql.retry_dead_many if older_than is None else self.sql.retry_dead_many_older

        def retry_many(cur: Any) -> int:
            for _ in range(_KEY_ROUNDS):
                try:
                    cur.execute(sql, {"n": limit, **_older(older_than)})
                except psycopg2.Error as exc:
                    # A holder of a picked job's key committed after the snapshot: the
                    # unique index refused the batch; the next snapshot skips that job.
                    if getattr(exc, "pgcode", None) != "23505":
                        raise
                    self._rollback(cur.connection)
                    continue
                return int(cur.rowcount)
            raise DatabaseBusy("unique keys of dead jobs kept changing hands; try again")

        return self._run(retry_many)

    def cancel(self, job_id: str) -> Job:
        def cancel_once(cur: Any) -> Job:
            cur.execute(self.sql.cancel, {"id": job_id, "error": policy.CANCELED_ERROR})
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
        sql = self.sql
        if state == PROCESSING:
            statement = (sql.cancel_state_processing if queue is None
                         else sql.cancel_state_processing_in_queue)
        else:
            statement = (sql.cancel_state_waiting if queue is None
                         else sql.cancel_state_waiting_in_queue)

        def cancel_many(cur: Any) -> int:
            cur.execute(statement, {"state": state, "n": limit, "error": policy.CANCELED_ERROR,
                                    "queue": queue})
            return int(cur.rowcount)

        return self._run(cancel_many)

    def cancel_requested(self, job: Job) -> bool:
        rows = self._fetch(self.sql.cancel_requested, (job.id, job.worker, job.attempts))
        return bool(rows and rows[0][0])

    def pause(self, by: str, queue: str | None = None) -> bool:
        sql = self.sql.pause if queue is None else self.sql.pause_queue

        def pause_once(cur: Any) -> bool:
            cur.execute(sql, {"by": by, "queue": queue})
            return bool(cur.rowcount == 1)

        return self._run(pause_once)

    def resume(self, queue: str | None = None) -> bool:
        sql = self.sql.resume if queue is None else self.sql.resume_queue

        def resume_once(cur: Any) -> bool:
            cur.execute(sql, {"queue": queue})
            return bool(cur.fetchone()[0] == 1)

        return self._run(resume_once)

    def paused(self, queue: str | None = None) -> PauseInfo | None:
        if queue is None:
            rows = self._fetch(self.sql.paused)
        else:
            rows = self._fetch(self.sql.paused_queue, (queue,))
        return PauseInfo(*rows[0]) if rows else None

    def backup(self, path: str) -> None:
        raise Unsupported(
            "backup copies SQLite queues only: back up a PostgreSQL queue with pg_dump "
            f"(e.g. pg_dump --schema={self.target.schema} DBNAME > FILE)")

    # -- queues ------------------------------------------------------------------------------
    def set_queue_concurrency(self, queue: str, limit: int) -> None:
        self._run(lambda cur: cur.execute(self.sql.set_queue_concurrency,
                                          {"queue": queue, "limit": int(limit)}),
                  idempotent=True)

    def queues(self) -> list[QueueInfo]:
        return self._run(self._queues, idempotent=True)

    def _queues(self, cur: Any) -> list[QueueInfo]:
        cur.execute(self.sql.queues, {"window": policy.ACTIVE_WINDOW})
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
            elif kind == "d":
                entry(name).on_dead = text
            elif kind == "n":
                entry(name).notices = int(number)
            else:
                serving.append((lanes, text.split(",") if text else None))
                for lane in lanes or ():
                    entry(lane)
        for info in found.values():
            info.workers = sum(serves(info.name, lanes, exclude) for lanes, exclude in serving)
        return [found[name] for name in sorted(found)]

    # -- on-dead notices ---------------------------------------------------------------------
    def set_queue_on_dead(self, queue: str, command: str) -> None:
        self._run(lambda cur: cur.execute(self.sql.set_queue_on_dead,
                                          {"queue": queue, "command": command}),
                  idempotent=True)

    def take_notice(self, holder: str, seconds: float) -> Notice | None:
        if not self._fetch(self.sql.any_notice_due, send=self._call):
            return None

        def take(cur: Any) -> tuple[Any, ...] | None:
            cur.execute(self.sql.take_notice, {"holder": holder, "for": float(seconds)})
            row: tuple[Any, ...] | None = cur.fetchone()
            return row

        # Not repeated after a lost commit: a notice taken then is held by nobody alive,
        # and its lease running out frees it.
        row = self._run(take)
        if row is None:
            return None
        nid, job_id, queue, command, exit_code, attempts, last_error, tries, hook, output = row
        data = bytes(output or b"")[-policy.NOTICE_INPUT:]
        return Notice(int(nid), job_id, queue, command, exit_code, attempts, last_error, tries,
                      hook, data, holder)

    def notice_delivered(self, notice: Notice) -> bool:
        def drop(cur: Any) -> bool:
            cur.execute(self.sql.drop_notice, {"id": notice.id, "holder": notice.holder})
            return bool(cur.rowcount == 1)

        return self._run(drop, idempotent=True)

    def notice_failed(self, notice: Notice, error: str, tries: int, delay: float) -> bool:
        params = {"id": notice.id, "holder": notice.holder, "error": error,
                  "delay": float(delay)}
        if notice.tries + 1 >= tries:
            return self.notice_delivered(notice)

        def retry(cur: Any) -> bool:
            cur.execute(self.sql.retry_notice, params)
            return False

        return self._run(retry)

    # -- metrics -----------------------------------------------------------------------------
    def metrics(self) -> Metrics:
        sql = self.sql

        def read(cur: Any) -> Metrics:
            # One snapshot for the several statements (inside reading(), that one's);
            # read-only, so it never blocks writers.
            own = not self._pinned
            if own:
                cur.execute(sql.read_snapshot)
            queues = self._queues(cur)
            cur.execute(sql.metrics_workers, {"window": policy.ACTIVE_WINDOW})
            workers = dict(cur.fetchall())
            cur.execute(sql.metrics_paused)
            paused = cur.fetchone()[0]
            cur.execute(sql.metrics_counters)
            counters = cur.fetchall()
            if own:
                cur.execute(sql.commit)
            return Metrics(queues, paused, workers, counters)

        return self._run(read, idempotent=True)

    # -- retention and purge -----------------------------------------------------------------
    def count_matching(self, state: str, older_than: float | None = None,
                       queue: str | None = None) -> int:
        sql = self.sql
        statement = ((sql.count_matching, sql.count_matching_older),
                     (sql.count_matching_in_queue, sql.count_matching_in_queue_older),
                     )[queue is not None][older_than is not None]
        rows = self._fetch(statement, {"state": state, "queue": queue, **_older(older_than)})
        return int(rows[0][0])

    def purge(self, state: str, older_than: float | None, limit: int,
              queue: str | None = None) -> int:
        if state not in TERMINAL:
            raise ValueError(f"cannot purge {state} jobs")
        sql = self.sql
        statement = ((sql.purge, sql.purge_older),
                     (sql.purge_in_queue, sql.purge_in_queue_older),
                     )[queue is not None][older_than is not None]

        def purge_once(cur: Any) -> int:
            cur.execute(statement, {"state": state, "n": limit, "queue": queue,
                                    **_older(older_than)})
            return int(cur.fetchone()[0])

        return self._run(purge_once)

    def take_duty(self, name: str, holder: str, seconds: float) -> bool:
        def take(cur: Any) -> bool:
            cur.execute(self.sql.take_duty, {"name": name, "holder": holder,
                                             "for": float(seconds)})
            return bool(cur.rowcount == 1)

        # Repeating it after a lost commit is harmless: the holder renews its own duty.
        return self._run(take, idempotent=True)

    # -- output ------------------------------------------------------------------------------
    def append_output(self, job: Job, offset: int, data: bytes) -> bool:
        params = {"id": job.id, "worker": job.worker, "attempt": job.attempts,
                  "start": offset, "data": psycopg2.Binary(data),
                  "cut": offset + len(data) - policy.OUTPUT_LIMIT}

        def append(cur: Any) -> bool:
            cur.execute(self.sql.append_output, params)
            return bool(cur.fetchone()[0] == 1)

        # Idempotent: the same bytes at the same offset replace themselves.
        return self._run(append, idempotent=True)

    def read_output(self, job_id: str, attempt: int | None, offset: int) -> OutputSlice | None:
        rows = self._fetch(self.sql.read_output,
                           {"id": job_id, "attempt": attempt, "offset": offset})
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

    # -- reads -------------------------------------------------------------------------------
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
                in self._fetch(self.sql.get_history, (job_id,))
            ]
        return job

    def iter_jobs(self, state: str | None = None, limit: int | None = None,
                  queue: str | None = None, unique: str | None = None) -> Iterator[Job]:
        # Pages by (created_at, seq), which never change: memory stays flat, no transaction
        # stays open between pages (a pooler may hand the connection on), each job once.
        page = 500
        sql = self.sql
        statement = ((sql.iter_jobs, sql.iter_jobs_of_state),
                     (sql.iter_jobs_in_queue, sql.iter_jobs_in_queue_of_state),
                     )[queue is not None][bool(state)]
        if unique is not None:
            statement = sql.iter_jobs_with_key
        at, seq, left = float("-inf"), -1, limit
        while left is None or left > 0:
            n = page if left is None else min(page, left)
            rows = self._fetch(statement, {"state": state or None, "queue": queue,
                                           "unique": unique, "at": at, "seq": seq, "n": n})
            for row in rows:
                yield Job.from_row(row[:-1])
            if len(rows) < n:
                return
            at, seq = rows[-1][5], rows[-1][-1]
            if left is not None:
                left -= len(rows)

    def counts(self, queue: str | None = None) -> dict[str, int]:
        result = dict.fromkeys((*STATES, "blocked"), 0)
        rows = self._fetch(self.sql.counts if queue is None else self.sql.counts_in_queue,
                           {"queue": queue, "window": policy.ACTIVE_WINDOW})
        for key, n in rows:
            result[key] = n
        return {k: result[k] for k in (*STATES, "blocked", "active_workers", "notices")}

    def remaining(self, queues: list[str] | None = None,
                  exclude: list[str] | None = None) -> int:
        sql = (self.sql.remaining_listed if queues is not None
               else self.sql.remaining_except if exclude else self.sql.remaining)
        return int(self._fetch(sql, {"queues": queues, "exclude": exclude})[0][0])

    def seconds_until_due(self, queues: list[str] | None = None,
                          exclude: list[str] | None = None) -> float | None:
        sql = (self.sql.seconds_until_due_listed if queues is not None
               else self.sql.seconds_until_due_except if exclude
               else self.sql.seconds_until_due)
        due = self._fetch(sql, {"queues": queues, "exclude": exclude}, send=self._call)[0][0]
        return None if due is None else max(0.0, float(due))

    # The reads for `queuectl top` (plain SELECTs: no row or advisory locks).
    def reading(self) -> Reading:
        return Reading(self)

    def now(self) -> float:
        return float(self._fetch(self.sql.now)[0][0])

    def recent_jobs(self, state: str, limit: int, queue: str | None = None) -> list[Job]:
        sql = self.sql.recent_jobs if queue is None else self.sql.recent_jobs_in_queue
        rows = self._fetch(sql, {"state": state, "queue": queue, "n": limit})
        return [Job.from_row(row) for row in rows]

    def completed_since(self, seconds: float) -> dict[str, int]:
        return dict(self._fetch(self.sql.completed_since, {"s": seconds}))

    # -- configuration -----------------------------------------------------------------------
    def config_items(self) -> dict[str, cfg.Value]:
        items = cfg.merge(dict(self._fetch(self.sql.config_items)))
        self._settings.fill(items)
        return items

    def set_config(self, key: str, value: cfg.Value) -> None:
        self._settings.forget()
        self._run(lambda cur: cur.execute(self.sql.set_config, (key, str(value))),
                  idempotent=True)

    # -- workers -----------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        def register(cur: Any) -> float:
            cur.execute(self.sql.register_worker, (
                info.name, info.host, info.pid, info.pid_start, info.state, info.job_id,
                None if info.queues is None else list(info.queues),
                list(info.exclude) if info.exclude else None))
            return float(cur.fetchone()[0])

        info.started_at = info.heartbeat_at = self._run(register, idempotent=True)

    def unregister_worker(self, name: str) -> None:
        self._run(lambda cur: cur.execute(self.sql.unregister_worker, (name,)), idempotent=True)

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(*r) for r in self._fetch(self.sql.workers)]

    def seconds_since_heartbeat(self, name: str) -> float | None:
        rows = self._fetch(self.sql.seconds_since_heartbeat, (name,))
        return float(rows[0][0]) if rows else None

    def verify(self) -> float | None:
        """Every table reachable with the rights the verbs need: a worker without them
        fails before its first claim, with one line, rather than on its first job. No integrity check
        (the server keeps its own pages), hence None."""
        rows = self._fetch(self.sql.verify_privileges, (self.target.schema,))
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
        self._fetch(self.sql.verify_reads)
        return None

    def info(self) -> dict[str, Any]:
        version, server, database, user = self._fetch(self.sql.info)[0]
        pooled = self._pooled()
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
                "pooler": pooled,
                "wakeup": self._wakeup_text(pooled),
                "worker_calls": ("sent as text: a connection pooler is in the way" if pooled
                                 else "prepared once per worker connection"),
            },
        }

    def _pooled(self) -> bool:
        """Whether a pooler stands between us and the server (see behind_pooler)."""
        return self._run(behind_pooler, idempotent=True)

    def _wakeup_text(self, pooled: bool) -> str:
        target, net = self.target, (f"polling every {ListenWakeup.poll_interval:g} s as a "
                                    "safety net")
        if target.listen == LISTEN_OFF:
            return f"polling every {POLL_ONLY:g} s (listen=off)"
        if target.listen_target is not None:
            return f"LISTEN {self.channel} on {target.listen_target.display}, {net}"
        if pooled:
            return f"polling every {POLL_ONLY:g} s: {POOLED}"
        return f"LISTEN {self.channel}, {net}"

    # -- waking ------------------------------------------------------------------------------
    def wakeup(self, watch: bool = False, queues: list[str] | None = None,
               exclude: list[str] | None = None) -> Wakeup:
        target = self.target
        if target.listen == LISTEN_OFF:
            return Polling()
        return ListenWakeup(target.listen_target or target, self.sql,
                            trusted=target.listen_target is not None, watch=watch,
                            queues=queues, exclude=exclude)

    def close(self) -> None:
        self._drop()


# -- waking idle workers -------------------------------------------------------------------
def behind_pooler(cur: Any) -> bool:
    """Whether a pooler stands between cur's connection and the server: the server
    process's id is not the one the connection announced (a pooler makes its own up)."""
    cur.execute(Statements.server_pid)
    return bool(cur.fetchone()[0] != cur.connection.get_backend_pid())


# What makes a claimer give up registering in `listeners` (it still listens): no right to
# it (insufficient_privilege), no such table or function (an older schema, read-only role).
NOT_ALLOWED = ("42501", "42P01", "42883")

# Why a worker polls behind a pooler (info's and the worker's own words).
POOLED = ("a connection pooler is in the way, which LISTEN cannot pass (listen=URL of the "
          "server wakes workers at once)")

# The poll of idle workers that hear no NOTIFY (listen=off, or a pooler in the way): brisker
# than the safety net's, as SQLite's without inotify; a query or two per worker each time.
POLL_ONLY = 0.5


class Polling(PollOnly):
    """listen=off: no LISTEN connection (one server connection less per worker)."""

    poll_interval = POLL_ONLY

    def describe(self) -> str:
        return "polling (listen=off)"


class ListenWakeup(Wakeup):
    """LISTEN on a connection of its own. Callers select on one descriptor that never
    changes: a duplicate of the connection's socket while it works, else the read end of a
    pipe nobody writes (so a broken connection can never spin the caller); it reconnects at
    most every RETRY_EVERY seconds, and the poll covers the gap.

    Through a transaction-pooling pooler a LISTEN is never heard (its server connection
    goes back to the pool, and the notifications to whichever client holds it next), so
    unless `trusted` (listen=URL: the user named this server) a connection whose server
    process is not the one it announced (a pooler's own) is closed before it LISTENs, for
    good, and the poll does the work at POLL_ONLY.

    An idle worker's wakeup (a claimer) also listens on a channel of its own and registers
    it in `listeners` with the queues it serves (version 14): an enqueue wakes one
    registered listener a job, the latest idle first, and takes it out of the table. So it
    registers again when it next waits (fileno), not at once: woken, it will most likely
    take the job and stop waiting. When it stops waiting (disarm) its row goes, and if the
    row was gone already, a wake took it meanwhile, which is passed on to every idle worker
    (Statements.unregister: the job may be of a queue it does not serve). The shared
    channel still brings every other news (a retry, a resume, a dependent ready, an
    enqueue that found too few registered).

    A busy worker does not listen (disarm: UNLISTEN): at each commit that sent a NOTIFY,
    PostgreSQL signals every listening connection of the database, and each wakes to read
    the notification queue in a transaction of its own (measured: about 25 µs of server
    CPU per job for each listener, so 16 busy workers cost each job 0.4 ms). A worker
    listens again before it looks for work (arm), and a long job's watch before its
    first cancel check (arm_busy: the shared channel only, unregistered).

    A watcher (`watch`) also registers in the schema's `watchers` once it listens, and
    renews its row every WATCH_LEASE / 3 s (at drain): the worker's completions notify
    only while a row is live (postgres_sql.functions_13). A completion that looked just
    before the row was committed sends nothing: the poll finds its job a second later.
    Registering is best effort (a role without the right only polls slower)."""

    poll_interval = 1.0
    RETRY_EVERY = 5.0
    WATCH_LEASE = 60.0
    # How it listens: not at all; the shared channel (a watcher, a long job's watch); the
    # shared channel and its own, registered (an idle worker).
    OFF, SHARED, CLAIMER = 0, 1, 2

    def __init__(self, target: Target, sql: Statements, trusted: bool = False,
                 watch: bool = False, queues: list[str] | None = None,
                 exclude: list[str] | None = None) -> None:
        self._target = target
        self._sql = sql
        self._trusted = trusted
        self._watch = f"{hostname()}:{os.getpid()}:{os.urandom(4).hex()}" if watch else None
        self._renew_at = float("inf")
        self.pooled = False
        # A claimer's own channel (a name PostgreSQL keeps as is, unique in the database).
        self._own = None if watch else f"queuectl_w{os.urandom(8).hex()}"
        # The registration's token, new each time: a wake's payload, which tells it from
        # a wake of an earlier registration (read late, or passed on already).
        self._serving = {"own": self._own, "queues": queues, "exclude": exclude or None,
                         "token": ""}
        self._level = self.SHARED if watch else self.CLAIMER  # a new wakeup watches
        self._registered = False  # our row is in `listeners`, as far as we know
        self._can_register = True  # False: the role may not (it polls, or hears broadcasts)
        self._quiet, self._quiet_w = os.pipe()
        # Always readable: stands in for the socket while notifications that our own
        # statement read off it wait in the connection (_pending), until the next drain.
        self._ready, self._ready_w = os.pipe()
        os.write(self._ready_w, b".")
        self._fd = os.dup(self._quiet)
        self._conn: Any = None
        self._next_try = 0.0
        self._reconnect()

    def _pending(self) -> None:
        """After a statement outside drain: what it read off the socket is no longer
        readable there, so the descriptor reads as ready until drain takes it."""
        if self._conn is not None and self._conn.notifies:
            os.dup2(self._ready, self._fd)

    def _reconnect(self) -> bool:
        self._next_try = time.monotonic() + self.RETRY_EVERY
        self._registered = False
        conn = None
        try:
            conn = self._target.connect()
            with conn.cursor() as cur:
                if not self._trusted and behind_pooler(cur):
                    self.pooled, self.poll_interval = True, POLL_ONLY
                    self._next_try = float("inf")
                    conn.close()
                    return False
                if self._own is not None and self._can_register:
                    try:
                        cur.execute(self._sql.sweep_listeners)
                    except psycopg2.Error as exc:
                        if getattr(exc, "pgcode", None) not in NOT_ALLOWED:
                            raise
                        self._can_register = False
                self._conn = conn
                self._change(self.OFF, self._level, cur)
                self._register(cur)
            os.dup2(conn.fileno(), self._fd)
            self._pending()
        except Exception:
            self._conn = None
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            return False
        return True

    def _change(self, old: int, new: int, cur: Any) -> None:
        """Listen as `new` says, where it listened as `old`: one round trip (none if
        nothing changes); a claimer registers on the way in and leaves on the way out."""
        own = f'"{self._own}"'
        parts: list[str] = []
        if new == self.OFF and old != self.OFF:
            parts.append(self._sql.unlisten_all)
        if new >= self.SHARED and old == self.OFF:
            parts.append(self._sql.listen)
        if new == self.CLAIMER and old != self.CLAIMER:
            parts.append(f"LISTEN {own}")
        if new == self.SHARED and old == self.CLAIMER:
            parts.append(f"UNLISTEN {own}")
        leaving = self._registered and new != self.CLAIMER
        if leaving:
            parts.append(self._sql.unregister)
        joining = new == self.CLAIMER and old != self.CLAIMER and self._can_register
        if joining:
            parts.append(self._registration())
        if not parts:
            return
        try:
            cur.execute(";\n".join(parts), self._serving)
        except psycopg2.Error as exc:
            if not (leaving or joining) or getattr(exc, "pgcode", None) not in NOT_ALLOWED:
                raise  # (the connection is dropped, and made again in a while)
            self._can_register = False  # no right to `listeners`: listen all the same
            self._registered = False
            self._change(old, new, cur)
            return
        self._registered = joining or (self._registered and not leaving)

    def _registration(self) -> str:
        """The statement that registers us as an idle listener, with a new token."""
        self._serving["token"] = os.urandom(4).hex()
        return self._sql.register

    def _register(self, cur: Any) -> None:
        """(A watcher's) row in `watchers`, made or renewed; never raises for a refusal."""
        if self._watch is None:
            return
        self._renew_at = time.monotonic() + self.WATCH_LEASE / 3
        try:
            cur.execute(self._sql.watch, {"name": self._watch, "lease": self.WATCH_LEASE})
        except psycopg2.OperationalError:
            raise
        except psycopg2.Error:
            self._renew_at = float("inf")  # not allowed, or no such table: poll

    def _broken(self) -> None:
        """Let the connection go (never raises): the descriptor turns quiet until fileno or
        drain connects again."""
        conn, self._conn = self._conn, None
        self._registered = False
        try:
            os.dup2(self._quiet, self._fd)
        except OSError:
            pass  # closed already
        try:
            if conn is not None:
                conn.close()
        except Exception:
            pass

    def describe(self) -> str:
        if self.pooled:
            return f"polling: {POOLED}"
        if self._trusted:
            return f"LISTEN on {self._target.display}"
        return "LISTEN"

    def arm(self) -> None:
        self._go(self.SHARED if self._own is None else self.CLAIMER)

    def arm_busy(self) -> None:
        self._go(self.SHARED)

    def disarm(self) -> None:
        self._go(self.OFF)

    def _go(self, level: int) -> None:
        """Listen as `level` says now. Stopping, what arrived before is dropped (whoever
        arms again looks at the queue next); still listening, it waits for drain (a long
        job's watch hears it). Never raises: a broken connection reconnects (listening as
        the level says)."""
        old, self._level = self._level, level
        if self._conn is None or old == level:
            return
        try:
            with self._conn.cursor() as cur:
                self._change(old, level, cur)
            self._conn.poll()
            if any(self._woken(n) for n in self._conn.notifies):
                self._registered = False  # a wake took our row just now
            if level == self.OFF:
                del self._conn.notifies[:]
                os.dup2(self._conn.fileno(), self._fd)  # (after _pending: nothing waits)
            else:
                self._pending()
        except Exception:
            self._broken()

    def _woken(self, n: Any) -> bool:
        """Whether notification `n` is a wake of our current registration."""
        return bool(n.channel == self._own and n.payload == self._serving["token"])

    def pass_on(self) -> None:
        if self._conn is None:
            return
        try:
            with self._conn.cursor() as cur:
                cur.execute(self._sql.wake_all)
            self._pending()
        except Exception:
            self._broken()

    def fileno(self) -> int | None:
        """Called before each wait: reconnects a lost connection (at most every
        RETRY_EVERY s), and registers again a claimer that a wake took out."""
        if self._conn is None:
            if time.monotonic() >= self._next_try:
                self._reconnect()  # a missed notification only delays a job: the poll finds it
        elif self._level == self.CLAIMER and not self._registered and self._can_register:
            try:
                with self._conn.cursor() as cur:
                    cur.execute(self._registration(), self._serving)
                self._registered = True
                self._pending()
            except Exception:
                self._broken()
        return self._fd

    def drain(self) -> bool:
        try:
            if self._conn is None:
                # Back after a gap: anything may have happened meanwhile.
                return time.monotonic() >= self._next_try and self._reconnect()
            os.dup2(self._conn.fileno(), self._fd)  # (after _pending)
            self._conn.poll()
            # Events (an attempt ended, output appended) wake watchers, not idle workers.
            got = False
            for n in self._conn.notifies:
                if n.channel == self._own:
                    if self._woken(n):
                        got, self._registered = True, False  # the wake took our row
                    # else a wake of an earlier registration: dealt with before
                elif n.payload != EVENT:
                    got = True
            del self._conn.notifies[:]
            if time.monotonic() >= self._renew_at:
                with self._conn.cursor() as cur:
                    self._register(cur)
                self._pending()
            return got
        except Exception:
            self._broken()
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                with self._conn.cursor() as cur:
                    if self._watch is not None:
                        cur.execute(self._sql.unwatch, (self._watch,))
                    self._change(self._level, self.OFF, cur)  # a wake meanwhile: passed on
            except Exception:
                pass  # the row expires, or the next worker's connect sweeps it
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        for fd in (self._fd, self._quiet, self._quiet_w, self._ready, self._ready_w):
            try:
                os.close(fd)
            except OSError:
                pass


def open_store(locator: str, for_worker: bool = False) -> Store:
    """Open (creating and migrating if needed) the queue the postgresql:// locator names."""
    if psycopg2 is None:
        raise DatabaseUnavailable(DRIVER_MISSING)
    return PostgresStore(Target(locator), for_worker)
