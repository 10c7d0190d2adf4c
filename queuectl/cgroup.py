"""Each attempt in a cgroup of its own, where systemd delegated a cgroup v2 subtree to us.

A process group and a scan of /proc miss a process that leaves its session and clears its
environment; a cgroup does not: the kernel puts every descendant in it, and `cgroup.kill`
ends them all at once. So, under `queuectl-worker@.service` (`Delegate=yes`) the worker
moves itself into the leaf `worker/` of its unit's cgroup (cgroup v2 allows processes only
in leaves once controllers are handed down) and runs each attempt in a sibling `job-*`
cgroup that it kills and removes when the attempt ends. The same cgroup gives the attempt's
CPU time (`cpu.stat`, present without any controller), its peak memory (`memory.peak`, with
the memory controller) and enforces limits where the controller is enabled in our subtree.

Without delegation (a foreground worker, a supervisor, no cgroup v2) none of this is used
and nothing here costs a job anything: `detect()` runs once per worker.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import threading
import time

from queuectl.record import Record

LEAF = "worker"  # where the worker process itself lives
PREFIX = "job-"  # one per attempt; whatever carries it at start was left by an earlier life
CONTROLLERS = ("cpu", "memory", "pids")  # the ones limits need, enabled where offered
CPU_PERIOD = 100_000  # microseconds of cpu.max's period
EMPTY_WAIT = 5.0  # seconds an attempt's cgroup may take to empty after cgroup.kill


class Limits(Record):
    """What one attempt may use; None: unlimited."""

    memory_max: int | None = None  # bytes
    cpu_max: float | None = None  # cores
    tasks_max: int | None = None  # processes and threads

    def wanted(self) -> list[tuple[str, str]]:
        """(controller, job key) for every limit that is set."""
        found = []
        if self.memory_max:
            found.append(("memory", "memory_max"))
        if self.cpu_max:
            found.append(("cpu", "cpu_max"))
        if self.tasks_max:
            found.append(("pids", "tasks_max"))
        return found

    def show(self, key: str) -> str:
        """`memory_max 512M`, `cpu_max 1.5`: how errors name a limit."""
        value = getattr(self, key)
        if key == "memory_max":
            return f"{key} {format_bytes(value)}"
        return f"{key} {value:g}"


class Usage(Record):
    """What an attempt used, read from its cgroup once every process in it was gone."""

    cpu_user_usec: int | None = None
    cpu_system_usec: int | None = None
    memory_peak_bytes: int | None = None
    oom_kills: int = 0


def format_bytes(value: int) -> str:
    """512M rather than 536870912, when it divides evenly."""
    for suffix, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value % size == 0:
            return f"{value // size}{suffix}"
    return str(value)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, or None without a cgroup2 mount."""
    try:
        lines = _read("/proc/self/cgroup").splitlines()
        mounts = _read("/proc/self/mountinfo").splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    if rel is None or rel.endswith(" (deleted)"):
        return None
    for line in mounts:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            root, mount = fields[3], fields[4]
            if root != "/" and not (rel + "/").startswith(root.rstrip("/") + "/"):
                continue
            inner = rel[len(root.rstrip("/")):] if root != "/" else rel
            return os.path.normpath(mount + "/" + inner.lstrip("/"))
    return None


def _kill_and_remove(path: str, deadline: float) -> bool:
    """cgroup.kill, wait until empty, rmdir (children first); True once gone."""
    try:
        children = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return True
    for child in children:
        _kill_and_remove(child, deadline)
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
    except FileNotFoundError:
        return True
    except OSError:
        pass
    _wait_empty(path, deadline)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _wait_empty(path: str, deadline: float) -> bool:
    """Until cgroup.events says `populated 0` (a change wakes poll with POLLPRI)."""
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY)
    except OSError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            if b"populated 0" in os.read(fd, 4096):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.1) * 1000)  # the short cap: a missed change costs 0.1 s
    finally:
        os.close(fd)


