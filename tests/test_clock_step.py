"""A wall-clock step does not move leases on SQLite: they live on CLOCK_BOOTTIME.

A second worker started with libfaketime preloaded sees the wall clock 2 minutes away from the
first one's (only CLOCK_REALTIME is shifted: FAKETIME_DONT_FAKE_MONOTONIC=1 leaves CLOCK_MONOTONIC
and CLOCK_BOOTTIME alone, which the fixture checks first), as if the clock had stepped between
the first worker's heartbeat and the second one's housekeeping.
"""

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue, process_alive
from waiting import wait_for

from queuectl.policy import HEARTBEAT_EVERY

pytestmark = pytest.mark.slow  # leases that must run out in real time

LEASE = 3  # lease-seconds for these tests (the minimum is 2)
STEP = 120  # seconds between the two workers' wall clocks

_PROBE = ("import json, time; print(json.dumps([time.time(), "
          "time.clock_gettime(time.CLOCK_BOOTTIME), time.monotonic()]))")


def _clocks(env: dict[str, str]) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return tuple(json.loads(out))  # type: ignore[return-value]


def _skip_or_fail(reason: str) -> None:
    """Skip, except under QUEUECTL_REQUIRE_SYSTEMD=1 (CI), where a test that cannot run is a
    failure, as for the systemd tests."""
    if os.environ.get("QUEUECTL_REQUIRE_SYSTEMD") == "1":
        pytest.fail(f"QUEUECTL_REQUIRE_SYSTEMD=1 but the clock-step test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def shifted() -> Callable[[int], dict[str, str]]:
    """shifted(seconds) -> the environment under which a program's wall clock is that far
    off, its boot clock untouched; checked here before any test relies on it. The library
    is preloaded directly, not through the `faketime` command: that one forks and does not
    pass on SIGTERM, so stopping it would leave the worker running after the test."""
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not libs:
        _skip_or_fail("libfaketime (Debian package faketime) is not installed")

    def make(seconds: int) -> dict[str, str]:
        return {"LD_PRELOAD": libs[0], "FAKETIME": f"{seconds:+d}s",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    before = _clocks(dict(os.environ))
    faked = _clocks({**os.environ, **make(STEP)})
    after = _clocks(dict(os.environ))
    if not before[0] + STEP - 5 < faked[0] < after[0] + STEP + 5:
        _skip_or_fail(f"faketime did not shift the wall clock by {STEP} s ({faked[0] - before[0]:+.1f})")
    if not before[1] <= faked[1] <= after[1]:
        _skip_or_fail("faketime shifted CLOCK_BOOTTIME too, even with FAKETIME_DONT_FAKE_MONOTONIC=1")
    return make


def _start(queue: Queue, extra: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    out = open(log, "ab")
    proc = subprocess.Popen([QUEUECTL, "--log-format", "json", "worker", "run",
                             "--poll-interval", "0.05", *args],
                            env={**queue.env, **extra}, stdout=out, stderr=out)
    queue.procs.append(proc)
    return proc


def _beats(db: Path, name: str) -> float | None:
    """The named worker's last heartbeat on the boot clock, or None before it registered."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT beat_clock FROM workers WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def _events(log: Path, event: str) -> list[dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e["event"] == event]


def test_a_worker_two_minutes_ahead_does_not_reclaim_a_live_lease(
        queue: Queue, tmp_path: Path, shifted: Callable) -> None:
    queue.run("config", "set", "lease-seconds", str(LEASE))
    release = tmp_path / "release"
    queue.enqueue({"id": "live", "command": f"until [ -e {release} ]; do sleep 0.1; done",
                   "max_retries": 0})
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    queue.worker("--name", "a", log=a_log)
    queue.wait_state("live", "processing")
    _start(queue, shifted(STEP), b_log, "--name", "b")
    # b does its housekeeping (reclaim_expired) at every heartbeat: watch three of them,
    # which spans more than a whole lease, while a's job runs on
    first = wait_for(lambda: _beats(queue.db, "b"), 60, "worker b to register")
    wait_for(lambda: (_beats(queue.db, "b") or 0) >= first + 2 * HEARTBEAT_EVERY - 0.5, 60,
             "three heartbeats of worker b")
    assert queue.status()["active_workers"] == 2  # both count, whatever their wall clocks
    assert queue.job("live")["state"] == "processing"
    release.touch()
    job = queue.wait_state("live", "completed")
    assert job["attempts"] == 1 and [h["outcome"] for h in job["history"]] == ["completed"]
    assert job["worker"] == "a"
    assert not _events(b_log, "lease_reclaimed") and not _events(a_log, "job_lost")


@pytest.mark.parametrize("step", [-STEP, STEP], ids=["behind", "ahead"])
def test_a_killed_workers_job_is_reclaimed_within_the_lease_whatever_the_wall_clock(
        queue: Queue, tmp_path: Path, shifted: Callable, step: int) -> None:
    queue.run("config", "set", "lease-seconds", str(LEASE))
    pidfile = tmp_path / "pid"
    queue.enqueue({"id": "orphan", "command": f"echo $$ > {pidfile}; exec sleep 300",
                   "max_retries": 0})
    a = queue.worker("--name", "a")
    queue.wait_state("orphan", "processing")
    b_log = tmp_path / "b.log"
    _start(queue, shifted(step), b_log, "--name", "b", "--grace", "1")
    first = wait_for(lambda: _beats(queue.db, "b"), 60, "worker b to register")
    wait_for(lambda: (_beats(queue.db, "b") or 0) > first, 60, "a heartbeat of worker b")
    job_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30,
                           "the job to start"))
    assert queue.job("orphan")["state"] == "processing"  # b left a's live lease alone
    a.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    a.wait()
    job = wait_for(lambda: (j := queue.job("orphan"))["state"] == "dead" and j, 60,
                   "the orphan to be reclaimed")
    took = time.monotonic() - killed
    assert [h["outcome"] for h in job["history"]] == ["lost"]
    assert [e["job_id"] for e in _events(b_log, "lease_reclaimed")] == ["orphan"]
    # the lease (3 s) plus a heartbeat (2 s) and room for a loaded machine; a wall-clock
    # lease would have taken 2 minutes longer with the reclaimer behind
    assert took < LEASE + HEARTBEAT_EVERY + 10, f"reclaimed {took:.1f} s after the kill"
    wait_for(lambda: not process_alive(job_pid), 10, "the orphan's process to be killed")
