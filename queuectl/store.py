"""The storage contract: everything the worker and the CLI need from a queue backend.

SQLite implements it today (`queuectl.db`); a PostgreSQL backend would implement the same
methods with `FOR UPDATE SKIP LOCKED`, and nothing above this interface would change.
Every method that changes state is one transaction: it happens whole or not at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from queuectl.config import QueueConfig
from queuectl.job import Job, JobSpec
from queuectl.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class WorkerInfo(Record):
    name: str
    host: str
    pid: int
    pid_start: str | None
    started_at: float
    heartbeat_at: float
    state: str
    job_id: str | None


class Outcome(Record):
    """How one run of a command ended, as the worker observed it."""

    exit_code: int | None
    error: str | None
    output: bytes
    duration: float


class Store(ABC):
    # -- submitting -------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, specs: list[JobSpec], if_absent: bool = False) -> list[str]:
        """Atomically add all jobs or none; returns their ids. A taken id raises Conflict,
        unless if_absent, where the existing job is left as it is and its id returned."""

    # -- the worker's verbs -----------------------------------------------------------------
    @abstractmethod
    def claim_next(self, worker: str) -> Job | None:
        """Atomically take the most urgent eligible job: mark it processing, count the
        attempt, set a lease. Two callers never receive the same job."""

    @abstractmethod
    def heartbeat(self, worker: str, state: str, job: Job | None) -> bool:
        """Record that the worker lives and extend the lease of the job it holds.
        False when the job is no longer held by this worker (its lease was reclaimed)."""

    @abstractmethod
    def record_success(self, job: Job, outcome: Outcome) -> bool:
        """Atomically complete the job, if this worker still holds this attempt."""

    @abstractmethod
    def complete_and_claim(self, job: Job, outcome: Outcome,
                           worker: str) -> tuple[bool, Job | None]:
        """record_success and claim_next in one transaction: one commit per job, not two.
        Returns (whether the attempt was still held, the next job or None)."""

    @abstractmethod
    def record_failure(self, job: Job, outcome: Outcome) -> Job | None:
        """Atomically mark the attempt failed: `failed` with its backoff, or `dead` when
        retries are spent. Returns the updated job, or None if the attempt was not held."""

    @abstractmethod
    def release(self, job: Job, reason: str) -> bool:
        """Atomically put a held job back to pending without spending a retry (shutdown)."""

    @abstractmethod
    def reclaim_expired(self) -> list[Job]:
        """Atomically turn every job whose lease ran out into a failed attempt (or dead)."""

    @abstractmethod
    def reclaim_worker(self, worker: str) -> list[Job]:
        """Like reclaim_expired, for the jobs a restarted worker of this name held."""

    # -- operators ---------------------------------------------------------------------------
    @abstractmethod
    def retry_dead(self, job_id: str) -> Job:
        """Atomically move a dead job back to pending with attempts 0."""

    @abstractmethod
    def get(self, job_id: str, history: bool = False) -> Job:
        """One job (NotFound if absent), with its attempt history when asked."""

    @abstractmethod
    def list_jobs(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs oldest first, optionally of one state."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs per state plus `active_workers` (recent heartbeat), from one snapshot."""

    @abstractmethod
    def remaining(self) -> int:
        """Jobs that may still run: pending, processing or failed awaiting a retry."""

    @abstractmethod
    def next_due(self) -> float | None:
        """Earliest run_at among waiting jobs, so an idle worker knows when to look again."""

    # -- configuration -----------------------------------------------------------------------
    @abstractmethod
    def config(self) -> QueueConfig: ...

    @abstractmethod
    def config_items(self) -> dict[str, float | int]: ...

    @abstractmethod
    def set_config(self, key: str, value: float | int) -> None: ...

    # -- workers -----------------------------------------------------------------------------
    @abstractmethod
    def register_worker(self, info: WorkerInfo) -> None:
        """Add the worker to the registry, replacing a stale row of the same name."""

    @abstractmethod
    def unregister_worker(self, name: str) -> None: ...

    @abstractmethod
    def workers(self) -> list[WorkerInfo]: ...

    @abstractmethod
    def verify(self) -> None:
        """Raise DatabaseUnavailable if the store is damaged: a worker checks before READY."""

    @abstractmethod
    def info(self) -> dict[str, Any]: ...

    @abstractmethod
    def close(self) -> None: ...
