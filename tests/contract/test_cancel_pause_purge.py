"""Contract: cancel, pause, counting, purge and bulk retry of dead jobs, through the Store
interface only, once per backend."""

import time

import pytest
from contract_helpers import DEADLINE
from waiting import wait_for

from queuectl import policy
from queuectl.errors import Conflict, NotFound
from queuectl.job import JobSpec
from queuectl.store import Outcome


def _fail(store, job, code=1):
    return store.record_failure(job, Outcome(code, f"exit status {code}", b"", 0.01))


def _ok(store, job, output=b""):
    return store.record_success(job, Outcome(0, None, output, 0.01))


# -- cancel -------------------------------------------------------------------------------------
def test_a_canceled_pending_job_is_terminal_and_never_claimed(store) -> None:
    store.enqueue([JobSpec("true", id="a")])
    job = store.cancel("a")
    assert job.state == "canceled" and job.finished_at is not None and job.attempts == 0
    assert store.claim_next("w") is None
    assert store.counts()["canceled"] == 1 and store.remaining() == 0


def test_a_failed_job_waiting_for_its_retry_can_be_canceled(store) -> None:
    store.enqueue([JobSpec("false", id="a", max_retries=3)])
    assert _fail(store, store.claim_next("w")).state == "failed"
    assert store.cancel("a").state == "canceled"
    assert store.seconds_until_due() is None


def test_cancel_of_a_finished_or_unknown_job_is_refused_and_changes_nothing(store) -> None:
    store.enqueue([JobSpec("true", id="a")])
    _ok(store, store.claim_next("w"))
    with pytest.raises(Conflict):
        store.cancel("a")
    with pytest.raises(NotFound):
        store.cancel("nope")
    assert store.get("a").state == "completed"


def test_cancel_of_a_running_job_is_a_request_its_worker_sees_and_ends_as_canceled(store) -> None:
    store.enqueue([JobSpec("sleep 9", id="a", max_retries=5)])
    job = store.claim_next("w")
    assert not store.cancel_requested(job)
    after = store.cancel("a")
    assert after.state == "processing" and after.cancel_requested
    assert store.cancel("a").cancel_requested  # asking twice is fine
    assert store.cancel_requested(job)
    ended = store.record_failure(job, Outcome(None, policy.CANCELED_ERROR, b"bye", 0.1))
    assert ended.state == "canceled"
    got = store.get("a", history=True)
    assert got.state == "canceled" and got.history[-1]["outcome"] == policy.CANCELED_ATTEMPT
    assert store.claim_next("w") is None  # no retry


def test_a_canceled_attempt_that_succeeded_first_stays_completed(store) -> None:
    store.enqueue([JobSpec("true", id="a")])
    job = store.claim_next("w")
    store.cancel("a")
    assert _ok(store, job)
    assert store.get("a").state == "completed"


def test_release_and_reclaim_of_a_canceled_attempt_end_it_canceled(store) -> None:
    store.enqueue([JobSpec("sleep 9", id="a"), JobSpec("sleep 9", id="b")])
    a = store.claim_next("w1")
    assert store.claim_next("w2").id == "b"
    store.cancel("a")
    store.cancel("b")
    assert store.release(a, "worker shutdown")
    assert store.get("a").state == "canceled"
    reclaimed = store.reclaim_worker("w2")
    assert [j.state for j in reclaimed] == ["canceled"]
    assert store.claim_next("w3") is None


def test_cancel_state_works_in_batches_and_ends(store) -> None:
    store.enqueue([JobSpec("true", id=f"p{i}") for i in range(7)])
    assert store.cancel_state("pending", 5) == 5
    assert store.cancel_state("pending", 5) == 2
    assert store.cancel_state("pending", 5) == 0
    store.enqueue([JobSpec("sleep 9", id="r1"), JobSpec("sleep 9", id="r2")])
    running = [store.claim_next("w"), store.claim_next("w")]
    assert store.cancel_state("processing", 5) == 2
    assert store.cancel_state("processing", 5) == 0  # already asked: not counted again
    assert all(store.cancel_requested(j) for j in running)
    with pytest.raises(ValueError):
        store.cancel_state("completed", 5)


# -- pause --------------------------------------------------------------------------------------
def test_pause_stops_every_claim_until_resume(store, open_another) -> None:
    other = open_another(for_worker=True)
    store.enqueue([JobSpec("true", id="a"), JobSpec("true", id="b")])
    running = other.claim_next("w")
    assert store.pause("alice@host1")
    assert not store.pause("bob@host2")  # already paused: unchanged
    info = other.paused()
    assert info.by == "alice@host1" and abs(info.since - time.time()) < 60
    assert other.claim_next("w") is None
    held, following = other.complete_and_claim(running, Outcome(0, None, b"", 0.01), "w")
    assert held and following is None  # finishing works, claiming does not
    store.enqueue([JobSpec("true", id="c")])  # enqueue still works
    assert store.resume()
    assert not store.resume()
    assert store.paused() is None
    assert other.claim_next("w") is not None


# -- counting, purging, bulk retry --------------------------------------------------------------
def test_purge_deletes_only_finished_jobs_of_the_state_with_their_history(store) -> None:
    store.enqueue([JobSpec("true", id=f"c{i}") for i in range(5)]
                  + [JobSpec("true", id="waiting")])
    for _ in range(5):
        _ok(store, store.claim_next("w"), b"out")
    store.enqueue([JobSpec("true", id="late")])
    assert store.count_matching("completed") == 5
    assert store.count_matching("completed", older_than=3600) == 0
    assert store.purge("completed", 3600, 10) == 0
    assert store.purge("completed", None, 3) == 3
    assert store.purge("completed", 0, 3) == 2
    for i in range(5):
        with pytest.raises(NotFound):
            store.get(f"c{i}", history=True)
    assert store.get("waiting").state == "processing" or store.get("waiting").state == "pending"
    for state in ("pending", "processing", "failed"):
        with pytest.raises(ValueError):
            store.purge(state, None, 10)
    assert store.counts()["pending"] + store.counts()["processing"] == 2


def test_count_matching_and_purge_respect_older_than(store) -> None:
    store.enqueue([JobSpec("true", id="old")])
    _ok(store, store.claim_next("w"))
    finished = store.get("old").finished_at
    wait_for(lambda: store.now() > finished + 1.0, DEADLINE, "a second to pass by the store's clock")
    store.enqueue([JobSpec("true", id="new")])
    _ok(store, store.claim_next("w"))
    assert store.count_matching("completed", older_than=1.0) == 1
    assert store.purge("completed", 1.0, 10) == 1
    assert store.get("new").state == "completed"


def test_retry_dead_many_moves_dead_jobs_back_in_batches(store) -> None:
    store.enqueue([JobSpec("false", id=f"d{i}", max_retries=0) for i in range(4)])
    for _ in range(4):
        assert _fail(store, store.claim_next("w")).state == "dead"
    assert store.count_matching("dead") == 4
    assert store.retry_dead_many(3600, 10) == 0
    assert store.retry_dead_many(None, 3) == 3
    assert store.retry_dead_many(None, 3) == 1
    job = store.get("d0")
    assert job.state == "pending" and job.attempts == 0
