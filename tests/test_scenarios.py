"""The five core scenarios, through the console script with real workers and /bin/sh."""

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import Queue


@pytest.fixture
def queue(any_queue: Queue) -> Queue:
    """Every test here runs once per backend: SQLite, then PostgreSQL."""
    return any_queue


def test_successful_job_ends_completed_with_its_output(queue: Queue) -> None:
    job_id = queue.enqueue({"id": "job1", "command": "echo Hello World"})
    assert job_id == "job1"
    queue.worker()
    job = queue.wait_state("job1", "completed")
    assert job["attempts"] == 1
    assert job["exit_code"] == 0
    assert job["history"][-1]["output"] == "Hello World\n"
    assert queue.status() == {"pending": 0, "processing": 0, "completed": 1, "failed": 0,
                              "dead": 0, "active_workers": 1, "canceled": 0, "blocked": 0,
                              "notices": 0, "paused": False}


@pytest.mark.slow
def test_failing_job_backs_off_exponentially_then_goes_dead(queue: Queue) -> None:
    base = 1.5
    queue.run("config", "set", "backoff-base", str(base))
    queue.enqueue({"id": "bad", "command": "exit 4", "max_retries": 2})
    queue.worker()
    job = queue.wait_state("bad", "dead", timeout=30)
    history = job["history"]
    # max_retries + 1 executions, each recorded with its exit code
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert all(h["exit_code"] == 4 and h["outcome"] == "failed" for h in history)
    assert job["attempts"] == 3
    from queuectl.clock import parse_iso

    for k in (1, 2):
        gap = parse_iso(history[k]["started_at"]) - parse_iso(history[k - 1]["finished_at"])
        expected = base**k
        assert expected - 0.05 <= gap <= expected + 0.75, (k, gap, expected)
    assert json.loads(queue.run("dlq", "list").stdout)[0]["id"] == "bad"


