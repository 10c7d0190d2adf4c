"""claim_or_due: an idle worker's pass, a claim and, when it takes nothing, how long until
the next job of its lane is due (what seconds_until_due would answer), on a CLI's store
and on a worker's (whose calls PostgreSQL prepares)."""

from __future__ import annotations

import pytest
from contract_helpers import add, claim, ok, past

HOUR = 3600


def test_a_due_job_is_claimed_with_no_wait(store, either_store) -> None:
    add(store, id="later", delay=HOUR)
    add(store, id="now")
    job, due = either_store.claim_or_due("w1")
    assert job is not None and job.id == "now" and job.state == "processing" and due == 0
    assert store.get("now").worker == "w1" and store.get("later").state == "pending"


def test_nothing_waiting_is_no_job_and_no_due_time(store, either_store) -> None:
    assert either_store.claim_or_due("w1") == (None, None)
    add(store, id="running")
    claim(store)  # a processing job waits for nobody
    add(store, id="done")
    store.record_success(claim(store), ok())
    for _ in range(7):  # past PostgreSQL's first custom plans of a prepared call
        assert either_store.claim_or_due("w1") == (None, None)


def test_a_delayed_job_is_not_claimed_and_its_wait_is_answered(store, either_store) -> None:
    add(store, id="far", delay=2 * HOUR)
    add(store, id="near", delay=HOUR)
    for _ in range(7):
        job, due = either_store.claim_or_due("w1")
        assert job is None and due == pytest.approx(HOUR, abs=60)
    assert store.get("near").state == "pending" and store.get("near").attempts == 0


def test_the_wait_is_the_lanes_own(store, either_store) -> None:
    add(store, id="a", queue="a", delay=HOUR)
    add(store, id="b", queue="b", delay=HOUR / 6)
    assert either_store.claim_or_due("w1", queues=["a"])[1] == pytest.approx(HOUR, abs=60)
    assert either_store.claim_or_due("w1", queues=["a", "b"])[1] == pytest.approx(HOUR / 6, abs=60)
    assert either_store.claim_or_due("w1", exclude=["b"])[1] == pytest.approx(HOUR, abs=60)
    assert either_store.claim_or_due("w1", exclude=["c"])[1] == pytest.approx(HOUR / 6, abs=60)
    assert either_store.claim_or_due("w1", queues=["c"]) == (None, None)
    assert either_store.claim_or_due("w1", exclude=["a", "b"]) == (None, None)


def test_a_due_job_held_back_by_its_queue_is_due_now_and_left_alone(store, either_store) -> None:
    """Paused, or at its concurrency limit: nothing to take, yet due now (the worker
    waits for a change or its poll, README "Named queues")."""
    add(store, id="p", queue="held", run_at=past())
    assert store.pause("alice@h", queue="held")
    assert either_store.claim_or_due("w1") == (None, 0)
    assert store.resume("held")
    store.set_queue_concurrency("held", 1)
    add(store, id="q", queue="held", run_at=past())
    first, due = either_store.claim_or_due("w1")  # the limited queue's turn, in a claim of its own
    assert first is not None and first.id == "p" and due == 0
    assert either_store.claim_or_due("w2") == (None, 0)
    assert store.get("q").state == "pending"
    assert store.record_success(first, ok())
    job, due = either_store.claim_or_due("w2")
    assert job is not None and job.id == "q" and due == 0
