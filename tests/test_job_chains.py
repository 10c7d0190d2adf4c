"""`enqueue --after` and `retry` as admins use them, through the console script with real
workers and real `/bin/sh`, on both backends: a chain runs in order, a dead step cancels
the rest with reasons, a completed and purged step still lets the next one run, and a
finished job runs again with its history numbered on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Queue
from waiting import wait_for


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_chain_runs_in_order_even_when_enqueued_backwards_in_priority(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    out = tmp_path / "order.txt"
    a = q.run("enqueue", "--id", "A", "--cmd", f"sleep 0.3; echo A >> {out}").stdout.strip()
    b = q.run("enqueue", "--id", "B", "--after", a, "--priority", "9",
              "--cmd", f"echo B >> {out}").stdout.strip()
    c = q.run("enqueue", "--after", f"{a},{b}", "--priority", "9",
              "--cmd", f"echo C >> {out}").stdout.strip()
    status = q.status()
    assert (status["pending"], status["blocked"]) == (3, 2)
    shown = q.job(c)
    assert shown["waiting_on"] == 2
    assert shown["after"] == [{"id": "A", "state": "pending", "satisfied": False},
                              {"id": "B", "state": "pending", "satisfied": False}]
    for i in range(2):
        q.worker("--name", f"w{i}")
    q.wait_counts(completed=3)
    assert _lines(out) == ["A", "B", "C"]
    assert q.job(c)["after"][0] == {"id": "A", "state": "completed", "satisfied": True}


def test_a_dead_step_cancels_the_rest_with_reasons_and_the_worker_says_so(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    q.run("enqueue", "--id", "A", "--max-retries", "0", "--cmd", "exit 3")
    q.run("enqueue", "--id", "B", "--after", "A", "--cmd", "true")
    q.run("enqueue", "--id", "C", "--after", "B", "--cmd", "true")
    log = tmp_path / "worker.log"
    q.worker("--name", "w", log=log)
    q.wait_state("C", "canceled")
    assert q.job("B")["last_error"] == "parent A ended dead"
    assert q.job("C")["last_error"] == "parent B ended canceled"
    assert q.job("B")["attempts"] == 0
    def told() -> list[dict] | None:
        got = [e for e in map(json.loads, log.read_text().splitlines())
               if e["event"] == "dependent_canceled"]
        return got if len(got) == 2 else None

    events = wait_for(told, 30, "two dependent_canceled events")
    assert [(e["job_id"], e["parent"], e["parent_state"]) for e in events] == [
        ("B", "A", "dead"), ("C", "B", "canceled")]
    assert "B" in events[0]["message"] and "never ran" in events[0]["message"]
    assert q.status()["blocked"] == 0
    waited = q.run("wait", "C", check=False)  # as for any canceled job
    assert waited.returncode == 1 and json.loads(waited.stdout)["state"] == "canceled"


def test_a_completed_and_purged_parent_still_lets_its_dependent_run(any_queue: Queue) -> None:
    q = any_queue
    q.run("enqueue", "--id", "A", "--cmd", "true")
    q.run("enqueue", "--id", "gate", "--queue", "gates", "--cmd", "true")
    q.run("enqueue", "--id", "B", "--after", "A,gate", "--cmd", "true")
    q.worker("--name", "main", "--queue", "default")
    q.wait_state("A", "completed")
    assert q.run("purge", "--state", "completed").stdout == "Deleted 1 completed job.\n"
    assert q.run("show", "A", check=False).returncode == 1
    assert q.job("B")["after"][0] == {"id": "A", "state": "deleted", "satisfied": True}
    assert (q.job("B")["state"], q.job("B")["waiting_on"]) == ("pending", 1)
    q.worker("--name", "gatekeeper", "--queue", "gates")
    q.wait_state("B", "completed")


def test_cancel_names_the_dependents_it_canceled(any_queue: Queue) -> None:
    q = any_queue
    q.run("enqueue", "--id", "A", "--cmd", "true", "--delay", "3600")
    q.run("enqueue", "--id", "B", "--after", "A", "--cmd", "true")
    result = q.run("cancel", "A")
    assert result.stdout.splitlines() == ["A: canceled", "B: canceled (parent A ended canceled)"]


@pytest.mark.parametrize("args, says", [
    (["--after", "nope", "--cmd", "true"], "parent job 'nope' not found"),
    (["--id", "me", "--after", "me", "--cmd", "true"], "lists itself"),
    (["--after", ",".join(f"p{i}" for i in range(101)), "--cmd", "true"], "at most 100"),
    (['{"command": "true", "after": ["real", "gone"]}'], "'gone' not found"),
])
def test_bad_parents_are_one_line_exit_1_and_store_nothing(any_queue: Queue, args: list[str],
                                                           says: str) -> None:
    q = any_queue
    q.run("enqueue", "--id", "real", "--cmd", "true")
    result = q.run("enqueue", *args, check=False)
    assert result.returncode == 1, result
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert [j["id"] for j in q.json("list")] == ["real"]


def test_a_file_is_all_or_none_and_may_chain_its_own_lines(any_queue: Queue,
                                                           tmp_path: Path) -> None:
    q = any_queue
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "s1", "command": "true"}\n'
                   '{"id": "s2", "command": "true", "after": ["s1", "missing"]}\n')
    assert q.run("enqueue", "--file", str(bad), check=False).returncode == 1
    assert q.json("list") == []
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "s1", "command": "true"}\n'
                    '{"id": "s2", "command": "true", "after": ["s1"]}\n')
    q.run("enqueue", "--id", "setup", "--cmd", "true")
    q.run("enqueue", "--file", str(good), "--after", "setup")
    assert [p["id"] for p in q.job("s2")["after"]] == ["setup", "s1"]
    assert [p["id"] for p in q.job("s1")["after"]] == ["setup"]


def test_retry_runs_a_finished_job_again_numbering_its_attempts_on(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    runs = tmp_path / "runs.txt"
    q.run("enqueue", "--id", "J", "--max-retries", "0", "--cmd", f"echo run >> {runs}")
    q.run("worker", "run", "--drain", "--poll-interval", "0.05", timeout=60)
    assert q.job("J")["state"] == "completed"
    result = q.run("retry", "J")
    assert (result.stdout, result.stderr) == ("J\n", "")
    assert q.job("J")["state"] == "pending" and q.job("J")["attempts"] == 0
    q.run("worker", "run", "--drain", "--poll-interval", "0.05", timeout=60)
    shown = q.job("J")
    assert shown["state"] == "completed" and shown["attempts"] == 1
    assert [h["attempt"] for h in shown["history"]] == [1, 2]
    assert _lines(runs) == ["run", "run"]


def test_retry_refuses_what_is_not_finished_and_says_what_stays_canceled(
        any_queue: Queue) -> None:
    q = any_queue
    q.run("enqueue", "--id", "A", "--max-retries", "0", "--cmd", "exit 1")
    q.run("enqueue", "--id", "B", "--after", "A", "--cmd", "true")
    q.run("enqueue", "--id", "W", "--queue", "later", "--cmd", "true", "--delay", "3600")
    q.run("worker", "run", "--drain", "--queue", "default", "--poll-interval", "0.05",
          timeout=60)
    assert q.job("B")["state"] == "canceled"
    result = q.run("retry", "W", "A", "nope", check=False)
    assert result.returncode == 1
    assert result.stdout == "A\n"
    errors = result.stderr.splitlines()
    assert "'W' is pending" in errors[0]
    assert "stay canceled: B" in errors[1] and "queuectl retry B" in errors[1]
    assert "nope" in errors[2]
    assert q.job("B")["state"] == "canceled"
    assert q.run("retry", "B").stdout == "B\n"
    assert q.job("B")["waiting_on"] == 1


def test_retry_delay_and_bad_input(any_queue: Queue) -> None:
    q = any_queue
    q.run("enqueue", "--id", "J", "--cmd", "true")
    q.run("cancel", "J")
    bad = q.run("retry", "J", "--delay", "soon", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert q.job("J")["state"] == "canceled"
    q.run("retry", "J", "--delay", "1h")
    assert q.json("queue", "list")[0]["oldest_waiting_seconds"] is None
    assert q.run("retry", check=False).returncode == 2
