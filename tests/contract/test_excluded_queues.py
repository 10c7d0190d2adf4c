"""Contract: a worker of every queue but some (`exclude`: the queues this host's lane files
reserve for their lanes' workers), through the Store interface only."""

from __future__ import annotations

from contract_helpers import add, ok, past


def test_an_excluding_claim_never_takes_an_excluded_job_however_urgent(store) -> None:
    add(store, id="b", queue="backups", priority=100, run_at=past(100))
    add(store, id="m", queue="mail", priority=1, run_at=past(10))
    add(store, id="d", run_at=past(5))
    got = [store.claim_next("w", exclude=["backups"]) for _ in range(3)]
    assert [j.id if j else None for j in got] == ["m", "d", None]
    assert store.get("b").state == "pending"
    assert store.claim_next("w", ["backups"]).id == "b"  # its lane's worker takes it


def test_several_excluded_queues_and_an_empty_exclusion(store) -> None:
    add(store, id="a", queue="a", priority=3)
    add(store, id="b", queue="b", priority=2)
    add(store, id="c", queue="c", priority=1)
    assert store.claim_next("w", exclude=["a", "b"]).id == "c"
    assert store.claim_next("w", exclude=["a", "b"]) is None
    assert store.claim_next("w", exclude=[]).id == "a"  # empty: every queue
    assert store.claim_next("w", exclude=["nobody-uses-this"]).id == "b"


def test_exclude_is_ignored_beside_a_list_of_queues(store) -> None:
    add(store, id="b", queue="backups")
    assert store.claim_next("w", ["backups"], exclude=["backups"]).id == "b"


def test_complete_and_claim_skips_excluded_queues_too(store) -> None:
    add(store, id="first", priority=50)
    add(store, id="b", queue="backups", priority=10)
    add(store, id="m", queue="mail", priority=1)
    first = store.claim_next("w", exclude=["backups"])
    assert first.id == "first"
    held, following = store.complete_and_claim(first, ok(), "w", exclude=["backups"])
    assert held and following.id == "m"
    held, following = store.complete_and_claim(following, ok(), "w", exclude=["backups"])
    assert held and following is None
    assert store.get("b").state == "pending"


def test_remaining_and_seconds_until_due_ignore_excluded_queues(store) -> None:
    add(store, queue="backups")  # due now, but not ours
    add(store, queue="mail", delay=3600)
    assert store.remaining(exclude=["backups"]) == 1
    assert store.remaining(exclude=["backups", "mail"]) == 0
    assert store.remaining() == 2
    assert store.seconds_until_due(exclude=["backups"]) > 3000
    assert store.seconds_until_due(exclude=["backups", "mail"]) is None
    assert store.seconds_until_due() == 0
    assert store.seconds_until_due(["backups"], exclude=["backups"]) == 0  # a list wins


def test_paused_and_limited_queues_still_hold_beside_exclusion(store) -> None:
    add(store, id="b", queue="backups", priority=100)
    add(store, id="p", queue="paused", priority=90)
    add(store, id="l1", queue="limited", priority=80, run_at=past(20))
    add(store, id="l2", queue="limited", priority=80, run_at=past(10))
    add(store, id="m", queue="mail", priority=1)
    assert store.pause("alice@h", queue="paused")
    store.set_queue_concurrency("limited", 1)
    excluding = {"exclude": ["backups"]}
    first = store.claim_next("w1", **excluding)
    assert first.id == "l1"
    assert store.claim_next("w2", **excluding).id == "m"  # limited is full, paused held
    assert store.claim_next("w3", **excluding) is None
    held, following = store.complete_and_claim(first, ok(), "w1", **excluding)
    assert held and following.id == "l2"  # the limit freed by the job that ended
    assert store.resume("paused")
    assert store.claim_next("w3", **excluding).id == "p"
    assert store.claim_next("w3", **excluding) is None
    assert store.get("b").state == "pending"
