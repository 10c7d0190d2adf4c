"""enqueue: all or nothing, if_absent, defaults, ids and when a job becomes due."""

from __future__ import annotations

import re
import time

import pytest
from contract_helpers import add, claim, past

from queuectl import settings
from queuectl.errors import Conflict, NotFound
from queuectl.job import JobSpec


def test_enqueue_returns_ids_in_input_order(store) -> None:
    got = store.enqueue([JobSpec("true", id="b"), JobSpec("true"), JobSpec("true", id="a")])
    assert got[0] == "b" and got[2] == "a"
    assert store.get(got[1]).id == got[1]
    assert [j.id for j in store.iter_jobs()] == got


def test_enqueued_job_is_pending_with_no_attempts(store) -> None:
    job = store.get(add(store, "echo hi", priority=5, timeout=7.5))
    assert (job.state, job.attempts, job.command, job.priority, job.timeout) == (
        "pending", 0, "echo hi", 5, 7.5)
    assert job.worker is None and job.started_at is None and job.finished_at is None


def test_generated_ids_are_12_hex_digits_and_distinct(store) -> None:
    got = store.enqueue([JobSpec("true") for _ in range(50)])
    assert all(re.fullmatch("[0-9a-f]{12}", i) for i in got), got
    assert len(set(got)) == 50


def test_enqueue_with_a_taken_id_adds_nothing_and_raises_conflict(store) -> None:
    add(store, "old", id="taken")
    with pytest.raises(Conflict):
        store.enqueue([JobSpec("new1", id="n1"), JobSpec("new", id="taken"), JobSpec("new2", id="n2")])
    for missing in ("n1", "n2"):
        with pytest.raises(NotFound):
            store.get(missing)
    assert store.get("taken").command == "old"
    assert store.counts()["pending"] == 1


def test_enqueue_of_a_batch_naming_one_id_twice_adds_nothing_and_raises_conflict(store) -> None:
    """The clash is inside the batch itself: still all or nothing."""
    with pytest.raises(Conflict):
        store.enqueue([JobSpec("a", id="x1"), JobSpec("b", id="dup"), JobSpec("c", id="dup")])
    assert list(store.iter_jobs()) == []


def test_conflict_is_seen_across_stores(store, open_another) -> None:
    add(store, id="shared")
    with pytest.raises(Conflict):
        add(open_another(), id="shared")


def test_if_absent_leaves_an_existing_job_as_it_is_and_returns_its_id(store) -> None:
    add(store, "original", id="k", priority=1)
    claimed = claim(store)
    got = store.enqueue([JobSpec("replacement", id="k", priority=9)], if_absent=True)
    assert got == ["k"]
    job = store.get("k")
    assert (job.command, job.priority, job.state, job.attempts) == ("original", 1, "processing", 1)
    assert job.worker == claimed.worker


def test_if_absent_adds_the_new_jobs_of_a_batch(store) -> None:
    add(store, "original", id="k")
    got = store.enqueue([JobSpec("a", id="new"), JobSpec("b", id="k"), JobSpec("c")], if_absent=True)
    assert got[:2] == ["new", "k"] and len(got) == 3
    assert store.get("new").command == "a" and store.get(got[2]).command == "c"
    assert store.get("k").command == "original"
    assert store.counts()["pending"] == 3


def test_if_absent_with_an_id_twice_in_one_batch_adds_it_once(store) -> None:
    got = store.enqueue([JobSpec("first", id="d"), JobSpec("second", id="d")], if_absent=True)
    assert got == ["d", "d"]
    assert store.get("d").command == "first"
    assert store.counts()["pending"] == 1


def test_max_retries_defaults_to_the_max_retries_setting(store) -> None:
    assert store.get(add(store)).max_retries == settings.SETTINGS["max-retries"].default
    store.set_config("max-retries", 7)
    assert store.get(add(store)).max_retries == 7


def test_explicit_max_retries_wins_over_the_setting_even_zero(store) -> None:
    store.set_config("max-retries", 7)
    assert store.get(add(store, max_retries=0)).max_retries == 0
    assert store.get(add(store, max_retries=2)).max_retries == 2


def test_run_at_defaults_to_now(store) -> None:
    job = store.get(add(store))
    assert job.run_at == pytest.approx(job.created_at, abs=1.0)
    assert store.seconds_until_due() == 0
    assert claim(store).id == job.id


def test_delay_makes_run_at_now_plus_delay_by_the_store_clock(store) -> None:
    job = store.get(add(store, delay=3600))
    assert job.run_at - job.created_at == pytest.approx(3600, abs=1.0)
    assert store.seconds_until_due() == pytest.approx(3600, abs=60)


def test_absolute_run_at_is_kept_as_given(store) -> None:
    when = time.time() + 86400
    job = store.get(add(store, run_at=when))
    assert job.run_at == pytest.approx(when, abs=0.001)


def test_absolute_run_at_wins_over_delay(store) -> None:
    when = past()
    job = store.get(add(store, run_at=when, delay=3600))
    assert job.run_at == pytest.approx(when, abs=0.001)


def test_store_times_are_epoch_seconds(store) -> None:
    """Not milliseconds, not datetimes: floats on the epoch scale (clocks may differ a little)."""
    job = store.get(add(store))
    for value in (job.created_at, job.updated_at, job.run_at):
        assert isinstance(value, float)
        assert abs(value - time.time()) < 3600


def test_an_empty_batch_adds_nothing(store) -> None:
    assert store.enqueue([]) == []
    assert store.remaining() == 0
