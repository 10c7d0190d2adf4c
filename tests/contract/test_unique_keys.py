"""Contract: unique keys, at most one live job per key (`submit`, `retry_dead`,
`retry_dead_many`, `iter_jobs(unique=...)`), through the Store interface only, once per
backend."""

from __future__ import annotations

import threading

import pytest
from contract_helpers import add, claim, failed, ids, ok, short_leases, wait_reclaimed

from queuectl.errors import Conflict
from queuectl.job import JobSpec
from queuectl.store import Store, Submitted


def _submit(store: Store, key: str, job_id: str | None = None, **fields) -> Submitted:
    [done] = store.submit([JobSpec("true", id=job_id, unique=key, **fields)])
    return done


def test_a_live_key_stores_nothing_and_answers_the_live_jobs_id(store) -> None:
    first = _submit(store, "nightly", "n1")
    assert (first.id, first.stored) == ("n1", True)
    again = _submit(store, "nightly", "n2")
    assert (again.id, again.stored) == ("n1", False)
    assert ids(store.iter_jobs()) == ["n1"]
    assert store.get("n1").unique == "nightly"
    assert store.counts()["pending"] == 1


def test_a_spec_without_id_answers_the_holder_and_nothing_is_stored(store) -> None:
    first = _submit(store, "k")
    second = _submit(store, "k")
    assert second == Submitted(first.id, False) and first.stored
    assert len(list(store.iter_jobs())) == 1


def test_keys_are_independent_and_jobs_without_a_key_are_never_deduplicated(store) -> None:
    assert _submit(store, "a").stored and _submit(store, "b").stored
    assert all(d.stored for d in store.submit([JobSpec("true"), JobSpec("true")]))
    assert len(list(store.iter_jobs())) == 4


@pytest.mark.parametrize("how", ["processing", "failed awaiting retry", "delayed"])
def test_a_running_retrying_or_delayed_job_holds_its_key(store, how: str) -> None:
    store.set_config("backoff-base", 1000)
    _submit(store, "k", "held", max_retries=3, **({"delay": 3600} if how == "delayed" else {}))
    if how != "delayed":
        job = claim(store)
        if how == "failed awaiting retry":
            assert store.record_failure(job, failed()).state == "failed"
    assert _submit(store, "k", "other") == Submitted("held", False)


@pytest.mark.parametrize("end", ["completed", "dead", "canceled"])
def test_the_key_is_free_once_its_job_has_ended(store, end: str) -> None:
    _submit(store, "k", "old", max_retries=0)
    if end == "canceled":
        store.cancel("old")
    else:
        job = claim(store)
        if end == "completed":
            assert store.record_success(job, ok())
        else:
            assert store.record_failure(job, failed()).state == "dead"
    new = _submit(store, "k", "new")
    assert new == Submitted("new", True)
    assert [(j.id, j.unique) for j in store.iter_jobs(unique="k")] == [("old", "k"), ("new", "k")]


def test_a_lost_lease_keeps_the_key_until_the_job_ends(store) -> None:
    short_leases(store)
    store.set_config("backoff-base", 1000)
    store.set_config("backoff-max", 3600)
    _submit(store, "k", "orphan", max_retries=1)
    claim(store, "gone")
    [lost] = wait_reclaimed(store)
    assert (lost.id, lost.state) == ("orphan", "failed")
    assert _submit(store, "k", "x") == Submitted("orphan", False)  # retrying: still live


def test_two_specs_of_one_call_with_one_key_store_the_first(store) -> None:
    done = store.submit([JobSpec("true", id="a", unique="k"), JobSpec("true", id="b", unique="k"),
                         JobSpec("true", id="c")])
    assert done == [Submitted("a", True), Submitted("a", False), Submitted("c", True)]
    assert ids(store.iter_jobs()) == ["a", "c"]


def test_the_key_is_decided_before_the_id(store) -> None:
    """The cron line `--id sync --unique sync` while sync runs: already queued, no Conflict."""
    _submit(store, "sync", "sync")
    assert _submit(store, "sync", "sync") == Submitted("sync", False)


def test_a_taken_id_with_a_free_key_is_still_a_conflict_and_stores_nothing(store) -> None:
    add(store, id="x")
    with pytest.raises(Conflict):
        store.submit([JobSpec("true", id="y", unique="k"), JobSpec("true", id="x", unique="k2")])
    assert ids(store.iter_jobs()) == ["x"]
    assert store.submit([JobSpec("true", id="x", unique="k2")], if_absent=True) == [
        Submitted("x", False)]


def test_enqueue_answers_the_holders_id(store) -> None:
    add(store, id="first", unique="k")
    assert store.enqueue([JobSpec("true", unique="k"), JobSpec("true", id="z")]) == ["first", "z"]


def test_concurrent_submits_of_one_key_store_one_job(store, open_another) -> None:
    stores = [open_another() for _ in range(8)]
    answers: list[Submitted] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores))

    def submit(s: Store) -> None:
        start.wait()
        for _ in range(5):
            done = _submit(s, "race")
            with lock:
                answers.append(done)

    threads = [threading.Thread(target=submit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert len(answers) == 40
    [only] = store.iter_jobs()
    assert {a.id for a in answers} == {only.id}
    assert sum(a.stored for a in answers) == 1


def _dead(store: Store, job_id: str, key: str) -> None:
    _submit(store, key, job_id, max_retries=0)
    job = store.claim_next("w1")
    assert job is not None and job.id == job_id
    assert store.record_failure(job, failed()).state == "dead"


def test_retry_dead_of_a_job_whose_key_is_held_is_refused_naming_the_holder(store) -> None:
    _dead(store, "old", "k")
    _submit(store, "k", "newer")
    with pytest.raises(Conflict, match="newer"):
        store.retry_dead("old")
    assert store.get("old").state == "dead"
    assert store.counts()["pending"] == 1


def test_retry_dead_of_a_job_whose_key_is_free_revives_it_and_it_holds_the_key(store) -> None:
    _dead(store, "old", "k")
    assert store.retry_dead("old").state == "pending"
    assert _submit(store, "k", "x") == Submitted("old", False)


def test_retry_dead_many_never_makes_two_live_jobs_of_one_key(store) -> None:
    _dead(store, "d1", "k")
    _dead(store, "d2", "k")
    _dead(store, "d3", "held")
    _dead(store, "d4", "free")
    _submit(store, "held", "live")
    assert store.retry_dead_many(None, 100) == 2  # d1 (the older of k's) and d4
    states = {j.id: j.state for j in store.iter_jobs()}
    assert states == {"d1": "pending", "d2": "dead", "d3": "dead", "live": "pending",
                      "d4": "pending"}
    assert store.retry_dead_many(None, 100) == 0  # what is left stays dead: the loop ends


def test_iter_jobs_by_key_combines_with_state_queue_and_limit(store) -> None:
    _dead(store, "a", "k")
    _submit(store, "k", "b", queue="mail")
    _submit(store, "other", "c")
    assert ids(store.iter_jobs(unique="k")) == ["a", "b"]
    assert ids(store.iter_jobs("dead", unique="k")) == ["a"]
    assert ids(store.iter_jobs(queue="mail", unique="k")) == ["b"]
    assert ids(store.iter_jobs(limit=1, unique="k")) == ["a"]
    assert ids(store.iter_jobs(unique="nobody")) == []
