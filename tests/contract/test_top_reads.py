"""now, recent_jobs and completed_since: what `queuectl top` reads besides counts and workers."""

from __future__ import annotations

import time

from contract_helpers import DEADLINE, add, claim, failed, ids, ok
from waiting import wait_for

from queuectl.job import DEAD, FAILED


def _fail_in_turn(store, *job_ids: str) -> None:
    """Claim and fail each job in this order (each enqueued with a priority that makes it
    the next claim), a little apart so their updated_at differ on any clock."""
    for job_id in job_ids:
        job = claim(store)
        assert job.id == job_id
        assert store.record_failure(job, failed()) is not None
        time.sleep(0.01)


def test_recent_jobs_lists_a_state_newest_first_up_to_the_limit(store) -> None:
    store.set_config("backoff-base", 1000)  # failed jobs stay failed for the test
    for job_id, priority in (("a", 2), ("b", 1), ("c", 3)):
        add(store, id=job_id, max_retries=0, priority=priority)
    add(store, id="f", priority=0)  # fails once and waits for its retry
    add(store, id="done", priority=-1)
    _fail_in_turn(store, "c", "a", "b", "f")  # created a, b, c: died c, a, b
    store.record_success(claim(store), ok())
    assert ids(store.recent_jobs(DEAD, 10)) == ["b", "a", "c"]
    assert ids(store.recent_jobs(DEAD, 2)) == ["b", "a"]
    assert ids(store.recent_jobs(FAILED, 10)) == ["f"]
    assert store.recent_jobs("pending", 10) == []
    [job] = store.recent_jobs(DEAD, 1)
    assert job.state == DEAD and job.command == "true" and job.last_error == "exit code 1"


def test_recent_jobs_puts_a_job_that_changed_again_first(store) -> None:
    store.set_config("backoff-base", 1000)
    for job_id, priority in (("old", 2), ("new", 1)):
        add(store, id=job_id, max_retries=0, priority=priority)
    _fail_in_turn(store, "old", "new")
    assert ids(store.recent_jobs(DEAD, 10)) == ["new", "old"]
    store.retry_dead("old")
    time.sleep(0.01)
    _fail_in_turn(store, "old")  # dead again, later than "new"
    assert ids(store.recent_jobs(DEAD, 10)) == ["old", "new"]


def test_recent_jobs_of_one_queue(store) -> None:
    add(store, id="m", queue="mail", max_retries=0, priority=2)
    add(store, id="d", max_retries=0, priority=1)
    _fail_in_turn(store, "m", "d")
    assert ids(store.recent_jobs(DEAD, 10, queue="mail")) == ["m"]
    assert ids(store.recent_jobs(DEAD, 10, queue="default")) == ["d"]
    assert store.recent_jobs(DEAD, 10, queue="nosuch") == []


def test_completed_since_counts_recent_completions_per_queue(store) -> None:
    assert store.completed_since(60) == {}
    for job_id, queue in (("d1", "default"), ("d2", "default"), ("m1", "mail")):
        add(store, id=job_id, queue=queue)
    add(store, id="x", max_retries=0, priority=-1)  # fails: not a completion
    for _ in range(3):
        store.record_success(claim(store), ok())
    store.record_failure(claim(store), failed())
    add(store, id="running")
    claim(store)  # processing: not a completion either
    assert store.completed_since(60) == {"default": 2, "mail": 1}
    # they fall out of a short window as the store's clock moves on
    wait_for(lambda: store.completed_since(0.5) == {}, DEADLINE, "the window to pass them")
    add(store, id="d3")
    mark = store.now()
    store.record_success(claim(store), ok())
    # a window reaching back past d3's finish, by up to 0.25 s (the call's own delay on a
    # loaded machine), and not to the others: they finished 0.5 s or more before `mark`
    since_mark = store.now() - mark + 0.25
    assert store.completed_since(since_mark) == {"default": 1}
    assert store.completed_since(3600) == {"default": 3, "mail": 1}


def test_now_is_the_clock_the_store_stamps_jobs_with(store, open_another) -> None:
    before = store.now()
    add(store, id="j")
    job = claim(open_another(for_worker=True))
    after = store.now()
    assert before <= job.started_at <= after
    assert after - before < DEADLINE
    assert store.get("j").created_at <= after


def test_reads_inside_reading_see_one_state_of_the_queue(store, open_another) -> None:
    """`top` builds a screen from several reads: inside `reading()` none of them sees a
    commit that another process made between two of them; after it, the next reads do."""
    other = open_another()
    add(store, id="first")

    def look() -> tuple:
        return (store.counts(), ids(store.iter_jobs()), store.queues()[0].counts,
                ids(store.recent_jobs("pending", 10)), store.metrics().queues[0].counts)

    with store.reading():
        before = look()
        add(other, id="second")  # committed by another process meanwhile
        claim(other)
        with store.reading():  # nested: still the outer snapshot
            assert look() == before
        assert look() == before
    after = look()
    assert after != before
    assert after[0]["pending"] == 1 and after[0]["processing"] == 1
    assert after[1] == ["first", "second"]
