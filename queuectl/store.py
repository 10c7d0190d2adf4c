"""The storage contract: everything the worker and the CLI need from a queue backend.

A backend is a module under `queuectl/backends/` with a `Store` subclass; `queuectl.locator`
is the one factory that picks it from the locator (a file path means SQLite, a
`postgresql://` URL PostgreSQL). Nothing above this interface imports a backend, and the
queue's rules (retry or dead, backoff, caps, defaults) live in `queuectl.policy` and
`queuectl.settings`, so every backend applies the same ones. `tests/contract/` checks every
promise below through this interface only, on every backend.

Common to every method:
- A method that changes state is one transaction: it happens whole or not at all, and a
  process killed at any point leaves either the old state or the new one.
- Times are epoch seconds (floats) taken from the backend's one clock: the host clock for
  SQLite (one host), the database server's clock for PostgreSQL (many hosts). Callers never
  compare these times with their own clock; where a caller needs a wait, the store answers
  in relative seconds (`seconds_until_due`).
- Lease expiry, heartbeat age and "active" are measured on a clock that a step of a
  worker's wall clock cannot move: SQLite uses the host's CLOCK_BOOTTIME with its boot id
  (a reboot ends every lease), PostgreSQL the server's clock. The epoch times reported for
  them (`heartbeat_at`, `lease_expires_at`) are for display only.
- An attempt is "still held" by the worker that claimed it while the job is `processing`
  with that worker's name and the same `attempts` count: a reclaimed attempt (lease expired,
  worker restarted) is no longer held, and every write fenced on it changes nothing. The
  pair is unique because a worker runs one attempt at a time and a name is refused while a
  live worker holds it (`Worker.start`); `retry_dead` resets `attempts`, so a late write of
  a lost attempt is fenced off only while no worker of the same name holds the job again
  (the same name can return only after the old process is gone).
- Errors: `DatabaseBusy` when the database stayed locked or refused new connections past
  the wait budget (worth retrying); `DatabaseUnavailable` when it cannot be opened, read or
  written (gone, damaged, full, read-only, unreachable, schema newer than this code);
  `NotFound` and `Conflict` only where a method names them. Each carries a one-line message
  without secrets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from queuectl.job import Job, JobSpec
from queuectl.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from queuectl import settings as cfg
    from queuectl.errors import DatabaseUnavailable


class WorkerInfo(Record):
    name: str
    host: str
    pid: int
    pid_start: str | None
    started_at: float
    heartbeat_at: float
    state: str
    job_id: str | None
    queues: list[str] | None = None  # what it serves, in order of preference; None: all
    # With queues None: the queues it leaves alone (its host's lane files'); None or []: none.
    exclude: list[str] | None = None


def serves(queue: str, queues: list[str] | None, exclude: list[str] | None) -> bool:
    """Whether a worker of `queues` (None: every queue but `exclude`) may take `queue`'s
    jobs: what `queues()` and `counts(queue)` count as a queue's active workers."""
    if queues is None:
        return not exclude or queue not in exclude
    return queue in queues


class Outcome(Record):
    """How one run of a command ended, as the worker observed it."""

    exit_code: int | None
    error: str | None
    output: bytes
    duration: float
    total: int | None = None  # bytes printed in all (output is the tail); None: len(output)
    live: bool = False  # some of it was written with append_output
    # Resource usage: what the attempt used, from its own cgroup (workers under systemd with a
    # delegated subtree only; None elsewhere, and for attempts that never started). CPU
    # time counts every process that ran in the attempt, detached ones included; peak
    # memory needs the memory controller in the worker's subtree. Backends store them in
    # the attempt's history row (`get(..., history=True)` returns them under these names).
    cpu_user_usec: int | None = None
    cpu_system_usec: int | None = None
    memory_peak_bytes: int | None = None


USAGE = ("cpu_user_usec", "cpu_system_usec", "memory_peak_bytes")  # history keys, in order


def usage_of(outcome: Outcome | None) -> tuple[int | None, int | None, int | None]:
    """An attempt's usage figures in USAGE order, for its history row (None: not measured)."""
    if outcome is None:
        return None, None, None
    return outcome.cpu_user_usec, outcome.cpu_system_usec, outcome.memory_peak_bytes


class PauseInfo(Record):
    """Who paused the queue, from where, and when (store clock)."""

    by: str
    since: float


