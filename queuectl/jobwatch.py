"""What a worker watches while one job runs, besides the process itself: an operator's cancel
and the job's live output.

Both cost nothing in a job's first moments (`policy.CANCEL_CHECK_AFTER`,
`policy.LIVE_OUTPUT_AFTER`), so a stream of short jobs pays no extra read or write per job.
After that the cancel flag is read every `CANCEL_CHECK_EVERY` seconds, and sooner when the
store's wakeup fires (another process wrote: perhaps the cancel), at most every
`WAKEUP_CHECK_MIN_GAP`; whatever the job printed is written every `LIVE_OUTPUT_EVERY` seconds.
A database outage here is only reported to the worker (which logs one line per outage): the
lease and the final record are what count.
"""

from __future__ import annotations

import time

from queuectl import policy
from queuectl.errors import DatabaseUnavailable
from queuectl.job import Job
from queuectl.process import JobProcess
from queuectl.store import Store, Wakeup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class JobWatch:
    def __init__(self, store: Store, job: Job, proc: JobProcess, wakeup: Wakeup | None,
                 db_failed: Callable[[DatabaseUnavailable, float], None],
                 db_ok: Callable[[], None]) -> None:
        """db_failed(error, retry_in) and db_ok() tell the worker how the database fares."""
        self.store, self.job, self.proc = store, job, proc
        self._db_failed, self._db_ok = db_failed, db_ok
        self._wakeup_fd = wakeup.fileno() if wakeup is not None else None
        self._wakeup = wakeup
        self.next_check = proc.started + policy.CANCEL_CHECK_AFTER
        self._last_check = 0.0
        self.next_flush = proc.started + policy.LIVE_OUTPUT_AFTER
        self.flushed = 0  # bytes of output already written live
        self.live = False  # something was written live

    def deadline(self) -> float:
        """When tick() must run next at the latest (monotonic)."""
        return min(self.next_check, self.next_flush)

    def fds(self) -> tuple[int, ...]:
        """The wakeup fd, once a wakeup may trigger a cancel check (rate-limited). The
        worker disarms the wakeup while busy; a job that runs this long arms it again
        (the cancel check due at CANCEL_CHECK_AFTER sees what came before)."""
        t = time.monotonic()
        if (self._wakeup_fd is None or t < self.proc.started + policy.CANCEL_CHECK_AFTER
                or t - self._last_check < policy.WAKEUP_CHECK_MIN_GAP):
            return ()
        if self._wakeup is not None:
            self._wakeup.arm_busy()
        return (self._wakeup_fd,)

    def tick(self, woken: bool) -> bool:
        """Check and flush what is due; True when an operator asked to cancel the job."""
        t = time.monotonic()
        if woken and self._wakeup is not None:
            self._wakeup.drain()
        if t >= self.next_flush:
            self.flush()
            self.next_flush = time.monotonic() + policy.LIVE_OUTPUT_EVERY
        if woken or t >= self.next_check:
            self._last_check = t
            self.next_check = t + policy.CANCEL_CHECK_EVERY
            try:
                requested = self.store.cancel_requested(self.job)
            except DatabaseUnavailable as exc:
                self._db_failed(exc, policy.CANCEL_CHECK_EVERY)
                return False
            self._db_ok()
            return requested
        return False

    def flush(self) -> None:
        """Write what the job printed since the last flush."""
        start, data = self.proc.output_since(self.flushed)
        if len(data) > policy.LIVE_CHUNK_MAX:
            start, data = start + len(data) - policy.LIVE_CHUNK_MAX, data[-policy.LIVE_CHUNK_MAX:]
        if not data:
            return
        try:
            self.store.append_output(self.job, start, data)
        except DatabaseUnavailable as exc:
            self._db_failed(exc, policy.LIVE_OUTPUT_EVERY)
            return
        self._db_ok()
        self.live = True
        self.flushed = start + len(data)
