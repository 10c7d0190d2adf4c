"""SQLite's `quick_check` once per database file and boot, not at every worker start.

The check reads the whole file: with a million finished jobs a worker took seconds to start
from a cold page cache, and after a reboot every instance started at once, each reading the
whole file. So the first worker to start checks, and records what it checked in a side file,
`<database>-checked`: the file's identity (device and inode of the file the connection holds)
and this boot's id. A worker that finds its own file and boot recorded skips the check.

- One at a time: the checker holds an `flock` on the side file; the others wait for it (up to
  WAIT seconds), then read the record and skip. Workers do all this after READY=1 (see
  Worker._verify), so a long check after a reboot never holds up systemd's start job. A
  check that finds damage records nothing, so every worker refuses the file, as before.
- A crash between the check and the record, or a torn record: the next start checks again.
- A new file (created, restored by `mv` or `cp --remove-destination`) has a new inode: checked.
  A reboot (new boot id): checked. What is not checked again within one boot is the same inode
  overwritten in place (`cp backup.db queue.db`) or damaged later: operations that reach a
  damaged page still fail with DatabaseUnavailable, and a worker's probe at open still touches
  every table and index the hot paths use.
- Permissions: created 0660 less the umask, like `-lock` and the database (workers and the
  CLI run with umask 007), never through a symlink (the directory is group-writable). A
  process that cannot write it still reads it; one that cannot open it checks every time.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable

SUFFIX = "-checked"
# Seconds to wait for another process's check before checking ourselves: the check of a
# 10-million-job file from a cold page cache takes about a minute.
WAIT = 600.0
POLL = 0.05  # seconds between tries for the lock while another process checks


class Stopped(Exception):
    """The caller was asked to stop while waiting for another process's check."""


def check_once(db_path: str, identity: tuple[int, int], boot_id: str,
               check: Callable[[], None],
               stopped: Callable[[], bool] = lambda: False) -> float | None:
    """Run `check` unless this file and boot are recorded as checked; then record them.
    Returns the seconds the check took, or None if it was skipped. `check` raises on damage
    (and nothing is recorded); waiting for another checker raises Stopped once `stopped()`."""
    record = f"queuectl-checked {identity[0]} {identity[1]} {boot_id}\n".encode()
    fd = _open(db_path + SUFFIX)
    if fd is None:
        return _timed(check)
    try:
        locked = _lock(fd, stopped)
        if os.pread(fd, 4096, 0) == record:
            return None
        took = _timed(check)
        if locked:  # without the lock another checker may be writing: leave it to them
            _write(fd, record)
        return took
    finally:
        os.close(fd)  # releases the lock


def _open(path: str) -> int | None:
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o660)
        except OSError:
            continue
    return None


def _lock(fd: int, stopped: Callable[[], bool]) -> bool:
    """Wait (polling, so a stop is not held up in the kernel) while another process checks;
    False if it takes longer than WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if stopped():
                raise Stopped() from None
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
        except OSError:
            return False


def _write(fd: int, record: bytes) -> None:
    """Page cache only, no fsync: after a power loss the boot id differs anyway."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError:
        pass  # opened read-only: the next start checks again


def _timed(check: Callable[[], None]) -> float:
    started = time.monotonic()
    check()
    return time.monotonic() - started