class Beat(Record):
    """What a worker's heartbeat answers besides itself (`Store.beat`): what it would
    otherwise ask in statements of their own on every beat."""

    held: bool  # the running job's lease still held (True without a job): see heartbeat
    settings: dict[str, Any]  # every setting, as config_items answers
    paused: PauseInfo | None  # the global pause, as paused() answers
    expired: bool  # a lease may have run out: reclaim_expired is worth calling


class QueueInfo(Record):
    """One named queue as `queues` reports it."""

    name: str
    counts: dict[str, int]  # jobs per state (every state of job.STATES, zeros included)
    paused: PauseInfo | None  # this queue's own pause (the global one is `paused()`)
    concurrency: int  # at most this many of its jobs processing at once; 0: no limit
    workers: int  # active workers (policy.ACTIVE_WINDOW) that serve it, by name or as "all"
    oldest_waiting: float | None  # seconds its longest-due eligible job has waited (blocked
    # jobs are not eligible); None
    on_dead: str = ""  # its own on-dead command ('': none, the global one applies)
    notices: int = 0  # dead-job notices of its jobs still to deliver (see take_notice)


class Notice(Record):
    """One dead job's pending on-dead notice, as `take_notice` hands it out: what the hook's
    environment needs, snapshotted when the job went dead, and its stdin."""

    id: int
    job_id: str
    queue: str
    command: str
    exit_code: int | None
    attempts: int
    last_error: str | None
    tries: int  # deliveries that failed so far
    hook: str  # the command to run: the queue's on-dead, else the global one ('': none now)
    output: bytes  # the last output of the job's last attempt (policy.NOTICE_INPUT at most)
    holder: str


class OutputSlice(Record):
    """Part of one attempt's output stream, as `read_output` returns it.

    `data` starts at byte `offset` of everything the attempt printed (its stdout and stderr
    together). `offset` may be past what the caller asked for: those bytes are no longer
    kept (only the last `policy.OUTPUT_LIMIT` are). `running` is False once the attempt has
    ended; then `data` reaches the end of its output."""

    attempt: int
    offset: int
    data: bytes
    running: bool


class Metrics(Record):
    """What `queuectl metrics` exports, read from one snapshot (see `Store.metrics`)."""

    queues: list[QueueInfo]  # as `queues()` returns them: counts, pause, oldest waiting
    paused: bool  # the global pause
    workers: dict[str, int]  # active workers (policy.ACTIVE_WINDOW) per host
    # The stored counters, summed over whatever rows a backend keeps them in: one tuple
    # (queue, event, le, count, seconds) per kind. event `enqueued` (le 0, seconds 0), or
    # how an attempt ended (`policy.ATTEMPT_OUTCOMES`), then le is the upper bound of its
    # duration bucket (`policy.DURATION_BUCKETS`, or inf) and seconds the durations' sum.
    counters: list[tuple[str, str, float, int, float]]


class Parent(Record):
    """One parent of a job (`JobSpec.after`), as `Store.parents` reports it."""

    id: str
    state: str | None  # None: deleted since (purge, retention)
    satisfied: bool  # it completed (recorded then: true even once it is deleted)


class Submitted(Record):
    """What became of one spec given to `Store.submit`."""

    id: str  # the job's id: the new job's, or the one that was there already
    stored: bool  # False: nothing was stored for this spec (see `submit`)


class Wakeup(ABC):
    """What an idle worker waits on: readable when work may have arrived.

    A lost or spurious wakeup is harmless: the worker also polls every `poll_interval`
    seconds, so a missed event delays a job and never strands it."""

    poll_interval: float = 1.0

    @abstractmethod
    def fileno(self) -> int | None:
        """A descriptor to select() on, or None to rely on polling alone. Asked before each
        wait: a backend may get ready there (PostgreSQL: reconnect, register again)."""

    @abstractmethod
    def drain(self) -> bool:
        """Consume what is pending; True if it may concern new work. Never raises."""

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        """How it hears of new work, for the worker's start-up log line."""
        return "polling"

    def arm(self) -> None:
        """Watch for changes again (after disarm). The caller looks at the queue after
        arming, so nothing committed before is missed. Never raises."""
        return None  # nothing to do where watching costs nobody anything

    def disarm(self) -> None:
        """Stop watching while busy: a backend whose watch costs every writer something
        (inotify: each write to the database, for each watcher) spares them meanwhile."""
        return None

    def pass_on(self) -> None:
        """News this wakeup was woken for that nobody here will act on (job slots: it came
        as the last idle slot took another job): let every idle worker hear it. Never
        raises. Default: nothing, where every idle worker hears every change anyway."""
        return None

    def arm_busy(self) -> None:
        """Watch again while a long job runs (its cancel checks), not for new work: a
        wakeup shared by job slots gives such a watcher every change, and never the
        turn to claim (`slotwakeup`)."""
        self.arm()


