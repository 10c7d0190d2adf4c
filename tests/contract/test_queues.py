"""Contract: named queues — preference order, per-queue limits and pause, filters,
the queue overview and the workers registry's lanes, through the Store interface only."""

from __future__ import annotations

import threading

from contract_helpers import add, ok, past

from queuectl.job import DEFAULT_QUEUE, STATES, JobSpec
from queuectl.store import Store, WorkerInfo


def _worker(name: str, queues: list[str] | None, exclude: list[str] | None = None
            ) -> WorkerInfo:
    return WorkerInfo(name=name, host="h", pid=1, pid_start=None, started_at=0.0,
                      heartbeat_at=0.0, state="idle", job_id=None, queues=queues,
                      exclude=exclude)


def _queue(store: Store, name: str):
    [row] = [q for q in store.queues() if q.name == name]
    return row


def test_a_job_without_a_queue_is_in_default_and_every_job_carries_its_queue(store) -> None:
    plain, mail = add(store), add(store, queue="mail")
    assert store.get(plain).queue == DEFAULT_QUEUE
    assert store.get(mail).queue == "mail"
    assert {j.id: j.queue for j in store.iter_jobs()} == {plain: "default", mail: "mail"}
    assert store.claim_next("w", ["mail"]).queue == "mail"


def test_a_queue_list_is_an_order_of_preference_and_priority_orders_inside_a_queue(
        store) -> None:
    add(store, id="d-high", priority=100, run_at=past())
    add(store, id="m-low", queue="mail", priority=-5, run_at=past(60))
    add(store, id="m-high", queue="mail", priority=5, run_at=past(30))
    add(store, id="other", queue="other", priority=1000)
    got = [store.claim_next("w", ["mail", "default"]).id for _ in range(3)]
    assert got == ["m-high", "m-low", "d-high"]  # mail first, whatever default's priority
    assert store.claim_next("w", ["mail", "default"]) is None  # never another queue
    assert store.claim_next("w", ["nobody-uses-this"]) is None  # an unknown name: no error
    assert store.claim_next("w").id == "other"


def test_without_a_list_priority_orders_across_every_queue(store) -> None:
    add(store, id="a", queue="a", priority=1, run_at=past(10))
    add(store, id="b", queue="b", priority=2, run_at=past(5))
    add(store, id="c", queue="c", priority=2, run_at=past(20))
    assert [store.claim_next("w").id for _ in range(3)] == ["c", "b", "a"]


def test_a_concurrency_limit_holds_back_claims_until_a_job_of_that_queue_ends(store) -> None:
    for i in range(3):
        add(store, id=f"b{i}", queue="backups", priority=10, run_at=past(100 - i))
    add(store, id="m", queue="mail")
    store.set_queue_concurrency("backups", 1)
    first = store.claim_next("w1")
    assert first.id == "b0"
    # the limited queue is skipped, for a list and for every queue alike
    assert store.claim_next("w2", ["backups"]) is None
    assert store.claim_next("w2").id == "m"
    held, following = store.complete_and_claim(first, ok(), "w1", ["backups"])
    assert held and following.id == "b1"  # the finished job no longer counts
    assert _queue(store, "backups").concurrency == 1
    store.set_queue_concurrency("backups", 0)  # 0 removes the limit
    assert store.claim_next("w3", ["backups"]).id == "b2"
    assert _queue(store, "backups").concurrency == 0


