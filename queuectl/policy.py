"""The queue's rules, one constant per fact, free of any backend.

Every backend asks these functions instead of deciding for itself, so SQLite and PostgreSQL
cannot drift apart on when a job dies, how long it waits or how much output is kept.
"""

from __future__ import annotations

import os

OUTPUT_LIMIT = 65_536  # bytes of output kept per attempt: the tail
HEARTBEAT_EVERY = 2.0  # seconds between a worker's heartbeats (and lease renewals)
ACTIVE_WINDOW = 3 * HEARTBEAT_EVERY  # a worker silent this long no longer counts as active

# Outcomes of an attempt as its history row records them.
COMPLETED_ATTEMPT, FAILED_ATTEMPT, LOST_ATTEMPT, INTERRUPTED_ATTEMPT = (
    "completed", "failed", "lost", "interrupted")


def new_job_id() -> str:
    """12 hex digits: short enough to type, random enough not to collide in one queue."""
    return os.urandom(6).hex()


def retries_spent(attempts: int, max_retries: int) -> bool:
    """After its attempts-th run failed, does the job go to the dead letter queue?
    A job runs at most max_retries + 1 times."""
    return attempts > max_retries


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the attempts-th failed run: base ** attempts, at most cap."""
    try:
        delay = base**attempts
    except OverflowError:
        return cap
    return min(delay, cap)


def output_tail(output: bytes | None) -> bytes | None:
    """What an attempt's history keeps of its output."""
    return None if output is None else output[-OUTPUT_LIMIT:]


def lost_error(worker: str | None, why: str) -> str:
    """The error a reclaimed attempt records."""
    return f"worker {worker} {why}; counted as a failed attempt"


LEASE_EXPIRED = "stopped renewing its lease"
WORKER_RESTARTED = "died while running it and restarted"
