"""Small helpers shared by the contract suite; everything goes through the `Store` interface."""

from __future__ import annotations

import time
from typing import Any

from waiting import wait_for

from queuectl.job import Job, JobSpec
from queuectl.store import Outcome, Store

# Deadlines are generous on purpose: other test suites may load the machine.
DEADLINE = 30.0
LONG_AGO = 7200.0  # seconds; far enough in the past that no clock skew makes it "future"


def ok(output: bytes = b"", exit_code: int = 0) -> Outcome:
    """A successful run, as a worker would report it."""
    return Outcome(exit_code=exit_code, error=None, output=output, duration=0.1)


def failed(error: str = "exit code 1", output: bytes = b"", exit_code: int | None = 1) -> Outcome:
    """A failed run, as a worker would report it."""
    return Outcome(exit_code=exit_code, error=error, output=output, duration=0.1)


def add(store: Store, command: str = "true", **fields: Any) -> str:
    """Enqueue one job and return its id."""
    return store.enqueue([JobSpec(command, **fields)])[0]


def past(seconds: float = LONG_AGO) -> float:
    """An absolute run_at surely in the past of any clock the store may use."""
    return time.time() - seconds


def claim(store: Store, worker: str = "w1") -> Job:
    """Claim a job that must be eligible right now."""
    job = store.claim_next(worker)
    assert job is not None, "expected an eligible job"
    return job


def claim_when_due(store: Store, worker: str = "w1", timeout: float = DEADLINE) -> Job:
    """Claim as soon as a job becomes eligible (after a backoff), bounded by a deadline."""
    return wait_for(lambda: store.claim_next(worker), timeout, f"a job to become claimable by {worker}")


def fast_backoff(store: Store) -> None:
    """backoff-base 1 makes every backoff 1 s (1 ** k), so retries come quickly."""
    store.set_config("backoff-base", 1)


def no_backoff(store: Store) -> None:
    """backoff-max 0 caps every backoff at 0 s: a failed job is due again at once."""
    store.set_config("backoff-max", 0)


def short_leases(store: Store) -> None:
    """The shortest lease the settings allow (2 s), so expiry tests stay quick."""
    store.set_config("lease-seconds", 2)


# The SQLite backend keeps leases on CLOCK_BOOTTIME (read an instant after the wall clock that
# lease_expires_at shows; both run at the rate of real time): past the shown expiry by this
# much, the lease has run out by that clock too.
LEASE_CLOCKS_APART = 0.05


def wait_expired(store: Store, jobs: list[Job], timeout: float = DEADLINE) -> None:
    """Until the store's own clock is past every one of these leases, without touching them
    (reclaim_expired would end them)."""
    ends = max(store.get(j.id).lease_expires_at for j in jobs) + LEASE_CLOCKS_APART
    wait_for(lambda: store.now() > ends, timeout, "the leases to run out by the store's clock",
             every=0.1)


def wait_reclaimed(store: Store, timeout: float = DEADLINE) -> list[Job]:
    """Poll reclaim_expired until it returns something: leases end by the store's clock."""
    return wait_for(store.reclaim_expired, timeout, "an expired lease to be reclaimed", every=0.1)


def ids(jobs: Any) -> list[str]:
    return [j.id for j in jobs]
