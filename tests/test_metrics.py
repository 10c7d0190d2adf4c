"""`queuectl metrics` on every backend, read back with Prometheus' own parser.

A known workload gives known numbers; counters never go down across purge, retention,
a worker killed mid-job (its attempt lost) and a worker stopped mid-job (interrupted).
"""

from __future__ import annotations

import math
import signal
import time
from typing import Any

import pytest
from conftest import Queue
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

pytestmark = pytest.mark.slow  # workloads run by real workers, restarts

TYPES = {
    "queuectl_jobs": "gauge", "queuectl_oldest_waiting_seconds": "gauge",
    "queuectl_workers_active": "gauge", "queuectl_queue_workers_active": "gauge",
    "queuectl_worker_start_time_seconds": "gauge", "queuectl_paused": "gauge",
    "queuectl_queue_paused": "gauge", "queuectl_jobs_enqueued": "counter",
    "queuectl_attempts_started": "counter", "queuectl_attempts": "counter",
    "queuectl_attempt_duration_seconds": "histogram", "queuectl_notices_pending": "gauge",
}


def scrape(q: Queue) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, sorted labels), after checking each family's type."""
    families = list(text_string_to_metric_families(q.run("metrics").stdout))
    assert {f.name: f.type for f in families} == TYPES
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def counters(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0].endswith(("_total", "_count", "_bucket"))}


def assert_not_decreased(before: dict, after: dict) -> None:
    for key, old in before.items():
        assert after.get(key, -1) >= old, f"{key} went from {old} to {after.get(key)}"


def test_known_workload_gives_known_numbers(any_queue: Queue) -> None:
    q = any_queue
    q.run("config", "set", "backoff-base", "1")
    for i in range(2):
        q.enqueue({"id": f"ok{i}", "command": "true"})
    q.enqueue({"id": "bad", "command": "exit 3", "max_retries": 1})
    q.enqueue({"id": "slow", "command": "sleep 1.2", "queue": "mail"})
    q.enqueue({"id": "never", "command": "true", "queue": "mail"})
    q.run("cancel", "never")  # canceled before it ran: enqueued, but no attempt
    q.worker("--drain").wait(timeout=60)
    q.enqueue({"id": "later", "command": "true", "delay": 3600})
    q.enqueue({"id": "due", "command": "true", "queue": "idle"})
    q.run("pause", "--queue", "idle")

    m = scrape(q)
    assert value(m, "queuectl_jobs", queue="default", state="completed") == 2
    assert value(m, "queuectl_jobs", queue="default", state="dead") == 1
    assert value(m, "queuectl_jobs", queue="default", state="pending") == 1
    assert value(m, "queuectl_jobs", queue="mail", state="completed") == 1
    assert value(m, "queuectl_jobs", queue="mail", state="canceled") == 1
    assert value(m, "queuectl_jobs_enqueued_total", queue="default") == 4
    assert value(m, "queuectl_jobs_enqueued_total", queue="mail") == 2
    assert value(m, "queuectl_jobs_enqueued_total", queue="idle") == 1
    assert value(m, "queuectl_attempts_started_total", queue="default") == 4
    assert value(m, "queuectl_attempts_started_total", queue="mail") == 1
    expected = {"completed": 2, "failed": 1, "dead": 1, "canceled": 0, "lost": 0,
                "interrupted": 0}
    for outcome, n in expected.items():
        assert value(m, "queuectl_attempts_total", queue="default", outcome=outcome) == n
    assert value(m, "queuectl_attempts_total", queue="mail", outcome="completed") == 1
    # the histogram: cumulative buckets, +Inf equal to _count, _sum the durations
    assert value(m, "queuectl_attempt_duration_seconds_count", queue="mail") == 1
    assert value(m, "queuectl_attempt_duration_seconds_bucket", queue="mail", le="0.5") == 0
    assert value(m, "queuectl_attempt_duration_seconds_bucket", queue="mail", le="+Inf") == 1
    assert value(m, "queuectl_attempt_duration_seconds_sum", queue="mail") >= 1.2
    bounds = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                    if k[0] == "queuectl_attempt_duration_seconds_bucket"
                    and dict(k[1])["queue"] == "default")
    assert bounds[-1] == (math.inf, 4)
    assert [v for _, v in bounds] == sorted(v for _, v in bounds)
    # gauges: the paused queue's due job has been waiting; the delayed one is not due
    assert value(m, "queuectl_queue_paused", queue="idle") == 1
    assert value(m, "queuectl_queue_paused", queue="mail") == 0
    assert value(m, "queuectl_paused") == 0
    assert value(m, "queuectl_oldest_waiting_seconds", queue="default") == 0
    assert value(m, "queuectl_oldest_waiting_seconds", queue="idle") >= 0
    assert not [k for k in m if k[0] == "queuectl_workers_active"]  # none running

    q.run("pause")
    worker = q.worker("--queue", "nothing")
    m = wait_for(lambda: (s := scrape(q)) and [k for k in s if k[0] == "queuectl_workers_active"]
                 and s, 30, "the worker to count as active")
    active = {dict(k[1])["host"]: v for k, v in m.items() if k[0] == "queuectl_workers_active"}
    assert list(active.values()) == [1]
    assert value(m, "queuectl_paused") == 1
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)


