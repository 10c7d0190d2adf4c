"""The operator's verbs above the contract: cancel, bulk actions, wait, logs.

Only the storage contract is used here, so every backend gets the same behaviour; `cli.py`
parses and prints, this module decides when to stop waiting and what the exit code is.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from queuectl import policy
from queuectl.errors import EXIT_FAILED, Conflict, NotFound, QueueError
from queuectl.job import CANCELED, COMPLETED, DEAD, TERMINAL, Job
from queuectl.store import OutputSlice, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from queuectl.lanes import Lane

EXIT_TIMEOUT = 124  # `wait --timeout` ran out, as timeout(1) reports it
WAKE_MIN_GAP = 0.05  # seconds between looks, however often the store's wakeup fires


def operator() -> str:
    """Who runs this command, for the record of who paused the queue: user@host."""
    import pwd

    from queuectl.procinfo import hostname

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo != user:
        user = f"{user} (sudo from {sudo})"
    return f"{user}@{hostname()}"


def in_batches(step: Callable[[int], int], at_most: int) -> int:
    """Call step(batch_size) until it comes back short or `at_most` are done: each call is
    one short transaction, and the cap keeps jobs that arrive meanwhile out of it."""
    done = 0
    while done < at_most:
        size = min(policy.BATCH_SIZE, at_most - done)
        n = step(size)
        done += n
        if n < size:
            break
    return done


class Waiter:
    """Sleep until the store may have changed (its wakeup) or a deadline, whichever first."""

    def __init__(self, store: Store) -> None:
        self._wakeup = store.wakeup(watch=True)
        self._fd = self._wakeup.fileno()
        self._last = 0.0

    def sleep(self, at_most: float) -> None:
        gap = WAKE_MIN_GAP - (time.monotonic() - self._last)
        if gap > 0:
            time.sleep(min(gap, max(0.0, at_most)))
        limit = max(0.0, min(at_most, self._wakeup.poll_interval))
        if self._fd is not None:
            select.select([self._fd], [], [], limit)
        else:
            time.sleep(limit)
        self._wakeup.drain()
        self._last = time.monotonic()

    def close(self) -> None:
        self._wakeup.close()


def wait_for(store: Store, ids: list[str], timeout: float | None) -> tuple[list[Job], bool]:
    """Every job once all are terminal, or as they are at the deadline: (jobs, timed out).
    NotFound at once for an unknown id."""
    deadline = None if timeout is None else time.monotonic() + timeout
    waiter = Waiter(store)
    try:
        while True:
            jobs = [store.get(job_id) for job_id in ids]
            if all(j.state in TERMINAL for j in jobs):
                return jobs, False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return jobs, True
            waiter.sleep(60.0 if left is None else left)
    finally:
        waiter.close()


def wait_exit_code(jobs: list[Job], timed_out: bool) -> int:
    """0 all completed; a single dead job: its last exit code (1 if 0 or unknown); otherwise
    1 if any did not complete; EXIT_TIMEOUT when the deadline came first."""
    if timed_out:
        return EXIT_TIMEOUT
    if all(j.state == COMPLETED for j in jobs):
        return 0
    if len(jobs) == 1 and jobs[0].state == DEAD:
        code = jobs[0].exit_code
        return code if code and 0 < code < 256 else EXIT_FAILED
    return EXIT_FAILED


def stream_output(store: Store, job_id: str, attempt: int | None, follow: bool,
                  write: Callable[[bytes], None], note: Callable[[str], None]) -> int:
    """Write an attempt's output; with follow, keep writing as the running attempt prints
    until it ends (waiting first for a job that has not started). Every byte written is the
    attempt's, in order, once; bytes no longer kept are reported through note()."""
    waiter = Waiter(store) if follow else None
    position = 0
    try:
        while True:
            part: OutputSlice | None = store.read_output(job_id, attempt, position)
            if part is None:
                job = store.get(job_id)
                never = job.state in TERMINAL or attempt is not None and attempt < job.attempt_number
                if not follow or never:
                    which = "has not run yet" if attempt is None else f"has no attempt {attempt}"
                    raise NotFound(f"job {job_id!r} {which}")
            else:
                attempt = part.attempt  # follow this attempt, not a later one
                if part.offset > position:
                    note(f"[{part.offset - position} bytes of attempt {part.attempt} are no "
                         "longer kept]")
                if part.data:
                    write(part.data)
                position = part.offset + len(part.data)
                if not part.running or not follow:
                    return 0
            assert waiter is not None
            waiter.sleep(policy.LIVE_OUTPUT_EVERY * 5)
    finally:
        if waiter is not None:
            waiter.close()


