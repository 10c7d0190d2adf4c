"""On PostgreSQL an enqueue wakes one idle worker a job, not every idle worker (schema
version 14): idle workers register in `listeners`, each on a channel of its own, and an
enqueue notifies as many of them as it stored jobs, of the queues they serve. What a user
sees: jobs start at once as before, and a fleet's idle workers no longer each look at the
queue for every job (what the server spent on that grew with every idle worker)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import closing
from statistics import median
from typing import Any

import pytest
from conftest import Queue, pickup_delay
from waiting import wait_for

from queuectl.backends.postgres_sql import prepared, statements
from queuectl.job import JobSpec
from queuectl.locator import open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def logged(pg_server: Any) -> Iterator[tuple[Queue, str]]:
    """A queue in a database of its own whose statements the server logs; its schema."""
    schema = pg_server.fresh_schema()
    dbname = f"db_{schema}"
    pg_server.psql(f"CREATE DATABASE {dbname}")
    pg_server.log_statements(dbname)
    queue = Queue(pg_server.locator(schema=schema, dbname=dbname))
    yield queue, schema
    queue.stop_all()


def _run_one(store: Any, job_id: str, queue: str | None = None) -> dict[str, Any]:
    """Enqueue one quick job (as `enqueue` does) and wait for its end; how long it waited
    to start (the store's clock) and who ran it."""
    store.enqueue([JobSpec("true", id=job_id, queue=queue)])
    job = wait_for(lambda: (j := store.get(job_id)) is not None and j.state == "completed"
                   and j, 30, f"{job_id} to complete")
    return {"delay": job.started_at - job.run_at, "worker": job.worker}


def _start_idle(queue: Queue, name: str, lane: str | None = None,
                env: dict[str, str] | None = None) -> Any:
    """A worker that looks at the queue only when woken (its poll: a minute)."""
    return queue.start("worker", "run", "--name", name, *(["--queue", lane] if lane else []),
                       "--poll-interval", "60", env=env)


def _listeners(pg_server: Any, schema: str) -> int:
    """How many idle workers are registered to be woken."""
    return int(pg_server.psql(f"SELECT count(*) FROM {schema}.listeners"))


def test_an_enqueue_wakes_one_idle_worker_not_every_idle_worker(
        pg_server: Any, logged: tuple[Queue, str]) -> None:
    """8 idle workers (the poll set to 60 s): each of 10 single enqueues starts its job at
    once, and the workers look at the queue about twice a job (the woken one's claim, and
    its look once the job is done), where every idle worker used to look (9 a job)."""
    queue, schema = logged
    workers = 8
    for i in range(workers):
        _start_idle(queue, f"w{i}")
    queue.wait_counts(active_workers=workers, timeout=30)
    look = f"EXECUTE {prepared(statements(schema, for_worker=True).claim_or_due).name}("
    with closing(open_store(str(queue.db))) as store:
        _run_one(store, "warm")  # every worker past its start-up looks
        delays, looks = [], 0
        for i in range(10):
            queue.wait_counts(processing=0, timeout=30)
            start = pg_server.log_size()
            delays.append(_run_one(store, f"j{i}")["delay"])
            # Besides: each idle worker looks at every heartbeat (2 s), about 0.1 looks in
            # the tenth of a second or so that a job takes here, 8 workers together.
            looks += pg_server.logged_since(start).count(look)
    assert median(delays) < 0.2, delays  # heard at once, not found at a look (2 s)
    assert looks <= 4 * 10, looks  # every idle worker looking: 9 a job


def test_the_worker_woken_serves_the_jobs_queue(pg_server: Any) -> None:
    """Two idle workers of two lanes; the one that ran the last job registered last, so it
    is the first an enqueue would wake: a job of the other lane still wakes the other
    worker at once (the wrong one woken, the job would wait for a look: up to 2 s)."""
    queue = Queue(pg_server.fresh_locator())
    try:
        for lane in ("a", "b"):
            _start_idle(queue, lane, lane)
        queue.wait_counts(active_workers=2, timeout=30)
        with closing(open_store(str(queue.db))) as store:
            runs = [_run_one(store, f"j{i}", "ab"[i % 2]) for i in range(8)]
        assert [run["worker"] for run in runs] == ["a", "b"] * 4
        delays = [run["delay"] for run in runs]
        assert median(delays) < 0.2, delays
    finally:
        queue.stop_all()


def test_a_killed_idle_worker_is_passed_over(pg_server: Any) -> None:
    """The idle worker killed (SIGKILL: its row in `listeners` stays) was the last to
    register, the first an enqueue would wake; the next job starts on another worker at
    once, not at a look."""
    schema = pg_server.fresh_schema()
    queue = Queue(pg_server.locator(schema=schema))
    apps = {name: f"wake-kill-{name}-{os.getpid()}" for name in ("w1", "w2", "w3")}

    def connections(app: str) -> int:
        return int(pg_server.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"))

    try:
        procs = {name: _start_idle(queue, name, env={"PGAPPNAME": app})
                 for name, app in apps.items()}
        queue.wait_counts(active_workers=3, timeout=30)
        with closing(open_store(str(queue.db))) as store:
            last = _run_one(store, "first")["worker"]
            queue.wait_counts(processing=0, timeout=30)
            # it waits again: registered, the latest
            wait_for(lambda: _listeners(pg_server, schema) == 3, 10, "3 listeners")
            procs[last].send_signal(signal.SIGKILL)
            procs[last].wait(timeout=10)
            wait_for(lambda: connections(apps[last]) == 0, 10, "its connections to end")
            t0 = time.monotonic()
            second = _run_one(store, "second")
        assert second["worker"] != last
        assert second["delay"] < 0.5, (second, time.monotonic() - t0)
    finally:
        queue.stop_all()


def test_one_enqueue_wakes_as_many_workers_of_each_queue_as_it_has_jobs_there(
        pg_server: Any) -> None:
    """Two idle workers of queue b, then three of queue a registered after them (so they
    are the first an enqueue would wake); one `enqueue --file` of one job in a and two in
    b starts all three at once, the b jobs on the b workers (counted per queue: woken as
    any three workers, the b jobs would wait for the b workers' looks, up to 2 s)."""
    import json

    schema = pg_server.fresh_schema()
    queue = Queue(pg_server.locator(schema=schema))

    try:
        for name in ("b1", "b2"):
            _start_idle(queue, name, "b")
        queue.wait_counts(active_workers=2, timeout=30)
        wait_for(lambda: _listeners(pg_server, schema) == 2, 10, "the b workers registered")
        for name in ("a1", "a2", "a3"):
            _start_idle(queue, name, "a")
        queue.wait_counts(active_workers=5, timeout=30)
        wait_for(lambda: _listeners(pg_server, schema) == 5, 10, "every worker registered")
        jobs = [("ja", "a"), ("jb1", "b"), ("jb2", "b")]
        queue.run("enqueue", "--file", "-", input="".join(
            json.dumps({"id": i, "queue": q, "command": "true"}) + "\n" for i, q in jobs))
        ran = {i: queue.wait_state(i, "completed", timeout=30) for i, _ in jobs}
        assert {i: job["worker"][0] for i, job in ran.items()} == {"ja": "a", "jb1": "b",
                                                                  "jb2": "b"}
        delays = {i: pickup_delay(job) for i, job in ran.items()}
        assert max(delays.values()) < 0.5, delays
    finally:
        queue.stop_all()
