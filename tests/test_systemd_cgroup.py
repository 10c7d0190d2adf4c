"""Job limits and cleanup under systemd: each attempt in a cgroup of its own, under the
suite's private systemd.

The real unit (`Delegate=yes`) on the real cgroup v2 tree the private systemd mounts. On the
test machines that tree has no memory/cpu/pids controller (they are bound to cgroup v1), so
cleanup and CPU accounting are checked here, and limits only as far as refusing what cannot
be enforced; the enforcement test runs where the controllers are on v2 (stock Debian 12).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_systemd import Host, _start, app, host  # noqa: F401 (fixtures)
from waiting import wait_for

UNIT = "queuectl-worker@1.service"


def _processes_with(argv: list[str]) -> list[int]:
    """PIDs (in any namespace: we look from the host) whose command line is exactly argv."""
    want = ("\0".join(argv) + "\0").encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if fh.read() == want:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _unit_cgroup(sd: Host) -> str:
    started = wait_for(lambda: sd.events("worker_started"), 10, "worker_started")
    return started[-1]["CGROUP"]


def _children(sd: Host, cgroup: str) -> list[str]:
    out = sd.sd.run("find", cgroup, "-mindepth", "1", "-maxdepth", "1", "-type", "d",
                      "-printf", "%f\\n", check=True).stdout
    return sorted(out.split())


def _escaping(seconds: str, tail: str = "") -> str:
    """A job that double-forks, leaves its session and clears its environment."""
    pidfile = f"/var/lib/queuectl/{seconds}.pid"
    return f"env -i setsid sh -c 'sleep {seconds} & echo $! > {pidfile}'{tail}"


@pytest.mark.parametrize("how", ["success", "timeout", "cancel"])
def test_a_detached_process_is_gone_when_its_attempt_ends(host: Host, how: str) -> None:  # noqa: F811
    q = host.queue
    _start(host, 1)
    cgroup = _unit_cgroup(host)
    assert _children(host, cgroup) == ["worker"]  # the worker lives in a leaf
    seconds = {"success": "3011", "timeout": "3012", "cancel": "3013"}[how]
    job: dict = {"id": how, "command": _escaping(seconds), "max_retries": 0}
    if how == "timeout":
        job.update(command=_escaping(seconds, "; sleep 120"), timeout=2)
    if how == "cancel":
        job.update(command=_escaping(seconds, "; sleep 120"))
    q.enqueue(job)
    if how == "success":
        q.wait_state(how, "completed")
        assert (host.state / f"{seconds}.pid").read_text().strip()  # it did start
    else:
        # while it runs, the escaped sleep exists and its attempt's cgroup too
        wait_for(lambda: _processes_with(["sleep", seconds]), 20, "the detached sleep")
        assert len(_children(host, cgroup)) == 2
        if how == "cancel":
            q.run("cancel", how)
        q.wait_state(how, "canceled" if how == "cancel" else "dead", timeout=30)
    wait_for(lambda: not _processes_with(["sleep", seconds]), 5, "the detached sleep to die")
    wait_for(lambda: _children(host, cgroup) == ["worker"], 5, "the attempt's cgroup removed")


def test_a_restarted_worker_removes_cgroups_of_its_earlier_life(host: Host) -> None:  # noqa: F811
    q = host.queue
    _start(host, 1)
    cgroup = _unit_cgroup(host)
    q.enqueue({"id": "orphan", "command": _escaping("3014", "; sleep 120")})
    wait_for(lambda: _processes_with(["sleep", "3014"]), 20, "the detached sleep")
    main = host.prop(UNIT, "MainPID")
    host.sd.run("kill", "-KILL", main, check=True)  # the worker dies mid-job
    host.sd.wait_for(lambda: host.prop(UNIT, "MainPID") not in ("0", main)
                     and host.active(UNIT), 30, "systemd to restart the worker")
    wait_for(lambda: not _processes_with(["sleep", "3014"]), 10, "the old attempt's sleep gone")
    wait_for(lambda: _children(host, cgroup) == ["worker"], 10, "stale cgroups removed")
    q.wait_state("orphan", "processing", timeout=30)  # it runs again, at least once


def test_cpu_time_of_an_attempt_matches_time(host: Host) -> None:  # noqa: F811
    q = host.queue
    _start(host, 1)
    out = "/var/lib/queuectl/time.txt"
    burn = "time python3 -c \"sum(range(60_000_000))\""
    q.enqueue({"id": "cpu", "command": f"bash -c 'TIMEFORMAT=\"%3U %3S\"; {burn}' 2> {out}"})
    job = q.wait_state("cpu", "completed", timeout=120)
    user, system = (float(x) for x in (host.state / "time.txt").read_text().split())
    measured = user + system
    attempt = job["history"][-1]
    cgroup = (attempt["cpu_user_usec"] + attempt["cpu_system_usec"]) / 1e6
    assert measured > 0.3, measured  # enough work for a meaningful comparison
    assert abs(cgroup - measured) <= 0.2 * measured, (cgroup, measured)
    assert attempt["memory_peak_bytes"] is None  # no memory controller on this tree
    done = wait_for(lambda: host.events("job_succeeded", JOB_ID="cpu"), 10, "job_succeeded")
    assert int(done[0]["CPU_USER_USEC"]) == attempt["cpu_user_usec"]
    assert int(done[0]["CPU_SYSTEM_USEC"]) == attempt["cpu_system_usec"]


def _controllers() -> set[str]:
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        path = Path(root) / "cgroup.controllers"
        if path.exists():
            return set(path.read_text().split())
    return set()


def test_a_limit_without_its_controller_fails_the_attempt_clearly(host: Host) -> None:  # noqa: F811
    if "memory" in _controllers():
        pytest.skip("the memory controller is on cgroup v2 here: the limit would be enforced")
    q = host.queue
    _start(host, 1)
    q.enqueue({"id": "mem", "command": "echo ran > /var/lib/queuectl/mem.txt",
               "memory_max": "512M", "max_retries": 0})
    job = q.wait_state("mem", "dead")
    assert job["last_error"].startswith("cannot enforce memory_max 512M: the memory cgroup "
                                        "controller is not enabled for this worker")
    assert not (host.state / "mem.txt").exists()  # never ran unlimited


def test_memory_max_is_enforced_and_an_oom_kill_is_named(host: Host) -> None:  # noqa: F811
    if not {"memory", "pids"} <= _controllers():
        pytest.skip("memory/pids controllers are not on cgroup v2 on this host (bound to v1):"
                    " enforcement needs them there, as on stock Debian 12")
    q = host.queue
    _start(host, 1)
    q.enqueue({"id": "oom", "max_retries": 0, "memory_max": "64M",
               "command": "python3 -c 'x = bytearray(512 << 20); x[::4096] = b\"1\" * len(x[::4096])'"})
    job = q.wait_state("oom", "dead", timeout=60)
    assert job["last_error"] == "out of memory (memory_max 64M)"
    assert job["history"][-1]["memory_peak_bytes"] <= 64 << 20
    q.enqueue({"id": "forks", "max_retries": 0, "tasks_max": 5,
               "command": "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait"})
    job = q.wait_state("forks", "dead", timeout=60)
    assert job["history"][-1]["exit_code"] != 0  # the shell could not fork past the limit


def test_cwd_and_env_under_the_cgroup_wrapper(host: Host) -> None:  # noqa: F811
    """The unit's attempts start through the cgroup wrapper shell: the command still runs in
    its directory with its variables, and a directory it cannot enter fails the attempt
    with its own error, never as the shell's exit status (and nothing runs elsewhere)."""
    q = host.queue
    _start(host, 1)  # creates /var/lib/queuectl (StateDirectory=)
    work = host.state / "work"
    work.mkdir()
    work.chmod(0o777)
    q.run("enqueue", "--id", "here", "--cwd", "/var/lib/queuectl/work", "--env", "MODE=nightly",
          "--cmd", 'printf "%s\\n" "$(pwd)" "$MODE" > report.txt')
    q.run("enqueue", "--id", "gone", "--cwd", "/var/lib/queuectl/missing", "--max-retries", "0",
          "--cmd", "touch /var/lib/queuectl/gone-ran")
    done = q.wait_state("here", "completed")
    assert done["history"][-1]["cpu_user_usec"] is not None  # it ran in an attempt cgroup
    assert (work / "report.txt").read_text().splitlines() == ["/var/lib/queuectl/work",
                                                              "nightly"]
    job = q.wait_state("gone", "dead")
    assert (job["last_error"], job["exit_code"]) == (
        "cannot enter directory /var/lib/queuectl/missing: No such file or directory", None)
    assert not (host.state / "gone-ran").exists()


