"""`queuectl check` as Nagios, Icinga or a systemd timer runs it: one line on stdout, exit
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, perfdata in the monitoring-plugins format."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Queue
from pgserver import free_port
from waiting import wait_for

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
# 'label'=value[UOM];[warn];[crit];[min];[max], a range being [@][start:][end]
RANGE = r"(?:@?(?:-?[\d.]+|~)?:?(?:-?[\d.]+)?)"
PERFDATA = re.compile(rf"^'?[^=' ]+'?=-?[\d.]+(?:s|%|B|KB|MB|TB|c)?"
                      rf"(?:;{RANGE}(?:;{RANGE}(?:;(?:-?[\d.]+)?(?:;(?:-?[\d.]+)?)?)?)?)?$")


def check(q: Queue, *args: str) -> tuple[int, str, dict[str, str]]:
    """(exit code, the status text, perfdata by label), after checking there is exactly one
    line on stdout and nothing on stderr."""
    result = q.run("check", *args, check=False)
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n"), result.stdout
    assert result.stderr == "", result.stderr
    text, _, perf = result.stdout.strip().partition(" | ")
    items = perf.split()
    for item in items:
        assert PERFDATA.match(item), f"not monitoring-plugins perfdata: {item!r}"
    return result.returncode, text, dict(item.split("=", 1) for item in items)


def hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_dead(q: Queue, n: int = 1, queue: str = "default") -> None:
    """n dead jobs, at once: no retries, drained by one worker."""
    for _ in range(n):
        q.run("enqueue", "--cmd", "false", "--max-retries", "0", "--queue", queue)
    q.worker("--drain").wait(timeout=60)
    assert q.json("status", "--queue", queue)["dead"] >= n


def test_ok_with_the_counts_and_perfdata(queue: Queue) -> None:
    q = queue
    q.run("pause")  # nothing runs: the three stay pending
    for _ in range(3):
        q.run("enqueue", "--cmd", "true")
    code, text, perf = check(q)
    assert code == OK
    assert text.startswith("QUEUECTL OK - 3 pending, 0 dead, 0 workers, oldest waiting ")
    assert perf["pending"] == "3;;;0" and perf["dead"] == "0;;;0" and perf["workers"] == "0;;;0"
    assert re.fullmatch(r"[\d.]+s;;;0", perf["oldest_waiting"])
    # thresholds not reached: still OK, and perfdata carries them as plugin ranges
    code, text, perf = check(q, "--dead-warn", "1", "--dead-crit", "5", "--waiting-warn", "1h",
                             "--waiting-crit", "2h")
    assert code == OK, text
    assert perf["dead"] == "0;0;4;0"  # at least 1 is "above 0", at least 5 "above 4"
    assert perf["oldest_waiting"].endswith("s;3600;7200;0")


def test_dead_jobs_at_the_warning_and_the_critical_threshold(queue: Queue) -> None:
    q = queue
    make_dead(q, 2)
    code, text, perf = check(q, "--dead-warn", "1", "--dead-crit", "5")
    assert code == WARNING
    assert text.startswith("QUEUECTL WARNING - 2 dead (>= 1), ")
    assert perf["dead"] == "2;0;4;0"
    code, text, _ = check(q, "--dead-warn", "1", "--dead-crit", "2")
    assert code == CRITICAL
    assert text.startswith("QUEUECTL CRITICAL - 2 dead (>= 2), ")
    code, text, _ = check(q, "--dead-crit", "3")
    assert code == OK, text


@pytest.mark.slow  # a worker's start
def test_fewer_active_workers_than_the_minimum_is_critical(queue: Queue) -> None:
    q = queue
    q.run("enqueue", "--cmd", "true", "--id", "j")
    code, text, perf = check(q, "--workers-min", "1")
    assert code == CRITICAL
    assert text.startswith("QUEUECTL CRITICAL - 0 workers (< 1), ")
    assert perf["workers"] == "0;;1:;0"  # the plugin range for "at least 1"
    worker = q.worker()
    code, text, _ = wait_for(lambda: (r := check(q, "--workers-min", "1"))[0] == OK and r, 30,
                             "check to count the worker")
    assert ", 1 worker, " in text
    assert check(q, "--workers-min", "2")[0] == CRITICAL
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)


@pytest.mark.slow  # a wait crossing a threshold, and many checks
def test_oldest_waiting_job_against_the_waiting_thresholds(queue: Queue) -> None:
    q = queue
    q.run("enqueue", "--cmd", "true", "--delay", "3600")  # not due: it is not waiting
    code, text, perf = check(q, "--waiting-warn", "1m", "--waiting-crit", "1h")
    assert code == OK and text.endswith("none waiting"), text
    assert perf["oldest_waiting"] == "0.0s;60;3600;0"
    q.run("enqueue", "--cmd", "true", "--run-at", hours_ago(2))  # due two hours ago
    code, text, _ = check(q, "--waiting-warn", "1m", "--waiting-crit", "1d")
    assert code == WARNING
    assert re.match(r"QUEUECTL WARNING - oldest waiting \d+\.\ds \(> 60\.0s\), ", text), text
    code, text, _ = check(q, "--waiting-warn", "1m", "--waiting-crit", "1h")
    assert code == CRITICAL and "(> 3600.0s)" in text, text
    # a job due now: waiting crosses a small threshold within a deadline
    fresh = Queue(Path(str(q.db) + "-fresh.db"))
    fresh.run("enqueue", "--cmd", "true", "--delay", "0")
    wait_for(lambda: check(fresh, "--waiting-warn", "0.2s")[0] == WARNING, 30,
             "the new job's wait to pass 0.2 s")


@pytest.mark.slow  # two workers' lifetimes
def test_queue_restricts_jobs_waiting_and_workers_to_that_queue(queue: Queue) -> None:
    q = queue
    make_dead(q, 1, queue="mail")
    q.run("pause")
    q.run("enqueue", "--cmd", "true", "--queue", "backups", "--run-at", hours_ago(2))
    assert check(q, "--dead-warn", "1")[0] == WARNING
    code, text, perf = check(q, "--queue", "backups", "--dead-warn", "1")
    assert code == OK and text.startswith("QUEUECTL OK - queue backups: 1 pending, 0 dead, ")
    code, text, perf = check(q, "--queue", "mail", "--dead-warn", "1", "--waiting-warn", "1h")
    assert code == WARNING and text.startswith("QUEUECTL WARNING - queue mail: 1 dead (>= 1), ")
    assert perf["oldest_waiting"].startswith("0.0s;")  # the backups job waits, not mail's
    assert check(q, "--queue", "backups", "--waiting-warn", "1h")[0] == WARNING
    worker = q.worker("--queue", "mail")
    wait_for(lambda: check(q, "--queue", "mail", "--workers-min", "1")[0] == OK, 30,
             "the mail worker to count for mail")
    code, text, _ = check(q, "--queue", "backups", "--workers-min", "1")
    assert code == CRITICAL and "0 workers (< 1)" in text
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)


def _unreadable(kind: str, tmp_path: Path) -> str:
    if kind == "not a database":
        path = tmp_path / "notes.txt"
        path.write_text("these are not the tables you are looking for\n" * 100)
        return str(path)
    if kind == "a directory":
        return str(tmp_path)
    if kind == "missing":
        return str(tmp_path / "typo.db")
    return f"postgresql://queuectl@127.0.0.1:{free_port()}/queuectl?connect_timeout=5"


@pytest.mark.parametrize("kind", ["not a database", "a directory", "missing",
                                  "unreachable postgres"])
def test_a_database_that_cannot_be_read_is_unknown(kind: str, tmp_path: Path) -> None:
    locator = _unreadable(kind, tmp_path)
    code, text, perf = check(Queue(locator), "--dead-crit", "1")
    assert code == UNKNOWN
    assert text.startswith("QUEUECTL UNKNOWN - ") and perf == {}, text
    if kind == "missing":
        assert text == f"QUEUECTL UNKNOWN - no database at {locator}"
        assert not Path(locator).exists()  # not created empty and called healthy


@pytest.mark.parametrize("args", [
    ["--dead-warn", "many"], ["--dead-crit", "0"], ["--waiting-warn", "soon"],
    ["--dead-warn", "5", "--dead-crit", "2"], ["--waiting-warn", "1h", "--waiting-crit", "1m"],
    ["--queue", "no spaces"], ["--no-such-option"], ["stray-argument"],
], ids=" ".join)
def test_bad_arguments_are_unknown_in_one_line(queue: Queue, args: list[str]) -> None:
    """Exit 3, not the CLI's usual 2 (which Nagios would show as CRITICAL): the status line
    on stdout for the monitoring system, the usual error line on stderr for a person."""
    result = queue.run("check", *args, check=False)
    assert result.returncode == UNKNOWN
    assert result.stdout.startswith("QUEUECTL UNKNOWN - bad arguments: ")
    assert result.stdout.count("\n") == 1, result.stdout
    assert result.stderr.startswith("queuectl: error: ") and result.stderr.count("\n") == 1


def test_check_on_postgresql(pg_locator: str) -> None:
    q = Queue(pg_locator)
    code, text, _ = check(q)
    assert code == OK and text.startswith("QUEUECTL OK - 0 pending, 0 dead, 0 workers"), text
    make_dead(q, 1, queue="mail")
    q.run("pause")
    q.run("enqueue", "--cmd", "true", "--run-at", hours_ago(2))
    assert check(q, "--dead-warn", "1", "--dead-crit", "5")[0] == WARNING
    assert check(q, "--dead-crit", "1")[0] == CRITICAL
    assert check(q, "--workers-min", "1")[0] == CRITICAL
    assert check(q, "--waiting-warn", "1m")[0] == WARNING
    code, text, _ = check(q, "--queue", "default", "--dead-warn", "1")
    assert code == OK and text.startswith("QUEUECTL OK - queue default: 1 pending, 0 dead")
    q.stop_all()