def queue_rows(store: Store, lanes: list[Lane] | None = None) -> list[dict[str, Any]]:
    """`queue list`: one JSON-ready row per queue, with the lanes (from their files) that
    serve it (a queue is listed once it has jobs or settings, as before lanes)."""
    rows = []
    from queuectl.lanes import by_queue

    served = {queue: [{"lane": lane.name, "user": lane.user, "workers": lane.workers,
                       "file": lane.path} for lane in serving]
              for queue, serving in by_queue(lanes or []).items()}
    for q in store.queues():
        wait = q.oldest_waiting
        rows.append({
            "queue": q.name, **q.counts, "paused": q.paused is not None,
            "paused_by": q.paused.by if q.paused else None,
            "concurrency": q.concurrency, "workers": q.workers,
            "oldest_waiting_seconds": None if wait is None else round(wait, 3),
            "on_dead": q.on_dead or None, "notices": q.notices,
            "lanes": served.get(q.name, []),
        })
    return rows


class CancelResult:
    def __init__(self, job_id: str, job: Job | None, error: QueueError | None,
                 cascaded: bool = False) -> None:
        self.job_id, self.job, self.error, self.cascaded = job_id, job, error, cascaded

    @property
    def line(self) -> str:
        if self.error is not None:
            return str(self.error)
        assert self.job is not None
        if self.cascaded:
            return f"{self.job_id}: canceled ({self.job.last_error})"
        if self.job.state == "processing":
            return (f"{self.job_id}: stopping (running on {self.job.worker}; canceled within "
                    "about a second)")
        return f"{self.job_id}: canceled"


def cancel_each(store: Store, ids: list[str]) -> list[CancelResult]:
    """Cancel every id on its own: one failure does not stop the others."""
    results = []
    for job_id in ids:
        try:
            job = store.cancel(job_id)
        except (NotFound, Conflict) as exc:
            results.append(CancelResult(job_id, None, exc))
            continue
        results.append(CancelResult(job_id, job, None))
        if job.state == CANCELED:
            results += [CancelResult(dep.id, dep, None, cascaded=True)
                        for dep in tell_dependents(store, job)]
    return results


def parent_of(dependent: Job) -> tuple[str, str]:
    """(parent id, how it ended) from a cascade-canceled job's last_error, which the store
    writes as `parent ID ended STATE`."""
    text = dependent.last_error or ""
    head, _, state = text.rpartition(" ended ")
    return head.removeprefix("parent "), state


def tell_dependents(store: Store, job: Job, log: Any = None) -> list[Job]:
    """The jobs canceled because `job` ended dead or canceled, each told to the journal (or
    to the worker's log): one `dependent_canceled` event per job, as it ended."""
    from queuectl.audit import tell

    try:
        dependents = store.canceled_dependents(job.id)
    except QueueError:  # the cancellation itself committed; only its telling is lost
        return []
    for dep in dependents:
        parent, how = parent_of(dep)
        fields = dict(job_id=dep.id, queue=dep.queue, parent=parent, parent_state=how)
        if log is not None:
            log.warning("dependent_canceled", **fields)
        else:
            tell("dependent_canceled", "warning", **fields)
    return dependents


class RetryResult:
    def __init__(self, job_id: str, job: Job | None, error: QueueError | None,
                 not_revived: list[Job]) -> None:
        self.job_id, self.job, self.error, self.not_revived = job_id, job, error, not_revived


def retry_each(store: Store, ids: list[str], delay: float | None) -> list[RetryResult]:
    """`queuectl retry`: each id on its own, told to the journal with who did it."""
    from queuectl.audit import tell

    results = []
    by = operator()
    for job_id in ids:
        try:
            before = store.get(job_id)
            job = store.retry(job_id, delay)
        except (NotFound, Conflict) as exc:
            results.append(RetryResult(job_id, None, exc, []))
            continue
        tell("job_retried", job_id=job.id, queue=job.queue, by=by,
             previous_state=before.state, next_attempt=job.attempt_number + 1)
        not_revived = store.canceled_dependents(job_id)
        results.append(RetryResult(job_id, job, None, not_revived))
    return results