def test_an_on_dead_hook_runs_in_a_cgroup_of_its_own_and_leaves_nothing(
        host: Host) -> None:  # noqa: F811
    """The hook is run as attempts are: its own cgroup under the unit's, killed whole when it
    ends, so a process it detached does not outlive it; five failures end in hook_failed
    with its catalog id."""
    from queuectl.log import MESSAGE_IDS

    q = host.queue
    _start(host, 1)
    cgroup = _unit_cgroup(host)
    q.run("config", "set", "on-dead-backoff", "0")
    where = "/var/lib/queuectl/hook-cgroup.txt"
    q.run("config", "set", "on-dead", f"cat /proc/self/cgroup > {where}; "
          + _escaping("3015", "; exit 1"))
    q.enqueue({"id": "dies", "command": "exit 3", "max_retries": 0})
    [failed] = wait_for(lambda: host.events("hook_failed", JOB_ID="dies"), 60, "hook_failed")
    assert failed["MESSAGE_ID"] == MESSAGE_IDS["hook_failed"]
    assert (failed["TRIES"], failed["PRIORITY"]) == ("5", "3")
    ran_in = (host.state / "hook-cgroup.txt").read_text().strip().split("::", 1)[1]
    parent, name = ran_in.rsplit("/", 1)  # relative to the cgroup mount, which CGROUP has
    assert cgroup.endswith(parent) and name.startswith("job-"), (ran_in, cgroup)
    wait_for(lambda: not _processes_with(["sleep", "3015"]), 5, "the detached sleep to die")
    wait_for(lambda: _children(host, cgroup) == ["worker"], 5, "the hook's cgroup removed")
    assert q.status()["notices"] == 0 and q.job("dies")["state"] == "dead"