def test_counters_never_decrease_across_purge_retention_and_restarts(any_queue: Queue,
                                                                     tmp_path: Any) -> None:
    q = any_queue
    q.run("config", "set", "backoff-base", "1")
    q.run("enqueue", "--file", "-", input="\n".join(
        f'{{"id": "j{i}", "command": "true"}}' for i in range(20)))
    q.enqueue({"id": "doomed", "command": "false", "max_retries": 0})
    q.worker("--drain").wait(timeout=60)
    first = counters(scrape(q))
    assert first["queuectl_attempts_total", (("outcome", "completed"), ("queue", "default"))] == 20

    q.run("purge", "--state", "completed")
    q.run("purge", "--state", "dead")
    after_purge = scrape(q)
    assert value(after_purge, "queuectl_jobs", queue="default", state="completed") == 0
    assert counters(after_purge) == first  # purge took nothing back

    # a worker killed mid-job: its successor under the same name takes the attempt back
    marker = tmp_path / "ran-once"
    q.enqueue({"id": "crash", "command": f"[ -e {marker} ] || {{ touch {marker}; sleep 60; }}"})
    victim = q.worker("--name", "w1")
    q.wait_state("crash", "processing")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    during = counters(scrape(q))
    assert_not_decreased(first, during)
    q.worker("--name", "w1", "--drain").wait(timeout=60)
    q.wait_state("crash", "completed")
    after_crash = scrape(q)
    assert value(after_crash, "queuectl_attempts_total", queue="default", outcome="lost") == 1
    assert value(after_crash, "queuectl_attempts_started_total", queue="default") == 23
    assert_not_decreased(during, counters(after_crash))

    # a worker stopped mid-job: the attempt is interrupted, the job runs again
    q.enqueue({"id": "stopped", "command": "sleep 60"})
    stopping = q.worker("--grace", "0")
    q.wait_state("stopped", "processing")
    running = counters(scrape(q))
    stopping.send_signal(signal.SIGTERM)
    stopping.wait(timeout=30)
    after_stop = scrape(q)
    assert value(after_stop, "queuectl_attempts_total", queue="default",
                 outcome="interrupted") == 1
    assert_not_decreased(running, counters(after_stop))
    q.run("cancel", "stopped")

    # retention: a worker deletes finished jobs; the counters stay
    q.run("config", "set", "keep-completed", "1")
    q.run("config", "set", "keep-canceled", "1")
    before_retention = counters(scrape(q))
    q.worker()
    # A worker above that lived past its first 2 s (a loaded machine) took the retention duty
    # (keep-completed defaults to 7 days) and exited holding it: the new one waits out its lease.
    from queuectl.policy import RETENTION_EVERY, RETENTION_LEASE

    wait_for(lambda: q.status()["completed"] == 0 and q.status()["canceled"] == 0,
             RETENTION_LEASE + RETENTION_EVERY, "retention to delete the finished jobs")
    assert_not_decreased(before_retention, counters(scrape(q)))
    assert counters(scrape(q)) == before_retention


def start_times(samples: dict) -> dict[str, tuple[str, float]]:
    """worker name -> (host, start time) of every queuectl_worker_start_time_seconds."""
    return {dict(k[1])["worker"]: (dict(k[1])["host"], v) for k, v in samples.items()
            if k[0] == "queuectl_worker_start_time_seconds"}


def test_worker_start_times_and_workers_per_queue(any_queue: Queue) -> None:
    """Each registered worker's start time, renewed when it restarts under its name (what
    the restart-loop alert counts), and per queue the active workers that serve it."""
    q = any_queue
    q.enqueue({"command": "true", "delay": 3600})  # queue default exists, nothing to run
    q.enqueue({"command": "true", "delay": 3600, "queue": "mail"})
    before = time.time()
    first = q.worker("--name", "w1", "--queue", "mail")
    m = wait_for(lambda: (s := scrape(q)) and start_times(s) and
                 value(s, "queuectl_queue_workers_active", queue="mail") == 1 and s, 30,
                 "w1 to register and count as active")
    [(name, (host, started))] = start_times(m).items()
    assert name == "w1" and host
    assert before - 5 <= started <= time.time() + 5  # the store's clock: this host's, or
    # the test server's on this host
    assert value(m, "queuectl_queue_workers_active", queue="default") == 0  # w1 serves mail

    first.send_signal(signal.SIGTERM)
    first.wait(timeout=30)
    assert start_times(scrape(q)) == {}  # a stopped worker leaves the registry
    again = q.worker("--name", "w1", "--queue", "mail")
    everything = q.worker("--name", "w2")
    m = wait_for(lambda: (s := scrape(q)) and len(start_times(s)) == 2 and
                 value(s, "queuectl_queue_workers_active", queue="default") == 1 and s, 30,
                 "w1 back and w2 active")
    restarted = start_times(m)
    assert restarted["w1"][1] > started
    assert value(m, "queuectl_queue_workers_active", queue="mail") == 2  # w2 serves all
    for proc in (again, everything):
        proc.send_signal(signal.SIGTERM)
    for proc in (again, everything):
        proc.wait(timeout=30)