class PollOnly(Wakeup):
    """For backends or hosts without change notification: poll briskly instead."""

    poll_interval = 0.25

    def fileno(self) -> int | None:
        return None

    def drain(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _EachReadAlone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


_EACH_READ_ALONE = _EachReadAlone()


class Store(ABC):
    # -- submitting -------------------------------------------------------------------------
    @abstractmethod
    def submit(self, specs: list[JobSpec], if_absent: bool = False) -> list[Submitted]:
        """Add all jobs or none, in one transaction; returns what became of each spec, in
        input order.

        A spec without id gets `policy.new_job_id()`; without max_retries the `max-retries`
        setting; run_at is the spec's absolute time, else now + its delay, else now.
        Unique keys: a spec with `unique` whose key a live job holds (`pending`,
        `processing` or `failed`; a job delayed or awaiting its retry is live) stores
        nothing and answers that job's id, `stored` False; this is decided before the id
        is looked at, and is atomic (a unique index over live jobs): any number of
        concurrent submits of one key, on any number of hosts, store one job. A key is
        free again once its job is completed, dead or canceled. Two specs of one call
        with the same key: the first is stored, the second answers its id.
        Otherwise a taken id raises Conflict (and nothing is added), unless if_absent,
        where the existing job is left as it is and its id returned, `stored` False.
        Parents (`JobSpec.after`, checked after the key and the id): each must be a job
        that exists, stored before or earlier in the same call; NotFound names the first
        that does not, and Conflict the first that is `dead` or `canceled` (it would never
        run); either way nothing of the call is stored. A `completed` parent is satisfied
        at once; `waiting_on` counts the others. Waiting workers are woken on commit.
        Directory and environment: `cwd` (an absolute directory) and `env` (names to
        values) are stored as given, already checked by `job.spec_from_object`; NULL when
        absent (an empty `env` too), and `env` keeps its order. Every Job a store returns
        carries them (`Job.cwd`, `Job.env`), the claim's included, so a worker needs no
        other read to run the job. They are plain columns: whoever can read the queue can
        read them, so they are no place for secrets."""

    def enqueue(self, specs: list[JobSpec], if_absent: bool = False) -> list[str]:
        """`submit`, answering only the ids."""
        return [done.id for done in self.submit(specs, if_absent)]

    # -- the worker's verbs -----------------------------------------------------------------
    @abstractmethod
    def claim_next(self, worker: str, queues: list[str] | None = None,
                   exclude: list[str] | None = None) -> Job | None:
        """Take the most urgent eligible job, or None.

        Eligible: `pending` or `failed` with run_at <= now and waiting_on 0 (every parent
        completed: see "Dependencies" below). Order: priority (higher first),
        then run_at (earlier first), then the older job. In one transaction the job becomes
        `processing`, `attempts` grows by one, `worker` and `started_at` are set and a lease
        of `lease-seconds` starts. Two callers never receive the same job."""

    def claim_or_due(self, worker: str, queues: list[str] | None = None,
                     exclude: list[str] | None = None) -> tuple[Job | None, float | None]:
        """An idle worker's pass: claim_next, and when it took nothing, seconds_until_due of
        the same lane (else 0.0). A store may answer both in one round trip."""
        job = self.claim_next(worker, queues, exclude)
        if job is not None:
            return job, 0.0
        return None, self.seconds_until_due(queues, exclude)

    @abstractmethod
    def heartbeat(self, worker: str, state: str, job: Job | None) -> bool:
        """Record that the worker lives (its registry row: heartbeat time, state, job id) and,
        given a job, extend that attempt's lease by `lease-seconds` from now. False when the
        attempt is no longer held: the worker must stop the command, someone else may run
        it. Without a job, always True."""

    def beat(self, worker: str, state: str, job: Job | None) -> Beat:
        """heartbeat, and the reads a worker makes with each (config_items, paused, whether
        reclaim_expired has anything to do): a store may answer them in one round trip."""
        held = self.heartbeat(worker, state, job)
        return Beat(held, self.config_items(), self.paused(), expired=True)

    @abstractmethod
    def record_success(self, job: Job, outcome: Outcome) -> bool:
        """Complete the attempt (state `completed`, a history row with the output tail), if
        still held; False (and nothing written) otherwise."""

    @abstractmethod
    def complete_and_claim(self, job: Job, outcome: Outcome, worker: str,
                           queues: list[str] | None = None,
                           exclude: list[str] | None = None) -> tuple[bool, Job | None]:
        """record_success and claim_next in one transaction: one commit per job, not two.
        The claim happens whether or not the attempt was still held. Returns (whether it
        was still held, the next job or None)."""

    @abstractmethod
    def record_failure(self, job: Job, outcome: Outcome) -> Job | None:
        """End the attempt as failed, if still held: `failed` with run_at = now + backoff,
        or `dead` when `policy.retries_spent`; a history row either way. Returns the job as
        updated, or None (nothing written) if the attempt was not held."""

    @abstractmethod
    def release(self, job: Job, reason: str) -> bool:
        """Put a held attempt back to `pending` without spending a retry (worker shutdown):
        attempts goes back down by one, a history row `interrupted` records the reason.
        False if the attempt was not held."""

    @abstractmethod
    def reclaim_expired(self) -> list[Job]:
        """Turn every attempt whose lease ran out into a failed attempt (or dead), in one
        transaction, with a `lost` history row. Returns those jobs as updated (their
        `attempts` and `worker` name the lost attempt). Cheap when nothing expired."""

    @abstractmethod
    def reclaim_worker(self, worker: str) -> list[Job]:
        """Like reclaim_expired, for every attempt held by a worker of this name: a worker
        restarted under its old name takes back its orphans at once."""

    # -- operators ---------------------------------------------------------------------------
    @abstractmethod
    def retry_dead(self, job_id: str) -> Job:
        """Move a dead job back to `pending` with attempts 0, due now. NotFound if there is
        no such job, Conflict if it is not dead, or if its unique key is held by another
        live job (the message names that job): never two live jobs with one key."""

    @abstractmethod
    def get(self, job_id: str, history: bool = False) -> Job:
        """One job (NotFound if absent); with history, its finished attempts oldest first,
        each a dict: attempt, worker, started_at, finished_at, outcome, exit_code, error,
        output (bytes, the last `policy.OUTPUT_LIMIT`), cpu_user_usec, cpu_system_usec,
        memory_peak_bytes (Outcome's figures; None where not measured)."""

    @abstractmethod
    def iter_jobs(self, state: str | None = None, limit: int | None = None,
                  queue: str | None = None, unique: str | None = None) -> Iterator[Job]:
        """Jobs oldest first (created_at, then insertion order), optionally of one state,
        one queue, and one unique key (live and finished jobs alike), streamed: memory
        does not grow with the number of jobs."""

    @abstractmethod
    def counts(self, queue: str | None = None) -> dict[str, int]:
        """Jobs per state (every state of `job.STATES`, zeros included) plus
        `active_workers` (workers whose last heartbeat is within `policy.ACTIVE_WINDOW`),
        `blocked` (the pending jobs among them whose parents are not all completed) and
        `notices` (on-dead notices still to deliver, of the queue's jobs if one is given),
        from one snapshot."""

    @abstractmethod
    def remaining(self, queues: list[str] | None = None,
                  exclude: list[str] | None = None) -> int:
        """Jobs that may still run: pending (blocked ones too), processing, or failed
        awaiting a retry."""

    @abstractmethod
    def seconds_until_due(self, queues: list[str] | None = None,
                          exclude: list[str] | None = None) -> float | None:
        """Seconds until the earliest waiting job becomes eligible (0 if one is now), or
        None if nothing waits: how long an idle worker may sleep, in the store's clock.
        Blocked jobs (waiting_on > 0) do not count: a parent's completion wakes workers."""

    @abstractmethod
    def wakeup(self, watch: bool = False, queues: list[str] | None = None,
               exclude: list[str] | None = None) -> Wakeup:
        """A new Wakeup for one idle worker, or with `watch` for a watcher of job events
        (`wait`, `logs --follow`: a job ended, output appended), which on PostgreSQL
        registers while it is open so that completions notify it; the caller closes it.
        `queues` and `exclude` are what the worker serves (as its claims name them): a
        backend that wakes one idle worker a job (PostgreSQL) wakes one that serves it."""

    # -- configuration -----------------------------------------------------------------------
    @abstractmethod
    def config_items(self) -> dict[str, cfg.Value]:
        """Every setting of `settings.SETTINGS`, stored value or default."""

    @abstractmethod
    def set_config(self, key: str, value: cfg.Value) -> None:
        """Store one setting; the caller has validated it (`settings.parse_value`), the store
        does not. Every process sees it within `settings.CACHE_TTL`."""

    # -- workers -----------------------------------------------------------------------------
    @abstractmethod
    def register_worker(self, info: WorkerInfo) -> None:
        """Add the worker to the registry, replacing a row of the same name. The store sets
        started_at and heartbeat_at to its own now."""

    @abstractmethod
    def unregister_worker(self, name: str) -> None:
        """Remove the worker's row; no error if it is gone."""

    @abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """The registry, by name."""

    @abstractmethod
    def seconds_since_heartbeat(self, name: str) -> float | None:
        """How long ago the named worker last beat, by the store's clock; None if unknown."""

    @abstractmethod
    def verify(self) -> float | None:
        """Raise DatabaseUnavailable if the store is damaged or unusable: a worker calls it
        after READY=1 (in a thread, so that it keeps the watchdog fed and hears a stop) and
        before it registers or writes anything, so a bad store fails the worker before its
        first job and a damaged file is never written.

        What it checks is the backend's: SQLite runs `quick_check` (reads the whole file)
        once per database file (device and inode) and boot, by the first worker to start;
        later starts on the same file in the same boot skip it, so a start does not grow
        with the queue, and damage that appears later is reported by the operation that
        reaches it (DatabaseUnavailable). PostgreSQL checks the role's privileges (cheap,
        every time). Returns the seconds a full integrity check took, None if none ran."""

    def interrupt_verify(self) -> None:
        """Make a verify() running in another thread end soon (raising, recording nothing):
        the worker was asked to stop. Safe to call from any thread; a no-op by default."""
        return None

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Backend-neutral keys (`database`: the locator without secrets, `backend`,
        `schema_version`, `config`) plus one section named after the backend."""

    # -- reads for `queuectl top` --------------------------------------------------------------
    # Reads only: none takes the write lock (SQLite: autocommit SELECTs in WAL mode, which
    # never wait for a writer), so a screen refreshing every second costs workers nothing.
    # Not abstract, so a backend that predates them stays instantiable; the contract suite
    # (tests/contract/test_top_reads.py) checks them on every backend.

    def reading(self) -> Any:
        """A context manager: the reads made inside `with store.reading():` all see one
        state of the queue, none of them a commit that landed between two others. For a
        screen built from several reads (`top`); held only for those reads, since it holds
        back SQLite's checkpoint and PostgreSQL's vacuum meanwhile. Nested: the outer one
        counts. The default gives each read its own state."""
        return _EACH_READ_ALONE

    def now(self) -> float:
        """The store's clock now (epoch seconds): what a display subtracts the store's times
        from (a running job's started_at), since the caller's clock may differ (PostgreSQL:
        the server's)."""
        raise NotImplementedError

    def recent_jobs(self, state: str, limit: int, queue: str | None = None) -> list[Job]:
        """Up to `limit` jobs of `state` (of one queue, if given), the most recently changed
        first (updated_at, newest first; ties: the later enqueued first): the latest
        failures or dead jobs without streaming the whole state."""
        raise NotImplementedError

    def completed_since(self, seconds: float) -> dict[str, int]:
        """Per queue, how many jobs completed in the last `seconds` by the store's clock
        (finished_at >= now - seconds); queues with none are left out. Only jobs still kept
        count: with a retention shorter than `seconds` it is a lower bound."""
        raise NotImplementedError

    def still_current(self) -> bool:
        """False once the locator no longer names the database this store opened (a file
        deleted, or another file moved or restored in its place): whoever opens the
        locator now gets another queue, so a worker must stop serving this one and be
        restarted on the new one. Cheap (a stat at most); a worker asks at each heartbeat.
        True wherever it does not apply (a database server outlives its clients)."""
        return True

    def report_waits(self, waiting: Callable[[DatabaseUnavailable, float], None]) -> None:
        """Have the store call waiting(error, retry_in) each time a verb, inside the store,
        waits for the database to come back before it can finish (PostgreSQL: a commit in
        flight when the connection was lost, settled on the server that takes writes next,
        e.g. a promoted standby): a worker logs that outage as it logs its own retries. A
        store that never waits so ignores it."""
        return None


    # -- operator verbs: cancel, pause, purge, retry, live output, backup ----------------------
    # Not abstract, so a backend that predates them stays instantiable; each backend overrides
    # every one of them, and the contract suite (tests/contract/test_cancel_pause_purge.py) checks
    # the promises. Amended promises of the verbs above, for every backend:
    # - claim_next and complete_and_claim claim nothing while the queue is paused (the flag is
    #   read inside the claiming transaction);
    # - record_failure, release, reclaim_expired and reclaim_worker end an attempt whose job
    #   has a cancel request as `canceled` (terminal, finished_at set, a history row with
    #   outcome `policy.CANCELED_ATTEMPT`), never as failed, dead or pending;
    # - record_success of such an attempt completes it as usual (it finished first);
    # - every way an attempt ends drops its live output (`append_output`), and its history
    #   row records `output_total`, the number of bytes the attempt printed in all;
    # - `get` fills Job.cancel_requested; `counts` includes `canceled`.

    def cancel(self, job_id: str) -> Job:
        """Cancel one job, in one transaction. `pending` or `failed`: it becomes `canceled`
        at once (finished_at = now, attempts unchanged, no history row) and never runs.
        `processing`: its cancel request is recorded (Job.cancel_requested) and waiting
        workers are woken; its worker stops it and records the attempt as canceled (see
        record_failure); asking again is not an error. Returns the job as updated.
        NotFound if absent; Conflict if it is completed, dead or canceled."""
        raise NotImplementedError

    def cancel_state(self, state: str, limit: int, queue: str | None = None) -> int:
        """Cancel up to `limit` jobs of `state` (pending, failed or processing) as `cancel`
        does, in one transaction; returns how many. Processing jobs whose cancel was
        already requested are not counted again, so calling until the result is below
        `limit` ends. ValueError for any other state."""
        raise NotImplementedError

    def cancel_requested(self, job: Job) -> bool:
        """True if an operator asked to cancel this attempt while the worker holds it; a
        read, cheap enough to ask every half second of a running job."""
        raise NotImplementedError

    def pause(self, by: str, queue: str | None = None) -> bool:
        """Stop all claiming (stored, so every worker on every host obeys it) and record who
        (`by`, e.g. user@host) and when. False (nothing changed) if already paused.
        Running jobs are not touched; enqueue still works; run_at and backoff keep counting."""
        raise NotImplementedError

    def resume(self, queue: str | None = None) -> bool:
        """Allow claiming again and wake waiting workers. False if it was not paused."""
        raise NotImplementedError

    def paused(self, queue: str | None = None) -> PauseInfo | None:
        """Who paused the queue and since when, or None when it is not paused."""
        raise NotImplementedError

    def count_matching(self, state: str, older_than: float | None = None,
                       queue: str | None = None) -> int:
        """Jobs in `state`; with older_than (seconds), only those that finished at least that
        long ago by the store's clock (finished_at <= now - older_than). What the bulk
        verbs would touch (their --dry-run)."""
        raise NotImplementedError

    def purge(self, state: str, older_than: float | None, limit: int,
              queue: str | None = None) -> int:
        """Delete up to `limit` jobs of `state` (completed, dead or canceled only: ValueError
        otherwise) that finished at least `older_than` seconds ago (any, if None), with their
        history and live output, in one transaction; returns how many. Oldest first.
        Call again until the result is below `limit`."""
        raise NotImplementedError

    def retry_dead_many(self, older_than: float | None, limit: int) -> int:
        """`retry_dead` for up to `limit` dead jobs that finished at least `older_than`
        seconds ago (any, if None), oldest first, in one transaction; returns how many.
        A dead job whose unique key is held by a live job, or by an older dead job that
        this call revives, is left dead and not counted (so calling until the result is
        below `limit` ends)."""
        raise NotImplementedError

    def take_duty(self, name: str, holder: str, seconds: float) -> bool:
        """A named lease for background duties only one worker should do at a time
        (retention): True if `holder` now holds `name` for `seconds` from now (it was free,
        expired or already its own, and is renewed); False if another holder's lease is
        still running. One transaction."""
        raise NotImplementedError

    def append_output(self, job: Job, offset: int, data: bytes) -> bool:
        """Add `data`, which starts at byte `offset` of the running attempt's output, to its
        live output, if the attempt is still held (False otherwise, nothing written); then
        drop stored live output that ends more than `policy.OUTPUT_LIMIT` bytes before the
        new end, so a chatty job keeps a bounded amount. Waiting readers are woken."""
        raise NotImplementedError

    def read_output(self, job_id: str, attempt: int | None, offset: int) -> OutputSlice | None:
        """Output of one attempt (the latest if None: the running one, else the last
        finished) from byte `offset` on, from one snapshot: the live output while it runs,
        the history tail once it ended. None if that attempt has not started (or the job
        never ran). NotFound if the job does not exist."""
        raise NotImplementedError

    def backup(self, path: str) -> None:
        """Write a consistent copy of the whole queue to the new file `path` while others keep
        working (Conflict if it exists; DatabaseUnavailable if it cannot be written).
        Backends whose database is copied with its own tools raise Unsupported naming them
        (PostgreSQL: use pg_dump)."""
        raise NotImplementedError

    # -- named queues --------------------------------------------------------------------------
    # A job belongs to one queue (JobSpec.queue / Job.queue, `job.DEFAULT_QUEUE` unless given;
    # names checked by `job.check_queue` before they reach a store). A queue exists once a job
    # names it; a name no job carries is not an error anywhere, it just matches nothing.
    # Amended promises, for every backend:
    # - enqueue stores each spec's queue; get, iter_jobs and every returned Job carry it.
    # - claim_next(worker, queues) / complete_and_claim(..., queues): `queues` None means every
    #   queue, ordered as before (priority, run_at, age) across all of them. A list is an order
    #   of preference: the job comes from the first listed queue that has an eligible job
    #   (priority, run_at, age order inside that queue), a later queue only when every earlier
    #   one has none. Either way a queue is skipped while it is paused (`pause(by, queue)`) or
    #   while `concurrency` of its jobs are processing; both are read inside the claiming
    #   transaction, so no number of racing claimers on any number of hosts exceeds a limit.
    # - claim_next(worker, exclude=...) / complete_and_claim(..., exclude=...): with `queues`
    #   None, every queue except those named in `exclude` (a host's lane files reserve their
    #   queues from its all-queue workers: README "Lanes declared in /etc/queuectl/lanes"):
    #   an excluded queue's job is never taken, however urgent; the others keep the order
    #   above. An excluded queue is skipped the way a paused one is. Ignored with `queues`.
    #   Empty or None: every queue, on the same fast path as before.
    # - iter_jobs(..., queue), counts(queue), count_matching(..., queue), purge(..., queue),
    #   cancel_state(..., queue): with a queue, only that queue's jobs (counts' active_workers:
    #   the active workers that serve it). remaining(queues), seconds_until_due(queues): only
    #   jobs a worker serving `queues` could take (None: all; with `exclude`, all but those:
    #   else an all-queue worker would wake, or keep draining, for jobs it may not take).
    # - pause(by, queue) / resume(queue) / paused(queue): with a queue, that queue's own flag,
    #   independent of the global one (either stops claims from it); False/None as before.
    # - register_worker stores WorkerInfo.queues (None: all) and WorkerInfo.exclude (the
    #   queues an all-queue worker leaves to lanes); workers() returns both, and a queue's
    #   active workers (queues(), counts(queue)) are those that serve it (`serves`).
    # Callers pass the new arguments (queues, exclude) only when they are set, so a backend
    # that predates them keeps working for the default queue.

    def set_queue_concurrency(self, queue: str, limit: int) -> None:
        """At most `limit` jobs of `queue` processing at once, across every worker on every
        host; 0 removes the limit. Jobs already running are not touched: a lower limit only
        holds back new claims until enough of them finish."""
        raise NotImplementedError

    def queues(self) -> list[QueueInfo]:
        """Every queue that has a job, a setting, a pause or a pending on-dead notice, or that
        an active worker names, by name, from one snapshot."""
        raise NotImplementedError

    # -- counters for `queuectl metrics` -------------------------------------------------------
    # Counters live in the database and only ever grow: purge, retention, restarts and
    # `dlq retry` never take anything back. Every backend keeps them with triggers of its own
    # schema, in the very transaction that changes state, so no verb above and no future
    # path can forget them: each job inserted counts as `enqueued` for its queue, each
    # attempt history row (written once, when the attempt ends, by every way one ends)
    # counts under its outcome, with `dead` for a failed or lost attempt that left its job
    # dead. Attempts started are not stored: they are the ended attempts plus the jobs
    # processing now (each holds exactly one running attempt), which grows by one at every
    # claim and stays put when an attempt ends.

    def metrics(self) -> Metrics:
        """Everything `queuectl metrics` reports, from one snapshot; a read only."""
        raise NotImplementedError

    # -- dependencies and reruns ---------------------------------------------------------------
    # A job submitted with `after` waits (`pending`, waiting_on > 0: "blocked") until every
    # parent is `completed`. Amended promises, for every backend, kept in the transaction
    # that changes the parent's state, whatever the path (triggers of the schema):
    # - a parent becoming `completed` satisfies its waiting dependents for good (recorded:
    #   deleting the parent later changes nothing), each one's waiting_on drops by one, and
    #   waiting workers are woken when one reaches 0;
    # - a parent becoming `dead` or `canceled` (by any path: record_failure, reclaim_*,
    #   cancel, cancel_state) cancels each dependent still waiting for it (pending, its
    #   dependency on that parent not satisfied): `canceled`, finished_at now, last_error
    #   "parent ID ended dead" (or "... ended canceled"), no history row; and so on down
    #   the chain. A failed attempt that will be retried decides nothing.
    # - deleting a job (purge, retention) deletes its own dependency rows, never those
    #   that name it as a parent.
    # - the history and live output number an attempt `Job.attempt_number` (attempt_base +
    #   attempts); read_output's `attempt` is that number.

    def parents(self, job_id: str) -> list[Parent]:
        """The job's parents in the order given at submit; NotFound if the job is absent."""
        raise NotImplementedError

    def canceled_dependents(self, job_id: str) -> list[Job]:
        """The jobs that are canceled because this one ended dead or canceled: its waiting
        dependents canceled with it, and theirs, down the chain (each job's last_error
        names its own parent). For the journal and the operator's output, after commit."""
        raise NotImplementedError

    def retry(self, job_id: str, delay: float | None = None) -> Job:
        """Run a finished (`completed`, `dead` or `canceled`) job again, in one transaction:
        `pending`, attempts 0, attempt_base grown by the attempts it had (its history
        is kept and the new attempts number on), run_at now + delay, worker, started_at,
        finished_at, exit_code, last_error and cancel_requested cleared, waiting_on the
        number of its parents not satisfied. Dependents it canceled are not revived.
        NotFound if absent; Conflict, changing nothing, if it is not finished (the message
        says its state), if its unique key is held by another live job (naming it), or if
        a parent it still waits for is dead, canceled or deleted (naming it: retry that
        one first)."""
        raise NotImplementedError

    # -- on-dead notices -----------------------------------------------------------------------
    # A job that goes `dead` by any path (record_failure, reclaim_expired, reclaim_worker) gets
    # a notice in the same transaction (a trigger of the schema on its state change), but only
    # while an on-dead command is configured for its queue (`set_queue_on_dead`) or globally
    # (the `on-dead` setting): no command, no notice. A notice snapshots the job's queue,
    # command, exit_code, attempts and last_error; it is never touched by anything that
    # happens to the job afterwards (retry, purge, retention) and it never changes the job.
    # Workers deliver notices at least once: a notice leaves only by `notice_delivered` or
    # by `notice_failed` giving up. Not abstract, so a backend that predates them stays
    # instantiable; tests/contract/test_on_dead.py checks them on every backend.

    def set_queue_on_dead(self, queue: str, command: str) -> None:
        """The queue's own on-dead command (it wins over the global one); '' removes it."""
        raise NotImplementedError

    def take_notice(self, holder: str, seconds: float) -> Notice | None:
        """The oldest notice that is due (its retry delay over) and not held, or whose
        holder's lease ran out, now held by `holder` for `seconds` (longer than the hook may
        run: nobody else runs it meanwhile); None if there is none. Leases are on the
        store's lease clock (SQLite: CLOCK_BOOTTIME with the boot id; PostgreSQL: the
        server's). `hook` is the command configured now; `output` is read from the history
        row of the attempt that made the job dead, its last (empty if it is gone: purge,
        retention). One transaction; cheap when none is due (a read first)."""
        raise NotImplementedError

    def notice_delivered(self, notice: Notice) -> bool:
        """Its hook exited 0: delete the notice, if `notice.holder` still holds it (False,
        nothing written, if its lease ran out and another holder took it)."""
        raise NotImplementedError

    def notice_failed(self, notice: Notice, error: str, tries: int, delay: float) -> bool:
        """Its hook failed: if `notice.tries + 1 >= tries` delete it and return True
        (dropped); else count the try, make it due `delay` seconds from now (store clock)
        and free it, False. Fenced on the holder as notice_delivered (False then)."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None: ...
