"""Keeping a worker's place in the queue: heartbeats, lease renewal, reclaiming the dead.

Every HEARTBEAT_EVERY seconds a worker says it lives, extends the lease of the job it runs
and turns other workers' expired leases into failed attempts, ending what is left of those
attempts on this host. Between beats it costs nothing, so short jobs do not pay per job.
"""

from __future__ import annotations

import time

from queuectl import procinfo
from queuectl.clock import iso_ms
from queuectl.job import DEAD, Job
from queuectl.policy import HEARTBEAT_EVERY
from queuectl.store import Store

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

    def due(self) -> bool:
        return time.monotonic() >= self.next_beat

    def beat(self, state: str, job: Job | None = None) -> bool:
        """If due: heartbeat (and renew job's lease), reclaim expired leases, report config
        changes. False if job's lease was lost. Raises DatabaseUnavailable."""
        if not self.due():
            return True
        self.next_beat = time.monotonic() + HEARTBEAT_EVERY
        held = self.store.heartbeat(self.name, state, job)
        for reclaimed in self.store.reclaim_expired():
            self.end_reclaimed(reclaimed)
        self._watch_config()
        return held

    def end_reclaimed(self, job: Job) -> None:
        """Log a reclaimed attempt, after ending what may still run of it on this host
        (its worker was SIGKILLed or hung) before the job runs again."""
        leftovers = procinfo.kill_job_processes(job.id, job.attempts)
        self.log.warning("lease_reclaimed", job_id=job.id, attempt=job.attempts,
                         error=job.last_error, state=job.state, killed_processes=leftovers,
                         next_run_at=iso_ms(job.run_at) if job.state != DEAD else None)

    def _watch_config(self) -> None:
        items = self.store.config_items()
        if self._config_seen is not None:
            for key, value in items.items():
                if self._config_seen.get(key) != value:
                    self.log.info("config_changed", key=key, value=value)
        self._config_seen = items
