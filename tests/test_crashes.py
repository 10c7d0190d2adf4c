"""Crash recovery: SIGKILLed workers, kills at every step, and processes left behind."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue, process_alive
from waiting import wait_for

CRASHING_WORKER = Path(__file__).with_name("crashing_worker.py")


@pytest.mark.slow
def test_chaos_random_sigkills_lose_nothing(queue: Queue, tmp_path: Path) -> None:
    """4 workers, 2,000 jobs, a random worker SIGKILLed every ~200 ms and restarted."""
    queue.run("config", "set", "backoff-base", "1")
    queue.run("config", "set", "max-retries", "1000")  # kills must not exhaust retries
    out = tmp_path / "ran.txt"
    total = 2000
    lines = "\n".join(json.dumps({"id": f"c{i}", "command": f"echo c{i} >> {out}; sleep 0.01"})
                      for i in range(total))
    queue.run("enqueue", "--file", "-", input=lines)
    names = [f"chaos{i}" for i in range(4)]
    workers = {n: queue.worker("--name", n) for n in names}
    kills = 0
    rng = random.Random(7)
    deadline = time.monotonic() + 150
    while queue.status()["completed"] < total:
        assert time.monotonic() < deadline, f"not drained: {queue.status()}"
        time.sleep(rng.uniform(0.15, 0.25))
        name = rng.choice(names)
        workers[name].send_signal(signal.SIGKILL)
        workers[name].wait()
        kills += 1
        workers[name] = queue.worker("--name", name)  # restarted under its own name
    ran = out.read_text().split()
    counts: dict[str, int] = {}
    for job_id in ran:
        counts[job_id] = counts.get(job_id, 0) + 1
    assert set(counts) == {f"c{i}" for i in range(total)}  # every job ran
    duplicated = [j for j, n in counts.items() if n > 1]
    jobs = {j["id"]: j for j in queue.json("list")}
    assert all(j["state"] == "completed" for j in jobs.values())
    for job_id in duplicated:  # a second run only after its worker died running it
        history = queue.job(job_id)["history"]
        lost = sum(h["outcome"] == "lost" for h in history)
        assert lost >= counts[job_id] - 1, (job_id, history)
    print(f"\nchaos: jobs={total} kills={kills} duplicates={len(duplicated)}")


@pytest.mark.slow
@pytest.mark.parametrize("step", ["claimed", "spawned", "exited", "recorded"])
def test_kill_at_every_step_recovers(queue: Queue, tmp_path: Path, step: str) -> None:
    """SIGKILL between each pair of steps claim → run → record; the job always ends right."""
    queue.run("config", "set", "backoff-base", "1")
    out = tmp_path / "runs"
    queue.enqueue({"id": "k", "command": f"echo run >> {out}", "max_retries": 3})
    crashing = subprocess.Popen([sys.executable, str(CRASHING_WORKER), step, "kw"],
                                env=queue.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue.procs.append(crashing)
    assert crashing.wait(timeout=20) == -signal.SIGKILL
    state = queue.job("k")["state"]
    expected_state = "completed" if step == "recorded" else "processing"
    assert state == expected_state
    queue.worker("--name", "kw")  # restarted under the same name
    job = queue.wait_state("k", "completed", timeout=20)
    runs = out.read_text().count("run")
    outcomes = [h["outcome"] for h in job["history"]]
    if step == "claimed":  # died before the command started: it runs once, after recovery
        assert runs == 1 and outcomes == ["lost", "completed"]
    elif step in ("spawned", "exited"):  # died while running: at-least-once, a second run
        assert runs == 2 and outcomes == ["lost", "completed"]
    else:  # died after recording: nothing to redo
        assert runs == 1 and outcomes == ["completed"]


def test_worker_crash_leaves_no_process_of_its_job(queue: Queue, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a child in the group, and one that escapes into its own session
    queue.enqueue({"id": "bg", "max_retries": 1,
                   "command": f"sleep 300 & echo $! >> {pids}; setsid sleep 300 & "
                              f"echo $! >> {pids}; sleep 300"})
    w = queue.worker("--name", "cw")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 10, "children")
    children = [int(p) for p in pids.read_text().split()]
    w.send_signal(signal.SIGKILL)
    w.wait()
    assert all(process_alive(p) for p in children)  # a SIGKILLed worker cannot clean up itself
    queue.run("config", "set", "backoff-base", "1")
    queue.worker("--name", "cw")  # its restart takes the orphan back and ends the leftovers
    wait_for(lambda: not any(process_alive(p) for p in children), 10, "leftovers to be killed")


def test_shutdown_past_grace_leaves_no_process_of_its_job(queue: Queue, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    queue.enqueue({"id": "sd", "command": f"sleep 300 & echo $! >> {pids}; sleep 300"})
    w = queue.worker("--grace", "0.2")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 10, "child")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=15) == 0
    child = int(pids.read_text())
    wait_for(lambda: not process_alive(child), 5, "the job's child to be gone")
    assert queue.job("sd")["state"] == "pending"


def test_enqueue_prints_an_id_only_after_its_commit(queue: Queue) -> None:
    """SIGKILL the writer the moment it prints an id, and the job is there: ids are printed
    after the commit, never before. (That the commit is also fsynced, and so survives power
    loss, is test_sqlite_backend.py::test_enqueue_commits_with_synchronous_full.)"""
    printed = []
    for i in range(10):
        writer = subprocess.Popen([QUEUECTL, "enqueue", "--cmd", "true", "--id", f"d{i}"],
                                  env=queue.env, stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        printed.append(writer.stdout.readline().strip())
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert printed == [f"d{i}" for i in range(10)]
    assert {j["id"] for j in queue.json("list")} == set(printed)
