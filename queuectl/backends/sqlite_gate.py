"""A fair queue for SQLite's write lock: writers wait in the kernel, not in a retry loop.

SQLite offers no queue for its lock: every waiter polls. With hundreds of `enqueue` processes
started at once on a loaded host, the pollers take the CPU the lock holder needs, and the
unlucky ones give up after the busy timeout although the queue was moving all along. Here
every queuectl writer first takes an exclusive `flock` on `<database>-lock`: waiters sleep
until the kernel hands them the lock, so the holder runs. Each holder bumps a counter in that
file (at most every BUMP_EVERY seconds per process, so that a busy worker does not pay a
write per transaction), and a waiter gives up only after `budget` seconds in which nobody
got the lock: a long queue that moves is waited out, a stuck holder is reported as before.

A process that cannot open the side file (a read-only directory) goes without the gate: the
SQLite lock and the retry loop still keep it correct, only less fair.
"""

from __future__ import annotations

import fcntl
import os
import time

from queuectl.errors import DatabaseBusy

TICK = 0.25  # seconds between progress checks while waiting
BUMP_EVERY = 0.05  # seconds: how stale the progress counter may get while the line moves


class _Tick(Exception):
    pass


def _open_side(path: str, create: int = 0) -> int | None:
    """The side file, read-write if we may, else read-only (a waiter then only watches the
    others' progress); None if it cannot be opened at all."""
    for flags in (os.O_RDWR | create, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o660)
        except OSError:
            continue
    return None


class WriteGate:
    def __init__(self, db_path: str, budget: float) -> None:
        self.path = f"{db_path}-lock"
        self.budget = budget
        self.fd = _open_side(self.path, os.O_CREAT)
        self._armed = False
        self._bumped_at = -BUMP_EVERY  # monotonic
        self._bumps = 0
        self._held: int | None = None  # a descriptor of our own that holds the gate, if any
        self._helper: _Helper | None = None  # still in line for a wait that was given up

    def acquire(self) -> None:
        """Take the gate, waiting in line; DatabaseBusy after `budget` s without progress."""
        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._wait()
        self._bump()

    def release(self) -> None:
        if self._held is not None:  # taken by a helper's descriptor (_wait_beside)
            held, self._held = self._held, None
            os.close(held)  # which releases its lock
        elif self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _generation(self) -> bytes:
        assert self.fd is not None  # waiting and bumping happen only with the side file open
        return os.pread(self.fd, 8, 0)

    def _bump(self) -> None:
        """Tell waiters the line moved (8 bytes to the page cache; no fsync needed). Waiters
        only look for a change, so the value need not count: our pid and a count of our own
        bumps differ from whatever anyone wrote before, without reading it first."""
        t = time.monotonic()
        if t - self._bumped_at < BUMP_EVERY:
            return
        self._bumped_at = t
        self._bumps += 1
        assert self.fd is not None
        value = (os.getpid() << 40 | self._bumps % 2**40) % 2**64
        try:
            os.pwrite(self.fd, value.to_bytes(8, "little"), 0)
        except OSError:
            pass  # opened read-only: waiters only see progress from others

    def _on_tick(self, _signum: int, _frame: object) -> None:
        if self._armed:
            raise _Tick

    def _wait(self) -> None:
        """Block in flock, woken every TICK by a timer to check that the line moves.

        The timer's handler raises only while armed (inside the blocking call); a tick that
        lands just after flock returned is caught below and settled by a non-blocking retry,
        which succeeds because this descriptor already holds the lock."""
        import signal  # only a writer that has to wait pays for these imports
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self._wait_beside()  # timers and handlers belong to the main thread
        last, since = self._generation(), time.monotonic()
        assert self.fd is not None
        previous = signal.signal(signal.SIGALRM, self._on_tick)
        signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
        try:
            while True:
                try:
                    self._armed = True
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                    self._armed = False
                    return
                except _Tick:
                    self._armed = False
                    try:
                        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return
                    except BlockingIOError:
                        pass
                    last, since = self._check_progress(last, since)
        finally:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, previous)

    def _wait_beside(self) -> None:
        """Outside the main thread (a job slot) no timer can interrupt flock, so a helper
        thread waits in the kernel's line on a descriptor of its own (_Helper) while this
        one checks every TICK that the line moves. That descriptor then holds the gate until
        release. A wait given up leaves its helper in line: the next wait takes it over, and
        if none does before it gets the gate, it lets the gate go at once."""
        helper = self._helper
        if helper is None or not helper.adopt():
            try:
                helper = _Helper(self.path)
            except OSError:
                return self._poll()  # the side file cannot be opened again: try it often
        self._helper = helper
        last, since = self._generation(), time.monotonic()
        while not helper.got.wait(TICK):
            try:
                last, since = self._check_progress(last, since)
            except DatabaseBusy:
                if helper.abandon():
                    raise
        self._helper = None
        self._held = helper.fd

    def _poll(self) -> None:
        """Try again every millisecond or two."""
        last, since = self._generation(), time.monotonic()
        assert self.fd is not None
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            time.sleep(0.001 + 0.001 * int.from_bytes(os.urandom(1), "little") / 256)
            last, since = self._check_progress(last, since)

    def _check_progress(self, last: bytes, since: float) -> tuple[bytes, float]:
        """The line moved since the last look: wait on. Stuck for `budget` s: give up."""
        current, t = self._generation(), time.monotonic()
        if current != last:
            return current, t
        if t - since >= self.budget:
            raise DatabaseBusy(f"database {self.path[:-5]} is locked by another process "
                               f"(waited {self.budget:g} s)")
        return last, since


class _Helper:
    """A thread in the kernel's line for the gate, on a descriptor of its own (see
    WriteGate._wait_beside). Whether the waiter takes the gate or has given up is decided
    once, under `settle`, so a gate got after the waiter left is let go, never kept."""

    def __init__(self, path: str) -> None:
        import threading

        fd = _open_side(path)
        if fd is None:
            raise OSError(f"cannot open {path}")
        self.fd = fd
        self.got = threading.Event()
        self.settle = threading.Lock()
        self.abandoned = False
        self.done = False  # it got the gate, or failed
        threading.Thread(target=self._take, name="gate-wait", daemon=True).start()

    def _take(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            ok = True
        except OSError:
            ok = False  # the waiter gives up when the line stops moving
        with self.settle:
            self.done = True
            if ok and not self.abandoned:
                self.got.set()
                return
        os.close(self.fd)  # lets the gate go, if it had it

    def abandon(self) -> bool:
        """The waiter gives up; False if the gate came first (then it is the waiter's)."""
        with self.settle:
            if self.got.is_set():
                return False
            self.abandoned = True
            return True

    def adopt(self) -> bool:
        """A new wait takes this helper's place in line over; False if it is done."""
        with self.settle:
            if self.done:
                return False
            self.abandoned = False
            return True
