"""Automatic retention: finished jobs older than `keep-completed`, `keep-dead` and
`keep-canceled` are deleted with their history, by one worker at a time.

A worker tries the retention duty (a lease-like row, `Store.take_duty`) every
`policy.RETENTION_EVERY` seconds, or every `RETENTION_BUSY_EVERY` while its passes find
expired jobs (a busy queue: rows must not pile up between passes), and then deletes
in batches of `policy.BATCH_SIZE` within a small time budget, each batch its own short
transaction: jobs keep flowing, and a worker killed mid-pass leaves whole batches done.
"""

from __future__ import annotations

import time

from queuectl import policy
from queuectl.job import TERMINAL
from queuectl.settings import QueueConfig
from queuectl.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PASS_BUDGET = 0.15  # seconds of deleting per pass, at most (about; one batch may overrun)


class Retention:
    def __init__(self, store: Store, holder: str, log: Any) -> None:
        self.store, self.holder, self.log = store, holder, log
        self.next_pass = time.monotonic() + policy.HEARTBEAT_EVERY  # not in the start-up rush

    def due(self) -> bool:
        return time.monotonic() >= self.next_pass

    def run(self, conf: QueueConfig) -> int:
        """One pass if due; how many jobs it deleted. Raises DatabaseUnavailable."""
        if not self.due():
            return 0
        self.next_pass = time.monotonic() + policy.RETENTION_EVERY
        keep = {state: conf.keep_for(state) for state in TERMINAL}
        if not any(keep.values()):
            return 0
        if not self.store.take_duty(policy.RETENTION_LEASE_NAME, self.holder,
                                    policy.RETENTION_LEASE):
            return 0
        deleted: dict[str, int] = {}
        end = time.monotonic() + PASS_BUDGET
        backlog = False
        for state, seconds in keep.items():
            while seconds and not backlog:
                n = self.store.purge(state, seconds, policy.BATCH_SIZE)
                if n:
                    deleted[state] = deleted.get(state, 0) + n
                if n < policy.BATCH_SIZE:
                    break
                backlog = time.monotonic() >= end
        if deleted:  # jobs are finishing: come back soon, before many more pile up
            self.next_pass = time.monotonic() + policy.RETENTION_BUSY_EVERY
        if deleted:
            self.log.info("retention_purged", deleted=sum(deleted.values()),
                          **{f"deleted_{k}": v for k, v in deleted.items()}, backlog=backlog)
        return sum(deleted.values())