@pytest.mark.slow
def test_four_workers_run_300_jobs_exactly_once(queue: Queue, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    lines = "\n".join(json.dumps({"id": f"j{i}", "command": f"echo j{i} >> {out}"})
                      for i in range(300))
    ids = queue.run("enqueue", "--file", "-", input=lines).stdout.split()
    assert len(ids) == 300
    workers = [queue.worker("--drain") for _ in range(4)]
    for w in workers:
        assert w.wait(timeout=120) == 0
    ran = out.read_text().split()
    assert sorted(ran) == sorted(f"j{i}" for i in range(300))  # every job once, no duplicates
    assert queue.status()["completed"] == 300
    per_worker = {j["worker"] for j in queue.json("list", "--state", "completed")}
    assert len(per_worker) >= 2  # the work was actually shared


@pytest.mark.slow
def test_sigkilled_workers_lose_nothing_after_restart(queue: Queue, tmp_path: Path) -> None:
    queue.run("config", "set", "lease-seconds", "2")
    queue.run("config", "set", "backoff-base", "1")
    out = tmp_path / "ran.txt"
    for i in range(12):
        queue.enqueue({"id": f"p{i}", "command": f"sleep 0.4; echo p{i} >> {out}"})
    first = [queue.worker() for _ in range(2)]
    queue.wait_counts(processing=2, timeout=20)
    for w in first:
        w.send_signal(signal.SIGKILL)
        w.wait()
    killed = [j["id"] for j in queue.json("list", "--state", "processing")]
    assert len(killed) == 2  # both workers died holding a job
    for _ in range(2):
        queue.worker()
    queue.wait_counts(completed=12, timeout=60)
    ran = out.read_text().split()
    assert set(ran) == {f"p{i}" for i in range(12)}
    for job_id in killed:
        history = queue.job(job_id)["history"]
        assert history[0]["outcome"] == "lost" and history[-1]["outcome"] == "completed"


def test_dlq_retry_moves_dead_job_back_and_it_runs_again(queue: Queue, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    queue.enqueue({"id": "d1", "command": f"test -e {marker}", "max_retries": 0})
    queue.worker()
    assert queue.wait_state("d1", "dead")["attempts"] == 1
    marker.touch()
    assert queue.run("dlq", "retry", "d1").stdout.strip() == "d1"
    job = queue.wait_state("d1", "completed")
    assert job["attempts"] == 1
    assert [h["outcome"] for h in job["history"]] == ["failed", "completed"]


def test_enqueue_forms_and_if_absent(queue: Queue) -> None:
    assert queue.run("enqueue", "--cmd", "echo hi", "--id", "c1", "--max-retries", "1",
                     "--timeout", "5").stdout == "c1\n"
    job = queue.job("c1")
    assert (job["command"], job["max_retries"], job["timeout"]) == ("echo hi", 1, 5.0)
    generated = queue.run("enqueue", "--cmd", "true").stdout.strip()
    assert generated and queue.job(generated)["state"] == "pending"
    again = queue.run("enqueue", "--cmd", "echo other", "--id", "c1", "--if-absent")
    assert again.stdout == "c1\n" and queue.job("c1")["command"] == "echo hi"
    queue.run("config", "set", "max_retries", "7")
    assert queue.job(queue.enqueue({"command": "true"}))["max_retries"] == 7
    assert queue.job(queue.enqueue({"command": "true", "max-retries": 0}))["max_retries"] == 0


def test_job_environment_hides_worker_liveness_channel(queue: Queue, tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    queue.enqueue({"id": "e1", "command": f"env > {out}"})
    queue.env["NOTIFY_SOCKET"] = "/run/does-not-matter"
    queue.env["WATCHDOG_USEC"] = "1000000"
    queue.worker()
    queue.wait_state("e1", "completed")
    env = out.read_text()
    assert "QUEUECTL_JOB_ID=e1" in env and "QUEUECTL_ATTEMPT=1" in env
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env


def test_output_tail_is_bounded(queue: Queue) -> None:
    # about 1.2 MB of output; only the last 64 KiB is kept
    queue.enqueue({"id": "big", "command": "seq 1 200000; echo THE-END"})
    queue.worker()
    output = queue.wait_state("big", "completed")["history"][0]["output"]
    assert len(output.encode()) <= 65_536
    assert output.endswith("200000\nTHE-END\n")


def test_info_reports_database_location_rules(tmp_path: Path) -> None:
    q = Queue(tmp_path / "env.db")
    assert q.json("info")["database"] == str(tmp_path / "env.db")
    assert q.json("--db", str(tmp_path / "flag.db"), "info")["database"] == str(tmp_path / "flag.db")
    assert q.json("info", "--db", str(tmp_path / "after.db"))["database"] == str(
        tmp_path / "after.db")


def _info_with_var_lib(tmp_path: Path, system_dir: bool) -> dict:
    """`queuectl info` without --db or QUEUECTL_DB, in a mount namespace where /var/lib is a
    fresh tmpfs: the test decides whether /var/lib/queuectl exists, whatever the host has."""
    import shutil
    import subprocess

    import pytest
    from conftest import QUEUECTL

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("controlling /var/lib/queuectl needs root and unshare(1)")
    make = "mkdir /var/lib/queuectl && " if system_dir else ""
    script = f"mount -n -t tmpfs tmpfs /var/lib && {make}exec {QUEUECTL} info"
    env = {k: v for k, v in os.environ.items() if k != "QUEUECTL_DB"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.root
def test_without_system_dir_the_database_is_in_xdg_data_home(tmp_path: Path) -> None:
    info = _info_with_var_lib(tmp_path, system_dir=False)
    assert info["database"] == str(tmp_path / "xdg" / "queuectl" / "queue.db")
    assert info["schema_version"] >= 1 and info["sqlite"]["journal_mode"] == "wal"
    assert (tmp_path / "xdg" / "queuectl" / "queue.db").exists()


@pytest.mark.root
def test_with_system_dir_the_database_is_in_var_lib_queuectl(tmp_path: Path) -> None:
    info = _info_with_var_lib(tmp_path, system_dir=True)
    assert info["database"] == "/var/lib/queuectl/queue.db"
    assert not (tmp_path / "xdg").exists()
