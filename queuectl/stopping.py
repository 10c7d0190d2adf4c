"""How a worker is asked to stop: SIGTERM or SIGINT once (graceful), twice (now).

Signals only set flags and write to a pipe (Python's wakeup fd), so whatever the worker is
waiting in (select on the database, poll on a job) returns at once and the loop decides.
"""

from __future__ import annotations

import os
import signal
import time

from queuectl.process import signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class StopRequest:
    def __init__(self) -> None:
        self.requested_at: float | None = None  # monotonic
        self.reason = ""
        self.hard = False  # a second signal: stop the running job now
        self.fd = -1

    def install(self) -> None:
        """Catch SIGTERM and SIGINT; `fd` becomes readable on each signal."""
        self.fd, wake_w = wake_pipe()
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.requested_at is None:
            self.request(signal_name(signum))
        else:
            self.hard = True

    def request(self, reason: str) -> None:
        if self.requested_at is None:
            self.requested_at, self.reason = time.monotonic(), reason

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def grace_ends(self, grace: float) -> float | None:
        """When a running job must be stopped (monotonic), or None while not stopping."""
        return None if self.requested_at is None else self.requested_at + grace

    def past_grace(self, grace: float) -> bool:
        """A second signal, or the grace period after the first one is over."""
        end = self.grace_ends(grace)
        return self.hard or (end is not None and time.monotonic() >= end)

    def drain(self) -> None:
        drain_pipe(self.fd)


def wake_pipe() -> tuple[int, int]:
    """A wake-up pipe (read end, write end), both ends non-blocking."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    return read_end, write_end


def drain_pipe(fd: int) -> bool:
    """Read a non-blocking wake-up pipe empty; True if it was readable."""
    woken = False
    try:
        while os.read(fd, 512):
            woken = True
    except BlockingIOError:
        pass
    return woken


def poke_pipe(fd: int) -> None:
    """Make a non-blocking wake-up pipe readable (a full one already is)."""
    try:
        os.write(fd, b"x")
    except BlockingIOError:
        pass