def test_racing_claimers_on_separate_connections_never_exceed_a_limit(store,
                                                                      open_another) -> None:
    store.enqueue([JobSpec("true", queue="q") for _ in range(30)])
    store.set_queue_concurrency("q", 2)
    claimers = [open_another(for_worker=True) for _ in range(8)]
    start = threading.Barrier(len(claimers))
    got: list = []

    def race(s: Store, name: str, lane: list[str] | None) -> None:
        start.wait()
        for _ in range(5):  # half name the queue, half serve every queue
            job = s.claim_next(name, lane) if lane else s.claim_next(name)
            if job is not None:
                got.append(job)

    threads = [threading.Thread(target=race, args=(s, f"w{i}", ["q"] if i % 2 else None))
               for i, s in enumerate(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 2
    assert store.counts("q")["processing"] == 2


def test_a_paused_queue_is_skipped_and_the_others_still_run(store) -> None:
    add(store, id="b", queue="backups", priority=9)
    add(store, id="m", queue="mail")
    assert store.pause("alice@h", queue="backups")
    assert not store.pause("bob@h", queue="backups")  # already paused: nothing changes
    info = store.paused("backups")
    assert info.by == "alice@h" and store.paused() is None and store.paused("mail") is None
    assert store.claim_next("w", ["backups"]) is None
    assert store.claim_next("w").id == "m"
    assert store.claim_next("w") is None
    assert _queue(store, "backups").paused.by == "alice@h"
    assert store.resume("backups") and not store.resume("backups")
    assert store.claim_next("w").id == "b"


def test_the_global_pause_holds_every_queue_and_is_apart_from_queue_pauses(store) -> None:
    add(store, queue="mail")
    assert store.pause("alice@h")
    assert store.claim_next("w", ["mail"]) is None
    assert store.paused("mail") is None
    assert not store.resume("mail")  # the queue itself was never paused
    assert store.resume()
    assert store.claim_next("w", ["mail"]) is not None


def test_filters_touch_only_their_queue(store) -> None:
    for q in ("a", "a", "b"):
        add(store, queue=q)
    for q in ("a", "b"):
        done = store.claim_next("w", [q])
        store.record_success(done, ok())
    assert store.counts("a")["pending"] == 1 and store.counts("a")["completed"] == 1
    assert store.counts("nobody") == {**dict.fromkeys(STATES, 0), "active_workers": 0, "blocked": 0,
                                      "notices": 0}
    assert [j.queue for j in store.iter_jobs(queue="b")] == ["b"]
    assert list(store.iter_jobs("completed", queue="a"))[0].queue == "a"
    assert store.count_matching("completed", queue="a") == 1
    assert store.purge("completed", None, 10, queue="a") == 1
    assert store.counts("b")["completed"] == 1  # untouched
    assert store.cancel_state("pending", 10, queue="a") == 1
    assert store.counts("a")["canceled"] == 1 and store.counts()["pending"] == 0
    assert store.remaining(["a"]) == 0 and store.remaining() == 0


def test_remaining_and_seconds_until_due_see_only_the_lane(store) -> None:
    add(store, queue="later", delay=3600)
    add(store, queue="now")
    assert store.remaining(["later"]) == 1 and store.remaining(["x"]) == 0
    assert store.seconds_until_due(["now"]) == 0
    assert store.seconds_until_due(["later"]) > 3000
    assert store.seconds_until_due(["x"]) is None


def test_queue_overview_counts_limits_pauses_workers_and_the_longest_wait(store) -> None:
    add(store, queue="mail", run_at=past(120))
    add(store, queue="mail", delay=3600)  # not due: not waiting yet
    add(store, queue="backups")
    store.set_queue_concurrency("reports", 1)  # a setting alone makes a queue visible
    store.register_worker(_worker("all", None))
    store.register_worker(_worker("lane", ["mail", "default"]))
    store.register_worker(_worker("idle-lane", ["quiet"]))
    rows = {q.name: q for q in store.queues()}
    assert list(rows) == sorted(rows)
    assert set(rows) == {"mail", "backups", "reports", "default", "quiet"}
    mail = rows["mail"]
    assert mail.counts == {**dict.fromkeys(STATES, 0), "pending": 2}
    assert mail.workers == 2 and rows["backups"].workers == 1 and rows["quiet"].workers == 2
    assert 100 < mail.oldest_waiting < 3600
    assert rows["reports"].concurrency == 1 and rows["reports"].oldest_waiting is None
    assert store.counts("mail")["active_workers"] == 2
    by_name = {w.name: w.queues for w in store.workers()}
    assert by_name == {"all": None, "lane": ["mail", "default"], "idle-lane": ["quiet"]}


def test_a_queue_counts_no_worker_that_excludes_it(store) -> None:
    """An all-queue worker beside lane files (`exclude`: the queues those lanes serve)
    does not serve the lanes' queues: queue list, status --queue and metrics count it for
    every other queue only."""
    add(store, queue="backups")
    add(store, queue="mail")
    store.register_worker(_worker("default-lane", None, exclude=["backups", "reports"]))
    store.register_worker(_worker("backups-lane", ["backups"]))
    store.register_worker(_worker("everything", None, exclude=[]))
    rows = {q.name: q for q in store.queues()}
    assert rows["backups"].workers == 2  # its lane's worker and the one excluding nothing
    assert rows["mail"].workers == 2
    assert store.counts("backups")["active_workers"] == 2
    assert store.counts("mail")["active_workers"] == 2
    assert store.counts("reports")["active_workers"] == 1
    assert store.counts()["active_workers"] == 3
    by_name = {w.name: (w.queues, w.exclude) for w in store.workers()}
    assert by_name == {"default-lane": (None, ["backups", "reports"]),
                       "backups-lane": (["backups"], None), "everything": (None, None)}
