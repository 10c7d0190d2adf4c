"""Job slots (`worker run --slots K`): K jobs at once in one worker process, on each backend,
with every guarantee of K workers: stops, crashes, restarts and names."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import QUEUECTL, Queue, pickup_delay, process_alive
from waiting import wait_for


@pytest.fixture
def queue(any_queue: Queue) -> Queue:
    """Every test here runs once per backend: SQLite, then PostgreSQL."""
    return any_queue


def _held(tmp_path: Path, name: str) -> str:
    """A job that records its worker's pid, then waits for `go` (so jobs overlap)."""
    return (f"echo $PPID > {tmp_path / name}; "
            f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done")


@pytest.mark.slow
def test_one_process_runs_k_jobs_at_once_each_slot_a_worker(queue: Queue, tmp_path: Path,
                                                           ) -> None:
    for i in range(4):
        queue.enqueue({"id": f"j{i}", "command": _held(tmp_path, f"pid{i}")})
    queue.enqueue({"id": "later", "command": "true"})
    w = queue.worker("--name", "w", "--slots", "4", "--drain")
    queue.wait_counts(processing=4, active_workers=4, timeout=20)  # all four at once
    assert queue.status()["pending"] == 1  # no fifth job: four slots
    assert queue.registered_workers() == {f"w.{i}": w.pid for i in range(1, 5)}
    wait_for(lambda: all((tmp_path / f"pid{i}").exists() for i in range(4)), 10, "pids")
    assert {int((tmp_path / f"pid{i}").read_text()) for i in range(4)} == {w.pid}
    (tmp_path / "go").touch()
    assert w.wait(timeout=30) == 0  # --drain: every slot ends once nothing is left
    assert queue.status()["completed"] == 5
    assert queue.registered_workers() == {}  # each slot unregistered


@pytest.mark.slow
def test_sigterm_past_grace_releases_every_slot_job_without_spending_a_retry(
        queue: Queue, tmp_path: Path) -> None:
    for i in range(3):
        queue.enqueue({"id": f"l{i}", "max_retries": 0,
                       "command": f"echo $$ > {tmp_path / f'pid{i}'}; exec sleep 300"})
    w = queue.worker("--slots", "3", "--grace", "0.5")
    queue.wait_counts(processing=3, timeout=20)
    wait_for(lambda: all((tmp_path / f"pid{i}").exists() and (tmp_path / f"pid{i}").read_text()
                         for i in range(3)), 10, "job pids")
    pids = [int((tmp_path / f"pid{i}").read_text()) for i in range(3)]
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    for i in range(3):
        job = queue.job(f"l{i}")
        assert job["state"] == "pending" and job["attempts"] == 0, job
        assert job["history"][-1]["outcome"] == "interrupted"
    assert not any(process_alive(p) for p in pids)
    assert queue.registered_workers() == {}


@pytest.mark.slow
def test_graceful_stop_lets_every_slot_finish_and_claims_nothing_new(
        queue: Queue, tmp_path: Path) -> None:
    """`worker stop` signals the process once, not once per slot (a second signal would
    stop the jobs at once)."""
    for i in range(2):
        queue.enqueue({"id": f"g{i}", "command": _held(tmp_path, f"pid{i}")})
    queue.enqueue({"id": "next", "command": "true"})
    log = tmp_path / "worker.log"
    w = queue.worker("--slots", "2", "--grace", "20", log=log)
    queue.wait_counts(processing=2, timeout=20)
    stopper = queue.start("worker", "stop", "--timeout", "30")
    wait_for(lambda: log.read_text().count('"worker_stopping"') == 2, 10, "both slots stopping")
    (tmp_path / "go").touch()
    assert stopper.wait(timeout=40) == 0
    assert w.wait(timeout=5) == 0
    assert [queue.job(f"g{i}")["state"] for i in range(2)] == ["completed"] * 2
    assert queue.job("next")["state"] == "pending"


@pytest.mark.slow
def test_a_restart_under_the_same_name_takes_back_every_slots_orphan_at_once(
        queue: Queue, tmp_path: Path) -> None:
    queue.run("config", "set", "backoff-base", "1")
    for i in range(3):  # with the 30 s lease, recovery within seconds is the name's doing
        queue.enqueue({"id": f"o{i}", "command": f"echo run >> {tmp_path / f'runs{i}'}; "
                       "sleep 0.5", "max_retries": 2})
    w = queue.worker("--name", "w", "--slots", "3")
    queue.wait_counts(processing=3, timeout=20)
    w.send_signal(signal.SIGKILL)
    w.wait()
    assert queue.status()["processing"] == 3
    queue.worker("--name", "w", "--slots", "3")
    for i in range(3):
        job = queue.wait_state(f"o{i}", "completed", timeout=10)
        assert [h["outcome"] for h in job["history"]] == ["lost", "completed"]
        assert (tmp_path / f"runs{i}").read_text() == "run\nrun\n"


def test_a_slot_name_in_use_is_refused_and_the_other_slots_leave_no_trace(
        queue: Queue) -> None:
    first = queue.worker("--name", "w.2")
    wait_for(lambda: "w.2" in queue.registered_workers(), 10, "the first worker")
    second = subprocess.run([QUEUECTL, "worker", "run", "--name", "w", "--slots", "3"],
                            env=queue.env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "'w.2' is already running" in second.stderr and second.stderr.count("\n") == 1
    assert queue.registered_workers() == {"w.2": first.pid}


@pytest.mark.parametrize("args, env", [
    (["--slots", "0"], {}),
    (["--slots", "65"], {}),
    (["--slots", "two"], {}),
    ([], {"QUEUECTL_SLOTS": "0"}),
    ([], {"QUEUECTL_SLOTS": "eight"}),
])
def test_bad_slots_get_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                          env: dict[str, str]) -> None:
    db = tmp_path / "queue.db"
    result = subprocess.run([QUEUECTL, "--db", str(db), "worker", "run", *args],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "slots" in result.stderr.lower(), result.stderr
    assert not db.exists()  # nothing was opened, let alone written


@pytest.mark.slow
def test_worker_start_runs_count_processes_of_slots_each(queue: Queue, tmp_path: Path) -> None:
    for i in range(4):
        queue.enqueue({"id": f"j{i}", "command": _held(tmp_path, f"pid{i}")})
    sup = queue.start("worker", "start", "--foreground", "--count", "2", "--slots", "2")
    queue.wait_counts(processing=4, active_workers=4, timeout=20)
    wait_for(lambda: all((tmp_path / f"pid{i}").exists() for i in range(4)), 10, "pids")
    pids = [int((tmp_path / f"pid{i}").read_text()) for i in range(4)]
    assert len(set(pids)) == 2 and sorted(pids.count(p) for p in set(pids)) == [2, 2]
    assert sorted(queue.registered_workers().values()) == sorted(pids)
    (tmp_path / "go").touch()
    queue.wait_counts(completed=4, timeout=20)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(timeout=20) == 0
    assert queue.registered_workers() == {}


@pytest.mark.slow
def test_slots_keep_a_relative_database_path_while_jobs_run_elsewhere(tmp_path: Path) -> None:
    """A slot starting a job in its own directory moves the whole process there for that
    moment: the other slots must still find the database (`--db q.db`, relative)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    q = Queue("q.db")  # relative, from tmp_path
    lines = "\n".join(f'{{"id": "c{i}", "command": "pwd > {tmp_path}/pwd{i}", '
                      f'"cwd": "{elsewhere}"}}' for i in range(200))
    q.run("enqueue", "--file", "-", input=lines, cwd=tmp_path)
    worker = q.run("--log-format", "json", "worker", "run", "--slots", "4", "--drain",
                   "--poll-interval", "0.05", timeout=120, cwd=tmp_path)
    started = [line for line in worker.stderr.splitlines() if '"worker_started"' in line]
    assert len(started) == 4 and all(f'"db": "{tmp_path / "q.db"}"' in s for s in started)
    assert not any('"database_replaced"' in line for line in worker.stderr.splitlines())
    assert all((tmp_path / f"pwd{i}").read_text() == f"{elsewhere}\n" for i in range(200))
    assert json.loads(q.run("status", cwd=tmp_path).stdout)["completed"] == 200


@pytest.mark.slow
def test_a_slot_waits_out_a_held_write_gate_and_a_wait_it_gave_up_keeps_no_lock(
        tmp_path: Path) -> None:
    """SQLite's write gate from a slot's thread: it waits in the kernel's line through a
    helper; a wait given up (no progress for QUEUECTL_BUSY_TIMEOUT) must not leave the
    helper holding the gate once it gets it."""
    import fcntl

    queue = Queue(tmp_path / "queue.db")
    for i in range(2):
        queue.enqueue({"id": f"g{i}", "command": "true"})
    log = tmp_path / "worker.log"
    with open(f"{queue.db}-lock", "a+") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)  # another writer holds the gate
        w = queue.worker("--slots", "2", log=log, env={"QUEUECTL_BUSY_TIMEOUT": "1"})
        wait_for(lambda: '"database_error"' in log.read_text(), 20, "a slot to give up")
        tasks = Path(f"/proc/{w.pid}/task")
        given_up = time.monotonic()
        while time.monotonic() - given_up < 3:  # each slot gives up and tries again meanwhile
            # a retry takes over the helper its given-up wait left in line: the main thread,
            # 2 slots and at most one helper each, however many tries
            assert len(list(tasks.iterdir())) <= 5
            time.sleep(0.1)
        fcntl.flock(gate, fcntl.LOCK_UN)
    try:
        queue.wait_counts(completed=2, active_workers=2, timeout=30)

        def gate_free() -> bool:
            with open(f"{queue.db}-lock", "a+") as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

        wait_for(gate_free, 10, "the gate to be free between the worker's writes")
    finally:
        w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    assert '"database_recovered"' in log.read_text()


def _connections(server: Any, app: str, listening: bool = False) -> int:
    """The server's connections of one application_name (listening: whose last statement
    was LISTEN)."""
    return int(server.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                           f" '{app}'" + (" AND query LIKE 'LISTEN%'" if listening else "")))


def _readable(fd: int | None, wait: float = 0.0) -> bool:
    import select

    return fd is not None and bool(select.select([fd], [], [], wait)[0])


def test_the_shared_wakeup_watches_while_a_slot_does_and_wakes_one_idle_slot_at_a_time(
        open_another: Any) -> None:
    """A process's slots share one store wakeup (`slotwakeup`): it watches only while some
    slot's wakeup is armed; news wakes one idle slot, and the next when that one takes a
    job; a slot watching a long job hears every change."""
    from queuectl.slotwakeup import SharedWakeup
    from queuectl.store import JobSpec

    store = open_another(for_worker=True)
    shared = SharedWakeup(store.wakeup())
    a, b = shared.tap(), shared.tap()

    def news(job_id: str) -> None:
        store.enqueue([JobSpec("true", id=job_id)])
        wait_for(lambda: _readable(shared.fd, 0.1), 10, "news on the shared wakeup")
        shared.tend()

    try:
        a.disarm()
        b.disarm()  # every slot busy: the shared wakeup stops watching
        store.enqueue([JobSpec("true", id="unheard")])
        assert not _readable(shared.fd, 0.3)
        a.arm()  # the source watches again: a slot may have looked before it did, so
        assert a.drain()  # that is news, for one idle slot
        b.arm()
        assert not b.drain()
        news("n1")
        woken, other = (a, b) if _readable(a.fileno()) else (b, a)
        assert _readable(woken.fileno()) and not _readable(other.fileno())  # one, not both
        news("n2")  # the woken slot has not read its poke: it will see n2 when it claims
        assert not _readable(other.fileno())
        assert woken.drain() and not woken.drain()
        woken.disarm()  # it took a job: the next idle slot's turn
        assert _readable(other.fileno()) and other.drain()
        woken.arm_busy()  # a long job's cancel checks: every change, never the turn
        news("n3")
        assert woken.drain()
        assert other.drain()  # still the one idle slot
        news("n4")
        assert woken.drain()
        other.close()  # it had the turn and stops: nobody idle is left to pass it to
        woken.disarm()  # the last armed slot: nobody watches
        store.enqueue([JobSpec("true", id="unheard-too")])
        assert not _readable(shared.fd, 0.3)
    finally:
        a.close()
        b.close()
        shared.close()


def test_news_the_last_idle_slot_cannot_take_is_passed_on(open_another: Any) -> None:
    """The last idle slot takes a job with a poke it has not read (news that came after
    its claim looked) and no idle slot is left to hand it to: the news is passed on, and
    another idle worker hears it. On PostgreSQL an enqueue wakes one idle process (the
    latest registered: here the slots'), so without that the other worker would not hear
    of the job until its next look."""
    from queuectl.slotwakeup import SharedWakeup
    from queuectl.store import JobSpec

    worker = open_another(for_worker=True).wakeup()  # registered first
    store = open_another(for_worker=True)
    shared = SharedWakeup(store.wakeup())
    slot = shared.tap()
    try:
        wait_for(lambda: not worker.drain() and not _readable(worker.fileno()), 10,
                 "the other worker's wakeup to go quiet")
        store.enqueue([JobSpec("true", id="j")])
        wait_for(lambda: _readable(shared.fd, 0.1), 10, "news on the shared wakeup")
        shared.tend()
        assert _readable(slot.fileno())  # poked, and not read:
        slot.disarm()  # it took another job
        wait_for(lambda: _readable(worker.fileno(), 0.1), 10, "the other worker to hear it")
        assert worker.drain()
    finally:
        slot.close()
        shared.close()
        worker.close()


@pytest.mark.slow
def test_a_process_of_slots_listens_once_and_its_idle_slots_hear_new_work_at_once(
        queue: Queue, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One inotify instance (SQLite) or one LISTEN connection (PostgreSQL) a process, not
    one a slot; an enqueue still starts on an idle slot at once, not at its next look
    (every heartbeat, 2 s, and the poll set to 60 s)."""
    app = "slot-wakeup-test"
    w = queue.start("worker", "run", "--slots", "3", "--poll-interval", "60",
                    env={"PGAPPNAME": app})
    queue.wait_counts(active_workers=3, timeout=20)
    if str(queue.db).startswith("postgresql:"):
        server = request.getfixturevalue("pg_server")
        wait_for(lambda: _connections(server, app) == 2, 10,
                 "the store's connection and one LISTEN")
    else:
        fds = Path(f"/proc/{w.pid}/fd")

        def inotify_instances() -> int:
            count = 0
            for fd in fds.iterdir():
                try:
                    count += os.readlink(fd) == "anon_inode:inotify"
                except FileNotFoundError:
                    pass  # closed meanwhile
            return count

        assert inotify_instances() == 1
    delays = queue.pickup_delays("w", 7, active_workers=3)
    # Heard: milliseconds. Found by a slot's next look instead: uniform over 2 s, the
    # nearest of 3 slots' looks under 0.2 s about one time in four.
    assert sorted(delays)[3] < 0.2, delays
    # A burst in one transaction (one notification on PostgreSQL) wakes one slot; each
    # slot that takes a job wakes the next, so all three start at once.
    lines = "".join(json.dumps({"id": f"b{i}", "command": _held(tmp_path, f"b{i}")}) + "\n"
                    for i in range(3))
    queue.wait_counts(active_workers=3, processing=0, timeout=20)
    queue.run("enqueue", "--file", "-", input=lines)
    queue.wait_counts(processing=3, timeout=20)
    burst = [queue.job(f"b{i}") for i in range(3)]
    delays = [pickup_delay(job) for job in burst]
    (tmp_path / "go").touch()
    assert max(delays) < 0.5, delays  # at their next looks: up to 2 s
    queue.wait_counts(completed=10, timeout=20)


@pytest.mark.slow
def test_slots_hear_new_work_again_after_the_server_restarts(pg_server: Any) -> None:
    """The process's one LISTEN connection is lost with the server; the main thread opens
    it again, and its idle slots start new jobs at once, not at their next looks."""
    queue = Queue(pg_server.fresh_locator())
    app = "slot-relisten-test"

    def listening() -> int:
        return _connections(pg_server, app, listening=True)

    try:
        queue.start("worker", "run", "--slots", "2", "--poll-interval", "60",
                    env={"PGAPPNAME": app})
        queue.wait_counts(active_workers=2, timeout=20)
        wait_for(lambda: listening() == 1, 10, "the process's LISTEN")
        pg_server.restart()
        wait_for(lambda: listening() == 1, 30, "the LISTEN again after the restart")
        delays = queue.pickup_delays("r", 5, active_workers=2)
        assert sorted(delays)[2] < 0.2, delays
    finally:
        queue.stop_all()
