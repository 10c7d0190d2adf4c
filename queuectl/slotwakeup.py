"""One store wakeup for all of a process's job slots, fanned out to each.

A slot waits for new work as a worker does, but a wakeup per slot costs K times what one
costs: on PostgreSQL K `LISTEN` connections, each signalled by the server at every commit
that notifies (about 25 µs of server CPU per job for each listener); on SQLite K inotify
instances (128 a user by default) and K events for each write to the database's directory.
So the process opens one (`SharedWakeup`), and each slot gets a `SlotWakeup`: a pipe the main
thread pokes whenever the shared one fires, with the same arm/disarm/drain contract. The
shared one is armed while any slot's is, so a slot that arms and then looks at the queue
misses nothing committed after it armed: the main thread reads each event before it decides
whom to poke.

The shared wakeup's own calls (its connection, its inotify watch) are made under one lock. A
slot waits for that lock only briefly: while the main thread holds it for long (PostgreSQL's
LISTEN connection reconnecting, up to its connect timeout), a slot goes on, and the main
thread brings the shared wakeup's watching into line with the slots' afterwards. Meanwhile
the slots' poll covers, as it covers any missed wakeup.
"""

from __future__ import annotations

import os
import threading

from queuectl.store import Wakeup

SETTLE_WAIT = 0.5  # seconds a slot waits for the shared wakeup's lock before it goes on


class SharedWakeup:
    """The process's one wakeup; the main thread tends it (`tend`, `fan_out`)."""

    def __init__(self, source: Wakeup) -> None:
        self._source = source
        self._calls = threading.Lock()  # the source's own calls
        self._state = threading.Lock()  # the slots' wakeups; never held across I/O
        self._armed: set[SlotWakeup] = set()
        self._source_armed = True  # a new wakeup watches
        self.fd = source.fileno()  # constant for every backend's wakeup

    @property
    def poll_interval(self) -> float:
        return self._source.poll_interval

    def describe(self) -> str:
        return f"{self._source.describe()}, one for the process's job slots"

    def tap(self) -> SlotWakeup:
        """A slot's wakeup, armed as a new one is."""
        tap = SlotWakeup(self)
        with self._state:
            self._armed.add(tap)
        return tap

    def set_armed(self, tap: SlotWakeup, armed: bool) -> None:
        with self._state:
            if tap.closed:
                return
            if armed:
                self._armed.add(tap)
            else:
                self._armed.discard(tap)
        self._settle(SETTLE_WAIT)

    def drop(self, tap: SlotWakeup) -> None:
        """A slot's wakeup closes: no poke reaches its pipe after this."""
        with self._state:
            self._armed.discard(tap)
            tap.closed = True
            tap.close_pipe()
        self._settle(SETTLE_WAIT)

    def _settle(self, timeout: float) -> None:
        """Arm the shared wakeup while any slot's is armed, else disarm it. Without the lock
        within `timeout` (-1: wait), leave it to the main thread's next `tend`."""
        if not self._calls.acquire(timeout=timeout):
            return
        try:
            while True:  # again, in case a slot changed its mind meanwhile
                with self._state:
                    wanted = bool(self._armed)
                if wanted == self._source_armed:
                    return
                self._source_armed = wanted
                if wanted:
                    self._source.arm()
                else:
                    self._source.disarm()
        finally:
            self._calls.release()

    def tend(self) -> None:
        """The main thread, each time round: let the source reconnect if it lost its
        connection (PostgreSQL), and settle what the slots asked for meanwhile."""
        with self._calls:
            self._source.fileno()
        self._settle(-1)

    def fan_out(self) -> None:
        """The shared descriptor is readable: read it, then poke every slot armed now."""
        with self._calls:
            news = self._source.drain()
        if news:
            with self._state:
                for tap in self._armed:
                    tap.poke()

    def close(self) -> None:
        self._source.close()


class SlotWakeup(Wakeup):
    """What one slot waits on: its own pipe, poked by the main thread."""

    def __init__(self, shared: SharedWakeup) -> None:
        self._shared = shared
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.closed = False

    @property
    def poll_interval(self) -> float:  # type: ignore[override]  # brisk behind a pooler
        return self._shared.poll_interval

    def describe(self) -> str:
        return self._shared.describe()

    def fileno(self) -> int | None:
        return self._r if self._shared.fd is not None else None

    def arm(self) -> None:
        self._shared.set_armed(self, True)

    def disarm(self) -> None:
        self._shared.set_armed(self, False)

    def poke(self) -> None:
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass  # already readable

    def drain(self) -> bool:
        news = False
        try:
            while os.read(self._r, 512):
                news = True
        except BlockingIOError:
            pass
        return news

    def close_pipe(self) -> None:
        os.close(self._r)
        os.close(self._w)

    def close(self) -> None:
        self._shared.drop(self)
