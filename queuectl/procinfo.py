"""Identify processes safely: a PID alone can be reused, so pair it with its start time."""

import os


def start_time(pid: int) -> str | None:
    """The kernel's start time of pid (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None  # gone, or a zombie: it has exited and waits only to be reaped
    return fields[19]


def is_alive(pid: int, expected_start: str | None) -> bool:
    current = start_time(pid)
    return current is not None and (expected_start is None or current == expected_start)


def is_queuectl_worker(pid: int) -> bool:
    """True if pid's command line is a `queuectl ... worker run`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    joined = b" ".join(argv)
    return b"queuectl" in joined and b"worker" in argv and b"run" in argv


def hostname() -> str:
    return os.uname().nodename


def job_processes(job_id: str, attempt: int) -> list[int]:
    """PIDs of this host's processes that belong to one attempt of a job, found by the
    QUEUECTL_JOB_ID/QUEUECTL_ATTEMPT every job process inherits. This finds them even after
    their worker died, or when they left the job's process group."""
    want_id = b"QUEUECTL_JOB_ID=" + job_id.encode("utf-8", "surrogateescape")
    want_attempt = b"QUEUECTL_ATTEMPT=" + str(attempt).encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if want_id in env and want_attempt in env:
            found.append(int(entry))
    return found


def kill_job_processes(job_id: str, attempt: int) -> int:
    """SIGKILL whatever is left of a lost attempt on this host; returns how many."""
    import signal

    killed = 0
    for pid in job_processes(job_id, attempt):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed
