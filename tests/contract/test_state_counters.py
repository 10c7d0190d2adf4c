"""The counts `status`, `queue list`, `metrics` and `top` show come from counters the
backends keep (issue 26), not from a count of the jobs: after every kind of state change
they must equal a brute-force count of the jobs themselves (iter_jobs streams every one).

Each step below is one path that changes a job's state: enqueue (plain, --if-absent, a
taken unique key, with parents), claim, success, complete_and_claim, failure (retried,
dead), release, cancel (waiting, running, in bulk), the cascade of a dead parent, reclaim
(a lost worker, an expired lease), dlq retry (one and many), rerun, purge and retention's
purge of old finished jobs.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from contract_helpers import add, claim, failed, no_backoff, ok, short_leases, wait_reclaimed

from queuectl.job import STATES, JobSpec


def assert_exact(store: Any) -> None:
    """counts(), counts(queue), queues() and completed_since() equal a count of the jobs."""
    jobs = list(store.iter_jobs())
    per = Counter((j.queue, j.state) for j in jobs)
    blocked = Counter(j.queue for j in jobs if j.state == "pending" and j.waiting_on > 0)
    names = {j.queue for j in jobs}
    counts = store.counts()
    assert {s: counts[s] for s in STATES} == {
        s: sum(n for (_q, st), n in per.items() if st == s) for s in STATES}, jobs
    assert counts["blocked"] == sum(blocked.values())
    listed = {q.name: q.counts for q in store.queues() if any(q.counts.values())}
    assert set(listed) == names
    for name in names:
        expected = {s: per[(name, s)] for s in STATES}
        assert listed[name] == expected, name
        mine = store.counts(name)
        assert {s: mine[s] for s in STATES} == expected, name
        assert mine["blocked"] == blocked[name], name
    now = store.now()
    recent = Counter(j.queue for j in jobs if j.state == "completed"
                     and j.finished_at is not None and j.finished_at >= now - 60)
    assert store.completed_since(60) == dict(recent)


def test_counts_stay_exact_through_every_state_change(store: Any, open_another: Any) -> None:
    no_backoff(store)
    assert_exact(store)
    # enqueue: plain, in two queues, --if-absent over a taken id, a taken unique key
    store.enqueue([JobSpec("true", id=f"a{i}", priority=9 - i) for i in range(6)])
    store.enqueue([JobSpec("true", id=f"m{i}", queue="mail", priority=-5) for i in range(4)])
    store.enqueue([JobSpec("true", id="a0"), JobSpec("true", id="new")], if_absent=True)
    store.submit([JobSpec("true", id="k1", unique="key", priority=-9),
                  JobSpec("true", id="k2", unique="key")])
    assert_exact(store)
    # claim and success; complete_and_claim (one transaction for both)
    store.record_success(claim(store), ok())
    held = claim(store)
    done, nxt = store.complete_and_claim(held, ok(), "w1")
    assert done and nxt is not None
    assert_exact(store)
    # failure: retried (failed), then dead; claim of a failed job
    retried = store.record_failure(nxt, failed())
    assert retried is not None and retried.state == "failed"
    assert_exact(store)
    again = claim(store)
    assert again.id == retried.id
    store.get(again.id)
    dying = store.record_failure(again, failed())
    assert dying is not None
    assert_exact(store)
    doomed = add(store, "false", id="doomed", max_retries=0, priority=20)
    assert store.record_failure(claim(store), failed()).state == "dead"
    assert_exact(store)
    # release (worker shutdown): back to pending
    store.release(claim(store), "stopping")
    assert_exact(store)
    # cancel: a waiting job, a running one (ends canceled when its worker reports), bulk
    store.cancel("m0")
    running = claim(store)
    store.cancel(running.id)
    assert store.record_failure(running, failed("killed")).state == "canceled"
    assert_exact(store)
    assert store.cancel_state("pending", 2, queue="mail") == 2
    assert_exact(store)
    # dependencies: blocked children; a dead parent cancels the chain; a completed one frees
    store.submit([JobSpec("false", id="p", max_retries=0, priority=30),
                  JobSpec("true", id="c1", after=["p"]),
                  JobSpec("true", id="c2", after=["c1"], queue="mail"),
                  JobSpec("true", id="q", priority=29),
                  JobSpec("true", id="d1", after=["q"], queue="mail")])
    assert_exact(store)
    assert store.record_failure(claim(store), failed()).state == "dead"  # p: c1, c2 canceled
    assert_exact(store)
    store.record_success(claim(store), ok())  # q: d1 unblocked
    assert_exact(store)
    # reclaim: a restarted worker's orphan, an expired lease
    claim(store, "gone")
    assert store.reclaim_worker("gone")
    assert_exact(store)
    short_leases(store)
    claim(store, "lost")
    wait_reclaimed(store)
    assert_exact(store)
    # dlq retry: one, then many; rerun of a finished job
    store.retry_dead(doomed)
    assert_exact(store)
    assert store.retry_dead_many(None, 100) >= 1
    assert_exact(store)
    store.retry("a0")
    assert_exact(store)
    # purge, and retention's purge of jobs finished at least a second ago
    assert store.purge("canceled", None, 1) == 1
    assert_exact(store)
    time.sleep(1.1)
    for state in ("completed", "dead", "canceled"):
        store.purge(state, 1, 500)
    assert_exact(store)
    # a second store (another process) sees the same numbers
    assert_exact(open_another())


def test_counts_stay_exact_when_workers_race(store: Any, open_another: Any) -> None:
    """Several stores (processes, connections) claiming and completing at once: on
    PostgreSQL their counter rows are sharded by server process, summed when read."""
    store.enqueue([JobSpec("true", id=f"j{i}", queue=("a", "b")[i % 2]) for i in range(60)])
    workers = [open_another(for_worker=True) for _ in range(3)]
    busy = True
    while busy:
        busy = False
        for n, w in enumerate(workers):
            job = w.claim_next(f"w{n}")
            if job is not None:
                busy = True
                if job.id.endswith("7"):
                    w.record_failure(job, failed())
                else:
                    w.complete_and_claim(job, ok(), f"w{n}")
    for w in workers:  # the jobs complete_and_claim took and nobody ended yet
        for job in w.iter_jobs("processing"):
            w.record_success(job, ok())
    assert_exact(store)
