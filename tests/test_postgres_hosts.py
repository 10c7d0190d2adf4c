"""Two hosts sharing one PostgreSQL queue: host A's workers are SIGKILLed mid-drain, host B
finishes everything, and `worker stop` on A stops only A's workers.

A "host" is a UTS namespace with its own host name (tests/hosts.py), so each group of
workers names itself after its host, as on separate machines; both reach the suite's
throwaway server over TCP with a password. Needs root (unshare).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Queue, process_alive
from hosts import Host, can_make_hosts
from waiting import wait_for

pytestmark = pytest.mark.slow  # two hosts' workers, one killed mid-drain

PASSWORD = "hosts-pw-7b1e"
JOBS = 2000


@pytest.fixture
def tcp_queue(pg_server: Any) -> Iterator[Queue]:
    """A fresh queue reached over TCP with a password, in a database of its own."""
    if not can_make_hosts():
        pytest.skip("host names of their own (unshare --uts) need root and unshare")
    n = pg_server.fresh_schema()
    user = f"hosts_{n}"
    pg_server.create_role(user, PASSWORD)
    pg_server.psql(f"CREATE DATABASE db_{n} OWNER {user}")
    q = Queue(pg_server.tcp_locator(user, PASSWORD, dbname=f"db_{n}"))
    yield q
    q.stop_all()


def test_two_hosts_one_dies_the_other_finishes_and_stop_is_per_host(
        tcp_queue: Queue, tmp_path: Path) -> None:
    q = tcp_queue
    out = tmp_path / "ran.txt"
    q.run("config", "set", "lease-seconds", "5")  # host B reclaims A's jobs soon
    q.run("enqueue", "--file", "-", input="\n".join(
        json.dumps({"id": f"j{i}", "command": f"echo j{i} >> {out}; sleep 0.01"})
        for i in range(JOBS)))
    a = Host("hosta", q.env, tmp_path / "a.log")
    b = Host("hostb", q.env, tmp_path / "b.log")
    a2 = Host("hosta", q.env, tmp_path / "a2.log")
    try:
        a.start()
        b.start()
        # Every host's workers count, by the server's clock.
        wait_for(lambda: q.status()["active_workers"] == 4, 60, "4 active workers on 2 hosts")
        wait_for(lambda: q.status()["completed"] >= 300, 120, "the drain to be under way")
        a.kill()
        # A's in-flight jobs: claimed by A, never recorded (nobody else may touch them yet).
        in_flight = {j["id"] for j in json.loads(q.run("list", "--state", "processing").stdout)
                     if j["worker"].startswith("hosta-")}
        assert 1 <= len(in_flight) <= 2, in_flight  # a busy worker always holds its next job
        status = q.wait_counts(completed=JOBS, timeout=240)
        assert status["dead"] == status["failed"] == status["pending"] == 0
        ran = Counter(out.read_text().split())
        assert set(ran) == {f"j{i}" for i in range(JOBS)}  # nothing lost
        twice = {job_id for job_id, times in ran.items() if times > 1}
        assert twice <= in_flight, twice - in_flight  # duplicates: A's in-flight jobs only
        assert max(ran.values()) <= 2
        for job_id in in_flight:
            # `show` names each attempt's worker, and so its host.
            history = q.job(job_id)["history"]
            assert history[0]["outcome"] == "lost", history
            assert history[0]["worker"].startswith("hosta-"), history
            assert history[-1]["outcome"] == "completed", history
            assert history[-1]["worker"].startswith("hostb-"), history
        hosts = {q.job(f"j{i}")["history"][-1]["worker"].split("-")[0] for i in range(0, JOBS, 97)}
        assert hosts <= {"hosta", "hostb"} and "hostb" in hosts
        assert b.supervisor is not None and b.supervisor.poll() is None
        # `worker stop` on A stops A's (new) workers only.
        a2.start()
        wait_for(lambda: q.status()["active_workers"] == 4, 60, "A's new workers to join")
        b_workers = b.workers()
        assert len(b_workers) == 2
        result = a2.run("worker", "stop", "--foreground", "--timeout", "60")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "Stopped 2 workers.", result.stdout
        assert a2.supervisor is not None
        assert a2.supervisor.wait(timeout=30) == 0  # its workers ended cleanly
        assert b.supervisor.poll() is None and all(process_alive(p) for p in b_workers)
        wait_for(lambda: q.status()["active_workers"] == 2, 30, "only B's workers active")
        q.enqueue({"id": "after", "command": f"echo after >> {out}"})
        q.wait_state("after", "completed")
    finally:
        for host in (a, a2, b):
            host.stop()
