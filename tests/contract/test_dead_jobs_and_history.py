"""Contract: a dead job sent back (`retry_dead`) and a job read back with its history and
output (`get`), through the Store interface only, once per backend."""

from __future__ import annotations

import pytest
from contract_helpers import add, claim, failed, no_backoff, ok

from queuectl import policy
from queuectl.errors import Conflict, NotFound
from queuectl.store import Store

HISTORY_KEYS = {"attempt", "worker", "started_at", "finished_at", "outcome", "exit_code", "error",
                "output"}


def _dead(store: Store, job_id: str = "j", attempts: int = 2) -> None:
    """A job that used up `attempts` runs and is now in the dead letter queue."""
    no_backoff(store)
    add(store, id=job_id, max_retries=attempts - 1)
    for _ in range(attempts):
        got = store.record_failure(claim(store), failed())
    assert got is not None and got.state == "dead"


def test_retry_dead_makes_a_dead_job_pending_with_no_attempts_due_now(store) -> None:
    _dead(store)
    job = store.retry_dead("j")
    assert (job.id, job.state, job.attempts) == ("j", "pending", 0)
    stored = store.get("j")
    assert (stored.state, stored.attempts) == ("pending", 0)
    assert store.seconds_until_due() == 0
    again = claim(store, "w9")
    assert (again.id, again.attempts) == ("j", 1)


def test_retry_dead_gives_the_job_its_full_retries_again(store) -> None:
    _dead(store, attempts=2)
    store.retry_dead("j")
    assert store.record_failure(claim(store), failed()).state == "failed"
    assert store.record_failure(claim(store), failed()).state == "dead"


def test_retry_dead_of_an_unknown_job_raises_not_found(store) -> None:
    with pytest.raises(NotFound):
        store.retry_dead("nope")


@pytest.mark.parametrize("state", ["pending", "processing", "failed", "completed"])
def test_retry_dead_of_a_job_that_is_not_dead_raises_conflict_and_changes_nothing(
        store, state: str) -> None:
    store.set_config("backoff-base", 1000)
    add(store, id="j")
    if state != "pending":
        job = claim(store)
        if state == "failed":
            store.record_failure(job, failed())
        elif state == "completed":
            store.record_success(job, ok())
    before = store.get("j", history=True)
    assert before.state == state
    with pytest.raises(Conflict):
        store.retry_dead("j")
    assert store.get("j", history=True) == before


def test_get_of_an_unknown_job_raises_not_found(store) -> None:
    with pytest.raises(NotFound):
        store.get("missing")
    with pytest.raises(NotFound):
        store.get("missing", history=True)


def test_get_without_history_leaves_history_out(store) -> None:
    add(store, id="j")
    store.record_success(claim(store), ok())
    assert store.get("j").history is None


def test_get_with_history_of_a_job_that_never_ran_is_empty(store) -> None:
    add(store, id="j")
    assert store.get("j", history=True).history == []


def test_get_with_history_lists_finished_attempts_oldest_first(store) -> None:
    no_backoff(store)
    add(store, id="j")
    store.record_failure(claim(store, "w1"), failed("boom", b"first", exit_code=3))
    second = claim(store, "w2")
    store.record_success(second, ok(b"second"))
    job = store.get("j", history=True)
    assert [set(row) >= HISTORY_KEYS for row in job.history] == [True, True]
    assert [(r["attempt"], r["worker"], r["outcome"], r["exit_code"], r["error"], r["output"])
            for r in job.history] == [
        (1, "w1", policy.FAILED_ATTEMPT, 3, "boom", b"first"),
        (2, "w2", policy.COMPLETED_ATTEMPT, 0, None, b"second")]
    one, two = job.history
    assert one["started_at"] <= one["finished_at"] <= two["started_at"] <= two["finished_at"]
    assert two["started_at"] == pytest.approx(second.started_at, abs=0.001)
    assert two["finished_at"] == pytest.approx(job.finished_at, abs=0.001)


def test_get_with_history_leaves_out_the_running_attempt(store) -> None:
    no_backoff(store)
    add(store, id="j")
    store.record_failure(claim(store), failed())
    claim(store)
    assert [r["attempt"] for r in store.get("j", history=True).history] == [1]


def test_history_keeps_the_last_output_limit_bytes_of_output(store) -> None:
    add(store, id="j")
    head, tail = b"H" * 1000, bytes(range(256)) * 4
    output = head + b"x" * policy.OUTPUT_LIMIT + tail
    store.record_success(claim(store), ok(output))
    kept = store.get("j", history=True).history[0]["output"]
    assert isinstance(kept, bytes)
    assert len(kept) == policy.OUTPUT_LIMIT
    assert kept == output[-policy.OUTPUT_LIMIT:]


def test_history_keeps_output_of_exactly_output_limit_bytes_whole(store) -> None:
    add(store, id="j")
    output = bytes(range(256)) * (policy.OUTPUT_LIMIT // 256)
    assert len(output) == policy.OUTPUT_LIMIT
    store.record_failure(claim(store), failed(output=output))
    assert store.get("j", history=True).history[0]["output"] == output


def test_history_keeps_binary_output_byte_for_byte(store) -> None:
    add(store, id="j")
    output = b"\x00\xff\xfe not utf-8 \x80\n"
    store.record_success(claim(store), ok(output))
    assert store.get("j", history=True).history[0]["output"] == output
