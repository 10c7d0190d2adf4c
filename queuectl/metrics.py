"""`queuectl metrics`: the queue in the Prometheus text exposition format (version 0.0.4).

Backend-free: every store answers `Store.metrics()` with the same numbers, and this module
only formats them, so a scrape of SQLite and of PostgreSQL read alike. `write_textfile`
replaces node_exporter's textfile atomically (temp file + rename in the same directory):
the collector, reading at any moment, sees the old file or the new one, never a part.
"""

from __future__ import annotations

import math
import os

from queuectl import policy
from queuectl.job import PROCESSING, STATES
from queuectl.store import Metrics, WorkerInfo

DEFAULT_TEXTFILE = "/var/lib/prometheus/node-exporter/queuectl.prom"
ENQUEUED = "enqueued"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Out:
    """Collects families: HELP and TYPE once, then their samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str) -> None:
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_number(value)}")


def render(m: Metrics, registry: list[WorkerInfo] | None = None) -> str:
    """The exposition text for one snapshot. Every queue the database knows (jobs,
    settings, counters) gets every state and outcome, zeros included, so a series never
    vanishes and reappears while the queue exists. `registry` (`Store.workers()`) gives
    each registered worker's start time: a worker restarting in a loop shows as that
    series changing, which an alert can count."""
    out = _Out()
    names = sorted({q.name for q in m.queues} | {row[0] for row in m.counters})
    info = {q.name: q for q in m.queues}
    enqueued = dict.fromkeys(names, 0)
    outcomes = {(n, o): 0 for n in names for o in policy.ATTEMPT_OUTCOMES}
    buckets = {n: dict.fromkeys((*policy.DURATION_BUCKETS, math.inf), 0) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    for queue, event, le, count, total in m.counters:
        if event == ENQUEUED:
            enqueued[queue] += count
            continue
        outcomes[queue, event] = outcomes.get((queue, event), 0) + count
        # The smallest current bound at or above the stored one (rows counted under an
        # older bucket list still land in a bucket that holds them).
        bound = next((b for b in policy.DURATION_BUCKETS if le <= b), math.inf)
        buckets[queue][bound] += count
        seconds[queue] += total

    out.family("queuectl_jobs", "gauge", "Jobs in the database per queue and state.")
    for name in names:
        counts = info[name].counts if name in info else dict.fromkeys(STATES, 0)
        for state in STATES:
            out.sample("queuectl_jobs", counts.get(state, 0), queue=name, state=state)
    out.family("queuectl_oldest_waiting_seconds", "gauge",
               "How long the queue's longest-due eligible job has waited to run (0: none).")
    for name in names:
        waited = info[name].oldest_waiting if name in info else None
        out.sample("queuectl_oldest_waiting_seconds", waited or 0.0, queue=name)
    out.family("queuectl_workers_active", "gauge",
               "Workers whose last heartbeat is recent, per host.")
    for host in sorted(m.workers):
        out.sample("queuectl_workers_active", m.workers[host], host=host)
    # Per queue, the workers that would claim its jobs: a lane can have none while other
    # lanes (and hosts) have plenty, which the per-host count above cannot show.
    out.family("queuectl_queue_workers_active", "gauge",
               "Active workers that serve the queue (by name, or by serving every queue).")
    for name in names:
        out.sample("queuectl_queue_workers_active", info[name].workers if name in info else 0,
                   queue=name)
    out.family("queuectl_worker_start_time_seconds", "gauge",
               "When each registered worker started (epoch seconds, the store's clock).")
    for w in sorted(registry or [], key=lambda w: (w.name, w.host)):
        out.sample("queuectl_worker_start_time_seconds", w.started_at, worker=w.name,
                   host=w.host)
    out.family("queuectl_paused", "gauge", "1 while all claiming is paused (queuectl pause).")
    out.sample("queuectl_paused", m.paused)
    out.family("queuectl_queue_paused", "gauge", "1 while this queue is paused on its own.")
    for name in names:
        out.sample("queuectl_queue_paused", name in info and info[name].paused is not None,
                   queue=name)

    out.family("queuectl_notices_pending", "gauge",
               "On-dead notices of the queue's dead jobs whose hook has not run yet (or "
               "failed and waits for its next try).")
    for name in names:
        out.sample("queuectl_notices_pending", info[name].notices if name in info else 0,
                   queue=name)

    out.family("queuectl_jobs_enqueued_total", "counter", "Jobs ever enqueued.")
    for name in names:
        out.sample("queuectl_jobs_enqueued_total", enqueued[name], queue=name)
    # Ended attempts plus running ones (each processing job holds exactly one): grows by one
    # at each claim, unchanged when an attempt ends, never touched by purge or retention.
    out.family("queuectl_attempts_started_total", "counter", "Attempts (runs) ever started.")
    for name in names:
        running = info[name].counts.get(PROCESSING, 0) if name in info else 0
        ended = sum(outcomes[name, o] for o in policy.ATTEMPT_OUTCOMES)
        out.sample("queuectl_attempts_started_total", ended + running, queue=name)
    out.family("queuectl_attempts_total", "counter",
               "Attempts ever ended, by outcome (dead: failed or lost, leaving the job dead).")
    for name in names:
        for outcome in policy.ATTEMPT_OUTCOMES:
            out.sample("queuectl_attempts_total", outcomes[name, outcome], queue=name,
                       outcome=outcome)
    out.family("queuectl_attempt_duration_seconds", "histogram",
               "Duration of ended attempts, from claim to end, by the store's clock.")
    for name in names:
        running_total = 0
        for bound, count in buckets[name].items():
            running_total += count
            out.sample("queuectl_attempt_duration_seconds_bucket", running_total, queue=name,
                       le=_number(bound))
        out.sample("queuectl_attempt_duration_seconds_sum", seconds[name], queue=name)
        out.sample("queuectl_attempt_duration_seconds_count", running_total, queue=name)
    return "\n".join(out.lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace `path` with `text` atomically: write a hidden temp file beside it (not
    `*.prom`, which the collector would read), fsync, rename over. Mode 0644: node_exporter
    runs as another user. Raises OSError (the caller reports it)."""
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            data = memoryview(text.encode())
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
