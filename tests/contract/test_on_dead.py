"""Contract: on-dead notices (`take_notice`, `notice_delivered`, `notice_failed`,
`set_queue_on_dead`, the `on-dead` setting), through the Store interface only, once per
backend. A job's move to dead and its notice are one transaction, by every path."""

from __future__ import annotations

from contract_helpers import (
    DEADLINE,
    add,
    claim,
    failed,
    no_backoff,
    ok,
    short_leases,
    wait_reclaimed,
)
from waiting import wait_for

from queuectl import policy
from queuectl.store import Store

HOOK = 'cat >> "$OUT"'


def _die(store: Store, job_id: str = "j", queue: str | None = None,
         output: bytes = b"last words") -> None:
    """A job whose only attempt fails: it goes dead."""
    add(store, "exit 3", id=job_id, max_retries=0, **({"queue": queue} if queue else {}))
    job = store.record_failure(claim(store), failed("exit status 3", output, 3))
    assert job is not None and job.state == "dead"


def test_no_command_no_notice(store) -> None:
    _die(store)
    assert store.counts()["notices"] == 0
    assert store.take_notice("w1", policy.NOTICE_LEASE) is None


def test_a_dead_job_leaves_one_notice_with_its_snapshot_and_output(store) -> None:
    store.set_config("on-dead", HOOK)
    _die(store, output=b"x" * 100 + b"last words")
    assert store.counts()["notices"] == 1
    notice = store.take_notice("w1", policy.NOTICE_LEASE)
    assert notice is not None
    assert (notice.job_id, notice.queue, notice.command, notice.exit_code, notice.attempts,
            notice.last_error, notice.tries, notice.hook, notice.holder) == (
        "j", "default", "exit 3", 3, 1, "exit status 3", 0, HOOK, "w1")
    assert notice.output.endswith(b"last words")
    # held: nobody else gets it meanwhile
    assert store.take_notice("w2", policy.NOTICE_LEASE) is None
    assert store.notice_delivered(notice) is True
    assert store.counts()["notices"] == 0
    assert store.take_notice("w2", policy.NOTICE_LEASE) is None


def test_failed_attempts_that_will_be_retried_and_cancels_leave_no_notice(store) -> None:
    store.set_config("on-dead", HOOK)
    no_backoff(store)
    add(store, id="r", max_retries=1)
    assert store.record_failure(claim(store), failed()).state == "failed"
    add(store, id="c")
    store.cancel("c")
    assert store.counts()["notices"] == 0
    store.record_success(claim(store), ok())  # r's second attempt
    assert store.counts()["notices"] == 0


def test_the_queue_command_wins_and_empty_removes_it(store) -> None:
    store.set_queue_on_dead("mail", "echo queue")
    _die(store, "a", queue="mail")
    _die(store, "b", queue="other")  # no command for it: no notice
    assert store.counts()["notices"] == 1
    assert store.counts(queue="mail")["notices"] == 1
    assert store.counts(queue="other")["notices"] == 0
    store.set_config("on-dead", "echo global")
    notice = store.take_notice("w1", policy.NOTICE_LEASE)
    assert notice is not None and (notice.job_id, notice.hook) == ("a", "echo queue")
    store.set_queue_on_dead("mail", "")
    rows = {q.name: q for q in store.queues()}
    assert rows["mail"].on_dead == "" and rows["mail"].notices == 1
    store.notice_delivered(notice)
    _die(store, "c", queue="mail")
    notice = store.take_notice("w1", policy.NOTICE_LEASE)
    assert notice is not None and (notice.job_id, notice.hook) == ("c", "echo global")


def test_queues_and_metrics_report_the_command_and_pending_notices(store) -> None:
    store.set_queue_on_dead("mail", "echo hi")
    rows = {q.name: q for q in store.queues()}
    assert rows["mail"].on_dead == "echo hi" and rows["mail"].notices == 0
    _die(store, "a", queue="mail")
    metrics = {q.name: q for q in store.metrics().queues}
    assert metrics["mail"].notices == 1


def test_a_failed_hook_is_retried_after_its_delay_then_dropped(store) -> None:
    store.set_config("on-dead", "false")
    _die(store)
    notice = store.take_notice("w1", policy.NOTICE_LEASE)
    assert notice is not None
    assert store.notice_failed(notice, "exit status 1", 3, 1000.0) is False
    assert store.take_notice("w1", policy.NOTICE_LEASE) is None  # not due for 1000 s
    assert store.counts()["notices"] == 1
    _die(store, "k")
    notice_k = store.take_notice("w1", policy.NOTICE_LEASE)
    assert notice_k is not None and notice_k.job_id == "k"
    for tries in range(2):
        assert store.notice_failed(notice_k, "exit status 1", 3, 0.0) is False
        notice_k = wait_for(lambda: store.take_notice("w1", policy.NOTICE_LEASE), DEADLINE,
                            "the notice to be due again")
        assert notice_k.tries == tries + 1
    assert store.notice_failed(notice_k, "exit status 1", 3, 0.0) is True  # the third
    assert store.counts()["notices"] == 1  # j's, still waiting


def test_a_notice_whose_holder_vanished_is_taken_again_after_its_lease(store) -> None:
    store.set_config("on-dead", HOOK)
    _die(store)
    first = store.take_notice("w1", 0.2)
    assert first is not None
    again = wait_for(lambda: store.take_notice("w2", policy.NOTICE_LEASE), DEADLINE,
                     "the lease on the notice to run out")
    assert (again.id, again.holder) == (first.id, "w2")
    assert store.notice_delivered(first) is False  # fenced: w2 holds it now
    assert store.notice_failed(first, "late", 5, 0.0) is False
    assert store.counts()["notices"] == 1
    assert store.notice_delivered(again) is True
    assert store.counts()["notices"] == 0


def test_reclaimed_attempts_that_go_dead_leave_a_notice(store) -> None:
    store.set_config("on-dead", HOOK)
    short_leases(store)
    add(store, id="lost", max_retries=0)
    claim(store, "gone")
    jobs = wait_reclaimed(store)
    assert [j.state for j in jobs] == ["dead"]
    add(store, id="orphan", max_retries=0)
    claim(store, "restarted")
    assert [j.state for j in store.reclaim_worker("restarted")] == ["dead"]
    assert store.counts()["notices"] == 2
    taken = [store.take_notice("w1", policy.NOTICE_LEASE) for _ in range(2)]
    assert sorted(n.job_id for n in taken if n) == ["lost", "orphan"]
    assert all(n is not None and n.output == b"" and n.exit_code is None for n in taken)


def test_the_notice_outlives_its_job(store) -> None:
    store.set_config("on-dead", HOOK)
    _die(store)
    assert store.purge("dead", None, 10) == 1
    notice = store.take_notice("w1", policy.NOTICE_LEASE)
    assert notice is not None and notice.job_id == "j" and notice.output == b""
    assert notice.command == "exit 3"


def test_the_setting_is_text_in_config_items(store) -> None:
    assert store.config_items()["on-dead"] == ""
    store.set_config("on-dead", 'mail -s "$QUEUECTL_JOB_ID died" root')
    assert store.config_items()["on-dead"] == 'mail -s "$QUEUECTL_JOB_ID died" root'
    store.set_config("on-dead", "")
    assert store.config_items()["on-dead"] == ""
    _die(store)
    assert store.counts()["notices"] == 0
