"""Leases: heartbeat renews them, reclaim_expired and reclaim_worker end lost attempts."""

from __future__ import annotations

import pytest
from contract_helpers import DEADLINE, add, claim, failed, ok, short_leases, wait_expired, wait_reclaimed
from waiting import wait_for

from queuectl import policy
from queuectl.job import Job, JobSpec


def test_heartbeat_extends_the_lease_by_lease_seconds_from_now(store) -> None:
    add(store, id="j")
    job = claim(store)
    store.set_config("lease-seconds", 5000)
    assert store.heartbeat("w1", "busy", job) is True
    renewed = store.get("j").lease_expires_at
    assert renewed > job.lease_expires_at + 1000
    assert renewed - store.get("j").created_at == pytest.approx(5000, abs=60)


def test_heartbeat_keeps_a_lease_from_expiring(store) -> None:
    """Renewed faster than it runs out, a 2 s lease outlives the same lease taken at the same
    moment and left alone: that one is reclaimed, the renewed one never."""
    short_leases(store)
    add(store, id="renewed")
    add(store, id="left-alone")
    job = claim(store, "w1")
    other = claim(store, "w2")
    assert (job.id, other.id) == ("renewed", "left-alone")
    reclaimed: list[Job] = []

    def renew_until_the_other_is_reclaimed() -> list[Job]:
        assert store.heartbeat("w1", "busy", job) is True
        reclaimed.extend(store.reclaim_expired())
        return reclaimed

    wait_for(renew_until_the_other_is_reclaimed, DEADLINE, "the lease left alone to expire",
             every=0.2)
    assert [j.id for j in reclaimed] == ["left-alone"]
    assert store.get("renewed").state == "processing"
    assert store.record_success(job, ok()) is True


def test_heartbeat_returns_false_when_the_attempt_is_no_longer_held(store) -> None:
    add(store, id="j")
    job = claim(store)
    store.reclaim_worker("w1")
    before = store.get("j")
    assert store.heartbeat("w1", "busy", job) is False
    after = store.get("j")
    assert (after.state, after.lease_expires_at, after.run_at) == (
        before.state, before.lease_expires_at, before.run_at)


def test_heartbeat_for_a_completed_job_returns_false(store) -> None:
    add(store, id="j")
    job = claim(store)
    store.record_success(job, ok())
    assert store.heartbeat("w1", "busy", job) is False
    assert store.get("j").state == "completed"


def test_heartbeat_by_another_worker_name_does_not_renew_the_lease(store) -> None:
    add(store, id="j")
    job = claim(store, "w1")
    before = store.get("j").lease_expires_at
    assert store.heartbeat("w2", "busy", job) is False
    assert store.get("j").lease_expires_at == before


def test_reclaim_expired_returns_nothing_while_leases_run(store) -> None:
    add(store, id="j")
    claim(store)
    assert store.reclaim_expired() == []
    assert store.get("j").state == "processing"


def test_reclaim_expired_on_an_idle_queue_returns_nothing(store) -> None:
    add(store, id="waiting")
    assert store.reclaim_expired() == []
    assert store.get("waiting").state == "pending"


def test_reclaim_expired_turns_an_expired_lease_into_a_failed_attempt_with_a_lost_row(store) -> None:
    short_leases(store)
    store.set_config("backoff-base", 1000)
    add(store, id="j", max_retries=3)
    add(store, id="other")
    job = claim(store, "w1")
    [lost] = wait_reclaimed(store)
    assert (lost.id, lost.state, lost.attempts, lost.worker) == ("j", "failed", 1, "w1")
    stored = store.get("j", history=True)
    assert (stored.state, stored.attempts) == ("failed", 1)
    assert stored.run_at == pytest.approx(lost.run_at, abs=0.001)
    assert stored.run_at - stored.updated_at == pytest.approx(1000, abs=1)
    assert stored.lease_expires_at is None and stored.last_error
    [row] = stored.history
    assert (row["attempt"], row["worker"], row["outcome"]) == (1, "w1", policy.LOST_ATTEMPT)
    assert store.get("other").state == "pending"
    assert store.reclaim_expired() == []  # once only
    assert store.record_success(job, ok()) is False


def test_reclaim_expired_takes_every_expired_lease_in_one_call_dead_if_retries_are_spent(
        store, open_another) -> None:
    short_leases(store)
    store.enqueue([JobSpec("true", id="a"), JobSpec("true", id="b"),
                   JobSpec("true", id="c", max_retries=0)])
    held = [claim(store, "w1"), claim(store, "w2"), claim(store, "w3")]
    wait_expired(store, held)
    lost = open_another().reclaim_expired()
    assert sorted(j.id for j in lost) == ["a", "b", "c"]
    assert {j.worker for j in lost} == {"w1", "w2", "w3"}
    assert {j.id: j.state for j in lost} == {"a": "failed", "b": "failed", "c": "dead"}
    dead = store.get("c", history=True)
    assert dead.state == "dead" and dead.history[-1]["outcome"] == policy.LOST_ATTEMPT


def test_reclaim_worker_takes_back_every_attempt_of_that_worker_at_once(store) -> None:
    for i in ("a", "b", "c"):
        add(store, id=i)
    mine = [claim(store, "w1"), claim(store, "w1")]
    theirs = claim(store, "w2")
    lost = store.reclaim_worker("w1")
    assert sorted(j.id for j in lost) == sorted(j.id for j in mine)
    assert all(j.worker == "w1" and j.attempts == 1 and j.state == "failed" for j in lost)
    for job in mine:
        stored = store.get(job.id, history=True)
        assert stored.state == "failed"
        assert [(r["attempt"], r["worker"], r["outcome"]) for r in stored.history] == [
            (1, "w1", policy.LOST_ATTEMPT)]
    assert store.get(theirs.id).state == "processing"
    assert store.reclaim_worker("w1") == []


def test_reclaim_worker_makes_a_job_dead_when_its_retries_are_spent(store) -> None:
    add(store, id="j", max_retries=0)
    claim(store, "w1")
    [lost] = store.reclaim_worker("w1")
    assert lost.state == "dead" and store.get("j").state == "dead"


def test_reclaim_worker_of_an_unknown_worker_returns_nothing(store) -> None:
    add(store, id="j")
    claim(store, "w1")
    assert store.reclaim_worker("nobody") == []
    assert store.get("j").state == "processing"


def test_a_reclaimed_job_runs_again_with_the_next_attempt(store) -> None:
    store.set_config("backoff-max", 0)
    add(store, id="j")
    claim(store, "w1")
    store.reclaim_worker("w1")
    again: Job = claim(store, "w2")
    assert (again.id, again.attempts) == ("j", 2)
    assert store.record_failure(again, failed()) is not None
