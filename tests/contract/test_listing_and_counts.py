"""iter_jobs, counts, remaining and seconds_until_due: what the CLI and an idle worker read."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from contract_helpers import DEADLINE, add, claim, failed, ids, no_backoff, ok, past
from waiting import wait_for

from queuectl import job as jobmod
from queuectl.job import JobSpec
from queuectl.store import Store, WorkerInfo


def _one_of_each_state(store: Store) -> None:
    """pending p, processing r, completed c, failed f (waiting a long backoff), dead d."""
    store.set_config("backoff-base", 1000)
    add(store, id="c")
    store.record_success(claim(store), ok())
    add(store, id="d", max_retries=0)
    store.record_failure(claim(store), failed())
    add(store, id="f")
    store.record_failure(claim(store), failed())
    add(store, id="r")
    claim(store)
    add(store, id="p")


# -- iter_jobs --------------------------------------------------------------------------------
def test_iter_jobs_yields_oldest_first_then_in_insertion_order(store) -> None:
    store.enqueue([JobSpec("true", id=i) for i in ("m", "z", "a")])
    add(store, id="0-newest", priority=99)
    store.enqueue([JobSpec("true", id=i) for i in ("y", "b")])
    assert ids(store.iter_jobs()) == ["m", "z", "a", "0-newest", "y", "b"]


def test_iter_jobs_order_does_not_change_when_jobs_run(store) -> None:
    for i in ("one", "two", "three"):
        add(store, id=i)
    store.claim_next("w1")
    store.record_success(claim(store), ok())
    assert ids(store.iter_jobs()) == ["one", "two", "three"]


def test_iter_jobs_filters_by_state(store) -> None:
    _one_of_each_state(store)
    expected = {"pending": ["p"], "processing": ["r"], "completed": ["c"], "failed": ["f"],
                "dead": ["d"]}
    for state in jobmod.STATES:
        got = list(store.iter_jobs(state=state))
        assert all(j.state == state for j in got)
        assert ids(got) == expected.get(state, [])


def test_iter_jobs_limit_takes_the_oldest(store) -> None:
    store.enqueue([JobSpec("true", id=f"j{i}") for i in range(5)])
    assert ids(store.iter_jobs(limit=2)) == ["j0", "j1"]
    assert ids(store.iter_jobs(limit=10)) == [f"j{i}" for i in range(5)]
    add(store, id="late")
    claim(store)  # j0 is processing now
    assert ids(store.iter_jobs(state="pending", limit=2)) == ["j1", "j2"]


def test_iter_jobs_is_a_lazy_iterator(store) -> None:
    store.enqueue([JobSpec("true", id=f"j{i}") for i in range(3)])
    it = store.iter_jobs()
    assert isinstance(it, Iterator) and not isinstance(it, list | tuple)
    assert next(it).id == "j0"
    assert ids(it) == ["j1", "j2"]


def test_iter_jobs_streams_in_memory_that_does_not_grow_with_the_number_of_jobs(store) -> None:
    """Walking every job must cost far less than holding them all (Python-side memory)."""
    n = 6000
    store.enqueue([JobSpec("echo " + "x" * 300) for _ in range(n)])
    tracemalloc.start()
    try:
        seen = sum(1 for _ in store.iter_jobs())
        _, streaming_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        everything = list(store.iter_jobs())
        _, holding_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == len(everything) == n
    assert streaming_peak < holding_peak / 3, (streaming_peak, holding_peak)


def test_iter_jobs_on_an_empty_queue_yields_nothing(store) -> None:
    assert list(store.iter_jobs()) == []
    assert list(store.iter_jobs(state="dead")) == []


# -- counts and remaining ---------------------------------------------------------------------
def test_counts_has_every_state_and_active_workers_zeros_included(store) -> None:
    counts = store.counts()
    assert set(counts) == set(jobmod.STATES) | {"active_workers", "blocked", "notices"}
    assert all(v == 0 for v in counts.values())


def test_counts_counts_jobs_per_state(store) -> None:
    _one_of_each_state(store)
    add(store, id="p2")
    counts = store.counts()
    assert set(counts) == set(jobmod.STATES) | {"active_workers", "blocked", "notices"}
    assert {k: counts[k] for k in ("pending", "processing", "completed", "failed", "dead")} == {
        "pending": 2, "processing": 1, "completed": 1, "failed": 1, "dead": 1}
    assert sum(counts[s] for s in jobmod.STATES) == 6


def test_counts_active_workers_counts_registered_workers_that_beat_recently(store) -> None:
    for name in ("w1", "w2"):
        store.register_worker(WorkerInfo(name=name, host="h", pid=1, pid_start=None, started_at=0.0,
                                         heartbeat_at=0.0, state="idle", job_id=None))
    assert store.counts()["active_workers"] == 2
    store.unregister_worker("w2")
    assert store.counts()["active_workers"] == 1


def test_counts_are_the_same_from_another_store(store, open_another) -> None:
    _one_of_each_state(store)
    assert open_another().counts() == store.counts()


def test_remaining_counts_pending_processing_and_failed_only(store) -> None:
    assert store.remaining() == 0
    _one_of_each_state(store)
    assert store.remaining() == 3  # p, r, f; not c or d
    add(store, id="future", delay=3600)
    assert store.remaining() == 4


# -- seconds_until_due ------------------------------------------------------------------------
def test_seconds_until_due_is_none_when_nothing_waits(store) -> None:
    assert store.seconds_until_due() is None
    add(store, id="j")
    store.record_success(claim(store), ok())
    add(store, id="k")
    claim(store)
    assert store.seconds_until_due() is None


def test_seconds_until_due_is_zero_when_a_job_is_due_now(store) -> None:
    add(store, id="late", delay=3600)
    add(store, id="old", run_at=past())
    assert store.seconds_until_due() == 0


def test_seconds_until_due_is_the_wait_for_the_earliest_waiting_job(store) -> None:
    add(store, id="far", delay=7200)
    add(store, id="near", delay=3600)
    first = store.seconds_until_due()
    assert first == pytest.approx(3600, abs=60)
    wait_for(lambda: store.seconds_until_due() < first, DEADLINE, "the wait to shrink as time passes")


def test_seconds_until_due_counts_a_failed_job_waiting_for_its_backoff(store) -> None:
    store.set_config("backoff-base", 1000)
    add(store, id="f")
    store.record_failure(claim(store), failed())
    assert store.seconds_until_due() == pytest.approx(1000, abs=60)
    no_backoff(store)
    add(store, id="g")
    store.record_failure(claim(store), failed())
    assert store.seconds_until_due() == 0
