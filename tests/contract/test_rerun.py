"""Contract: `retry`, running a finished job again (history kept and numbered on, unique
keys respected, dependents it canceled left canceled), through the Store interface only,
once per backend."""

from __future__ import annotations

import pytest
from contract_helpers import add, claim, failed, ok

from queuectl.errors import Conflict, NotFound
from queuectl.job import JobSpec
from queuectl.store import Store


def _finish(store: Store, job_id: str, end: str) -> None:
    if end == "canceled":
        store.cancel(job_id)
        return
    job = claim(store)
    assert job.id == job_id
    if end == "completed":
        assert store.record_success(job, ok(b"first run\n"))
    else:
        assert store.record_failure(job, failed(output=b"first run\n")).state == "dead"


@pytest.mark.parametrize("end", ["completed", "dead", "canceled"])
def test_a_finished_job_goes_back_to_pending_with_attempts_reset(store, end: str) -> None:
    add(store, id="j", max_retries=0)
    _finish(store, "j", end)
    job = store.retry("j")
    assert (job.state, job.attempts) == ("pending", 0)
    assert (job.exit_code, job.last_error, job.finished_at, job.worker) == (None,) * 4
    stored = store.get("j")
    assert (stored.state, stored.attempts) == ("pending", 0)
    assert claim(store).id == "j"


def test_the_history_is_kept_and_the_new_attempts_number_on(store) -> None:
    store.set_config("backoff-max", 0)
    add(store, id="j", max_retries=1)
    first = claim(store)
    assert store.record_failure(first, failed()).state == "failed"
    second = claim(store)
    assert store.record_success(second, ok(b"two\n"))
    store.retry("j")
    third = claim(store)
    assert third.attempts == 1 and third.attempt_number == 3
    assert store.record_success(third, ok(b"three\n"))
    history = store.get("j", history=True).history
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert [h["outcome"] for h in history] == ["failed", "completed", "completed"]
    latest = store.read_output("j", None, 0)
    assert (latest.attempt, latest.data) == (3, b"three\n")
    assert store.read_output("j", 2, 0).data == b"two\n"


def test_a_delay_holds_the_rerun_back(store) -> None:
    add(store, id="j")
    _finish(store, "j", "completed")
    store.retry("j", delay=3600)
    assert store.claim_next("w") is None
    assert store.seconds_until_due() > 3000


@pytest.mark.parametrize("state", ["pending", "processing", "failed"])
def test_a_job_not_finished_is_refused_with_its_state(store, state: str) -> None:
    store.set_config("backoff-base", 1000)
    add(store, id="j", max_retries=3)
    if state != "pending":
        job = claim(store)
        if state == "failed":
            store.record_failure(job, failed())
    with pytest.raises(Conflict, match=state):
        store.retry("j")
    assert store.get("j").state == state


def test_an_unknown_job_is_not_found(store) -> None:
    with pytest.raises(NotFound):
        store.retry("nope")


def test_a_held_unique_key_is_refused_naming_the_holder(store) -> None:
    store.submit([JobSpec("true", id="old", unique="k")])
    _finish(store, "old", "completed")
    store.submit([JobSpec("true", id="new", unique="k")])
    with pytest.raises(Conflict, match="new"):
        store.retry("old")
    assert store.get("old").state == "completed"


def test_dependents_it_canceled_are_not_revived_and_can_follow_it(store) -> None:
    add(store, id="a", max_retries=0)
    store.submit([JobSpec("true", id="b", after=["a"])])
    store.submit([JobSpec("true", id="c", after=["b"])])
    _finish(store, "a", "dead")
    store.retry("a")
    assert store.get("b").state == "canceled"
    assert [j.id for j in store.canceled_dependents("a")] == ["b", "c"]
    # Retried after it, in chain order, they wait for it again.
    with pytest.raises(Conflict, match="'b'.*canceled"):
        store.retry("c")  # its parent is still canceled: retry that one first
    assert store.retry("b").waiting_on == 1
    assert store.retry("c").waiting_on == 1
    _finish(store, "a", "completed")
    assert claim(store).id == "b"


def test_a_dependent_whose_parent_is_gone_cannot_be_rerun(store) -> None:
    add(store, id="a", max_retries=0)
    store.submit([JobSpec("true", id="b", after=["a"])])
    _finish(store, "a", "dead")
    assert store.purge("dead", None, 10) == 1
    with pytest.raises(Conflict, match="'a'"):
        store.retry("b")
    assert store.get("b").state == "canceled"
