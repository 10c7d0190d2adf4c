"""record_success, complete_and_claim, record_failure, release: what they write, and that a
write fenced on an attempt that is no longer held changes nothing."""

from __future__ import annotations

import pytest
from contract_helpers import add, claim, claim_when_due, failed, no_backoff, ok

from queuectl import policy
from queuectl.job import Job
from queuectl.settings import QueueConfig
from queuectl.store import Store


def _snapshot(store: Store, job_id: str) -> tuple:
    """Everything a fenced write must leave as it was."""
    job = store.get(job_id, history=True)
    return (job.state, job.attempts, job.worker, job.run_at, job.finished_at, job.exit_code,
            job.last_error, job.lease_expires_at, len(job.history or []))


def _reclaimed_and_taken_by_another(store: Store) -> tuple[Job, Job]:
    """w1 loses its attempt (its worker restarted) and w2 runs the job again."""
    no_backoff(store)
    add(store, id="j")
    old = claim(store, "w1")
    assert [j.id for j in store.reclaim_worker("w1")] == ["j"]
    new = claim_when_due(store, "w2")
    assert (new.id, new.attempts) == ("j", 2)
    return old, new


# -- record_success ---------------------------------------------------------------------------
def test_record_success_completes_a_held_attempt(store) -> None:
    add(store, id="j")
    job = claim(store)
    assert store.record_success(job, ok(b"hello\n", exit_code=0)) is True
    done = store.get("j", history=True)
    assert (done.state, done.exit_code, done.attempts) == ("completed", 0, 1)
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.lease_expires_at is None
    [row] = done.history
    assert (row["attempt"], row["worker"], row["outcome"], row["output"]) == (
        1, "w1", policy.COMPLETED_ATTEMPT, b"hello\n")


def test_record_success_of_a_completed_attempt_again_changes_nothing(store) -> None:
    add(store, id="j")
    job = claim(store)
    assert store.record_success(job, ok())
    before = _snapshot(store, "j")
    assert store.record_success(job, ok(b"again")) is False
    assert _snapshot(store, "j") == before


def test_late_success_of_a_reclaimed_attempt_changes_nothing(store) -> None:
    old, _ = _reclaimed_and_taken_by_another(store)
    before = _snapshot(store, "j")
    assert store.record_success(old, ok()) is False
    assert _snapshot(store, "j") == before
    assert store.get("j").worker == "w2"


def test_success_of_a_reclaimed_attempt_not_yet_rerun_changes_nothing(store) -> None:
    """The job waits as failed after the reclaim: the late success must not complete it."""
    store.set_config("backoff-base", 1000)
    add(store, id="j")
    old = claim(store, "w1")
    store.reclaim_worker("w1")
    before = _snapshot(store, "j")
    assert store.record_success(old, ok()) is False
    assert _snapshot(store, "j") == before and before[0] == "failed"


def test_late_success_of_the_same_worker_name_with_an_older_attempt_changes_nothing(store) -> None:
    """Held means the same worker AND the same attempts count: a restarted worker reusing
    its name runs attempt 2, and attempt 1's late write is fenced."""
    no_backoff(store)
    add(store, id="j")
    old = claim(store, "w1")
    store.reclaim_worker("w1")
    new = claim_when_due(store, "w1")
    assert new.attempts == 2
    before = _snapshot(store, "j")
    assert store.record_success(old, ok()) is False
    assert store.record_failure(old, failed()) is None
    assert store.release(old, "shutdown") is False
    assert store.heartbeat("w1", "busy", old) is False
    assert _snapshot(store, "j") == before
    assert store.heartbeat("w1", "busy", new) is True


def test_late_success_of_another_worker_with_the_same_attempts_count_changes_nothing(store) -> None:
    """After retry_dead resets attempts, w2's attempt 1 is not w1's attempt 1."""
    add(store, id="j", max_retries=0)
    old = claim(store, "w1")
    assert store.reclaim_worker("w1")[0].state == "dead"
    store.retry_dead("j")
    new = claim(store, "w2")
    assert new.attempts == old.attempts == 1
    before = _snapshot(store, "j")
    assert store.record_success(old, ok()) is False
    assert store.record_failure(old, failed()) is None
    assert store.release(old, "shutdown") is False
    assert _snapshot(store, "j") == before


# -- complete_and_claim -----------------------------------------------------------------------
def test_complete_and_claim_completes_and_returns_the_most_urgent_next_job(store) -> None:
    add(store, id="first", priority=9)
    add(store, id="low")
    add(store, id="high", priority=5)
    job = claim(store)
    held, nxt = store.complete_and_claim(job, ok(b"out"), "w1")
    assert held is True
    assert nxt is not None and (nxt.id, nxt.state, nxt.attempts, nxt.worker) == (
        "high", "processing", 1, "w1")
    done = store.get("first", history=True)
    assert done.state == "completed" and done.history[0]["output"] == b"out"
    assert store.get("high").state == "processing"


def test_complete_and_claim_of_the_last_job_returns_none_next(store) -> None:
    add(store, id="only")
    assert store.complete_and_claim(claim(store), ok(), "w1") == (True, None)
    assert store.get("only").state == "completed"


