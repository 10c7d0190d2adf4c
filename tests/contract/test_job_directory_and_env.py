"""A job's directory and environment (`JobSpec.cwd`, `JobSpec.env`): stored as given, NULL
when absent, and carried by every Job a store returns, above all the claim's, so a worker
runs the job without another query."""

from __future__ import annotations

from contract_helpers import add, claim, failed, no_backoff, ok

from queuectl.job import JobSpec

ENV = {"MODE": "nightly", "Z_FIRST": "kept in order", "EMPTY": "", "UTF": "été ✓",
       "SPACES": "a b\nc=d"}


def test_cwd_and_env_are_stored_as_given(store) -> None:
    job = store.get(add(store, "pwd", cwd="/srv/app", env=ENV))
    assert job.cwd == "/srv/app"
    assert job.env == ENV and list(job.env) == list(ENV)  # the order given, values exact


def test_without_them_the_job_has_none(store) -> None:
    job = store.get(add(store, "pwd"))
    assert job.cwd is None and job.env is None
    assert job.to_dict()["cwd"] is None and job.to_dict()["env"] is None


def test_the_claim_returns_them(store) -> None:
    add(store, "pwd", id="a", cwd="/tmp", env={"MODE": "nightly"})
    job = claim(store)
    assert (job.id, job.cwd, job.env) == ("a", "/tmp", {"MODE": "nightly"})


def test_complete_and_claim_returns_them_for_the_next_job(store) -> None:
    add(store, "true", id="first", priority=1)
    add(store, "true", id="next", cwd="/var/tmp", env={"A": "1"})
    done, nxt = store.complete_and_claim(claim(store), ok(), "w1")
    assert done and nxt is not None
    assert (nxt.id, nxt.cwd, nxt.env) == ("next", "/var/tmp", {"A": "1"})


def test_a_failed_attempt_keeps_them_for_the_retry(store) -> None:
    no_backoff(store)
    add(store, "false", cwd="/srv/app", env={"MODE": "x"}, max_retries=1)
    after = store.record_failure(claim(store), failed("cannot enter directory /srv/app: "
                                                      "No such file or directory"))
    assert after is not None and after.state == "failed"
    assert (after.cwd, after.env) == ("/srv/app", {"MODE": "x"})
    again = claim(store)
    assert (again.attempts, again.cwd, again.env) == (2, "/srv/app", {"MODE": "x"})
    assert again.last_error == "cannot enter directory /srv/app: No such file or directory"


def test_a_reclaimed_job_keeps_them(store) -> None:
    """A worker restarted under its old name takes its orphans back (reclaim_worker), as
    reclaim_expired does at lease expiry: both return the jobs from the same columns."""
    add(store, "sleep 60", cwd="/srv", env={"K": "v"})
    claim(store, "w1")
    [lost] = store.reclaim_worker("w1")
    assert (lost.cwd, lost.env) == ("/srv", {"K": "v"})


def test_listing_and_reruns_keep_them(store) -> None:
    add(store, "true", id="a", cwd="/a", env={"K": "1"})
    add(store, "true", id="b")
    assert [(j.id, j.cwd, j.env) for j in store.iter_jobs()] == [
        ("a", "/a", {"K": "1"}), ("b", None, None)]
    store.record_success(claim(store), ok())
    again = store.retry("a")
    assert (again.state, again.cwd, again.env) == ("pending", "/a", {"K": "1"})


def test_every_way_of_submitting_stores_them(store) -> None:
    """Keys and parents take another path on some backends; if_absent a third."""
    add(store, "true", id="parent")
    store.submit([JobSpec("true", id="keyed", unique="k", cwd="/k", env={"K": "k"}),
                  JobSpec("true", id="child", after=["parent"], cwd="/c", env={"C": "c"})])
    store.submit([JobSpec("true", id="absent", cwd="/x", env={"X": "x"})], if_absent=True)
    for job_id, cwd, env in (("keyed", "/k", {"K": "k"}), ("child", "/c", {"C": "c"}),
                             ("absent", "/x", {"X": "x"})):
        job = store.get(job_id)
        assert (job.cwd, job.env) == (cwd, env), job_id


def test_an_empty_env_is_stored_as_none(store) -> None:
    assert store.get(add(store, "true", env={})).env is None


def test_an_env_of_64_kib_is_kept_whole(store) -> None:
    env = {"BIG": "x" * (65_536 - 3)}
    assert store.get(add(store, "true", env=env)).env == env
