"""Shutdown, timeouts, leases and supervision: what happens to a job when things stop."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue, process_alive
from waiting import wait_for


@pytest.fixture
def queue(any_queue: Queue) -> Queue:
    """Every test here runs once per backend: SQLite, then PostgreSQL."""
    return any_queue


@pytest.mark.slow
def test_graceful_stop_lets_running_job_finish(queue: Queue, tmp_path: Path) -> None:
    out = tmp_path / "done"
    queue.enqueue({"id": "g1", "command": f"sleep 1; echo finished > {out}"})
    queue.enqueue({"id": "g2", "command": "true"})
    w = queue.worker("--grace", "10")
    queue.wait_state("g1", "processing")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=15) == 0
    assert out.read_text() == "finished\n"
    assert queue.job("g1")["state"] == "completed"
    assert queue.job("g2")["state"] == "pending"  # no new job claimed while stopping


@pytest.mark.slow
def test_stop_past_grace_returns_job_to_pending_without_spending_a_retry(
    queue: Queue, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    queue.enqueue({"id": "long", "command": f"echo $$ > {pidfile}; exec sleep 300",
                   "max_retries": 0})
    w = queue.worker("--grace", "0.5")
    queue.wait_state("long", "processing")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "job pid")
    job_pid = int(pidfile.read_text())
    w.send_signal(signal.SIGINT)
    assert w.wait(timeout=15) == 0
    job = queue.job("long")
    assert job["state"] == "pending" and job["attempts"] == 0  # retry unspent, nothing lost
    assert job["history"][-1]["outcome"] == "interrupted"
    assert not process_alive(job_pid)
    queue.run("config", "set", "backoff-base", "1")
    pidfile.unlink()
    queue.worker("--grace", "0.5")  # picked up again by the next worker
    wait_for(lambda: pidfile.exists(), 10, "job restarted")
    assert queue.job("long")["attempts"] == 1


@pytest.mark.slow
def test_timeout_kills_the_whole_process_group(queue: Queue, tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    queue.enqueue({"id": "t1", "command": f"sleep 300 & echo $! > {pidfile}; wait",
                   "timeout": 1, "max_retries": 0})
    queue.worker()
    job = queue.wait_state("t1", "dead", timeout=20)
    assert "timed out after 1 s" in job["last_error"]
    child = int(pidfile.read_text())
    wait_for(lambda: not process_alive(child), 5, "the background child to be gone")


@pytest.mark.slow
def test_a_job_that_ignores_sigterm_past_its_timeout_costs_the_worker_no_spin(
    queue: Queue
) -> None:
    """SIGTERM at the timeout, SIGKILL 2 s later (process.KILL_GRACE): the worker sleeps
    until then. It used to poll in a loop without sleeping, a whole core for those 2 s."""
    queue.enqueue({"id": "deaf", "command": "trap '' TERM; sleep 60", "timeout": 0.5,
                   "max_retries": 0})
    started = time.monotonic()
    worker = queue.start("worker", "run", "--drain")
    _, status, used = os.wait4(worker.pid, 0)  # this worker's own rusage, and its job's
    worker.returncode = os.waitstatus_to_exitcode(status)
    assert worker.returncode == 0
    assert time.monotonic() - started >= 2.5  # the timeout, then the SIGKILL's grace
    assert "timed out after 0.5 s" in queue.job("deaf")["last_error"]
    # The worker's whole life, start-up included (about 0.2 s), and its job's.
    assert used.ru_utime + used.ru_stime < 1.2


def test_leftover_background_processes_are_killed_when_the_job_exits(
    queue: Queue, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child"
    queue.enqueue({"id": "bg", "command": f"sleep 300 > /dev/null 2>&1 & echo $! > {pidfile}"})
    queue.worker()
    queue.wait_state("bg", "completed")
    wait_for(lambda: not process_alive(int(pidfile.read_text())), 5, "the background child to be gone")


@pytest.mark.slow
def test_long_job_keeps_its_lease(queue: Queue) -> None:
    queue.run("config", "set", "lease-seconds", "2")
    queue.enqueue({"id": "slow", "command": "sleep 5"})
    queue.worker()
    queue.worker()
    job = queue.wait_state("slow", "completed", timeout=20)
    assert job["attempts"] == 1 and [h["outcome"] for h in job["history"]] == ["completed"]


@pytest.mark.slow
def test_hung_worker_loses_its_lease_and_the_job_runs_elsewhere(
    queue: Queue, tmp_path: Path
) -> None:
    queue.run("config", "set", "lease-seconds", "2")
    queue.run("config", "set", "backoff-base", "1")
    out = tmp_path / "runs"
    queue.enqueue({"id": "h1", "command": f"echo run >> {out}; sleep 1.5"})
    hung_log = tmp_path / "hung.log"
    hung = queue.worker(log=hung_log)
    queue.wait_state("h1", "processing")
    hung.send_signal(signal.SIGSTOP)
    try:
        queue.worker()
        job = queue.wait_state("h1", "completed", timeout=30)
    finally:
        hung.send_signal(signal.SIGCONT)
    outcomes = [h["outcome"] for h in job["history"]]
    assert outcomes == ["lost", "completed"]
    assert "stopped renewing its lease" in job["history"][0]["error"]
    # the hung worker wakes up and finds its attempt gone: its late result changes nothing
    wait_for(lambda: '"job_lost"' in hung_log.read_text(), 15, "the old worker to give up")
    after = queue.job("h1")
    assert after["state"] == "completed" and after["history"] == job["history"]
    assert hung.poll() is None  # and it carries on working


@pytest.mark.slow
def test_restarted_worker_takes_back_its_own_orphan_at_once(queue: Queue, tmp_path: Path) -> None:
    # a 30 s lease: recovery within seconds proves the name-based reclaim, not expiry
    queue.enqueue({"id": "o1", "command": "sleep 0.5", "max_retries": 2})
    queue.run("config", "set", "backoff-base", "1")
    w = queue.worker("--name", "w1")
    queue.wait_state("o1", "processing")
    w.send_signal(signal.SIGKILL)
    w.wait()
    started = time.monotonic()
    queue.worker("--name", "w1")
    job = queue.wait_state("o1", "completed", timeout=15)
    assert time.monotonic() - started < 10
    assert [h["outcome"] for h in job["history"]] == ["lost", "completed"]


def test_worker_name_in_use_is_refused(queue: Queue) -> None:
    queue.worker("--name", "dup")
    wait_for(lambda: queue.status()["active_workers"] == 1, 10, "first worker")
    second = subprocess.run([QUEUECTL, "worker", "run", "--name", "dup"], env=queue.env,
                            capture_output=True, text=True, timeout=20)
    assert second.returncode == 1
    assert "already running" in second.stderr and second.stderr.count("\n") == 1


@pytest.mark.slow
def test_worker_stop_from_another_terminal(queue: Queue) -> None:
    queue.enqueue({"id": "s1", "command": "sleep 1"})
    workers = [queue.worker() for _ in range(2)]
    queue.wait_counts(active_workers=2, processing=1, timeout=15)
    result = queue.run("worker", "stop")
    assert result.stdout.strip() == "Stopped 2 workers."
    assert all(w.poll() == 0 for w in workers)
    assert queue.job("s1")["state"] == "completed"  # the running job finished first
    assert queue.status()["active_workers"] == 0
    assert queue.run("worker", "stop").stdout.strip() == "No running workers."


@pytest.mark.slow
def test_killed_worker_stops_counting_as_active(queue: Queue) -> None:
    w = queue.worker()
    queue.wait_counts(active_workers=1, timeout=10)
    w.send_signal(signal.SIGKILL)
    queue.wait_counts(active_workers=0, timeout=15)


@pytest.mark.slow
def test_supervisor_restarts_crashed_worker_and_stops_all_on_sigterm(
    queue: Queue, tmp_path: Path
) -> None:
    log = tmp_path / "supervisor.log"
    sup = queue.start("worker", "start", "--count", "2", log=log)
    queue.wait_counts(active_workers=2, timeout=15)
    victim = _worker_pids(queue)[0]
    os.kill(victim, signal.SIGKILL)
    def restarted() -> bool:
        pids = _worker_pids(queue)  # one snapshot: two could straddle the victim's death
        return len(pids) == 2 and victim not in pids

    wait_for(restarted, 15, "the crashed worker to be restarted")
    wait_for(lambda: "restarting it" in log.read_text(), 15, "the supervisor to report the restart")
    queue.enqueue({"id": "after", "command": "true"})
    queue.wait_state("after", "completed")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=20) == 0
    assert _worker_pids(queue) == []


def _worker_pids(queue: Queue) -> list[int]:
    """Live pids in the worker registry."""
    return [p for p in queue.registered_workers().values() if process_alive(p)]


def test_supervisor_drain_exits_when_queue_is_empty(queue: Queue) -> None:
    for i in range(5):
        queue.enqueue({"id": f"dr{i}", "command": "true"})
    result = queue.run("worker", "start", "--count", "2", "--drain", timeout=60)
    assert result.returncode == 0
    assert queue.status()["completed"] == 5


@pytest.mark.slow
def test_idle_worker_wakes_on_enqueue_not_on_its_poll(queue: Queue) -> None:
    """An idle worker also looks at each heartbeat (every 2 s): a job it heard of starts
    within milliseconds, one it found at its next look up to 2 s later."""
    queue.start("worker", "run", "--poll-interval", "120")
    queue.wait_counts(active_workers=1, timeout=10)
    delays = queue.pickup_delays("wake", 5)
    assert sorted(delays)[2] < 0.2, delays  # found at a look instead: under 0.2 s 1 in 10


@pytest.mark.slow
def test_delayed_job_starts_at_its_time_not_before(queue: Queue) -> None:
    from queuectl.clock import parse_iso

    queue.start("worker", "run", "--poll-interval", "120")
    job_id = queue.enqueue({"command": "true", "delay": 1.5})
    job = queue.wait_state(job_id, "completed", timeout=15)
    assert parse_iso(job["started_at"]) >= parse_iso(job["run_at"])


@pytest.mark.slow
def test_status_to_systemd_is_rate_limited_but_ends_on_the_latest_text(
    queue: Queue, tmp_path: Path
) -> None:
    """Under systemd every STATUS= is a datagram PID 1 must parse: a stream of short jobs
    sends a few, not one per job, and what systemd is left with is the current state."""
    import socket

    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    lines = "".join(f'{{"command": "true", "priority": 1, "id": "short-{i}"}}\n'
                    for i in range(300))
    queue.run("enqueue", "--file", "-", input=lines + '{"command": "sleep 1", "id": "slow"}\n')
    started = time.monotonic()
    queue.worker(env={"NOTIFY_SOCKET": sock_path})
    statuses: list[str] = []
    deadline = started + 60
    slow = "running slow (attempt 1/4)"
    while time.monotonic() < deadline and not (slow in statuses and statuses[-1] == "idle"):
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        statuses += [f[7:] for f in message.split("\n") if f.startswith("STATUS=")]
    elapsed = time.monotonic() - started
    sock.close()
    assert statuses[-1:] == ["idle"], statuses[-5:]
    assert slow in statuses  # the one that lasts is shown
    assert queue.status()["completed"] == 301
    # At most one per 0.25 s (READY's own STATUS=idle included); one per job before.
    assert len(statuses) <= elapsed / 0.25 + 2, (len(statuses), elapsed)
