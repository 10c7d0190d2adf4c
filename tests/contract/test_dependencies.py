"""Contract: dependencies (`JobSpec.after`): a job runs only once every parent completed,
a parent's dead or canceled end cancels its waiting dependents down the chain, and what
`parents`, `canceled_dependents`, `counts`, `seconds_until_due` and `queues` say meanwhile;
through the Store interface only, once per backend."""

from __future__ import annotations

import pytest
from contract_helpers import add, claim, failed, ids, ok, short_leases, wait_reclaimed

from queuectl.errors import Conflict, NotFound
from queuectl.job import JobSpec
from queuectl.store import Parent, Store


def _after(store: Store, job_id: str, *parents: str, **fields) -> str:
    [done] = store.submit([JobSpec("true", id=job_id, after=list(parents), **fields)])
    assert done.stored
    return done.id


def _complete(store: Store, job_id: str) -> None:
    job = claim(store)
    assert job.id == job_id
    assert store.record_success(job, ok())


def _die(store: Store, job_id: str) -> None:
    job = claim(store)
    assert job.id == job_id
    assert store.record_failure(job, failed()).state == "dead"


def test_a_dependent_waits_and_is_not_claimed_until_its_parent_completes(store) -> None:
    add(store, id="a")
    _after(store, "b", "a")
    assert store.get("b").waiting_on == 1
    assert store.counts()["blocked"] == 1
    assert store.counts()["pending"] == 2  # blocked jobs are pending
    job = claim(store)
    assert job.id == "a"
    assert store.claim_next("w2") is None  # b is blocked, not eligible
    assert store.record_success(job, ok())
    assert store.get("b").waiting_on == 0
    assert store.counts()["blocked"] == 0
    assert claim(store).id == "b"


def test_every_parent_must_complete_even_across_queues(store) -> None:
    add(store, id="p1", queue="one")
    add(store, id="p2", queue="two")
    _after(store, "child", "p1", "p2", queue="three")
    assert store.get("child").waiting_on == 2
    _complete_from(store, "p1", ["one"])
    assert store.get("child").waiting_on == 1
    assert store.claim_next("w", ["three"]) is None
    _complete_from(store, "p2", ["two"])
    assert store.claim_next("w", ["three"]).id == "child"


def _complete_from(store: Store, job_id: str, queues: list[str]) -> None:
    job = store.claim_next("w1", queues)
    assert job is not None and job.id == job_id
    assert store.record_success(job, ok())


def test_a_completed_parent_satisfies_at_once(store) -> None:
    add(store, id="a")
    _complete(store, "a")
    _after(store, "b", "a")
    assert store.get("b").waiting_on == 0
    assert claim(store).id == "b"


def test_a_parent_earlier_in_the_same_submit_counts(store) -> None:
    done = store.submit([JobSpec("true", id="a"), JobSpec("true", id="b", after=["a"])])
    assert [d.stored for d in done] == [True, True]
    assert store.get("b").waiting_on == 1
    assert claim(store).id == "a"


def test_a_completed_parent_deleted_later_stays_satisfied(store) -> None:
    add(store, id="a")
    add(store, id="x")
    _after(store, "b", "a", "x")
    _complete(store, "a")
    assert store.purge("completed", None, 100) == 1
    with pytest.raises(NotFound):
        store.get("a")
    assert store.parents("b") == [Parent("a", None, True), Parent("x", "pending", False)]
    _complete(store, "x")
    assert claim(store).id == "b"


@pytest.mark.parametrize("missing", ["nope", "also-missing"])
def test_an_unknown_parent_stores_nothing_of_the_call(store, missing: str) -> None:
    add(store, id="a")
    with pytest.raises(NotFound, match=missing):
        store.submit([JobSpec("true", id="ok1"), JobSpec("true", id="b", after=["a", missing])])
    assert ids(store.iter_jobs()) == ["a"]


@pytest.mark.parametrize("end", ["dead", "canceled"])
def test_a_parent_that_already_ended_badly_is_refused(store, end: str) -> None:
    add(store, id="a", max_retries=0)
    if end == "dead":
        _die(store, "a")
    else:
        store.cancel("a")
    with pytest.raises(Conflict, match=f"'a'.*{end}"):
        _after(store, "b", "a")
    assert ids(store.iter_jobs()) == ["a"]