class Delegation:
    """The subtree systemd gave this worker: `base` (the unit's cgroup), its `controllers`
    enabled for our children, and the cgroups of ended attempts not removed yet."""

    def __init__(self, base: str, controllers: set[str]) -> None:
        self.base = base
        self.controllers = controllers
        self.leftover: list[str] = []
        self._seq = itertools.count(1)  # next() is atomic: job slots share one Delegation
        self._leftover_lock = threading.Lock()  # job slots share the list

    @classmethod
    def detect(cls) -> Delegation | None:
        """The delegated subtree if this process may own one, else None (then the caller
        keeps process-group cleanup). Ours means: cgroup v2 with `cgroup.kill` (kernel 5.14),
        writable by us, and no other process in it (a supervisor's cgroup is shared)."""
        path = _own_cgroup()
        if path is None or path == "/" or not os.path.exists(os.path.join(path, "cgroup.kill")):
            return None
        if not (os.access(path, os.W_OK) and os.access(os.path.join(path, "cgroup.procs"),
                                                       os.W_OK)):
            return None
        try:
            procs = set(_read(os.path.join(path, "cgroup.procs")).split())
        except OSError:
            return None
        if procs != {str(os.getpid())}:
            return None
        return cls(path, set())

    def setup(self) -> list[str]:
        """Remove what an earlier life left, move into the leaf, hand controllers down.
        Returns the names of the stale cgroups removed. Raises OSError if we cannot move."""
        removed = []
        deadline = time.monotonic() + EMPTY_WAIT
        for entry in os.scandir(self.base):
            if entry.is_dir(follow_symlinks=False) and entry.name != LEAF:
                _kill_and_remove(entry.path, deadline)
                removed.append(entry.name)
        leaf = os.path.join(self.base, LEAF)
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        offered = set(_read(os.path.join(self.base, "cgroup.controllers")).split())
        for name in CONTROLLERS:
            if name in offered:
                try:
                    _write(os.path.join(self.base, "cgroup.subtree_control"), f"+{name}")
                except OSError:
                    pass  # stays disabled: its limits are refused, never silently dropped
        self.controllers = set(
            _read(os.path.join(self.base, "cgroup.subtree_control")).split())
        return removed

    def unenforceable(self, limits: Limits) -> str | None:
        """The one error for a limit whose controller our subtree lacks, else None."""
        for controller, key in limits.wanted():
            if controller not in self.controllers:
                return (f"cannot enforce {limits.show(key)}: the {controller} cgroup "
                        f"controller is not enabled for this worker ({self.base})")
        return None

    def keep_leftover(self, path: str) -> None:
        """A cgroup that could not be removed yet: the next attempt tries it again."""
        with self._leftover_lock:
            self.leftover.append(path)

    def new_attempt(self, limits: Limits) -> AttemptCgroup:
        """A fresh, empty cgroup with the limits written, before anything runs in it."""
        with self._leftover_lock:  # job slots: one of them retries each leftover
            tried, self.leftover = self.leftover, []
        for old in tried:
            if not _kill_and_remove(old, time.monotonic()):
                self.keep_leftover(old)
        path = os.path.join(self.base, f"{PREFIX}{os.getpid()}-{next(self._seq)}")
        try:
            os.mkdir(path)
        except FileExistsError:
            _kill_and_remove(path, time.monotonic() + EMPTY_WAIT)
            os.mkdir(path)
        cg = AttemptCgroup(self, path, limits)
        try:
            cg.write_limits()
        except OSError:
            cg.remove()
            raise
        return cg


class AttemptCgroup:
    """One attempt's cgroup: add its first process, kill everything, read usage, remove."""

    def __init__(self, owner: Delegation, path: str, limits: Limits) -> None:
        self.owner, self.path, self.limits = owner, path, limits

    def write_limits(self) -> None:
        lim = self.limits
        if lim.memory_max:
            _write(os.path.join(self.path, "memory.max"), str(lim.memory_max))
            try:  # swapping out instead of being killed would make the limit meaningless
                _write(os.path.join(self.path, "memory.swap.max"), "0")
            except OSError:
                pass
        if lim.cpu_max:
            quota = max(1000, round(lim.cpu_max * CPU_PERIOD))
            _write(os.path.join(self.path, "cpu.max"), f"{quota} {CPU_PERIOD}")
        if lim.tasks_max:
            _write(os.path.join(self.path, "pids.max"), str(lim.tasks_max))

    def add(self, pid: int) -> None:
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def kill(self) -> None:
        """SIGKILL every process in it, however it detached (the kernel walks the cgroup)."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
        except OSError:
            pass

    def usage(self) -> Usage:
        """CPU time (all processes that ever ran here), peak memory, OOM kills."""
        found = Usage()
        try:
            for line in _read(os.path.join(self.path, "cpu.stat")).splitlines():
                key, _, value = line.partition(" ")
                if key == "user_usec":
                    found.cpu_user_usec = int(value)
                elif key == "system_usec":
                    found.cpu_system_usec = int(value)
        except (OSError, ValueError):
            pass
        if "memory" in self.owner.controllers:
            try:
                found.memory_peak_bytes = int(_read(os.path.join(self.path, "memory.peak")))
            except (OSError, ValueError):
                pass
            try:
                for line in _read(os.path.join(self.path, "memory.events")).splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        found.oom_kills = int(value)
            except (OSError, ValueError):
                pass
        return found

    def finish(self) -> Usage:
        """The end of the attempt: kill what is left, wait for it, read usage, remove."""
        self.kill()
        _wait_empty(self.path, time.monotonic() + EMPTY_WAIT)
        found = self.usage()
        self.remove()
        return found

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # a process stuck in the kernel: retried later
                self.owner.keep_leftover(self.path)
