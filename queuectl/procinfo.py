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