def test_a_later_parent_in_the_same_submit_is_unknown(store) -> None:
    with pytest.raises(NotFound, match="'later'"):
        store.submit([JobSpec("true", id="b", after=["later"]), JobSpec("true", id="later")])
    assert ids(store.iter_jobs()) == []


def test_a_spec_not_stored_adds_no_dependency(store) -> None:
    add(store, id="a")
    _after(store, "held", "a", unique="k")
    [again] = store.submit([JobSpec("true", id="other", after=["a"], unique="k")])
    assert (again.id, again.stored) == ("held", False)
    [kept] = store.submit([JobSpec("true", id="held", after=["a"])], if_absent=True)
    assert not kept.stored
    assert store.parents("held") == [Parent("a", "pending", False)]


@pytest.mark.parametrize("end", ["dead", "canceled"])
def test_a_dead_or_canceled_parent_cancels_the_whole_chain(store, end: str) -> None:
    add(store, id="a", max_retries=0)
    _after(store, "b", "a")
    _after(store, "c", "b")
    add(store, id="free")
    if end == "dead":
        _die(store, "a")
    else:
        store.cancel("a")
    b, c = store.get("b"), store.get("c")
    assert (b.state, b.last_error) == ("canceled", f"parent a ended {end}")
    assert (c.state, c.last_error) == ("canceled", "parent b ended canceled")
    assert b.finished_at is not None and b.attempts == 0
    assert store.get("b", history=True).history == []
    assert [j.id for j in store.canceled_dependents("a")] == ["b", "c"]
    assert [j.id for j in store.canceled_dependents("b")] == ["c"]
    assert store.get("free").state == "pending"
    assert store.counts()["blocked"] == 0


def test_a_failed_attempt_that_will_be_retried_decides_nothing(store) -> None:
    store.set_config("backoff-base", 1000)
    add(store, id="a", max_retries=2)
    _after(store, "b", "a")
    job = claim(store)
    assert store.record_failure(job, failed()).state == "failed"
    assert store.get("b").state == "pending" and store.get("b").waiting_on == 1
    assert store.canceled_dependents("a") == []


def test_a_lost_attempt_that_leaves_the_parent_dead_cancels_its_dependents(store) -> None:
    short_leases(store)
    add(store, id="a", max_retries=0)
    _after(store, "b", "a")
    claim(store, "gone")
    [lost] = wait_reclaimed(store)
    assert lost.state == "dead"
    assert store.get("b").last_error == "parent a ended dead"


def test_cancel_state_cancels_the_dependents_of_what_it_cancels(store) -> None:
    add(store, id="a", queue="q")
    _after(store, "b", "a")
    assert store.cancel_state("pending", 100, queue="q") == 1
    assert store.get("b").state == "canceled"


def test_a_dependent_already_satisfied_is_not_touched_by_a_later_end(store) -> None:
    add(store, id="a", priority=10, max_retries=0)
    _after(store, "b", "a")
    _complete(store, "a")
    store.retry("a")  # a runs again and this time dies: b was satisfied by its first run
    _die(store, "a")
    b = store.get("b")
    assert (b.state, b.waiting_on, b.last_error) == ("pending", 0, None)
    assert store.canceled_dependents("a") == []
    assert claim(store).id == "b"


def test_blocked_jobs_do_not_make_the_queue_look_due(store) -> None:
    add(store, id="a", queue="slow", delay=3600)
    _after(store, "b", "a", queue="fast")
    assert store.seconds_until_due(["fast"]) is None
    assert store.remaining(["fast"]) == 1  # it may still run
    [fast] = [q for q in store.queues() if q.name == "fast"]
    assert fast.oldest_waiting is None
    assert fast.counts["pending"] == 1


def test_parents_are_listed_in_order_with_their_states(store) -> None:
    add(store, id="z")
    add(store, id="a")
    _after(store, "c", "z", "a")
    assert store.parents("c") == [Parent("z", "pending", False), Parent("a", "pending", False)]
    assert store.parents("z") == []
    with pytest.raises(NotFound):
        store.parents("nope")


def test_deleting_a_dependent_forgets_its_dependencies(store) -> None:
    add(store, id="a", max_retries=0)
    _after(store, "b", "a")
    store.cancel("b")
    assert store.purge("canceled", None, 100) == 1
    _die(store, "a")  # nothing left to cancel, nothing fails
    assert store.canceled_dependents("a") == []
    assert ids(store.iter_jobs()) == ["a"]
