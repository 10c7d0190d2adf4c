"""claim_next: which job, in which order, what a claim writes, and that no job goes out twice."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from contract_helpers import (
    DEADLINE,
    add,
    claim,
    claim_when_due,
    failed,
    fast_backoff,
    ids,
    no_backoff,
    ok,
    past,
)

from queuectl import settings
from queuectl.job import Job, JobSpec
from queuectl.store import Store


def test_claim_on_an_empty_queue_returns_none(store) -> None:
    assert store.claim_next("w1") is None


def test_claim_takes_higher_priority_first(store) -> None:
    add(store, id="low", priority=-5)
    add(store, id="mid")
    add(store, id="high", priority=10)
    assert [claim(store).id for _ in range(3)] == ["high", "mid", "low"]


def test_claim_takes_earlier_run_at_first_at_equal_priority(store) -> None:
    """The later-due job is the older one, so only run_at can put the other first."""
    add(store, id="later", run_at=past(3600))
    add(store, id="earlier", run_at=past(7200))
    assert [claim(store).id for _ in range(2)] == ["earlier", "later"]


def test_claim_prefers_priority_over_run_at(store) -> None:
    add(store, id="early-low", run_at=past(7200))
    add(store, id="late-high", run_at=past(3600), priority=1)
    assert claim(store).id == "late-high"


def test_claim_takes_the_older_job_when_priority_and_run_at_tie(store) -> None:
    """Ids sort the other way, so only age can decide."""
    when = past()
    add(store, id="z-older", run_at=when)
    add(store, id="a-newer", run_at=when)
    assert [claim(store).id for _ in range(2)] == ["z-older", "a-newer"]


def test_claim_takes_the_earlier_inserted_job_of_one_batch_when_all_else_ties(store) -> None:
    when = past()
    store.enqueue([JobSpec("true", id=i, run_at=when) for i in ("m", "z", "a")])
    assert [claim(store).id for _ in range(3)] == ["m", "z", "a"]


def test_claim_skips_a_job_due_in_the_future(store) -> None:
    add(store, id="later", delay=3600)
    add(store, id="abs-later", run_at=time.time() + 3600)
    assert store.claim_next("w1") is None
    assert store.get("later").state == "pending"


def test_claim_skips_a_future_job_of_higher_priority_for_a_due_one(store) -> None:
    add(store, id="future", delay=3600, priority=100)
    add(store, id="now")
    assert claim(store).id == "now"
    assert store.claim_next("w1") is None


def test_claim_skips_jobs_that_are_processing_completed_or_dead(store) -> None:
    add(store, id="done")
    store.record_success(claim(store), ok())
    add(store, id="dead", max_retries=0)
    assert store.record_failure(claim(store), failed()).state == "dead"
    add(store, id="running")
    claim(store)
    assert store.claim_next("w2") is None


def test_claim_does_not_take_a_failed_job_before_its_backoff(store) -> None:
    store.set_config("backoff-base", 1000)
    add(store, id="f")
    assert store.record_failure(claim(store), failed()).state == "failed"
    assert store.claim_next("w1") is None
    assert store.seconds_until_due() > 900


def test_claim_takes_a_failed_job_after_its_backoff(store) -> None:
    fast_backoff(store)
    add(store, id="f")
    store.record_failure(claim(store), failed())
    again = claim_when_due(store, "w2")
    assert (again.id, again.attempts, again.worker) == ("f", 2, "w2")


def test_claim_makes_the_job_processing_and_counts_the_attempt(store) -> None:
    jid = add(store)
    job = claim(store, "w7")
    assert (job.id, job.state, job.attempts, job.worker) == (jid, "processing", 1, "w7")
    assert job.started_at is not None and job.started_at >= store.get(jid).created_at
    stored = store.get(jid)
    assert (stored.state, stored.attempts, stored.worker) == ("processing", 1, "w7")
    assert stored.started_at == pytest.approx(job.started_at, abs=0.001)


def test_claim_starts_a_lease_of_lease_seconds(store) -> None:
    add(store)
    job = claim(store)
    default = settings.SETTINGS["lease-seconds"].default
    assert job.lease_expires_at - job.started_at == pytest.approx(default, abs=1.0)
    store.set_config("lease-seconds", 500)
    add(store)
    job = claim(store)
    assert job.lease_expires_at - job.started_at == pytest.approx(500, abs=1.0)
    assert store.get(job.id).lease_expires_at == pytest.approx(job.lease_expires_at, abs=0.001)


def test_attempts_count_every_claim_of_the_same_job(store) -> None:
    no_backoff(store)
    add(store, id="j", max_retries=5)
    for n in (1, 2, 3):
        job = claim_when_due(store)
        assert job.attempts == n
        store.record_failure(job, failed())
    assert store.get("j").attempts == 3


def _drain(s: Store, name: str, start: threading.Barrier, out: list[Job]) -> None:
    """One racing worker: claim until nothing is left."""
    start.wait(timeout=DEADLINE)
    while (job := s.claim_next(name)) is not None:
        out.append(job)


def test_two_stores_never_get_the_same_job(store, open_another) -> None:
    """Several stores (as several worker processes would hold) race for one batch."""
    n_jobs, n_workers = 200, 4
    all_ids = store.enqueue([JobSpec("true") for _ in range(n_jobs)])
    stores = [open_another(for_worker=True) for _ in range(n_workers)]
    start = threading.Barrier(n_workers)
    got: list[list[Job]] = [[] for _ in range(n_workers)]
    threads = [threading.Thread(target=_drain, args=(s, f"w{i}", start, got[i]))
               for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE * 2)
        assert not t.is_alive()
    taken = Counter(j.id for out in got for j in out)
    assert [i for i, n in taken.items() if n > 1] == []
    assert sorted(taken) == sorted(all_ids)
    assert store.claim_next("late") is None
    for i, out in enumerate(got):
        assert all(store.get(j.id).worker == f"w{i}" for j in out)
    assert store.counts()["processing"] == n_jobs


def test_claim_order_holds_across_stores(store, open_another) -> None:
    add(store, id="low")
    add(open_another(), id="high", priority=3)
    assert ids([claim(open_another()), claim(store)]) == ["high", "low"]
