"""Wake idle workers the moment the database changes, instead of polling it.

Every commit writes to the database's `-wal` file (or the file itself), so inotify on its
directory tells an idle worker within microseconds that a job may have arrived — whoever
wrote it: `queuectl enqueue`, `dlq retry`, another worker's failure. A claim that finds
nothing writes nothing, so idle workers do not wake each other in a loop. The worker keeps a
slow poll as the safety net, so a missed event delays a job, never strands it.
"""

import ctypes
import os
import struct

from queuectl.store import PollOnly, Wakeup

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
DRAIN_READS = 16  # at most 1 MiB of events per drain
_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE


class DatabaseWatcher(Wakeup):
    """A readable fd while the database's files changed since the last drain()."""

    poll_interval = 1.0

    def __init__(self, db_path: str) -> None:
        # The C library Python itself runs on: find_library("c") would start `ldconfig -p`
        # in a subprocess, which costs every worker's start-up more than all the rest.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._libc = libc
        self._directory = os.path.dirname(os.path.abspath(db_path)).encode()
        self.fd: int = fd
        self._wd = -1
        if not self._add():
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {self._directory!r} failed")
        name = os.path.basename(db_path)
        self._names = {name.encode(), f"{name}-wal".encode()}

    def _add(self) -> bool:
        wd = self._libc.inotify_add_watch(self.fd, self._directory, _MASK)
        if wd < 0:
            return False
        self._wd = wd
        return True

    def describe(self) -> str:
        return "inotify on the database's directory"

    def arm(self) -> None:
        if self._wd < 0:
            self._add()  # on failure the worker's poll is the safety net

    def disarm(self) -> None:
        """Every write into the directory costs the writer an event per watch: a worker
        busy with a stream of jobs (it claims the next with each result) needs none."""
        if self._wd >= 0:
            self._libc.inotify_rm_watch(self.fd, self._wd)
            self._wd = -1
            self.drain()

    def fileno(self) -> int | None:
        return self.fd

    def drain(self) -> bool:
        """Consume pending events; True if one concerned the database. Reads a bounded
        amount: a process that keeps writing in the directory must not keep us here (what
        is left makes the fd readable again, and counts as a change)."""
        relevant = False
        for _ in range(DRAIN_READS):
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return relevant
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                relevant = relevant or name in self._names or not name
                offset += _EVENT.size + length
        return True

    def close(self) -> None:
        os.close(self.fd)


def watch(db_path: str) -> Wakeup:
    """A watcher, or polling alone where inotify is unavailable."""
    try:
        return DatabaseWatcher(db_path)
    except (OSError, AttributeError):
        return PollOnly()
