"""`worker start --count N` without systemd: N worker processes kept alive in the foreground.

The supervisor does what systemd does for the unit: starts each worker, restarts one that
crashes (under the same name, so it takes back its own orphaned job at once), and turns
Ctrl-C or SIGTERM into a graceful stop of all of them.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from queuectl import procinfo
from queuectl.locator import ENV_VAR
from queuectl.process import signal_name
from queuectl.store import Store, WorkerInfo

RESTART_DELAY = 1.0
RESTART_BURST = 5  # restarts of one slot within RESTART_WINDOW before giving up on it
RESTART_WINDOW = 60.0


@dataclass
class Slot:
    index: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None
    exit_code: int | None = None


def _say(text: str) -> None:
    print(f"[supervisor] {text}", file=sys.stderr, flush=True)


def worker_argv(index: int, grace: float, drain: bool, log_format: str,
                queues: list[str] | None = None, job_slots: int | None = None) -> list[str]:
    """The locator travels in the environment, never in argv, where `ps` shows it."""
    name = f"{procinfo.hostname()}-{os.getpid()}-{index}"
    argv = [sys.executable, "-m", "queuectl", "--log-format", log_format,
            "worker", "run", "--name", name, "--label", f"Worker-{index}",
            "--grace", f"{grace:g}", "--supervised-by", str(os.getpid())]
    if drain:
        argv.append("--drain")
    if queues:
        argv += ["--queue", ",".join(queues)]
    if job_slots is not None:
        argv += ["--slots", str(job_slots)]
    return argv


def supervise(locator: str, count: int, grace: float, drain: bool, log_format: str,
              queues: list[str] | None = None, job_slots: int | None = None) -> int:
    """Run count workers until they all stop; 0 if every worker ended cleanly."""
    slots = [Slot(i, worker_argv(i, grace, drain, log_format, queues, job_slots))
             for i in range(count)]
    env = {**os.environ, ENV_VAR: locator}
    signals_seen: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        signals_seen.append(signum)
        for slot in slots:
            if slot.proc and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
            slot.restart_at = None

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in slots:
        # Own process group: Ctrl-C reaches the supervisor only, which forwards it once.
        slot.proc = subprocess.Popen(slot.argv, env=env, process_group=0)
    while True:
        alive = False
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                alive = True
                continue
            if slot.proc is not None:
                _reaped(slot, bool(signals_seen))
            if slot.restart_at is not None:
                alive = True
                if time.monotonic() >= slot.restart_at and not signals_seen:
                    slot.restart_at = None
                    slot.proc = subprocess.Popen(slot.argv, env=env, process_group=0)
        if not alive:
            break
        time.sleep(0.1)
    failed = [s for s in slots if s.exit_code not in (0, None)]
    return 1 if failed else 0


def _reaped(slot: Slot, stopping: bool) -> None:
    assert slot.proc is not None
    code = slot.proc.returncode
    slot.proc = None
    slot.exit_code = code
    if code == 0 or stopping:
        return
    how = f"was killed by {signal_name(-code)}" if code < 0 else f"exited with status {code}"
    t = time.monotonic()
    slot.restarts = [r for r in slot.restarts if t - r < RESTART_WINDOW] + [t]
    if len(slot.restarts) > RESTART_BURST:
        _say(f"Worker-{slot.index} {how}; it failed {RESTART_BURST} times within "
             f"{RESTART_WINDOW:g} s, giving up on it")
        return
    _say(f"Worker-{slot.index} {how}; restarting it in {RESTART_DELAY:g} s")
    slot.restart_at = t + RESTART_DELAY


def _lane(proc: procinfo.WorkerProcess) -> list[str] | None:
    """The queues a worker process serves, from its command line (None: every queue)."""
    value = proc.option("--queue")
    if value:
        return value.split(",")
    instance = proc.option("--instance")
    if instance:
        from queuectl.errors import ValidationError
        from queuectl.units import lane_of

        try:
            return lane_of(instance)
        except ValidationError:
            return None
    return None


def unregistered_workers(registered: list[WorkerInfo], locator: str,
                         queues: list[str] | None = None) -> list[WorkerInfo]:
    """This host's worker processes that use the database `locator` names (the same path,
    or the same file) but that `registered` does not list: the registry they wrote to is
    gone (the file was deleted or replaced) or they have not registered yet."""
    known = {w.pid for w in registered}
    host = procinfo.hostname()
    found = []
    for proc in procinfo.worker_processes():
        if proc.pid in known or not procinfo.same_database(proc.locator(), locator):
            continue
        lane = _lane(proc)
        if queues is not None and lane != queues:
            continue
        name = proc.option("--name") or f"{host}:{proc.pid}"
        found.append(WorkerInfo(name, host, proc.pid, proc.start, 0.0, 0.0, "unregistered",
                                None, lane))
    return found


def stop_local_workers(store: Store | None, locator: str, timeout: float,
                       queues: list[str] | None = None,
                       ) -> tuple[list[WorkerInfo], list[WorkerInfo], list[WorkerInfo]]:
    """SIGTERM every live worker of this host that uses this database and wait up to
    timeout for them to exit; with queues, only the workers of exactly that lane. Workers
    come from the registry in store (each PID checked to really be that queuectl worker,
    not a reused one) and from /proc (a worker whose registry was deleted with its file is
    still found; store None: the database cannot be opened, /proc only). Returns
    (signalled, still running, those of signalled found only by their process)."""
    host = procinfo.hostname()
    registered = [
        w for w in (store.workers() if store is not None else [])
        if w.host == host and (queues is None or w.queues == queues)
        and procinfo.is_alive(w.pid, w.pid_start)
        and procinfo.is_queuectl_worker(w.pid)
    ]
    extra = unregistered_workers(registered, locator, queues)
    targets = registered + extra
    for pid in dict.fromkeys(w.pid for w in targets):  # job slots share their process's:
        try:  # one signal each, as a second one would stop their jobs at once
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = targets
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [w for w in left if procinfo.is_alive(w.pid, w.pid_start)]
    return targets, left, extra
