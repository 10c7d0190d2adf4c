"""The worker's job loop: claim a job, run it, record how it ended.

A worker can be killed between any two lines. Everything it has not recorded yet is
recovered by the store: a job whose lease runs out becomes a failed attempt and runs again
(at-least-once delivery); a worker restarted under the same name takes back its own orphan
at once instead of waiting for the lease. Stopping lives in `stopping.py`, heartbeats and
leases in `lease.py`; this module only decides what to do next.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

from queuectl import procinfo
from queuectl.cgroup import Delegation, Limits
from queuectl.clock import iso_ms
from queuectl.errors import Conflict, DatabaseBusy, DatabaseUnavailable
from queuectl.job import CANCELED, DEAD, Job
from queuectl.jobwatch import JobWatch
from queuectl.lease import LeaseKeeper
from queuectl.log import get_logger
from queuectl.notify import Notifier
from queuectl.operate import tell_dependents
from queuectl.policy import (
    ACTIVE_WINDOW,
    HEARTBEAT_EVERY,
    HOOK_TRIES,
    NOTICE_CHECK_EVERY,
    NOTICE_LEASE,
    hook_retry_delay,
)
from queuectl.process import JobProcess, inheritable_environment, job_environment
from queuectl.record import Record
from queuectl.stopping import StopRequest
from queuectl.store import USAGE, Store, Wakeup, WorkerInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REPLACED_EXIT = 75  # EX_TEMPFAIL: the database was replaced; restart me (Restart=on-failure)
DB_RETRY_MAX = 5.0  # seconds between tries while the database is unavailable, at most
START_WAIT = 60.0  # seconds a starting worker waits for a database locked by someone else
# Seconds the store's check may take before READY=1 is sent without waiting for it: a check
# that is done by then (the usual case: skipped, or a small file) keeps READY meaning
# "registered and claiming"; a long one (a large file after a reboot) does not hold up the
# start job, nor run into TimeoutStartSec.
READY_WITHIN = 0.5


class GaveUp(Exception):
    """The database stayed unavailable and the caller's patience ran out."""

    def __init__(self, error: DatabaseUnavailable) -> None:
        super().__init__(str(error))
        self.error = error


class WorkerOptions(Record):
    name: str | None = None  # a stable identity; default HOST:PID
    label: str | None = None  # how human log lines name it
    grace: float = 30.0  # seconds a running job may finish after a stop request
    poll_interval: float | None = None  # the safety-net poll; default from the wakeup
    drain: bool = False  # exit once nothing is left to run
    job_umask: int | None = None
    parent_pid: int | None = None  # a supervisor whose exit means stop
    queues: list[str] | None = None  # served in this order of preference; None: all queues
    # With queues None: every queue but these (the queues this host's lane files declare,
    # whose jobs need the lane's user and paths; see run_worker). None or empty: every queue.
    exclude: list[str] | None = None
    slots: int = 1  # jobs at once: above 1, threads of one process (slots.py)


