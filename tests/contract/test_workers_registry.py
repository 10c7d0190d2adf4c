"""register_worker, unregister_worker, workers, seconds_since_heartbeat, and what heartbeat
records in the registry."""

from __future__ import annotations

import pytest
from contract_helpers import add, claim
from waiting import wait_for

from queuectl import policy
from queuectl.store import Store, WorkerInfo


def _info(name: str, pid: int = 100, state: str = "idle", host: str = "host-a") -> WorkerInfo:
    """Times are deliberately absurd: the store must replace them with its own now."""
    return WorkerInfo(name=name, host=host, pid=pid, pid_start="12345", started_at=1.0,
                      heartbeat_at=2.0, state=state, job_id=None)


def _row(store: Store, name: str) -> WorkerInfo:
    [row] = [w for w in store.workers() if w.name == name]
    return row


def test_register_worker_adds_a_row_with_the_stores_own_times(store) -> None:
    created = store.get(add(store)).created_at  # a time by the store's clock
    store.register_worker(_info("w1"))
    row = _row(store, "w1")
    assert (row.host, row.pid, row.pid_start, row.state, row.job_id) == (
        "host-a", 100, "12345", "idle", None)
    assert row.started_at == pytest.approx(row.heartbeat_at, abs=0.001)
    assert created - 1 <= row.started_at <= created + 300
    assert store.seconds_since_heartbeat("w1") == pytest.approx(0, abs=60)


def test_register_worker_replaces_a_row_of_the_same_name(store) -> None:
    store.register_worker(_info("w1", pid=1, host="old"))
    store.register_worker(_info("w1", pid=2, host="new"))
    [row] = store.workers()
    assert (row.name, row.pid, row.host) == ("w1", 2, "new")


def test_workers_are_listed_by_name(store, open_another) -> None:
    for name in ("w-c", "w-a", "w-b"):
        store.register_worker(_info(name))
    assert [w.name for w in store.workers()] == ["w-a", "w-b", "w-c"]
    assert [w.name for w in open_another().workers()] == ["w-a", "w-b", "w-c"]


def test_workers_of_an_empty_registry_is_empty(store) -> None:
    assert store.workers() == []


def test_unregister_worker_removes_its_row(store) -> None:
    store.register_worker(_info("w1"))
    store.register_worker(_info("w2"))
    store.unregister_worker("w1")
    assert [w.name for w in store.workers()] == ["w2"]
    assert store.seconds_since_heartbeat("w1") is None


def test_unregister_worker_of_an_unknown_name_is_no_error(store) -> None:
    store.unregister_worker("never-registered")
    store.register_worker(_info("w1"))
    store.unregister_worker("w1")
    store.unregister_worker("w1")
    assert store.workers() == []


def test_seconds_since_heartbeat_of_an_unknown_worker_is_none(store) -> None:
    assert store.seconds_since_heartbeat("nobody") is None


def test_heartbeat_resets_seconds_since_heartbeat(store) -> None:
    store.register_worker(_info("w1"))
    silent = wait_for(lambda: (s := store.seconds_since_heartbeat("w1")) >= 0.3 and s, 30,
                      "the worker to be silent for 0.3 s")
    store.heartbeat("w1", "idle", None)
    assert store.seconds_since_heartbeat("w1") < silent


def test_heartbeat_records_state_and_job_in_the_registry_row(store) -> None:
    store.register_worker(_info("w1"))
    add(store, id="j")
    job = claim(store, "w1")
    assert store.heartbeat("w1", "busy", job) is True
    row = _row(store, "w1")
    assert (row.state, row.job_id) == ("busy", "j")
    store.heartbeat("w1", "idle", None)
    row = _row(store, "w1")
    assert (row.state, row.job_id) == ("idle", None)


def test_a_worker_silent_past_the_active_window_is_no_longer_active(store) -> None:
    store.register_worker(_info("w1"))
    assert store.counts()["active_workers"] == 1
    wait_for(lambda: store.counts()["active_workers"] == 0, policy.ACTIVE_WINDOW + 30,
             "the silent worker to stop counting as active", every=0.2)
    assert store.seconds_since_heartbeat("w1") >= policy.ACTIVE_WINDOW
    assert [w.name for w in store.workers()] == ["w1"]  # still registered, only inactive
    store.heartbeat("w1", "idle", None)
    assert store.counts()["active_workers"] == 1
