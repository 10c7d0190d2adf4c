"""The SQLite store: one file shared by every worker and CLI call on the host.

WAL mode so readers never wait for writers; every write in `BEGIN IMMEDIATE` so a
transaction never has to upgrade a read snapshot (which fails at once under contention);
our own short jittered retry instead of SQLite's busy handler, whose growing sleeps let one
process starve the others; `synchronous=FULL` so a job whose enqueue returned survives
power loss. Workers may open with `durable=False` (`synchronous=NORMAL`, still crash-safe and
consistent in WAL mode): a power loss can then undo their last few state changes, and those
jobs run again — what at-least-once delivery allows — while every commit skips an fsync.

Every statement it runs is named in `sqlite_sql.py` (`python -m queuectl.backends.sqlite_sql`
lists them by verb); the schema and its migrations are in `sqlite_schema.py`.
"""

from __future__ import annotations

import os
import sqlite3
import time

from queuectl import policy
from queuectl import settings as cfg
from queuectl.backends import BUSY_TIMEOUT
from queuectl.backends import sqlite_sql as sql
from queuectl.backends.sqlite_checked import check_once
from queuectl.backends.sqlite_gate import WriteGate
from queuectl.backends.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from queuectl.clock import now
from queuectl.errors import Conflict, DatabaseBusy, DatabaseUnavailable, NotFound
from queuectl.job import (
    CANCELED,
    CANCELLABLE,
    COMPLETED,
    DEAD,
    DEFAULT_QUEUE,
    FAILED,
    PENDING,
    PROCESSING,
    STATES,
    TERMINAL,
    Job,
    JobSpec,
    check_not_own_parent,
)
from queuectl.store import (
    USAGE,
    Metrics,
    Notice,
    Outcome,
    OutputSlice,
    Parent,
    PauseInfo,
    QueueInfo,
    Store,
    Submitted,
    Wakeup,
    WorkerInfo,
    serves,
    usage_of,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs every `enqueue` a few ms of imports
    from collections.abc import Callable
    from collections.abc import Iterator as _Iterator
    from typing import Any, TypeVar

    _T = TypeVar("_T")

SQLITE_MAGIC = b"SQLite format 3\x00"

# Leases and heartbeats: seconds on CLOCK_BOOTTIME, which no wall-clock step moves (date -s,
# chrony's makestep, a resumed VM) and which counts suspended time, valid within one boot.
_BOOTTIME = time.CLOCK_BOOTTIME
_boot_id_cache: list[str] = []


def _uptime() -> float:
    return time.clock_gettime(_BOOTTIME)


def _boot_id() -> str:
    """This boot's id: a lease of another boot has expired, whatever its number says."""
    if not _boot_id_cache:
        try:
            with open("/proc/sys/kernel/random/boot_id") as fh:
                _boot_id_cache.append(fh.read().strip())
        except OSError:  # no /proc: the boot's wall-clock start, to the minute, will do
            _boot_id_cache.append(f"booted-{round((now() - _uptime()) / 60)}")
    return _boot_id_cache[0]


def _active_params() -> tuple[float, str, float]:
    """The parameters of a check that a worker is active (policy.ACTIVE_WINDOW)."""
    return now() - policy.ACTIVE_WINDOW, _boot_id(), _uptime() - policy.ACTIVE_WINDOW


def _cutoff(older_than: float | None) -> float:
    """The finished_at at or before which a job is `older_than` seconds old."""
    return float("inf") if older_than is None else now() - older_than


def _key_held(job_id: str, key: str, holder: str, state: str) -> Conflict:
    """retry_dead of a dead job whose unique key a live job holds."""
    return Conflict(f"job {job_id!r} has unique key {key!r}, held by live job {holder!r}"
                    f" ({state}): it cannot run again until that one ends")


def _describe(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return f"database {path} is locked by another process (waited {BUSY_TIMEOUT:g} s)"
    if "full" in low or ("i/o error" in low and _disk_full(path)):
        return f"database {path}: the disk is full"
    if "readonly" in low or "read-only" in low:
        return f"database {path} is read-only for this user"
    if "not a database" in low or "malformed" in low:
        return f"{path} is not a usable SQLite database ({text}); it was left untouched"
    if "unable to open" in low:
        return f"cannot open database {path} ({text})"
    return f"database {path}: {text}"


def _exists(path: str) -> bool:
    """Like os.path.exists, but a directory we may not search raises PermissionError."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file path names now, or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _disk_full(path: str) -> bool:
    """SQLite reports a failed write to a full disk as a plain I/O error at times."""
    try:
        return os.statvfs(os.path.dirname(path) or ".").f_bavail == 0
    except OSError:
        return False


def _permission_denied(path: str, creating: bool = False) -> str:
    """Name the group that grants access, since joining it is the usual fix."""
    import grp

    parent = os.path.dirname(os.path.abspath(path))
    where = parent if creating else path
    # The directory that stops us is the highest one we cannot search (or the file's own
    # directory): its group is the one that grants access.
    blocked = parent
    probe = parent
    while probe != os.path.dirname(probe):
        if not os.access(probe, os.X_OK):
            blocked = probe
        probe = os.path.dirname(probe)
    try:
        group = grp.getgrgid(os.stat(blocked).st_gid).gr_name
    except (OSError, KeyError):
        group = None
    verb = "create" if creating else "open"
    hint = ""
    if group and group != "root":
        hint = (f"; to use this queue, add the user to group {group} "
                f"(sudo usermod -aG {group} $USER) and log in again")
    return f"cannot {verb} database {path}: permission denied on {where}{hint}"


def _unavailable(exc: sqlite3.Error, path: str) -> DatabaseUnavailable:
    busy = isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)
    return (DatabaseBusy if busy else DatabaseUnavailable)(_describe(exc, path))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    low = str(exc).lower()
    return "locked" in low or "busy" in low


class _Transaction:
    """The write transaction of one store, as a plain context manager: a worker opens one
    per job, and a generator-based one costs several times as much to enter and leave."""

    def __init__(self, store: SQLiteStore, gate: WriteGate) -> None:
        self._store = store
        self._gate = gate
        self._conn = store._conn

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn
        self._gate.acquire()  # in line behind other queuectl writers, asleep
        try:
            try:
                conn.execute(sql.BEGIN_WRITE)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self._store._retry(lambda: conn.execute(sql.BEGIN_WRITE))
        except sqlite3.Error as exc:
            self._gate.release()
            raise _unavailable(exc, self._store.path) from None
        except BaseException:
            self._gate.release()
            raise
        return conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        conn = self._conn
        try:
            if kind is None:
                try:
                    conn.execute(sql.COMMIT)
                    return
                except BaseException as failed:
                    exc = failed
            if conn.in_transaction:
                try:
                    conn.execute(sql.ROLLBACK)
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise _unavailable(exc, self._store.path) from None
            if kind is None and exc is not None:
                raise exc  # COMMIT failed with something other than a database error
        finally:
            self._gate.release()


class _Reading:
    """One read transaction (`with store.reading() as c:`): in WAL mode every read inside
    it sees the snapshot its first read took. Inside another one it is that one."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._began = False

    def __enter__(self) -> sqlite3.Connection:
        conn = self._store._conn
        if not conn.in_transaction:
            try:
                self._store._retry(lambda: self._begin(conn))
            except sqlite3.Error as exc:
                raise _unavailable(exc, self._store.path) from None
            self._began = True
        return conn

    @staticmethod
    def _begin(conn: sqlite3.Connection) -> None:
        """BEGIN takes no lock: the first read does, and may find the file busy (a commit in
        rollback mode, a WAL being recovered). Take the snapshot here, where a busy file is
        waited for as for any single read; past it, the reads inside cannot be refused."""
        conn.execute(sql.BEGIN_READ)
        try:
            conn.execute(sql.TAKE_SNAPSHOT).fetchone()
        except sqlite3.Error:
            conn.execute(sql.ROLLBACK)
            raise

    def __exit__(self, *_exc: object) -> None:
        if self._began:
            self._began = False
            conn = self._store._conn
            for end in (sql.COMMIT, sql.ROLLBACK):  # a read: nothing to write, ends at once
                try:
                    conn.execute(end)
                    return
                except sqlite3.Error:
                    continue


class SQLiteStore(Store):
    def __init__(self, path: str | os.PathLike[str], create_dirs: bool = False,
                 durable: bool = True) -> None:
        self.path = os.fspath(path)
        self._synchronous = "FULL" if durable else "NORMAL"
        self._settings = cfg.SettingsCache()
        self._short = False  # shorter than its header says (see _check_header)
        self._wal = False  # its header says WAL mode (see _check_header)
        self._claimed: tuple[str, int] = ("", 0)  # the job id and rowid of our last claim
        self._verify_stop = False  # interrupt_verify: a stopping worker ends its check
        self._conn = self._open(create_dirs)

    # -- opening -----------------------------------------------------------------------------
    def _open(self, create_dirs: bool) -> sqlite3.Connection:
        path = self.path
        try:
            self._check_path(create_dirs)
        except PermissionError:
            raise DatabaseUnavailable(_permission_denied(path)) from None
        before = _identity(path)
        try:
            conn = sqlite3.connect(
                str(path), timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _unavailable(exc, path) from None
        # The file SQLite opened: the same inode before and after connect, so no rename in
        # between can leave us holding one file while believing we hold another.
        self._identity = _identity(path)
        self._replaced = False
        if self._identity is None or self._identity != before:
            conn.close()
            raise DatabaseBusy(f"database {path} was replaced while it was being opened")
        self._conn = conn
        self._gate: WriteGate | None = None  # made on the first write: a refused file gets no side file
        try:
            synchronous = (sql.SYNCHRONOUS_NORMAL if self._synchronous == "NORMAL"
                           else sql.SYNCHRONOUS_FULL)
            self._retry(lambda: conn.execute(synchronous))
            conn.execute(sql.WAL_AUTOCHECKPOINT)
            conn.execute(sql.RECURSIVE_TRIGGERS)  # the cancel trigger covers the chain itself
            if self._synchronous == "NORMAL":  # a worker: its hot set is a few index pages
                conn.execute(sql.SMALL_CACHE)
            self._migrate()
            # A worker, or a file shorter than its header says; a command otherwise finds
            # damage in what it reads.
            if self._synchronous == "NORMAL" or self._short:
                self._probe()
        except sqlite3.Error as exc:
            conn.close()
            raise _unavailable(exc, path) from None
        except DatabaseUnavailable:
            conn.close()
            raise
        return conn

    def _probe(self) -> None:
        """Touch every table and index the hot paths use, so a damaged file is refused at
        open (a worker fails before its first claim) rather than on its first claim. Commands
        skip it: `enqueue` from cron pays for every statement, and a command meets damage
        in what it reads anyway, unless the file is shorter than its header says."""
        for statement in sql.PROBE:
            self._read(statement)  # a damaged page raises DatabaseUnavailable, as in _open

    def _check_path(self, create_dirs: bool) -> None:
        path = self.path
        parent = os.path.dirname(os.path.abspath(path))
        if _exists(parent) and not os.path.isdir(parent):
            raise DatabaseUnavailable(f"cannot open database {path}: {parent} is not a directory")
        if not os.path.isdir(parent):
            if not create_dirs:
                raise DatabaseUnavailable(
                    f"cannot open database {path}: directory {parent} does not exist"
                )
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(f"cannot create {parent}: {exc.strerror}") from None
        if os.path.isdir(path):
            raise DatabaseUnavailable(f"cannot open database {path}: it is a directory")
        if _exists(path):
            self._short, self._wal = self._check_header(path)
            if not os.access(path, os.R_OK | os.W_OK):
                if not os.access(path, os.R_OK):
                    raise PermissionError
                raise DatabaseUnavailable(f"database {path} is read-only for this user")
            if not os.access(parent, os.W_OK | os.X_OK):  # SQLite must create -wal/-shm
                raise DatabaseUnavailable(
                    f"database {path}: its directory {parent} is read-only for this user")
        else:
            self._create_file(path)

    @staticmethod
    def _create_file(path: str) -> None:
        """Create the file ourselves, group-writable (0660 less the umask): SQLite would use
        0644, and copies the database's mode to its -wal and -shm files."""
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
        except FileExistsError:
            pass  # another process was first; SQLite will open theirs
        except PermissionError:
            raise DatabaseUnavailable(_permission_denied(path, creating=True)) from None
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create database {path}: {exc.strerror}") from None

    @staticmethod
    def _check_header(path: str) -> tuple[bool, bool]:
        """Refuse a file that is not SQLite before SQLite gets a chance to write to it.
        Answers (short, wal): short if the file is shorter than its header says (truncated,
        or caught in the middle of a checkpoint, which writes the header before the pages
        after it; the probe at open tells the two apart); wal if the header says WAL mode,
        which spares every open the statement that asks."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(100)
                size = os.fstat(fh.fileno()).st_size
        except PermissionError:
            raise
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot open database {path}: {exc.strerror}") from None
        if head and head[:16] != SQLITE_MAGIC:
            raise DatabaseUnavailable(
                f"{path} is not a SQLite database; refusing to touch it"
            )
        wal = head[18:20] == b"\x02\x02"  # the read and write versions: 2 is WAL
        # The header's page count, when valid (its change counter matches the one stamped
        # beside it), says how long the file should be.
        if len(head) == 100 and head[24:28] == head[92:96]:
            page_size = int.from_bytes(head[16:18], "big")
            pages = int.from_bytes(head[28:32], "big")
            return size < (65536 if page_size == 1 else page_size) * pages, wal
        return False, wal

    def _migrate(self) -> None:
        version = self._retry(lambda: self._conn.execute(sql.SCHEMA_VERSION_OF).fetchone()[0])
        if version > SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"database {self.path} has schema version {version}, newer than this "
                f"queuectl understands ({SCHEMA_VERSION}): upgrade queuectl"
            )
        # Several workers may open a new file at once: every step retries while another
        # holds the lock (switching to WAL takes an exclusive one).
        if version == 0:
            tables = self._retry(lambda: self._conn.execute(sql.TABLES).fetchall())
            if tables and "jobs" not in {t[0] for t in tables}:
                raise DatabaseUnavailable(
                    f"{self.path} is a SQLite database of another application; refusing to touch it"
                )
        # A new file, or one in another journal mode whatever its schema: a backup (`VACUUM
        # INTO` writes rollback mode) put in the database's place. Rollback mode would make
        # readers and writers wait for each other. The switch is written to the header, once.
        if not self._wal:
            self._retry(lambda: self._conn.execute(sql.WAL_MODE).fetchone())
        if version == SCHEMA_VERSION:
            return
        conn = self._conn
        conn.create_function("queuectl_boot_id", 0, _boot_id)
        conn.create_function("queuectl_uptime", 0, _uptime)
        conn.create_function("queuectl_wall", 0, now)
        with self._write() as c:
            current = c.execute(sql.SCHEMA_VERSION_OF).fetchone()[0]
            for v in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    c.execute(statement)
            c.execute(sql.STAMP_SCHEMA_VERSION)

    # -- transactions ------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Run fn, retrying briefly with jitter while another process holds the lock."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = 0.0002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause * int.from_bytes(os.urandom(2), "little") / 65536)  # jitter
            pause = min(pause * 2, 0.002)

    def _write(self) -> _Transaction:
        """One write transaction (`with self._write() as c:`); errors become
        DatabaseUnavailable with a readable line."""
        if self._gate is None:
            self._gate = WriteGate(self.path, BUSY_TIMEOUT)
            self._transaction = _Transaction(self, self._gate)
        return self._transaction

    def _read(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        try:
            return self._retry(lambda: self._conn.execute(statement, params).fetchall())
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None

    # -- submitting --------------------------------------------------------------------------
    def submit(self, specs: list[JobSpec], if_absent: bool = False) -> list[Submitted]:
        done: list[Submitted] = []
        with self._write() as c:
            conf = self._config(c)
            default_retries = conf.max_retries
            t = now()
            insert = sql.ENQUEUE_IF_ABSENT if if_absent else sql.ENQUEUE
            added: dict[str, int] = {}  # jobs inserted per queue, for the counters
            # Unique keys this call stored a job for: the write lock is held from the look-up
            # to the commit, so a key's holder cannot change meanwhile but by this call.
            holders: dict[str, str] = {}
            for spec in specs:
                key = spec.unique
                if key is not None:  # decided before the id is looked at
                    holder = holders.get(key)
                    if holder is None:
                        row = c.execute(sql.LIVE_HOLDER, (key,)).fetchone()
                        holder = None if row is None else row[0]
                    if holder is not None:
                        done.append(Submitted(holder, False))
                        continue
                job_id = spec.id or policy.new_job_id()
                retries = default_retries if spec.max_retries is None else spec.max_retries
                run_at = spec.run_at if spec.run_at is not None else t + (spec.delay or 0.0)
                queue = spec.queue or DEFAULT_QUEUE
                row = (job_id, spec.command, retries, spec.priority, spec.timeout, run_at, t, t,
                       queue, *spec.limits_with(conf), key, spec.cwd, spec.env_json())
                try:
                    inserted = c.execute(insert, row).rowcount
                except sqlite3.IntegrityError:
                    raise Conflict(
                        f"job {job_id!r} already exists (use --if-absent to skip it)"
                    ) from None
                added[queue] = added.get(queue, 0) + inserted
                if inserted and key is not None:
                    holders[key] = job_id
                if inserted and spec.after:  # decided after the key and the id
                    self._add_parents(c, job_id, spec)
                done.append(Submitted(job_id, inserted == 1))
            counted = [(q, n) for q, n in added.items() if n]
            c.executemany(sql.COUNT_ENQUEUED, counted)
            c.executemany(sql.COUNT_PENDING, counted)
        return done

    @staticmethod
    def _add_parents(c: sqlite3.Connection, job_id: str, spec: JobSpec) -> None:
        """The dependency rows of a job just stored, in the order given, and its waiting_on.
        A parent that is absent, dead or canceled raises, and the caller's transaction (the
        whole submit) rolls back."""
        check_not_own_parent(spec)  # a spec built in code skips spec_from_object's check
        waiting = 0
        rows = []
        for pos, parent in enumerate(spec.after or ()):
            found = c.execute(sql.PARENT_STATE, (parent,)).fetchone()
            if found is None:
                raise NotFound(f"parent job {parent!r} not found")
            state = found[0]
            if state in (DEAD, CANCELED):
                raise Conflict(f"parent job {parent!r} is {state}: this job would never run")
            satisfied = state == COMPLETED
            waiting += not satisfied
            rows.append((job_id, parent, pos, int(satisfied)))
        c.executemany(sql.ADD_DEP, rows)
        if waiting:
            c.execute(sql.SET_WAITING_ON, (waiting, job_id))

    # -- the worker's verbs ------------------------------------------------------------------
    def claim_next(self, worker: str, queues: list[str] | None = None,
                   exclude: list[str] | None = None) -> Job | None:
        with self._write() as c:
            return self._claim(c, worker, queues, exclude)

    def _blocked(self, c: sqlite3.Connection) -> set[str] | None:
        """Queues no job may be claimed from right now (paused, or at their limit), read in
        the claiming transaction, which holds the write lock: no claim can slip in between
        this count and our own. None when the whole queue is paused."""
        blocked: set[str] = set()
        for name, limit, paused in c.execute(sql.RESTRICTIONS).fetchall():
            if name is None:
                return None
            if paused or c.execute(sql.PROCESSING_IN_QUEUE, (name,)).fetchone()[0] >= limit:
                blocked.add(name)
        return blocked

    def _pick(self, c: sqlite3.Connection, queues: list[str] | None, blocked: set[str],
              t: float) -> str | None:
        """The id of the job to claim: see Store.claim_next for the order."""
        if queues is not None:  # preference order: the first queue with an eligible job
            for name in queues:
                if name not in blocked:
                    row: tuple[str, int, float] | None = c.execute(
                        sql.BEST_OF_QUEUE, (name, t)).fetchone()
                    if row is not None:
                        return row[0]
            return None
        if not blocked:  # the common case: one look at the index of all waiting jobs
            row = c.execute(sql.BEST_OF_ANY_QUEUE, (t,)).fetchone()
            return None if row is None else row[0]
        # Some queues are held back: the best job of each other queue that waits, found by
        # skipping from queue to queue along the index (cheap however long a held queue is).
        best: tuple[str, int, float] | None = None
        name = ""
        while True:
            name = c.execute(sql.NEXT_WAITING_QUEUE, (name,)).fetchone()[0]
            if name is None:
                break
            if name in blocked:
                continue
            row = c.execute(sql.BEST_OF_QUEUE, (name, t)).fetchone()
            if row is not None and (best is None or (-row[1], row[2]) < (-best[1], best[2])):
                best = row
        return None if best is None else best[0]

    def _claim(self, c: sqlite3.Connection, worker: str,
               queues: list[str] | None = None,
               exclude: list[str] | None = None) -> Job | None:
        """Claim in the caller's write transaction (the statements: sqlite_sql's claim block).
        A worker of every queue that excludes none tries CLAIM_ANY first, which claims
        nothing while a queue is held back; otherwise the restrictions are read (_blocked),
        the job picked (_pick) and claimed by id. Excluded queues are held back like paused
        ones, so they cost the same skip along the index, never a scan of their jobs."""
        t, up = now(), _uptime()
        lease = self._config(c).lease_seconds
        if queues is not None:
            exclude = None  # a list of queues already says which
        if queues is None and not exclude:  # a drain's hot path: one statement, nothing held
            row = c.execute(sql.CLAIM_ANY,
                            (worker, t + lease, _boot_id(), up + lease, t, t, t)).fetchone()
            if row is not None:
                self._claimed = (row[1], row[0])
                return Job.from_row(row[1:])
        blocked = self._blocked(c)
        if blocked is None:
            return None
        if exclude:
            blocked.update(exclude)
        job_id = self._pick(c, queues, blocked, t)
        if job_id is None:
            return None
        row = c.execute(sql.CLAIM_BY_ID,
                        (worker, t + lease, _boot_id(), up + lease, t, t, job_id)).fetchone()
        return Job.from_row(row)

    def heartbeat(self, worker: str, state: str, job: Job | None) -> bool:
        with self._write() as c:
            t, up = now(), _uptime()
            c.execute(sql.BEAT, (t, _boot_id(), up, state, job.id if job else None, worker))
            if job is None:
                return True
            lease = self._config(c).lease_seconds
            held = c.execute(sql.RENEW_LEASE, (t + lease, _boot_id(), up + lease,
                                               job.id, worker, job.attempts)).rowcount
        return held == 1

    def _finish_attempt(
        self, c: sqlite3.Connection, job: Job, outcome: Outcome | None, result: str,
        error: str | None, t: float, state: str,
    ) -> None:
        """An attempt's history row is written once, when it ends (one statement per job
        that printed nothing live; its live output, if any, goes with it), and counted for
        `queuectl metrics` in the same transaction; state is the job's state after it."""
        output = policy.output_tail(outcome.output) if outcome else None
        exit_code = outcome.exit_code if outcome else None
        total = None
        if outcome is not None:
            total = outcome.total if outcome.total is not None else len(outcome.output)
        started = job.started_at or t
        c.execute(
            sql.RECORD_ATTEMPT,
            (job.id, job.attempt_number, job.worker, started, t, result, exit_code, error,
             output, total, *usage_of(outcome)),
        )
        seconds = max(t - started, 0.0)
        c.execute(sql.COUNT_ATTEMPT, (job.queue, policy.counted_outcome(result, state),
                                   policy.duration_bucket(seconds), seconds))
        if outcome is None or outcome.live:
            c.execute(sql.DROP_LIVE_OUTPUT, (job.id,))

    def _complete(self, c: sqlite3.Connection, job: Job, outcome: Outcome) -> bool:
        t = now()
        held = 0
        held_by = (job.id, job.worker, job.attempts)
        claimed_id, rowid = self._claimed
        if claimed_id == job.id:  # the row our claim returned: no lookup of the id
            held = c.execute(sql.COMPLETE_ROW, (t, t, outcome.exit_code, rowid, *held_by)).rowcount
        if not held:  # claimed elsewhere, or the row moved (VACUUM renumbers rowids)
            held = c.execute(sql.COMPLETE_ID, (t, t, outcome.exit_code, *held_by)).rowcount
        if held:
            self._finish_attempt(c, job, outcome, policy.COMPLETED_ATTEMPT, None, t, COMPLETED)
        return held == 1

    def record_success(self, job: Job, outcome: Outcome) -> bool:
        with self._write() as c:
            return self._complete(c, job, outcome)

    def complete_and_claim(self, job: Job, outcome: Outcome, worker: str,
                           queues: list[str] | None = None,
                           exclude: list[str] | None = None) -> tuple[bool, Job | None]:
        with self._write() as c:
            return self._complete(c, job, outcome), self._claim(c, worker, queues, exclude)

    def _fail(
        self, c: sqlite3.Connection, job: Job, outcome: Outcome | None, error: str,
        result: str, conf: cfg.QueueConfig,
    ) -> Job:
        """The one place that decides between a retry, the dead letter queue and, when an
        operator asked for it, canceled."""
        t = now()
        exit_code = outcome.exit_code if outcome else None
        if job.cancel_requested:
            state, run_at, finished = CANCELED, job.run_at, t
            result, error = policy.CANCELED_ATTEMPT, policy.CANCELED_ERROR
        elif policy.retries_spent(job.attempts, job.max_retries):
            state, run_at, finished = DEAD, job.run_at, t
        else:
            state, run_at, finished = FAILED, t + conf.backoff_delay(job.attempts), t
        c.execute(sql.END_ATTEMPT, (state, run_at, finished, t, exit_code, error, job.id))
        self._finish_attempt(c, job, outcome, result, error, t, state)
        job.state, job.run_at, job.finished_at, job.updated_at = state, run_at, finished, t
        job.exit_code, job.last_error, job.lease_expires_at = exit_code, error, None
        return job

    def record_failure(self, job: Job, outcome: Outcome) -> Job | None:
        with self._write() as c:
            row = c.execute(sql.HELD_JOB, (job.id, job.worker, job.attempts)).fetchone()
            if row is None:
                return None
            return self._fail(c, Job.from_row(row), outcome, outcome.error or "failed",
                              policy.FAILED_ATTEMPT, self._config(c))

    def release(self, job: Job, reason: str) -> bool:
        with self._write() as c:
            t = now()
            held = c.execute(sql.RELEASE, (t, job.id, job.worker, job.attempts)).rowcount
            if held:
                self._finish_attempt(c, job, None, policy.INTERRUPTED_ATTEMPT, reason, t,
                                     PENDING)
                return True
            # held, but canceled meanwhile: it ends canceled, not pending
            row = c.execute(sql.HELD_JOB, (job.id, job.worker, job.attempts)).fetchone()
            if row is None:
                return False
            self._fail(c, Job.from_row(row), None, reason, policy.INTERRUPTED_ATTEMPT, self._config(c))
        return True

    def _reclaim(self, lost: str, params: tuple[Any, ...], why: str) -> list[Job]:
        """Fail (or end dead or canceled) every attempt the `lost` statement returns."""
        with self._write() as c:
            conf = self._config(c)
            rows = c.execute(lost, params).fetchall()
            jobs = []
            for row in rows:
                job = Job.from_row(row)
                jobs.append(self._fail(c, job, None, policy.lost_error(job.worker, why),
                                       policy.LOST_ATTEMPT, conf))
        return jobs

    def reclaim_expired(self) -> list[Job]:
        # A read first: almost always nothing has expired, and a read costs no write lock.
        # It looks at every processing job (a partial index: as many rows as running jobs).
        if not self._read(sql.ANY_EXPIRED, (now(), _boot_id(), _uptime())):
            return []
        return self._reclaim(sql.EXPIRED_JOBS, (now(), _boot_id(), _uptime()),
                             policy.LEASE_EXPIRED)

    def reclaim_worker(self, worker: str) -> list[Job]:
        return self._reclaim(sql.JOBS_OF_WORKER, (worker,), policy.WORKER_RESTARTED)

    # -- operators ---------------------------------------------------------------------------
    def retry_dead(self, job_id: str) -> Job:
        with self._write() as c:
            row = c.execute(sql.JOB_STATE, (job_id,)).fetchone()
            if row is None:
                raise policy.no_such_job(job_id)
            state, key = row
            if state != DEAD:
                raise policy.not_dead(job_id, state)
            if key is not None:
                held = c.execute(sql.LIVE_HOLDER, (key,)).fetchone()
                if held is not None:
                    raise _key_held(job_id, key, *held)
            t = now()
            c.execute(sql.RETRY_DEAD, (t, t, job_id))
            return Job.from_row(c.execute(sql.JOB, (job_id,)).fetchone())

    # -- dependencies and reruns -------------------------------------------------------------
    def parents(self, job_id: str) -> list[Parent]:
        try:
            with self.reading() as c:
                rows = c.execute(sql.PARENTS, (job_id,)).fetchall()
                if not rows and c.execute(sql.JOB_EXISTS, (job_id,)).fetchone() is None:
                    raise policy.no_such_job(job_id)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None
        return [Parent(parent, state, bool(satisfied)) for parent, state, satisfied in rows]

    def canceled_dependents(self, job_id: str) -> list[Job]:
        return [Job.from_row(row) for row in self._read(sql.CANCELED_DEPENDENTS, (job_id,))]

    def retry(self, job_id: str, delay: float | None = None) -> Job:
        with self._write() as c:
            row = c.execute(sql.JOB, (job_id,)).fetchone()
            if row is None:
                raise policy.no_such_job(job_id)
            job = Job.from_row(row)
            if job.state not in TERMINAL:
                raise Conflict(f"job {job_id!r} is {job.state}: only a completed, dead or"
                               " canceled job can be retried")
            if job.unique is not None:
                held = c.execute(sql.LIVE_HOLDER, (job.unique,)).fetchone()
                if held is not None:
                    raise _key_held(job_id, job.unique, *held)
            waiting = 0
            for parent, state, satisfied in c.execute(sql.PARENTS, (job_id,)).fetchall():
                if satisfied:
                    continue
                if state is None:
                    raise Conflict(f"parent job {parent!r} no longer exists: this job would"
                                   " never run")
                if state in (DEAD, CANCELED):
                    raise Conflict(f"parent job {parent!r} is {state}: retry it first")
                waiting += 1
            t = now()
            c.execute(sql.RETRY_JOB, (t + (delay or 0.0), t, waiting, job_id))
            return Job.from_row(c.execute(sql.JOB, (job_id,)).fetchone())

    def get(self, job_id: str, history: bool = False) -> Job:
        rows = self._read(sql.JOB, (job_id,))
        if not rows:
            raise policy.no_such_job(job_id)
        job = Job.from_row(rows[0])
        if history:
            job.history = []
            for (attempt, worker, started, finished, result, code, error, output,
                 *used) in self._read(sql.HISTORY, (job_id,)):
                job.history.append({
                    "attempt": attempt, "worker": worker, "started_at": started,
                    "finished_at": finished, "outcome": result, "exit_code": code,
                    "error": error, "output": output, **dict(zip(USAGE, used, strict=True)),
                })
        return job

    def iter_jobs(self, state: str | None = None, limit: int | None = None,
                  queue: str | None = None, unique: str | None = None) -> _Iterator[Job]:
        limited = limit is not None
        params: tuple[Any, ...]
        if unique is not None:
            select, params = sql.by_key(
                sql.LIST_JOBS_OF_KEY_LIMITED if limited else sql.LIST_JOBS_OF_KEY,
                unique, state, queue)
        elif queue is not None and state:
            select, params = sql.by_state(
                sql.LIST_JOBS_BY_STATE_LIMITED if limited else sql.LIST_JOBS_BY_STATE,
                state, queue)
        elif queue is not None:
            select = sql.LIST_JOBS_OF_QUEUE_LIMITED if limited else sql.LIST_JOBS_OF_QUEUE
            params = (queue,)
        elif state:
            select = sql.LIST_JOBS_OF_STATE_LIMITED if limited else sql.LIST_JOBS_OF_STATE
            params = (state,)
        else:
            select = sql.LIST_JOBS_LIMITED if limited else sql.LIST_JOBS
            params = ()
        if limited:
            params += (limit,)
        # A cursor of its own, read in batches: a million jobs stream in flat memory.
        try:
            cursor = self._retry(lambda: self._conn.execute(select, params))
            while rows := cursor.fetchmany(500):
                for row in rows:
                    yield Job.from_row(row)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None

    def counts(self, queue: str | None = None) -> dict[str, int]:
        result = dict.fromkeys(STATES, 0)
        if queue is None:
            rows = self._read(sql.COUNTS, _active_params())
        else:
            rows = self._read(sql.COUNTS_OF_QUEUE,
                              (queue, queue, queue, *_active_params(), queue, queue))
        for key, n in rows:
            result[key] = n
        return {k: result.get(k, 0)
                for k in (*STATES, "blocked", "active_workers", "notices")}

    def remaining(self, queues: list[str] | None = None,
                  exclude: list[str] | None = None) -> int:
        if queues is None and exclude:
            n: int = self._read(sql.in_queues(sql.REMAINING_EXCEPT_QUEUES, exclude),
                                exclude)[0][0]
        elif queues is None:
            n = self._read(sql.REMAINING)[0][0]
        else:
            n = self._read(sql.in_queues(sql.REMAINING_IN_QUEUES, queues), queues)[0][0]
        return n

    def seconds_until_due(self, queues: list[str] | None = None,
                          exclude: list[str] | None = None) -> float | None:
        if queues is None and exclude:
            due = self._read(sql.in_queues(sql.FIRST_DUE_EXCEPT_QUEUES, exclude), exclude)[0][0]
        elif queues is None:
            due = self._read(sql.FIRST_DUE)[0][0]
        else:
            due = self._read(sql.in_queues(sql.FIRST_DUE_IN_QUEUES, queues), queues)[0][0]
        return None if due is None else max(0.0, due - now())

    def wakeup(self, watch: bool = False, queues: list[str] | None = None,
               exclude: list[str] | None = None) -> Wakeup:
        from queuectl.backends.inotify import watch as watch_file

        return watch_file(self.path)  # every change of the file: a watcher needs no more

    # -- configuration -----------------------------------------------------------------------
    def _config(self, c: sqlite3.Connection) -> cfg.QueueConfig:
        return self._settings.get(
            lambda: dict(c.execute(sql.CONFIG).fetchall()))

    def config_items(self) -> dict[str, cfg.Value]:
        items = cfg.merge(dict(self._read(sql.CONFIG)))
        self._settings.fill(items)
        return items

    def set_config(self, key: str, value: cfg.Value) -> None:
        self._settings.forget()
        with self._write() as c:
            c.execute(sql.SET_CONFIG, (key, str(value)))

    # -- workers -----------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        t = now()
        info.started_at = info.heartbeat_at = t
        with self._write() as c:
            c.execute(
                sql.REGISTER_WORKER,
                (info.name, info.host, info.pid, info.pid_start, info.started_at,
                 info.heartbeat_at, _boot_id(), _uptime(), info.state, info.job_id,
                 None if info.queues is None else ",".join(info.queues),
                 ",".join(info.exclude) if info.exclude else None),
            )

    def unregister_worker(self, name: str) -> None:
        with self._write() as c:
            c.execute(sql.UNREGISTER_WORKER, (name,))

    def workers(self) -> list[WorkerInfo]:
        found = []
        for (name, host, pid, pid_start, started_at, heartbeat_at, state, job_id, queues,
             exclude) in self._read(sql.WORKERS):
            found.append(WorkerInfo(name, host, pid, pid_start, started_at, heartbeat_at, state,
                                    job_id, None if queues is None else queues.split(","),
                                    exclude.split(",") if exclude else None))
        return found

    def seconds_since_heartbeat(self, name: str) -> float | None:
        rows = self._read(sql.LAST_BEAT, (name,))
        if not rows:
            return None
        wall: float
        boot: str | None
        clock: float | None
        wall, boot, clock = rows[0]
        if boot is None or clock is None:  # written by a queuectl older than schema 4
            return now() - wall
        if boot != _boot_id():  # before this boot: at least as long ago as the boot
            return max(now() - wall, _uptime())
        return _uptime() - clock

    def verify(self) -> float | None:
        """quick_check once per file and boot (see sqlite_checked): the file this connection
        holds, identified by its device and inode."""
        assert self._identity is not None  # _open refused a file without one
        return check_once(self.path, self._identity, _boot_id(), self._quick_check,
                          lambda: self._verify_stop)

    def interrupt_verify(self) -> None:
        self._verify_stop = True
        self._conn.interrupt()  # sqlite3_interrupt: meant to be called from another thread

    def _quick_check(self) -> None:
        try:
            problems = self._retry(lambda: self._conn.execute(sql.QUICK_CHECK).fetchall())
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None
        if [row[0] for row in problems] != ["ok"]:
            raise DatabaseUnavailable(
                f"{self.path} is not a usable SQLite database (damaged: {problems[0][0]}); "
                "it was left untouched")

    def info(self) -> dict[str, Any]:
        rows = self._read(sql.JOURNAL_MODE)
        return {
            "database": self.path,
            "backend": "sqlite",
            "schema_version": self._read(sql.SCHEMA_VERSION_OF)[0][0],
            "config": self.config_items(),
            "sqlite": {
                "version": sqlite3.sqlite_version,
                "journal_mode": rows[0][0],
                "synchronous": {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(
                    self._read(sql.SYNCHRONOUS)[0][0], "?"),
            },
        }

    # -- reads for `queuectl top` (autocommit SELECTs: never the write lock) -----------------
    def reading(self) -> _Reading:
        return _Reading(self)

    def now(self) -> float:
        return now()

    def recent_jobs(self, state: str, limit: int, queue: str | None = None) -> list[Job]:
        if state in (FAILED, DEAD):  # top's: off their own index
            rows = self._read(sql.RECENT_FAILURES_ANY, (state, limit)) if queue is None else (
                self._read(sql.RECENT_FAILURES_IN_QUEUE, (state, queue, limit)))
            return [Job.from_row(row) for row in rows]
        select, params = sql.by_state(sql.RECENT_JOBS, state, queue)
        rows = self._read(select, (*params, limit))
        return [Job.from_row(row) for row in rows]

    def completed_since(self, seconds: float) -> dict[str, int]:
        rows = self._read(sql.COMPLETED_SINCE, (now() - seconds,))
        return dict(rows)

    def still_current(self) -> bool:
        """One stat. A file we may no longer stat (permissions changed) is not called
        replaced: only a different or missing one is. The first time it is, the old file's
        -wal and -shm, if still at the path, are unlinked (see _drop_stale_companions)."""
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino) == self._identity
        except (FileNotFoundError, NotADirectoryError):
            current = False
        except OSError:
            return True
        if not current and not self._replaced:
            self._replaced = True
            self._drop_stale_companions()
        return current

    def _drop_stale_companions(self) -> None:
        """SQLite pairs a database with `<path>-wal` and `<path>-shm` by name. When the file
        was moved away or replaced (`mv backup queue.db`) but the old file's -wal/-shm
        stayed, the next process to open the new file would read the old database's pages
        out of that WAL on top of it and find it malformed. So the old file's companions,
        recognised as the very files this process has open, are unlinked: our connection
        keeps using them (SQLite does not checkpoint or delete a moved database on close)
        and every new opener starts the new file with fresh ones. A -wal or -shm that is
        not ours (`rm queue.db*`, then a new file) is never touched."""
        ours = set()
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return
        for fd in fds:
            try:
                st = os.stat(f"/proc/self/fd/{fd}")  # the open file itself, even if unlinked
            except OSError:
                continue
            ours.add((st.st_dev, st.st_ino))
        for companion in (self.path + "-wal", self.path + "-shm"):
            try:
                if _identity(companion) in ours:
                    os.unlink(companion)
            except OSError:
                pass

    # -- operators living with the queue: cancel, pause, retention, live output, backup ------
    def cancel(self, job_id: str) -> Job:
        with self._write() as c:
            row = c.execute(sql.JOB, (job_id,)).fetchone()
            if row is None:
                raise policy.no_such_job(job_id)
            job = Job.from_row(row)
            if job.state not in CANCELLABLE:
                raise policy.not_cancellable(job_id, job.state)
            t = now()
            if job.state == PROCESSING:
                c.execute(sql.REQUEST_CANCEL, (t, job_id))
            else:
                c.execute(sql.CANCEL_WAITING, (t, t, policy.CANCELED_ERROR, job_id))
            return Job.from_row(c.execute(sql.JOB, (job_id,)).fetchone())

    def cancel_state(self, state: str, limit: int, queue: str | None = None) -> int:
        if state not in CANCELLABLE:
            raise ValueError(f"cannot cancel {state} jobs")
        with self._write() as c:
            t = now()
            if state == PROCESSING:
                request, params = sql.by_state(sql.REQUEST_CANCEL_IN_STATE, state, queue)
                return c.execute(request, (t, *params, limit)).rowcount
            cancel, params = sql.by_state(sql.CANCEL_WAITING_IN_STATE, state, queue)
            return c.execute(cancel, (t, t, policy.CANCELED_ERROR, *params, limit)).rowcount

    def cancel_requested(self, job: Job) -> bool:
        rows = self._read(sql.CANCEL_REQUESTED, (job.id, job.worker, job.attempts))
        return bool(rows and rows[0][0])

    def pause(self, by: str, queue: str | None = None) -> bool:
        with self._write() as c:
            if queue is not None:
                return c.execute(sql.PAUSE_QUEUE, (queue, by, now())).rowcount == 1
            return c.execute(sql.PAUSE_ALL, (by, now())).rowcount == 1

    def resume(self, queue: str | None = None) -> bool:
        with self._write() as c:
            if queue is not None:
                done = c.execute(sql.RESUME_QUEUE, (queue,)).rowcount == 1
                self._drop_empty_setting(c, queue)
                return done
            return c.execute(sql.RESUME_ALL).rowcount == 1

    def paused(self, queue: str | None = None) -> PauseInfo | None:
        if queue is not None:
            rows = self._read(sql.PAUSE_OF_QUEUE, (queue,))
        else:
            rows = self._read(sql.PAUSE_OF_ALL)
        return PauseInfo(*rows[0]) if rows else None

    @staticmethod
    def _drop_empty_setting(c: sqlite3.Connection, queue: str) -> None:
        """A queue without a limit or a pause needs no row (`queue list` shows it while it
        has jobs)."""
        c.execute(sql.DROP_EMPTY_QUEUE_ROW, (queue,))

    def count_matching(self, state: str, older_than: float | None = None,
                       queue: str | None = None) -> int:
        if older_than is None:
            count, params = sql.by_state(sql.COUNT_IN_STATE, state, queue)
            n: int = self._read(count, params)[0][0]
            return n
        cutoff = _cutoff(older_than)
        count, params = sql.by_state(sql.COUNT_FINISHED_BEFORE, state, queue)
        n = self._read(count, (*params, cutoff, cutoff))[0][0]
        return n

    def _finished_ids(self, c: sqlite3.Connection, state: str, older_than: float | None,
                      limit: int, queue: str | None = None) -> list[str]:
        cutoff = _cutoff(older_than)
        select, params = sql.by_state(sql.FINISHED_BEFORE, state, queue)
        return [r[0] for r in c.execute(select, (*params, cutoff, cutoff, limit)).fetchall()]

    def purge(self, state: str, older_than: float | None, limit: int,
              queue: str | None = None) -> int:
        if state not in TERMINAL:
            raise ValueError(f"cannot purge {state} jobs")
        with self._write() as c:
            ids = [(i,) for i in self._finished_ids(c, state, older_than, limit, queue)]
            c.executemany(sql.PURGE_HISTORY, ids)
            c.executemany(sql.DROP_LIVE_OUTPUT, ids)
            c.executemany(sql.PURGE_JOB, ids)
        return len(ids)

    def retry_dead_many(self, older_than: float | None, limit: int) -> int:
        """Up to `limit` dead jobs that may come back, oldest first: REVIVABLE_DEAD leaves
        out those whose key a live job holds; of two of one key in a pick only the older
        comes back, and the next pick no longer sees the other (its key is held now). So a
        short count means no other dead job could come back."""
        revived = 0
        cutoff = _cutoff(older_than)
        with self._write() as c:
            t = now()
            while revived < limit:
                wanted = limit - revived
                rows = c.execute(sql.REVIVABLE_DEAD, (cutoff, cutoff, wanted)).fetchall()
                keys: set[str] = set()
                revive = []
                for job_id, key in rows:
                    if key is not None:
                        if key in keys:
                            continue
                        keys.add(key)
                    revive.append((t, t, job_id))
                c.executemany(sql.RETRY_DEAD, revive)
                revived += len(revive)
                if len(rows) < wanted:  # every dead job that could come back did
                    break
        return revived

    def take_duty(self, name: str, holder: str, seconds: float) -> bool:
        with self._write() as c:
            t = now()
            return c.execute(sql.TAKE_DUTY, (name, holder, t + seconds, t)).rowcount == 1

    def append_output(self, job: Job, offset: int, data: bytes) -> bool:
        with self._write() as c:
            if not c.execute(sql.HOLDS, (job.id, job.worker, job.attempts)).fetchone():
                return False
            number = job.attempt_number  # the history's number; fencing is by attempts
            c.execute(sql.APPEND_OUTPUT, (job.id, number, offset, data))
            c.execute(sql.TRIM_LIVE_OUTPUT,
                      (job.id, number, offset + len(data) - policy.OUTPUT_LIMIT))
        return True

    def read_output(self, job_id: str, attempt: int | None, offset: int) -> OutputSlice | None:
        conn = self._conn
        try:  # one snapshot: the job's state, its live chunks or its history row
            self._retry(lambda: conn.execute(sql.BEGIN_READ))
            try:
                return self._read_output(conn, job_id, attempt, offset)
            finally:
                conn.execute(sql.COMMIT)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None

    @staticmethod
    def _read_output(c: sqlite3.Connection, job_id: str, attempt: int | None,
                     offset: int) -> OutputSlice | None:
        row = c.execute(sql.JOB_PROGRESS, (job_id,)).fetchone()
        if row is None:
            raise policy.no_such_job(job_id)
        state, current = row
        if state == PROCESSING and attempt in (None, current):
            chunks = c.execute(sql.LIVE_OUTPUT_FROM, (job_id, current, offset)).fetchall()
            start, data = offset, bytearray()
            for chunk_start, chunk in chunks:
                if not data:
                    start = max(offset, chunk_start)
                elif chunk_start != start + len(data):
                    break  # a gap: the next call reports it
                data += chunk[start + len(data) - chunk_start:]
            return OutputSlice(current, start, bytes(data), True)
        if attempt is None:
            found = c.execute(sql.LAST_ENDED_OUTPUT, (job_id,)).fetchone()
        else:
            found = c.execute(sql.ENDED_OUTPUT_OF_ATTEMPT, (job_id, attempt)).fetchone()
        if found is None:
            return None
        number, tail, total = found
        tail = tail or b""
        total = len(tail) if total is None else total
        begins = total - len(tail)
        start = max(offset, begins)
        return OutputSlice(number, start, tail[start - begins:], False)

    def backup(self, path: str) -> None:
        if os.path.lexists(path):
            raise Conflict(f"{path} already exists; choose a new file name")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise DatabaseUnavailable(f"cannot write {path}: directory {parent} does not exist")
        temp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.partial")
        try:
            # VACUUM INTO copies one read snapshot: consistent while workers keep writing.
            self._retry(lambda: self._conn.execute(sql.VACUUM_INTO, (temp,)))
            os.link(temp, path)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise Conflict(f"{path} already exists; choose a new file name") from None
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot write {path}: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"backup to {path} failed: {exc}") from None
        finally:
            try:
                os.unlink(temp)
            except OSError:
                pass

    # -- named queues ------------------------------------------------------------------------
    def set_queue_concurrency(self, queue: str, limit: int) -> None:
        with self._write() as c:
            c.execute(sql.SET_CONCURRENCY, (queue, limit))
            self._drop_empty_setting(c, queue)

    def queues(self) -> list[QueueInfo]:
        try:
            with self.reading() as conn:
                return self._queues(conn)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None

    @staticmethod
    def _queues(c: sqlite3.Connection) -> list[QueueInfo]:
        t = now()
        found: dict[str, QueueInfo] = {}

        def entry(name: str) -> QueueInfo:
            if name not in found:
                found[name] = QueueInfo(name, dict.fromkeys(STATES, 0), None, 0, 0, None)
            return found[name]

        for name, state, n in c.execute(sql.QUEUE_COUNTS):
            entry(name).counts[state] = n
        for name, limit, by, since, on_dead in c.execute(sql.QUEUE_SETTINGS):
            info = entry(name)
            info.concurrency = limit
            info.paused = None if since is None else PauseInfo(by, since)
            info.on_dead = on_dead or ""
        for name, n in c.execute(sql.QUEUE_NOTICES):
            entry(name).notices = n
        for name, due in SQLiteStore._first_due_by_queue(c).items():
            if due <= t:
                entry(name).oldest_waiting = t - due
        serving = [(None if names is None else names.split(","),
                    exclude.split(",") if exclude else None)
                   for names, exclude in c.execute(sql.ACTIVE_WORKER_QUEUES, _active_params())]
        for names, _ in serving:
            for name in names or ():
                entry(name)
        for info in found.values():
            info.workers = sum(serves(info.name, names, exclude) for names, exclude in serving)
        return [found[name] for name in sorted(found)]

    @staticmethod
    def _first_due_by_queue(c: sqlite3.Connection) -> dict[str, float]:
        """Each queue's earliest run_at among its eligible waiting jobs: one index probe per
        (queue, priority) group (FIRST_WAITING_OF_*), never a walk of the waiting jobs."""
        first: dict[str, float] = {}
        row = c.execute(sql.FIRST_WAITING_OF_NEXT_QUEUE, ("",)).fetchone()
        while row is not None:
            queue, priority, run_at = row
            first[queue] = min(run_at, first.get(queue, run_at))
            row = (c.execute(sql.FIRST_WAITING_OF_LOWER_PRIORITY, (queue, priority)).fetchone()
                   or c.execute(sql.FIRST_WAITING_OF_NEXT_QUEUE, (queue,)).fetchone())
        return first

    # -- on-dead notices ---------------------------------------------------------------------
    def set_queue_on_dead(self, queue: str, command: str) -> None:
        with self._write() as c:
            c.execute(sql.SET_ON_DEAD, (queue, command))
            self._drop_empty_setting(c, queue)

    def take_notice(self, holder: str, seconds: float) -> Notice | None:
        if not self._read(sql.ANY_NOTICE_DUE, (now(), _boot_id(), _uptime())):
            return None
        with self._write() as c:
            boot, up = _boot_id(), _uptime()
            row = c.execute(sql.TAKE_NOTICE, (holder, boot, up + seconds, now(), boot, up)
                            ).fetchone()
            if row is None:
                return None
            nid, job_id, queue, command, exit_code, attempts, attempt, last_error, tries = row
            hook = c.execute(sql.NOTICE_HOOK, (queue,)).fetchone()[0]
            out = c.execute(sql.NOTICE_OUTPUT, (job_id, attempt)).fetchone()
        output = bytes(out[0] or b"") if out else b""
        return Notice(nid, job_id, queue, command, exit_code, attempts, last_error, tries,
                      hook, output[-policy.NOTICE_INPUT:], holder)

    def notice_delivered(self, notice: Notice) -> bool:
        with self._write() as c:
            return c.execute(sql.DROP_NOTICE, (notice.id, notice.holder)).rowcount == 1

    def notice_failed(self, notice: Notice, error: str, tries: int, delay: float) -> bool:
        with self._write() as c:
            if notice.tries + 1 >= tries:
                return c.execute(sql.DROP_NOTICE, (notice.id, notice.holder)).rowcount == 1
            c.execute(sql.RETRY_NOTICE, (error, now() + delay, notice.id, notice.holder))
        return False

    # -- metrics -----------------------------------------------------------------------------
    def metrics(self) -> Metrics:
        try:
            with self.reading() as conn:
                queues = self._queues(conn)
                paused = conn.execute(sql.GLOBAL_PAUSE).fetchone()
                workers = dict(conn.execute(sql.ACTIVE_WORKERS_BY_HOST, _active_params()).fetchall())
                counters = conn.execute(sql.COUNTERS).fetchall()
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None
        return Metrics(queues, paused is not None, workers, counters)

    def close(self) -> None:
        self._conn.close()
        if self._gate is not None:
            self._gate.close()


def open_store(path: str | os.PathLike[str], create_dirs: bool = False,
               durable: bool = True) -> Store:
    """Open (creating and migrating if needed) the store at path."""
    return SQLiteStore(path, create_dirs, durable)