class Worker:
    def __init__(self, store: Store, options: WorkerOptions, locator: str = "",
                 on_step: Callable[[str], None] | None = None) -> None:
        """on_step is called at each named step of a job (claimed, spawned, exited,
        recorded): the crash tests kill the worker there."""
        self.store = store
        self.opts = options
        self.locator = locator
        self.stable_name = options.name is not None
        self.name = options.name or f"{procinfo.hostname()}:{os.getpid()}"
        # Passed to the store only when set, so a backend that predates named queues (or
        # exclusion) still serves the default lane.
        self._lane: dict[str, list[str]] = (
            {"queues": options.queues} if options.queues
            else {"exclude": options.exclude} if options.exclude else {})
        lane = ",".join(options.queues) if options.queues else None
        self.lane = lane or "all"
        self.log = get_logger(worker=self.name, label=options.label or self.name,
                              **({"queue": lane} if lane else {}))
        self.stop = StopRequest()
        self.lease = LeaseKeeper(store, self.name, self.log)
        self.notifier = Notifier()
        self._on_step = on_step
        self._wakeup: Any = None
        self._stop_announced = False
        self._outage_failures = 0  # failed database calls since the last success
        self._ready_sent = False  # READY=1 went before the store's check was done (_verify)
        self._env = inheritable_environment(os.environ)
        self.exit_code = 0
        self.cgroups: Delegation | None = None  # set by run() where systemd delegated one
        self._notice_check_at = 0.0  # monotonic: when a busy worker looks for notices next
        self.announce_root = True  # False in job slots but the first (slots.py)

    def _beat(self, state: str, job: Job | None = None) -> bool:
        """A heartbeat when due (see LeaseKeeper.beat); if it found the database deleted or
        replaced, stop claiming and exit non-zero once the running job is done, so that
        systemd or the supervisor start a worker on the file the locator names now."""
        held = self.lease.beat(state, job)
        if self.lease.replaced and not self.exit_code:
            self.exit_code = REPLACED_EXIT
            self.log.error("database_replaced", db=self.locator, exit_code=REPLACED_EXIT,
                           **({"job_id": job.id} if job else {}))
            self.stop.request("database replaced")
        return held

    def lane_wakeup(self) -> Wakeup:
        """The store's wakeup for what this worker serves (its claims' `queues` or
        `exclude`): on PostgreSQL an enqueue wakes an idle worker of the job's queue."""
        return self.store.wakeup(queues=self._lane.get("queues"),
                                 exclude=self._lane.get("exclude"))

    # -- waiting -----------------------------------------------------------------------------
    def _announce_stop(self, job: Job | None = None) -> None:
        if self.stop.requested and not self._stop_announced:
            self._stop_announced = True
            self.notifier.stopping(f"stopping: waiting for {job.id}" if job else "stopping")
            reason = self.stop.reason
            self.log.info("worker_stopping",
                          reason=f"received {reason}" if reason.startswith("SIG") else reason)

    def _sleep(self, seconds: float, for_jobs: bool = False) -> None:
        """Sleep, but wake at once for a signal (or, for_jobs, possible new work), and keep
        the watchdog fed meanwhile."""
        fds = [self.stop.fd]
        work_fd = self._wakeup.fileno() if for_jobs and self._wakeup is not None else None
        if work_fd is not None:
            fds.append(work_fd)
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.notifier.ping_if_due()
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(fds, [], [], min(left, self.notifier.seconds_to_ping()))
            if self.stop.fd in ready:
                self.stop.drain()
                break
            if work_fd in ready and self._wakeup.drain():
                break

    def _with_db(self, action: Callable[[], Any], give_up: Callable[[DatabaseUnavailable], bool],
                 ) -> Any:
        """The one database-retry loop: run action, retrying with a growing pause while
        the database is unavailable, until give_up(error) says enough (then GaveUp)."""
        failures = 0
        while True:
            try:
                result = action()
            except DatabaseUnavailable as exc:
                failures += 1
                if give_up(exc):
                    if failures > 1 or self.stop.requested:
                        self.log.error("database_error", error=str(exc), retry_in=None)
                    raise GaveUp(exc) from None
                pause = min(DB_RETRY_MAX, 0.5 * failures)
                self._db_failed(exc, pause)
                self._sleep(pause)
                continue
            self._db_ok()
            return result

    def _db_failed(self, exc: DatabaseUnavailable, retry_in: float) -> None:
        """One warning per outage, however many tries (retries and heartbeats) it takes."""
        self._outage_failures += 1
        if self._outage_failures == 1:
            self.log.warning("database_error", error=str(exc), retry_in=retry_in)
            self.notifier.status(f"database unavailable: {exc}")

    def _db_ok(self) -> None:
        """One line when an outage is over."""
        if self._outage_failures:
            self.log.info("database_recovered", failures=self._outage_failures)
            self._outage_failures = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, register: Callable[[], None] | None = None) -> None:
        """Check and register with the store, waiting out a lock held by someone else
        (up to START_WAIT); raises Conflict if a live worker has this name. A process of
        job slots (slots.py) registers instead: it checks every slot's name, and each slot
        registers on its own."""
        deadline = time.monotonic() + START_WAIT

        def give_up(exc: DatabaseUnavailable) -> bool:
            return (not isinstance(exc, DatabaseBusy) or self.stop.requested
                    or time.monotonic() >= deadline)

        try:
            self._with_db(self._verify, give_up)
            if not self.stop.requested:
                self._with_db(register or self._register, give_up)
        except GaveUp as exc:
            raise exc.error from None

    def _verify(self) -> None:
        """The store's check, before anything is written. It may read a whole SQLite file
        (once per file and boot: about a minute at ten million jobs from a cold page cache),
        so it runs in a thread while this one feeds the watchdog and listens for a stop,
        which interrupts it; and if it takes longer than READY_WITHIN, READY=1 goes first, so
        that systemd's start job (and its TimeoutStartSec) does not wait for it."""
        outcome: list[float | None | BaseException] = []
        done_r, done_w = os.pipe()  # written when the check ends: wakes the select below

        def check() -> None:
            try:
                outcome.append(self.store.verify())
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome.append(exc)
            finally:
                os.write(done_w, b"x")

        thread = threading.Thread(target=check, name="verify", daemon=True)
        try:
            thread.start()
            ready_at = time.monotonic() + READY_WITHIN
            while not outcome:
                if not self._ready_sent and time.monotonic() >= ready_at:
                    self._ready_sent = True
                    self.notifier.ready("checking the database (once per file and boot)")
                self.notifier.ping_if_due()
                if self.stop.requested:
                    self.store.interrupt_verify()
                    thread.join()
                    return  # start() registers nothing; the worker stops
                wait = min(max(0.0, ready_at - time.monotonic()) if not self._ready_sent
                           else 1.0, self.notifier.seconds_to_ping())
                ready, _, _ = select.select([self.stop.fd, done_r], [], [], wait)
                if self.stop.fd in ready:
                    self.stop.drain()
        finally:
            thread.join()
            os.close(done_r)
            os.close(done_w)
        result = outcome[0]
        if isinstance(result, BaseException):
            if self.stop.requested:
                return
            raise result
        if result is not None:  # once per file and boot (README "Where the database is")
            self.log.info("integrity_checked", db=self.locator, seconds=round(result, 3))

    def _register(self) -> None:
        self.refuse_if_taken()
        pid = os.getpid()
        self.store.register_worker(WorkerInfo(
            self.name, procinfo.hostname(), pid, procinfo.start_time(pid), 0.0, 0.0, "idle",
            None, self.opts.queues, self._lane.get("exclude")))
        if self.stable_name:
            for job in self.store.reclaim_worker(self.name):
                self.lease.end_reclaimed(job)

    def refuse_if_taken(self) -> None:
        """Conflict if a live worker (other than this process) has this name."""
        for other in self.store.workers():
            if other.name != self.name or other.pid == os.getpid():
                continue
            if other.host == procinfo.hostname():
                alive = procinfo.is_alive(other.pid, other.pid_start)
            else:
                silent = self.store.seconds_since_heartbeat(other.name)
                alive = silent is not None and silent < ACTIVE_WINDOW
            if alive:
                raise Conflict(
                    f"a worker named {self.name!r} is already running (pid {other.pid} on "
                    f"{other.host}); pick another --name"
                )

    def run(self) -> int:
        self.stop.install()
        self._report_waits()
        self._wakeup = self.lane_wakeup()
        try:
            self.start()
            self._take_cgroup()
            self.log.info("worker_started", pid=os.getpid(), db=self.locator, queues=self.lane,
                          wakeup=self._wakeup.describe(), poll_interval=self.poll_interval,
                          **({"excluded": ",".join(self._lane["exclude"])}
                             if "exclude" in self._lane else {}),
                          **({"cgroup": self.cgroups.base} if self.cgroups else {}))
            if self._ready_sent:  # early, while the store's check ran (see _verify)
                self.notifier.status("idle")
            else:
                self.notifier.ready()
            self.log.info("worker_ready")
            if os.geteuid() == 0 and self.announce_root:
                self.log.warning("running_as_root")
            try:
                self._loop()
            finally:
                self._announce_stop()
                try:
                    self.store.unregister_worker(self.name)
                except DatabaseUnavailable:
                    pass  # the row ages out of active_workers on its own
                self.log.info("worker_stopped")
        finally:
            self._wakeup.close()
        return self.exit_code

    def _report_waits(self) -> None:
        """A result or claim whose commit was cut is settled inside the store, which may
        wait there for the server (a failover): the same one warning per outage."""
        self.store.report_waits(self._db_failed)

    def _take_cgroup(self) -> None:
        """Under systemd with Delegate=yes: each attempt gets a cgroup of its own (see
        cgroup.py); elsewhere process groups, as before. Stale attempt cgroups of an earlier
        life of this unit are killed and removed here."""
        found = Delegation.detect()
        if found is None:
            return
        try:
            removed = found.setup()
        except OSError as exc:
            self.log.warning("cgroup_unavailable", cgroup=found.base, error=str(exc))
            return
        self.cgroups = found
        if removed:
            self.log.info("cgroups_removed", cgroup=found.base, removed=",".join(removed))

    def _step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    def _loop(self) -> None:
        job: Job | None = None  # claimed together with the last success, if any
        while not self.stop.requested:
            if job is None:
                self._deliver_notice()  # at most one per pass: between jobs, and when idle
                try:
                    job, idle_for = self._with_db(self._claim_or_idle,
                                                  lambda _exc: self.stop.requested)
                except GaveUp:
                    break
                if job is None:
                    if idle_for is None:  # drained: the due notices of jobs that died too
                        while self._deliver_notice():
                            pass
                        break
                    self.notifier.status("paused: claiming nothing" if self.lease.paused
                                         else "idle")
                    self._sleep(idle_for, for_jobs=True)
                    continue
            self._step("claimed")
            job = self._execute(job)
            self._step("recorded")
        if job is not None:  # claimed just as the stop came: it never started
            self._persist(lambda: self.store.release(job, "worker shutdown before it started"))

    def _claim_or_idle(self) -> tuple[Job | None, float | None]:
        """A job, or how long to wait for one (None: drained, stop)."""
        self._check_parent()
        if self._wakeup is not None:
            self._wakeup.arm()  # watching again before this claim, so if it finds nothing
            self._wakeup.drain()  # any later change wakes us; earlier ones it sees
        self._beat("idle")
        if self.stop.requested:
            return None, 0.0  # the loop ends without a claim
        self.lease.housekeeping()
        job, due = self.store.claim_or_due(self.name, **self._lane)
        if job is not None:
            return job, 0.0
        if self.opts.drain and self.store.remaining(**self._lane) == 0:
            return None, None
        wait = self.poll_interval
        # Due now, yet nothing was claimable: its queue is paused or at its concurrency limit.
        # Wait for a change (a job ending, resume: the wakeup fires) or the poll, not a spin.
        if due is not None and due > 0:
            wait = min(wait, due)
        return None, min(wait, max(0.0, self.lease.next_beat - time.monotonic()))

    def _check_parent(self) -> None:
        parent = self.opts.parent_pid
        if parent and os.getppid() != parent:
            self.stop.request("supervisor exit")

    @property
    def poll_interval(self) -> float:
        """The safety-net poll: slow when the store wakes us, brisk when it cannot."""
        if self.opts.poll_interval is not None:
            return self.opts.poll_interval
        return self._wakeup.poll_interval if self._wakeup is not None else 0.25

    # -- one job -----------------------------------------------------------------------------
    def _keep_lease(self, job: Job) -> bool:
        """Heartbeat while a job runs; a database outage is only logged (the lease covers
        us). False if the lease was lost."""
        try:
            self._check_parent()
            went_to_db = self.lease.due()  # between beats nothing is asked of the database
            held = self._beat("stopping" if self.stop.requested else "busy", job)
            self.lease.housekeeping()
        except DatabaseUnavailable as exc:
            self._db_failed(exc, HEARTBEAT_EVERY)
            return True
        if went_to_db:
            self._db_ok()
        return held

    def _execute(self, job: Job) -> Job | None:
        """Run one job and record it; returns the next job if one was claimed with it."""
        attempt, max_attempts = job.attempts, job.max_retries + 1
        self.log.info("job_claimed", job_id=job.id, command=job.command, attempt=attempt,
                      max_attempts=max_attempts, max_retries=job.max_retries, queue=job.queue)
        self.notifier.status(f"running {job.id} (attempt {attempt}/{max_attempts})")
        if self._wakeup is not None:
            self._wakeup.disarm()  # busy: the watch would only cost every writer (JobWatch)
        self._keep_lease(job)  # heartbeats also between a stream of short jobs
        proc = JobProcess(job.command, job_environment(self._env, job.id, attempt, job.env),
                          self.opts.job_umask, self.cgroups,
                          Limits(job.memory_max or None, job.cpu_max or None,
                                 job.tasks_max or None), job.cwd)
        self._step("spawned")
        watch = JobWatch(self.store, job, proc, self._wakeup, self._db_failed, self._db_ok)
        interrupted = lost = canceled = False
        while not proc.done:
            self.notifier.ping_if_due()
            deadlines = [self.lease.next_beat, time.monotonic() + self.notifier.seconds_to_ping(),
                         watch.deadline(), proc.deadline(job.timeout)]
            grace_end = self.stop.grace_ends(self.opts.grace)
            if grace_end is not None and not interrupted:
                deadlines.append(grace_end)
            watch_fds = watch.fds()
            if proc.wait(min(deadlines) - time.monotonic(), (self.stop.fd, *watch_fds)):
                break
            self.stop.drain()
            if watch.tick(bool(watch_fds) and proc.last_ready(watch_fds[0])) and not canceled:
                canceled = True
                self.log.info("job_canceling", job_id=job.id, attempt=attempt, queue=job.queue)
                proc.kill("canceled by an operator")
            self._announce_stop(job)
            proc.enforce(job.timeout, time.monotonic())
            if self.stop.past_grace(self.opts.grace):
                interrupted = True
                proc.kill("interrupted by worker shutdown")
            if not self._keep_lease(job):
                lost = True
                proc.kill("lease lost")
        self._step("exited")
        return self._record(job, proc, interrupted, lost, max_attempts, watch.live)

    def _record(self, job: Job, proc: JobProcess, interrupted: bool, lost: bool,
                max_attempts: int, live: bool = False) -> Job | None:
        outcome = proc.outcome()
        outcome.live = live
        fields = dict(job_id=job.id, queue=job.queue, attempt=job.attempts,
                      max_attempts=max_attempts,
                      max_retries=job.max_retries, duration_ms=round(outcome.duration * 1000),
                      exit_code=outcome.exit_code)
        for key in USAGE:  # measured in the attempt's cgroup (journal: CPU_USER_USEC...)
            if getattr(outcome, key) is not None:
                fields[key] = getattr(outcome, key)
        if lost:
            self.log.warning("job_lost", **fields)
            return None
        if interrupted:
            if self._persist(lambda: self.store.release(job, "worker shutdown")):
                self.log.info("job_released", reason="worker shutdown", **fields)
            return None
        if proc.succeeded:
            if self.stop.requested or time.monotonic() >= self._notice_check_at:
                # (now and then without the next claim, so that the next pass of the loop
                # looks for on-dead notices even while jobs keep coming)
                held, following = self._persist(
                    lambda: self.store.record_success(job, outcome)), None
            else:  # the next claim rides on the same commit
                held, following = self._persist(
                    lambda: self.store.complete_and_claim(job, outcome, self.name, **self._lane)
                ) or (False, None)
            if held:
                self.log.info("job_succeeded", **fields)
            else:
                self.log.warning("job_lost", **fields)
            return following
        updated = self._persist(lambda: self.store.record_failure(job, outcome))
        if not updated:
            self.log.warning("job_lost", **fields)
            return None
        tail = outcome.output[-2000:].decode("utf-8", "replace")
        if updated.state == CANCELED:
            self.log.warning("job_canceled", error=updated.last_error, **fields)
            tell_dependents(self.store, updated, self.log)
        elif updated.state == DEAD:
            self._step("dead")  # committed: its on-dead notice, if any, with it
            self.log.error("job_dead", error=outcome.error, output_tail=tail, **fields)
            tell_dependents(self.store, updated, self.log)
        else:
            self.log.warning("job_failed", error=outcome.error, output_tail=tail,
                             next_run_at=iso_ms(updated.run_at), **fields)
        return None

    # -- on-dead notices ---------------------------------------------------------------------
    def _deliver_notice(self) -> bool:
        """Run the hook of one due on-dead notice, if any (README "Dead-job hook"). Never
        changes a job; blocks the next claim for at most the hook's timeout. A database
        problem here is only logged: the notice waits, its lease brings it back. True if
        a notice was taken."""
        if self.stop.requested:
            return False
        self._notice_check_at = time.monotonic() + NOTICE_CHECK_EVERY
        try:
            notice = self.store.take_notice(self.name, NOTICE_LEASE)
        except DatabaseUnavailable as exc:
            self._db_failed(exc, HEARTBEAT_EVERY)
            return False
        if notice is None:
            return False
        self._step("notice_taken")
        fields: dict[str, Any] = dict(job_id=notice.job_id, queue=notice.queue,
                                      hook=notice.hook, tries=notice.tries + 1,
                                      max_tries=HOOK_TRIES)
        if not notice.hook:  # the command was removed since the job died: nothing to run
            if self._persist(lambda: self.store.notice_delivered(notice)):
                self.log.info("hook_skipped", **fields)
            return True
        from queuectl.hook import run_hook

        if self._wakeup is not None:
            self._wakeup.disarm()  # busy with the hook (slots: another hears new work)
        self.notifier.status(f"running the on-dead hook of {notice.job_id}")
        result = run_hook(notice, self._env, self.cgroups, self.opts.job_umask,
                          tick=self._hook_tick)
        fields["duration_ms"] = round(result.duration * 1000)
        if result.ok:
            if self._persist(lambda: self.store.notice_delivered(notice)):
                self.log.info("hook_delivered", **fields)
            return True
        error = result.error or "failed"
        tail = result.output.decode("utf-8", "replace")
        from queuectl.settings import SETTINGS

        default = float(SETTINGS["on-dead-backoff"].default)
        try:  # read on a failure only, so not worth the settings cache
            first = float(self.store.config_items().get("on-dead-backoff", default))
        except DatabaseUnavailable:
            first = default
        delay = hook_retry_delay(first, notice.tries + 1)
        dropped = self._persist(
            lambda: self.store.notice_failed(notice, error, HOOK_TRIES, delay))
        if dropped:
            self.log.error("hook_failed", error=error, output_tail=tail, **fields)
        elif dropped is not None:
            self.log.warning("hook_retry", error=error, output_tail=tail,
                             retry_in=round(delay, 3), **fields)
        return True

    def _hook_tick(self) -> float:
        """While a hook runs: feed the watchdog and keep the worker's heartbeat (it is
        alive, only busy); how long the hook's wait may block."""
        self.notifier.ping_if_due()
        try:
            self._beat("busy")
        except DatabaseUnavailable as exc:
            self._db_failed(exc, HEARTBEAT_EVERY)
        return min(self.notifier.seconds_to_ping(), self.lease.next_beat - time.monotonic())

    def _persist(self, action: Callable[[], Any]) -> Any:
        """Write a result, retrying while the database is unavailable: the lease covers us
        meanwhile, and if it runs out the store fences our late write off. Once stopping,
        retry only within the grace period (or until a second signal); then None, the job
        stays processing and its lease brings it back."""
        try:
            return self._with_db(action, lambda _exc: self.stop.past_grace(self.opts.grace))
        except GaveUp:
            return None


