"""beat: a worker's heartbeat with what it reads on every beat (the settings, the global
pause, whether reclaim_expired has anything to do), on a CLI's store and a worker's."""

from __future__ import annotations

from contract_helpers import add, claim, short_leases, wait_expired

from queuectl.store import WorkerInfo


def test_an_idle_beat_answers_the_settings_and_the_pause(store, either_store) -> None:
    store.register_worker(WorkerInfo(name="w1", host="h", pid=1, pid_start="1", started_at=0.0,
                                     heartbeat_at=0.0, state="busy", job_id=None))
    store.set_config("lease-seconds", 90)
    beat = either_store.beat("w1", "idle", None)
    assert beat.held and beat.paused is None
    assert beat.settings == store.config_items() and beat.settings["lease-seconds"] == 90
    assert store.pause("alice@h")
    for _ in range(7):  # past PostgreSQL's first custom plans of a prepared statement
        beat = either_store.beat("w1", "idle", None)
        assert beat.paused is not None and beat.paused.by == "alice@h"
    assert store.resume()
    assert either_store.beat("w1", "idle", None).paused is None
    assert [(w.name, w.state) for w in store.workers()] == [("w1", "idle")]


def test_a_busy_beat_renews_the_lease_while_it_is_held(store, either_store) -> None:
    add(store, id="j")
    job = claim(store)
    either_store.set_config("lease-seconds", 5000)  # another store's change comes within CACHE_TTL
    beat = either_store.beat("w1", "busy", job)
    assert beat.held and store.get("j").lease_expires_at > job.lease_expires_at + 1000
    store.reclaim_worker("w1")
    assert either_store.beat("w1", "busy", job).held is False


def test_a_beat_says_so_when_a_lease_ran_out(store, either_store) -> None:
    short_leases(store)
    add(store, id="lost")
    lost = claim(store, "gone")
    wait_expired(store, [lost])
    assert either_store.beat("w1", "idle", None).expired  # (a store may say so more often)
    assert [j.id for j in either_store.reclaim_expired()] == ["lost"]
