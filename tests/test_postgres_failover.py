"""Failover: a primary with a synchronous streaming standby, both throwaway clusters of this
test, and a locator naming both hosts (`target_session_attrs=read-write`). Mid-drain the
primary's postmaster and all its processes are SIGKILLed and the standby is promoted: the
same worker processes carry on against the new primary within 10 s, no acknowledged job is
lost or run twice, and an `enqueue` during the switch either stored its job once or failed
with exit 1 and stored nothing.

Nothing is mocked: real workers (`queuectl worker run`), real `enqueue` processes, real
servers; the standby is streaming (pg_basebackup -R) and `synchronous_standby_names = '*'`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCHEMA = "failover"
JOBS = 150  # each takes ~0.2 s: three workers drain them in about 10 s
WORKERS = 3


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    """A primary and its synchronous standby, stopped and removed afterwards."""
    from pgserver import Unavailable, _unavailable, start_or_skip, start_standby

    primary = start_or_skip()
    standby = None
    try:
        try:
            standby = start_standby(primary, synchronous=True)
        except Unavailable as exc:
            _unavailable(str(exc))
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def _locator(*servers: Any) -> str:
    """libpq's multi-host form: each host's socket directory and port, in order; only a
    server that takes writes is connected to."""
    hosts = ",".join(quote(str(s.base), safe="/") for s in servers)
    ports = ",".join(str(s.port) for s in servers)
    return (f"postgresql://postgres@/postgres?host={hosts}&port={ports}"
            f"&target_session_attrs=read-write&schema={SCHEMA}")


def _ran(out: Path) -> Counter[str]:
    return Counter(out.read_text().split()) if out.exists() else Counter()


class EnqueueLoop:
    """`queuectl enqueue --id eN` run again and again in a thread, one process after the
    other, as cron on another host would; every answer kept, with when it ended."""

    def __init__(self, q: Queue, out: Path) -> None:
        self.q = q
        self.out = out
        self.results: list[tuple[str, float, subprocess.CompletedProcess]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            job_id = f"e{n}"
            n += 1
            result = subprocess.run(
                [QUEUECTL, "enqueue", "--id", job_id, "--cmd",
                 f"echo {job_id} >> {self.out}; sleep 0.05"],
                env=self.q.env, capture_output=True, text=True, timeout=120)
            self.results.append((job_id, time.monotonic(), result))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is None:
            return  # never started
        self._thread.join(timeout=180)
        assert not self._thread.is_alive()


def _heartbeats(server: Any) -> dict[str, float]:
    """Each worker's last heartbeat, by the given server's clock (epoch seconds)."""
    rows = server.psql(f"SELECT name, heartbeat_at FROM {SCHEMA}.workers")
    return {name: float(at) for name, at in (line.split("|") for line in rows.splitlines())}


def _rows(server: Any, sql: str) -> list[list[str]]:
    return [line.split("|") for line in server.psql(sql).splitlines()]


def _server_now(server: Any) -> float:
    return float(server.psql("SELECT extract(epoch FROM clock_timestamp())"))


def test_promoted_standby_takes_over_mid_drain_and_nothing_acknowledged_is_lost(
        pair: tuple[Any, Any], tmp_path: Path) -> None:
    primary, standby = pair
    q = Queue(_locator(primary, standby))
    out = tmp_path / "ran.txt"
    q.run("config", "set", "lease-seconds", "10")
    batch = q.run("enqueue", "--file", "-", input="".join(
        json.dumps({"id": f"j{i}", "command": f"echo j{i} >> {out}; sleep 0.2"}) + "\n"
        for i in range(JOBS)))
    acknowledged = set(batch.stdout.split())
    assert acknowledged == {f"j{i}" for i in range(JOBS)}
    # The server waits for the standby before it answers a commit, and so do workers.
    assert primary.psql("SELECT sync_state FROM pg_stat_replication") == "sync"
    from queuectl.locator import open_store

    worker_store: Any = open_store(str(q.db), for_worker=True)
    try:
        assert "synchronous_commit" not in worker_store.sql.claim_limited_begin
        assert worker_store.sql.complete_and_claim.endswith(", false)")  # p_async
    finally:
        worker_store.close()
    loop = EnqueueLoop(q, out)
    logs = [tmp_path / f"w{i}.log" for i in range(WORKERS)]
    workers = [q.worker("--name", f"w{i}", log=logs[i]) for i in range(WORKERS)]
    try:
        wait_for(lambda: q.status()["active_workers"] == WORKERS, 60, "the workers to start")
        loop.start()
        wait_for(lambda: q.status()["completed"] >= 30 and len(loop.results) >= 5, 120,
                 "the drain and the enqueue loop to be under way")
        killed_at = time.monotonic()
        primary.crash()  # the postmaster and every process it started: SIGKILL
        standby.promote()
        promoted_at, promoted_clock = time.monotonic(), _server_now(standby)
        acknowledged |= {job_id for job_id, ended, result in loop.results
                         if ended < killed_at and result.returncode == 0}

        # The same worker processes are at work on the new primary within 10 s: each one's
        # heartbeat by its clock, and a job enqueued now (first in line) completes.
        probe = None
        while probe is None and time.monotonic() < promoted_at + 10:
            result = q.run("enqueue", "--id", "probe", "--priority", "100", "--cmd",
                           f"echo probe >> {out}", check=False)
            if result.returncode == 0:
                probe = result.stdout.strip()
        assert probe == "probe"
        wait_for(lambda: all(at > promoted_clock for at in _heartbeats(standby).values())
                 and len(_heartbeats(standby)) == WORKERS,
                 max(0.1, promoted_at + 10 - time.monotonic()),
                 "every worker's heartbeat on the new primary", every=0.1)
        wait_for(lambda: standby.psql(
            f"SELECT state FROM {SCHEMA}.jobs WHERE id = 'probe'") == "completed",
            max(0.1, promoted_at + 10 - time.monotonic()), "the probe job to complete",
            every=0.1)
        assert all(w.poll() is None for w in workers)  # never restarted: the same processes

        time.sleep(1)  # the enqueue loop goes on across the switch and a little after it
        loop.stop()
        stored = {job_id for job_id, _, result in loop.results if result.returncode == 0}
        status = q.wait_counts(completed=JOBS + len(stored) + 1, timeout=180)
        assert status["pending"] == status["processing"] == status["failed"] == 0
        assert status["dead"] == 0
        assert all(w.poll() is None for w in workers)
    finally:
        loop.stop()
        q.stop_all()

    # The queue as the new primary has it: every job's state and its attempts' outcomes.
    jobs = {job_id: (state, int(attempts)) for job_id, state, attempts in _rows(
        standby, f"SELECT id, state, attempts FROM {SCHEMA}.jobs")}
    history = {job_id: outcomes.split(",") for job_id, outcomes in _rows(
        standby, f"SELECT job_id, string_agg(outcome, ',' ORDER BY seq)"
                 f" FROM {SCHEMA}.attempts GROUP BY job_id")}

    # Every enqueue of the loop: its id stored once, or exit 1, one line, nothing stored.
    refused = 0
    for job_id, _, result in loop.results:
        if result.returncode == 0:
            assert result.stdout.strip() == job_id, result
            assert job_id in jobs, result
        else:
            assert result.returncode == 1, result
            assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result
            assert "Traceback" not in result.stderr
            assert job_id not in jobs, result.stderr
            refused += 1
    assert len(stored) >= 5, (len(stored), refused)

    # Every acknowledged job (and every stored one) completed; each ran once, or twice if
    # and only if an attempt of it was cut (its history shows it), never more.
    ran = _ran(out)
    assert acknowledged <= set(jobs), acknowledged - set(jobs)
    assert set(jobs) == acknowledged | stored | {"probe"}
    assert set(ran) == set(jobs)
    for job_id, (state, attempts) in jobs.items():
        outcomes = history[job_id]
        assert state == "completed" and outcomes[-1] == "completed", (job_id, outcomes)
        cut = len(outcomes) - 1
        assert cut <= 1 and attempts == 1 + cut and ran[job_id] == 1 + cut, (
            job_id, outcomes, ran[job_id])
    # What `show` says of one of them, as a user would look.
    shown = q.job(next(iter(sorted(acknowledged))))
    assert shown["state"] == "completed"


def _lsn_reached(standby: Any, lsn: str) -> bool:
    """The standby has flushed and replayed the primary's WAL up to lsn."""
    return standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t"