def test_complete_and_claim_of_an_attempt_not_held_writes_nothing_for_it(store) -> None:
    """The completion is fenced; the claim half still happens (it is claim_next)."""
    old, _ = _reclaimed_and_taken_by_another(store)
    add(store, id="next")
    before = _snapshot(store, "j")
    held, nxt = store.complete_and_claim(old, ok(), "w1")
    assert held is False
    assert _snapshot(store, "j") == before
    assert nxt is not None and nxt.id == "next"


# -- record_failure ---------------------------------------------------------------------------
def test_record_failure_with_retries_left_makes_the_job_failed_with_backoff(store) -> None:
    store.set_config("backoff-base", 3)
    add(store, id="j", max_retries=2)
    got = store.record_failure(claim(store), failed("exit code 4", b"oops", exit_code=4))
    assert got is not None and (got.id, got.state, got.attempts) == ("j", "failed", 1)
    expected = QueueConfig.from_items(store.config_items()).backoff_delay(1)
    assert expected == 3
    assert got.run_at - got.updated_at == pytest.approx(expected, abs=0.5)
    stored = store.get("j", history=True)
    assert (stored.state, stored.exit_code, stored.last_error) == ("failed", 4, "exit code 4")
    assert stored.run_at == pytest.approx(got.run_at, abs=0.001)
    assert stored.run_at - stored.updated_at == pytest.approx(expected, abs=0.5)
    assert stored.lease_expires_at is None
    [row] = stored.history
    assert (row["attempt"], row["worker"], row["outcome"], row["exit_code"], row["error"],
            row["output"]) == (1, "w1", policy.FAILED_ATTEMPT, 4, "exit code 4", b"oops")


def test_backoff_grows_with_attempts_up_to_backoff_max(store) -> None:
    store.set_config("backoff-base", 1)
    add(store, id="j", max_retries=5)
    first = store.record_failure(claim(store), failed())
    assert first.run_at - first.updated_at == pytest.approx(1, abs=0.5)
    store.set_config("backoff-base", 1000)
    store.set_config("backoff-max", 50)
    second = store.record_failure(claim_when_due(store), failed())
    assert second.attempts == 2
    assert second.run_at - second.updated_at == pytest.approx(50, abs=0.5)


def test_record_failure_with_retries_spent_makes_the_job_dead(store) -> None:
    no_backoff(store)
    add(store, id="j", max_retries=1)
    assert store.record_failure(claim(store), failed("first")).state == "failed"
    dead = store.record_failure(claim_when_due(store), failed("second"))
    assert dead is not None and (dead.state, dead.attempts) == ("dead", 2)
    assert policy.retries_spent(dead.attempts, dead.max_retries)
    stored = store.get("j", history=True)
    assert (stored.state, stored.last_error) == ("dead", "second")
    assert stored.finished_at is not None
    assert [(r["attempt"], r["outcome"], r["error"]) for r in stored.history] == [
        (1, policy.FAILED_ATTEMPT, "first"), (2, policy.FAILED_ATTEMPT, "second")]
    assert store.claim_next("w1") is None
    assert store.remaining() == 0


def test_record_failure_with_max_retries_zero_goes_dead_at_once(store) -> None:
    add(store, id="j", max_retries=0)
    assert store.record_failure(claim(store), failed()).state == "dead"


def test_late_failure_of_a_reclaimed_attempt_changes_nothing(store) -> None:
    old, _ = _reclaimed_and_taken_by_another(store)
    before = _snapshot(store, "j")
    assert store.record_failure(old, failed()) is None
    assert _snapshot(store, "j") == before


def test_record_failure_of_a_completed_attempt_changes_nothing(store) -> None:
    add(store, id="j")
    job = claim(store)
    store.record_success(job, ok())
    before = _snapshot(store, "j")
    assert store.record_failure(job, failed()) is None
    assert _snapshot(store, "j") == before


# -- release ----------------------------------------------------------------------------------
def test_release_puts_the_job_back_to_pending_without_spending_a_retry(store) -> None:
    add(store, id="j", max_retries=0)
    job = claim(store)
    assert store.release(job, "worker shutting down") is True
    back = store.get("j", history=True)
    assert (back.state, back.attempts) == ("pending", 0)
    [row] = back.history
    assert (row["attempt"], row["worker"], row["outcome"], row["error"]) == (
        1, "w1", policy.INTERRUPTED_ATTEMPT, "worker shutting down")
    again = claim(store, "w2")  # due at once, and max_retries 0 still allows one real run
    assert again.attempts == 1
    assert store.record_failure(again, failed()).state == "dead"


def test_release_of_an_attempt_not_held_returns_false_and_changes_nothing(store) -> None:
    old, _ = _reclaimed_and_taken_by_another(store)
    before = _snapshot(store, "j")
    assert store.release(old, "shutdown") is False
    assert _snapshot(store, "j") == before


def test_release_twice_returns_false_the_second_time(store) -> None:
    add(store, id="j")
    job = claim(store)
    assert store.release(job, "shutdown")
    before = _snapshot(store, "j")
    assert store.release(job, "shutdown") is False
    assert _snapshot(store, "j") == before
