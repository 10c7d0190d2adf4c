"""The on-dead hook: one run of the operator's command for one dead job's notice.

It runs as jobs do (`/bin/sh -c`, its own session and process group; under systemd with a
delegated cgroup, a cgroup of its own, see process.py), with the dead job described in its
environment and the job's last output on its stdin, and is killed (its whole group) after
`policy.HOOK_TIMEOUT` seconds. Whether to retry or drop a failed one is the worker's call
(worker.py); this module only runs it and says how it ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from queuectl.cgroup import Delegation
from queuectl.policy import HOOK_TIMEOUT
from queuectl.process import JobProcess
from queuectl.record import Record
from queuectl.store import Notice


class HookResult(Record):
    ok: bool
    error: str | None  # why it failed (None when ok)
    duration: float
    output: bytes  # the tail of what the hook printed, for the log when it fails


def hook_environment(inherited: Mapping[str, str], notice: Notice) -> dict[str, str]:
    """The worker's environment (less its private channels) plus the dead job's facts, so
    `mail -s "$QUEUECTL_JOB_ID died" root` needs nothing else."""
    env = dict(inherited)
    env.update({
        "QUEUECTL_JOB_ID": notice.job_id,
        "QUEUECTL_QUEUE": notice.queue,
        "QUEUECTL_COMMAND": notice.command,
        "QUEUECTL_EXIT_CODE": "" if notice.exit_code is None else str(notice.exit_code),
        "QUEUECTL_ATTEMPTS": str(notice.attempts),
        "QUEUECTL_LAST_ERROR": notice.last_error or "",
    })
    return env


def run_hook(notice: Notice, inherited: Mapping[str, str], cgroups: Delegation | None = None,
             umask: int | None = None, timeout: float = HOOK_TIMEOUT,
             tick: Callable[[], float] | None = None) -> HookResult:
    """Run the notice's hook to its end: exit 0 is success; anything else, a death by
    signal, a shell that cannot start or the timeout (then SIGTERM to its process group,
    SIGKILL after process.KILL_GRACE) is a failure. `tick` is called at least every few
    seconds meanwhile (the worker feeds its watchdog) and returns how long it may wait."""
    proc = JobProcess(notice.hook, hook_environment(inherited, notice), umask, cgroups,
                      stdin=notice.output)
    while not proc.done:
        wait = tick() if tick is not None else 1.0
        until = min(proc.deadline(timeout), time.monotonic() + max(0.05, min(wait, 1.0)))
        if proc.wait(until - time.monotonic()):
            break
        proc.enforce(timeout, time.monotonic())
    outcome = proc.outcome()
    ok = proc.succeeded
    return HookResult(ok, None if ok else (outcome.error or "failed"), outcome.duration,
                      outcome.output[-2000:])
