"""Keeping a worker's place in the queue: heartbeats, lease renewal, reclaiming the dead.

Every HEARTBEAT_EVERY seconds a worker says it lives, extends the lease of the job it runs
and turns other workers' expired leases into failed attempts, ending what is left of those
attempts on this host; it also asks the store whether the locator still names the database
it opened (a deleted or replaced file). Between beats it costs nothing, so short jobs do not
pay per job.
"""

from __future__ import annotations

import time

from queuectl import procinfo
from queuectl.clock import iso_ms
from queuectl.job import CANCELED, DEAD, Job
from queuectl.operate import tell_dependents
from queuectl.policy import HEARTBEAT_EVERY
from queuectl.retention import Retention
from queuectl.settings import QueueConfig
from queuectl.store import PauseInfo, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class LeaseKeeper:
    def __init__(self, store: Store, name: str, log: Any) -> None:
        self.store = store
        self.name = name
        self.log = log
        self.next_beat = 0.0  # monotonic
        self._config_seen: dict[str, Any] | None = None
        self.paused: PauseInfo | None = None  # as of the last beat
        self._pause_known = False
        self.retention = Retention(store, name, log)
        self.replaced = False  # the locator names another database now: stop, be restarted


    def due(self) -> bool:
        return time.monotonic() >= self.next_beat

    def beat(self, state: str, job: Job | None = None) -> bool:
        """If due: heartbeat (and renew job's lease), reclaim expired leases, report config
        changes. False if job's lease was lost. Raises DatabaseUnavailable."""
        if not self.due():
            return True
        self.next_beat = time.monotonic() + self._beat_every()
        if not self.replaced and not self.store.still_current():
            self.replaced = True  # the worker reacts; beats go on to the old file meanwhile
        beat = self.store.beat(self.name, state, job)
        if beat.expired:
            for reclaimed in self.store.reclaim_expired():
                self.end_reclaimed(reclaimed)
        self._watch_config(beat.settings)
        self._watch_pause(beat.paused)
        return beat.held

    def _beat_every(self) -> float:
        """HEARTBEAT_EVERY, or a third of a shorter lease: a 2 s lease renewed only every
        2 s would run out whenever a beat came late, and its job would run twice."""
        lease = (self._config_seen or {}).get("lease-seconds", HEARTBEAT_EVERY * 3)
        return min(HEARTBEAT_EVERY, float(lease) / 3)

    def housekeeping(self) -> None:
        """Background duties between jobs (retention), when due. Raises DatabaseUnavailable."""
        if self.retention.due() and self._config_seen is not None:
            self.retention.run(QueueConfig.from_items(self._config_seen))

    def _watch_pause(self, info: PauseInfo | None) -> None:
        """Log when the queue is paused or resumed (who and when: the journal keeps it)."""
        was, self.paused = self.paused, info
        if not self._pause_known:
            self._pause_known = True
            if info is None:
                return
        elif (was is None) == (info is None):
            return
        if info is not None:
            self.log.warning("queue_paused", paused_by=info.by, paused_at=iso_ms(info.since))
        else:
            self.log.info("queue_resumed")

    def end_reclaimed(self, job: Job) -> None:
        """Log a reclaimed attempt, after ending what may still run of it on this host
        (its worker was SIGKILLed or hung) before the job runs again."""
        leftovers = procinfo.kill_job_processes(job.id, job.attempts)
        self.log.warning("lease_reclaimed", job_id=job.id, queue=job.queue, attempt=job.attempts,
                         error=job.last_error, state=job.state, killed_processes=leftovers,
                         next_run_at=iso_ms(job.run_at) if job.state != DEAD else None)
        if job.state in (DEAD, CANCELED):
            tell_dependents(self.store, job, self.log)

    def _watch_config(self, items: dict[str, Any]) -> None:
        if self._config_seen is not None:
            for key, value in items.items():
                if self._config_seen.get(key) != value:
                    self.log.info("config_changed", key=key, value=value)
        self._config_seen = items
