"""The queue's rules, one constant per fact, free of any backend.

Every backend asks these functions instead of deciding for itself, so SQLite and PostgreSQL
cannot drift apart on when a job dies, how long it waits or how much output is kept.
"""

from __future__ import annotations

import os

from queuectl.errors import Conflict, NotFound
from queuectl.job import DEAD

OUTPUT_LIMIT = 65_536  # bytes of output kept per attempt: the tail
HEARTBEAT_EVERY = 2.0  # seconds between a worker's heartbeats (and lease renewals)
ACTIVE_WINDOW = 3 * HEARTBEAT_EVERY  # a worker silent this long no longer counts as active

# On-dead hooks (README "Dead-job hook"): each run may take HOOK_TIMEOUT seconds (then its
# process group is killed); a notice is held by one worker for NOTICE_LEASE seconds, longer
# than a run and its kill can take, so a hook never runs twice at once for one job; a notice
# whose hook failed HOOK_TRIES times in all is dropped. The hook's stdin: the last
# NOTICE_INPUT bytes of the job's last output.
HOOK_TIMEOUT = 30.0
NOTICE_LEASE = 60.0
HOOK_TRIES = 5
NOTICE_INPUT = 65_536
# A worker completing a stream of jobs (each next claim riding on the previous commit) still
# looks for notices this often, between two jobs.
NOTICE_CHECK_EVERY = 5.0


def hook_retry_delay(first: float, tries: int) -> float:
    """Seconds before the next try of a hook that failed `tries` times: first, 2x, 4x...
    (the `on-dead-backoff` setting is `first`: 2 s gives 2, 4, 8, 16)."""
    return float(first) * 2.0 ** max(tries - 1, 0)


# Outcomes of an attempt as its history row records them.
COMPLETED_ATTEMPT, FAILED_ATTEMPT, LOST_ATTEMPT, INTERRUPTED_ATTEMPT = (
    "completed", "failed", "lost", "interrupted")
CANCELED_ATTEMPT = "canceled"
CANCELED_ERROR = "canceled by an operator"

# Cancel of a running job: a worker re-reads the job's cancel flag this often while the job
# runs (and sooner when the store's wakeup fires), but never in a job's first moments, so a
# stream of short jobs pays no read per job.
CANCEL_CHECK_EVERY = 0.5
CANCEL_CHECK_AFTER = 0.2  # seconds into a job before its first check
WAKEUP_CHECK_MIN_GAP = 0.1  # at most this often on wakeups (other workers write constantly)

# Live output (`logs --follow`): a job running longer than LIVE_OUTPUT_AFTER seconds has what
# it printed written every LIVE_OUTPUT_EVERY seconds; only the last OUTPUT_LIMIT bytes (plus
# the newest chunk) are kept, so a chatty job cannot grow the database without bound.
LIVE_OUTPUT_AFTER = 0.5
LIVE_OUTPUT_EVERY = 0.1
# At most this much is written per flush (the newest bytes; a follower is told how many it
# missed): a job printing a gigabyte costs the database about 160 KiB/s, not the gigabyte.
LIVE_CHUNK_MAX = 16_384

# Bulk operators' verbs and retention work in batches this size: one short transaction each,
# so workers and `enqueue` never wait long for the lock.
BATCH_SIZE = 500
RETENTION_EVERY = 30.0  # seconds between retention passes once nothing expired
RETENTION_BUSY_EVERY = 1.0  # ... and while passes keep finding expired jobs
RETENTION_LEASE = 60.0  # seconds one worker holds the retention duty without renewing it
RETENTION_LEASE_NAME = "retention"

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 100 * 365 * 86400


def parse_duration(text: str) -> float:
    """Seconds from `90s`, `15m`, `12h`, `7d` or a plain number of seconds; ValueError else."""
    value = str(text).strip().lower()
    factor = _DURATION_UNITS.get(value[-1:], None)
    number = value[:-1] if factor else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise ValueError("expected a duration such as 90s, 15m, 12h, 7d or 0") from None
    if not 0 <= seconds <= MAX_DURATION or seconds != seconds:
        raise ValueError("expected a duration from 0 to 100 years (90s, 15m, 12h, 7d)")
    return seconds


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

# Metrics: how `queuectl metrics` counts attempts. Each ended attempt counts under exactly one
# outcome: `dead` is a failed or lost attempt that left its job dead (so `failed` and `lost`
# are the ones that will be retried). Durations (store clock, claim to end) are counted in
# buckets with these upper bounds in seconds, and above the last one in +Inf: shell jobs
# run from milliseconds to hours. The schemas' counting triggers bake this list in: changing
# it needs a new migration; rows counted under an older list are folded into the next bound
# of the current one.
DEAD_ATTEMPT = "dead"
ATTEMPT_OUTCOMES = (COMPLETED_ATTEMPT, FAILED_ATTEMPT, DEAD_ATTEMPT, CANCELED_ATTEMPT,
                    LOST_ATTEMPT, INTERRUPTED_ATTEMPT)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
                    10800.0, 21600.0)


def counted_outcome(result: str | None, state: str) -> str:
    """The outcome an ended attempt counts under, given its job's state after it."""
    if result in (FAILED_ATTEMPT, LOST_ATTEMPT) and state == DEAD:
        return DEAD_ATTEMPT
    return result or FAILED_ATTEMPT


def duration_bucket(seconds: float) -> float:
    """The upper bound of the bucket `seconds` falls in (inf above the last)."""
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return bound
    return float("inf")


# The same two rules in SQL, for the schemas' counting triggers and statements (both
# backends): {a} is the ended attempt's history row, j its job.
COUNTED_OUTCOME_SQL = ("CASE WHEN {a}.outcome IN ('failed', 'lost') AND j.state = 'dead'"
                       " THEN 'dead' ELSE coalesce({a}.outcome, 'failed') END")


def duration_bucket_sql(seconds: str, infinity: str) -> str:
    """The SQL expression of duration_bucket(`seconds`), `infinity` the dialect's +Inf."""
    arms = " ".join(f"WHEN {seconds} <= {le!r} THEN {le!r}" for le in DURATION_BUCKETS)
    return f"CASE {arms} ELSE {infinity} END"


# The refusals every backend words the same way: what a user reads does not depend on where
# the queue lives.
def no_such_job(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}")


def not_dead(job_id: str, state: str) -> Conflict:
    return Conflict(f"job {job_id!r} is {state}, not dead; only dead jobs can be retried")


def not_cancellable(job_id: str, state: str) -> Conflict:
    return Conflict(f"job {job_id!r} is already {state}; only pending, failed or processing"
                    " jobs can be canceled")