def lane_queues(log: Any) -> list[str]:
    """The queues this host's valid lane files declare, read once at start: a worker of
    every queue leaves them to their lanes' workers, which run as the lane's user with its
    paths. A lane file that is skipped reserves nothing; each is logged once."""
    from queuectl.lanes import read_lanes

    lanes, skipped = read_lanes()
    for line in skipped:
        log.warning("lane_file_skipped", error=line)
    return [queue for lane in lanes for queue in lane.queues]


def run_worker(locator: str, options: WorkerOptions, log_format: str = "auto",
               on_step: Callable[[str], None] | None = None) -> int:
    """`queuectl worker run`: logging, the store, the worker. A worker of every queue
    excludes the queues of this host's lane files (unless the caller said which)."""
    from queuectl.locator import is_url, open_store
    from queuectl.log import setup_logging
    from queuectl.redaction import redact

    fmt = setup_logging(log_format)
    if options.slots > 1:
        if not is_url(locator):  # a slot starting a job with its cwd moves the whole process
            locator = os.path.abspath(locator)
    if not options.queues and options.exclude is None:
        options.exclude = lane_queues(get_logger())
    try:
        # Workers commit without an fsync each: see the backends and "Durability" in README.
        deadline = time.monotonic() + START_WAIT
        while True:  # a database that is busy or restarting is waited for, not a crash loop
            try:
                store = open_store(locator, for_worker=True)
                break
            except DatabaseBusy as exc:
                if time.monotonic() >= deadline:
                    raise
                get_logger().warning("database_error", error=str(exc), retry_in=1.0)
                time.sleep(1.0)
        try:
            if options.slots > 1:
                from queuectl.slots import SlotProcess

                return SlotProcess(store, options, redact(locator), options.slots,
                                   on_step).run()
            return Worker(store, options, redact(locator), on_step).run()
        finally:
            store.close()
    except DatabaseUnavailable as exc:
        # In the journal, an entry with its MESSAGE_ID (explained by the catalog); elsewhere
        # main's one error line says it all.
        if fmt == "journal":
            get_logger().error("database_unavailable", db=redact(locator), error=str(exc))
        raise
