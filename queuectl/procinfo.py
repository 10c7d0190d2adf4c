"""Identify processes safely: a PID alone can be reused, so pair it with its start time."""

import os


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [0] is field 3 (state), [1] the parent's pid,
    [11] and [12] utime and stime, [13] and [14] those of reaped children, [19] the start
    time. OSError if pid is gone."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read().decode("ascii", "replace")
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """The kernel's start time of pid (clock ticks since boot), or None if it is gone."""
    try:
        fields = stat_fields(pid)
    except OSError:
        return None
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


class WorkerProcess:
    """A `queuectl ... worker run` process of this host, as /proc shows it."""

    def __init__(self, pid: int, start: str | None, argv: list[str], env: dict[str, str],
                 cwd: str) -> None:
        self.pid, self.start, self.argv, self.env, self.cwd = pid, start, argv, env, cwd

    def option(self, name: str) -> str | None:
        """The value of `--name VALUE` / `--name=VALUE` in its command line (the last one)."""
        found = None
        for i, arg in enumerate(self.argv):
            if arg == name and i + 1 < len(self.argv):
                found = self.argv[i + 1]
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1:]
        return found

    def locator(self) -> str:
        """The database it uses, resolved as the CLI resolved it at its start: `--db` >
        its QUEUECTL_DB > the system directory > its XDG data home; a relative path
        against its working directory."""
        from queuectl import locator as loc

        value = self.option("--db") or self.env.get(loc.ENV_VAR)
        if not value:
            if os.path.isdir(loc.SYSTEM_DIR):
                value = os.path.join(loc.SYSTEM_DIR, loc.DB_NAME)
            else:
                home = self.env.get("XDG_DATA_HOME") or os.path.join(
                    self.env.get("HOME", "/"), ".local", "share")
                value = os.path.join(home, "queuectl", loc.DB_NAME)
        if loc.is_url(value):
            return value
        return os.path.normpath(os.path.join(self.cwd, os.path.expanduser(value)))


def _uts_namespace(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/uts").st_ino
    except OSError:
        return None


def worker_processes() -> list[WorkerProcess]:
    """Every `queuectl ... worker run` process of this host that we may read (and so may
    signal): found even when no registry lists it, e.g. after its database was deleted.
    "This host" is this UTS namespace: a container or namespace with a host name of its own
    is another host, as the registry's host column says, even on the same kernel."""
    found = []
    me = os.getpid()
    mine = _uts_namespace("self")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or not is_queuectl_worker(int(entry)):
            continue
        pid = int(entry)
        if _uts_namespace(pid) != mine:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = [a.decode("utf-8", "surrogateescape") for a in fh.read().split(b"\0")]
            with open(f"/proc/{pid}/environ", "rb") as fh:
                pairs = [e.decode("utf-8", "surrogateescape").partition("=")
                         for e in fh.read().split(b"\0") if b"=" in e]
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue  # gone, or another user's
        start = start_time(pid)
        if start is not None:
            found.append(WorkerProcess(pid, start, argv, {k: v for k, _, v in pairs}, cwd))
    return found


def same_database(a: str, b: str) -> bool:
    """Two locators name one database: the same URL, the same path, or one file."""
    if a == b:
        return True
    if "://" in a or "://" in b:
        return False
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
