"""The worker: claim a job, run it, record how it ended, and keep its lease alive meanwhile.

A worker can be killed between any two lines. Everything it has not recorded yet is
recovered by the store: a job whose lease runs out becomes a failed attempt and runs again
(at-least-once delivery); a worker restarted under the same name takes back its own orphan
at once instead of waiting for the lease.
"""

import os
import signal
import time
from pathlib import Path
from typing import Any

from queuectl import procinfo
from queuectl.errors import Conflict, DatabaseBusy, DatabaseUnavailable
from queuectl.job import DEAD, Job
from queuectl.log import get_logger
from queuectl.notify import Notifier
from queuectl.process import JobProcess, inheritable_environment, job_environment, signal_name
from queuectl.store import Store, WorkerInfo
from queuectl.utils import iso_ms, now

HEARTBEAT_EVERY = 2.0  # seconds; also how often leases are renewed and expired ones reclaimed
DB_RETRY_MAX = 5.0
START_WAIT = 60.0  # seconds a starting worker waits for a database locked by someone else


class Worker:
    def __init__(
        self,
        store: Store,
        db_path: Path,
        name: str | None = None,
        label: str | None = None,
        grace: float = 30.0,
        poll_interval: float | None = None,
        drain: bool = False,
        job_umask: int | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.store = store
        self.db_path = db_path
        self.stable_name = name is not None
        self.name = name or f"{procinfo.hostname()}:{os.getpid()}"
        self.grace = grace
        self._poll_interval = poll_interval
        self._watcher: Any = None
        self.drain = drain
        self.job_umask = job_umask
        self.parent_pid = parent_pid
        self.log = get_logger(worker=self.name, label=label or self.name)
        self.stop_requested_at: float | None = None
        self.stop_reason = ""
        self.hard_stop = False
        self._stop_announced = False
        self._next_beat = 0.0
        self._config_seen: dict[str, Any] | None = None
        self._env = inheritable_environment(os.environ)
        self.notifier = Notifier()
        # Test-only: SIGKILL ourselves at a named step, to prove recovery from every step.
        self._crash_at = os.environ.get("QUEUECTL_TEST_CRASH_AT", "")

    # -- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
            self.stop_reason = signal_name(signum)
        else:
            self.hard_stop = True

    def _install_signals(self) -> None:
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    @property
    def stopping(self) -> bool:
        return self.stop_requested_at is not None

    def _announce_stop(self, job: Job | None = None) -> None:
        if self.stopping and not self._stop_announced:
            self._stop_announced = True
            self.notifier.stopping(f"stopping: waiting for {job.id}" if job else "stopping")
            self.log.info("worker_stopping", reason=f"received {self.stop_reason}")

    def _sleep(self, seconds: float, for_jobs: bool = False) -> None:
        """Sleep, but wake at once for a signal (or, for_jobs, a database change), and keep
        the watchdog fed meanwhile."""
        import select

        fds = [self._wake_r]
        if for_jobs and self._watcher is not None:
            fds.append(self._watcher.fileno())
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.notifier.ping_if_due()
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(fds, [], [], min(left, self.notifier.seconds_to_ping()))
            if self._wake_r in ready:
                self._drain_wakeups()
                break
            if ready and self._watcher is not None and self._watcher.drain():
                break

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Check and register with the store, waiting out a lock held by someone else
        (up to START_WAIT); raises Conflict if a live worker has this name."""
        deadline = time.monotonic() + START_WAIT
        while True:
            try:
                return self._register()
            except DatabaseBusy as exc:
                if self.stopping or time.monotonic() >= deadline:
                    raise
                self.log.warning("database_error", error=str(exc), retry_in=1.0)
                self._sleep(1.0)

    def _register(self) -> None:
        self.store.verify()
        for other in self.store.workers():
            if other.name != self.name or other.pid == os.getpid():
                continue
            same_host = other.host == procinfo.hostname()
            alive = procinfo.is_alive(other.pid, other.pid_start) if same_host else (
                now() - other.heartbeat_at < 3 * HEARTBEAT_EVERY)
            if alive:
                raise Conflict(
                    f"a worker named {self.name!r} is already running (pid {other.pid} on "
                    f"{other.host}); pick another --name"
                )
        t = now()
        pid = os.getpid()
        self.store.register_worker(WorkerInfo(
            self.name, procinfo.hostname(), pid, procinfo.start_time(pid), t, t, "idle", None))
        if self.stable_name:
            for job in self.store.reclaim_worker(self.name):
                self._log_reclaimed(job)

    def run(self) -> int:
        self._install_signals()
        from queuectl.wakeup import watch

        self._watcher = watch(self.db_path)
        self.start()
        self.log.info("worker_started", pid=os.getpid(), db=str(self.db_path))
        self.notifier.ready()
        self.log.info("worker_ready")
        if os.geteuid() == 0:
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
        return 0

    def _loop(self) -> None:
        failures = 0
        job: Job | None = None  # claimed together with the last success, if any
        while not self.stopping:
            if job is None:
                if self._watcher is not None:
                    self._watcher.drain()  # changes before this claim are seen by it
                try:
                    self._housekeeping()
                    job = self.store.claim_next(self.name)
                    failures = 0
                except DatabaseUnavailable as exc:
                    failures += 1
                    pause = min(DB_RETRY_MAX, 0.5 * failures)
                    self.log.warning("database_error", error=str(exc), retry_in=pause)
                    self.notifier.status(f"database unavailable: {exc}")
                    self._sleep(pause)
                    continue
            if job is not None:
                self._crash_point("claimed")
                job = self._execute(job)
                self._crash_point("recorded")
                continue
            if self.drain and self.store.remaining() == 0:
                break
            self.notifier.status("idle")
            self._idle_wait()
        if job is not None:  # claimed just as the stop came: it never started
            self._persist(lambda: self.store.release(job, "worker shutdown before it started"))

    @property
    def poll_interval(self) -> float:
        """The safety-net poll: slow when database changes wake us, brisk when they cannot."""
        if self._poll_interval is not None:
            return self._poll_interval
        return 1.0 if self._watcher is not None else 0.25

    def _idle_wait(self) -> None:
        wait = self.poll_interval
        due = self.store.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - now()))
        wait = min(wait, max(0.0, self._next_beat - time.monotonic()))
        self._sleep(wait, for_jobs=True)

    def _housekeeping(self, job: Job | None = None) -> bool:
        """Heartbeat, lease renewal, reclaiming others' expired leases. False if job was lost."""
        if time.monotonic() < self._next_beat:
            return True
        self._next_beat = time.monotonic() + HEARTBEAT_EVERY
        if self.parent_pid and os.getppid() != self.parent_pid and not self.stopping:
            self.stop_requested_at, self.stop_reason = time.monotonic(), "supervisor exit"
        state = "stopping" if self.stopping else ("busy" if job else "idle")
        held = self.store.heartbeat(self.name, state, job)
        for reclaimed in self.store.reclaim_expired():
            self._log_reclaimed(reclaimed)
        self._watch_config()
        return held

    def _watch_config(self) -> None:
        items = self.store.config_items()
        if self._config_seen is not None:
            for key, value in items.items():
                if self._config_seen.get(key) != value:
                    self.log.info("config_changed", key=key, value=value)
        self._config_seen = items

    def _crash_point(self, step: str) -> None:
        if self._crash_at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def _log_reclaimed(self, job: Job) -> None:
        # The lost attempt may still be running here (its worker was SIGKILLed or hung):
        # end it before the job runs again.
        leftovers = procinfo.kill_job_processes(job.id, job.attempts)
        self.log.warning("lease_reclaimed", job_id=job.id, attempt=job.attempts,
                         error=job.last_error, state=job.state, killed_processes=leftovers,
                         next_run_at=iso_ms(job.run_at) if job.state != DEAD else None)

    # -- one job -----------------------------------------------------------------------------
    def _execute(self, job: Job) -> Job | None:
        """Run one job and record it; returns the next job if one was claimed with it."""
        attempt, max_attempts = job.attempts, job.max_retries + 1
        self.log.info("job_claimed", job_id=job.id, command=job.command, attempt=attempt,
                      max_attempts=max_attempts, max_retries=job.max_retries)
        self.notifier.status(f"running {job.id} (attempt {attempt}/{max_attempts})")
        try:
            self._housekeeping(job)  # heartbeats also between a stream of short jobs
        except DatabaseUnavailable as exc:
            self.log.warning("database_error", error=str(exc), retry_in=HEARTBEAT_EVERY)
        proc = JobProcess(job.command, job_environment(self._env, job.id, attempt), self.job_umask)
        self._crash_point("spawned")
        interrupted = lost = False
        while not proc.done:
            self.notifier.ping_if_due()
            deadlines = [self._next_beat, time.monotonic() + self.notifier.seconds_to_ping()]
            if job.timeout:
                deadlines.append(proc.started + job.timeout)
            if self.stop_requested_at is not None and not interrupted:
                deadlines.append(self.stop_requested_at + self.grace)
            if proc.kill_deadline is not None:
                deadlines.append(proc.kill_deadline)
            if proc.wait(min(deadlines) - time.monotonic(), (self._wake_r,)):
                break
            self._drain_wakeups()
            self._announce_stop(job)
            t = time.monotonic()
            if job.timeout and t - proc.started >= job.timeout and not interrupted:
                proc.kill(f"timed out after {job.timeout:g} s")
            if self.stop_requested_at is not None and (
                self.hard_stop or t >= self.stop_requested_at + self.grace
            ):
                interrupted = True
                proc.kill("interrupted by worker shutdown")
            if proc.kill_deadline is not None and t >= proc.kill_deadline:
                proc.kill("")  # escalates to SIGKILL
            try:
                if not self._housekeeping(job):
                    lost = True
                    proc.kill("lease lost")
            except DatabaseUnavailable as exc:
                self.log.warning("database_error", error=str(exc), retry_in=HEARTBEAT_EVERY)
        self._crash_point("exited")
        return self._record(job, proc, interrupted, lost, max_attempts)

    def _record(self, job: Job, proc: JobProcess, interrupted: bool, lost: bool,
                max_attempts: int) -> Job | None:
        outcome = proc.outcome()
        fields = dict(job_id=job.id, attempt=job.attempts, max_attempts=max_attempts,
                      max_retries=job.max_retries, duration_ms=round(outcome.duration * 1000),
                      exit_code=outcome.exit_code)
        if lost:
            self.log.warning("job_lost", **fields)
            return None
        if interrupted:
            if self._persist(lambda: self.store.release(job, "worker shutdown")):
                self.log.info("job_released", reason="worker shutdown", **fields)
            return None
        if proc.succeeded:
            if self.stopping:
                held, following = self._persist(
                    lambda: self.store.record_success(job, outcome)), None
            else:  # the next claim rides on the same commit
                held, following = self._persist(
                    lambda: self.store.complete_and_claim(job, outcome, self.name)) or (False, None)
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
        if updated.state == DEAD:
            self.log.error("job_dead", error=outcome.error, output_tail=tail, **fields)
        else:
            self.log.warning("job_failed", error=outcome.error, output_tail=tail,
                             next_run_at=iso_ms(updated.run_at), **fields)
        return None

    def _persist(self, action: Any) -> Any:
        """Retry a result write while the database is unavailable; the lease covers us
        meanwhile, and if it runs out the store fences our late write off. Once stopping,
        retry only within the grace period (or until a second signal)."""
        failures = 0
        while True:
            try:
                return action()
            except DatabaseUnavailable as exc:
                failures += 1
                past_grace = self.stopping and time.monotonic() > (
                    (self.stop_requested_at or 0.0) + self.grace)
                if self.hard_stop or past_grace:
                    # Give up: the job stays processing and its lease brings it back.
                    self.log.error("database_error", error=str(exc), retry_in=None)
                    return None
                pause = min(DB_RETRY_MAX, 0.5 * failures)
                self.log.warning("database_error", error=str(exc), retry_in=pause)
                self._sleep(pause)