def _enqueue_with_commit_in_flight(primary: Any, standby: Any, q: Queue,
                                   standby_has_it: bool) -> subprocess.Popen:
    """`enqueue --id hard` whose COMMIT is written on the primary, waiting for the standby,
    when the primary dies (crash()): its client never hears the answer. standby_has_it:
    the standby had flushed the commit (its WAL receiver was stopped, then resumed once the
    primary's backend was stopped, so that it could not reply); else it never got it (the
    primary's WAL sender was stopped: nothing was sent). The enqueue, still running."""
    q.run("status")  # the queue's schema exists (its creation waits for the standby too)
    # Stopped (SIGSTOP), the receiver still gets what is sent (the kernel buffers it);
    # the sender sends nothing.
    stalled = int(standby.psql("SELECT pid FROM pg_stat_wal_receiver") if standby_has_it
                  else primary.psql("SELECT pid FROM pg_stat_replication"))
    os.kill(stalled, signal.SIGSTOP)
    try:
        enqueue = subprocess.Popen(
            [QUEUECTL, "enqueue", "--id", "hard", "--cmd", "true"], env=q.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        backend = int(wait_for(lambda: primary.psql(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"), 60,
            "the enqueue's commit to wait for the standby"))
        if standby_has_it:
            os.kill(backend, signal.SIGSTOP)  # it will never answer
            lsn = primary.psql("SELECT pg_current_wal_lsn()")
            os.kill(stalled, signal.SIGCONT)
            wait_for(lambda: _lsn_reached(standby, lsn), 60, "the standby to flush the commit")
        primary.crash()
    finally:
        try:
            os.kill(stalled, signal.SIGCONT)
        except ProcessLookupError:
            pass  # killed with the primary, or ended when the primary went away
    assert enqueue.poll() is None  # still finding out
    # The standby (read-only until promoted) has the job, or has not: the case is certain.
    assert standby.psql(f"SELECT count(*) FROM {SCHEMA}.jobs") == ("1" if standby_has_it
                                                                   else "0")
    return enqueue


@pytest.mark.parametrize("standby_has_it", [True, False], ids=["on-standby", "not-on-standby"])
def test_enqueue_whose_commit_is_in_flight_at_the_kill_stores_its_job_once(
        pair: tuple[Any, Any], standby_has_it: bool) -> None:
    """The hard case, made certain: the primary dies with `enqueue`'s COMMIT in flight.
    Whether the standby had that commit or not, the enqueue asks the promoted standby,
    stores the job once and prints its id, exit 0."""
    primary, standby = pair
    q = Queue(_locator(primary, standby))
    enqueue = _enqueue_with_commit_in_flight(primary, standby, q, standby_has_it)
    standby.promote()
    out, err = enqueue.communicate(timeout=60)
    assert (enqueue.returncode, out, err) == (0, "hard\n", "")
    rows = _rows(standby, f"SELECT id, state, attempts FROM {SCHEMA}.jobs")
    assert rows == [["hard", "pending", "0"]]


def test_enqueue_whose_commit_is_in_flight_says_so_when_no_server_takes_over(
        pair: tuple[Any, Any]) -> None:
    """The limit: no server takes writes within 30 s of the kill (the standby is promoted
    only later). The enqueue cannot know whether its job was stored, and says so: exit 1,
    one line naming the id to check. Here the standby had the commit, so once promoted it
    holds the job: stored although the enqueue failed, which is why the line says "may"."""
    primary, standby = pair
    q = Queue(_locator(primary, standby))
    enqueue = _enqueue_with_commit_in_flight(primary, standby, q, standby_has_it=True)
    out, err = enqueue.communicate(timeout=120)
    assert (enqueue.returncode, out) == (1, ""), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("queuectl: error: PostgreSQL postgresql://"), err
    assert err.rstrip().endswith(
        "whether it was stored is unknown); job hard may or may not be stored: check with "
        "queuectl show hard"), err
    standby.promote()
    assert q.job("hard")["state"] == "pending"
