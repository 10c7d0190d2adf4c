"""One store wakeup for all of a process's job slots, and one idle slot woken at a time.

A slot waits for new work as a worker does, but a wakeup per slot costs K times what one
costs: on PostgreSQL K `LISTEN` connections, each signalled by the server at every commit
that notifies; on SQLite K inotify instances (128 a user by default) and K events for each
write to the database's directory. And K idle slots woken by one enqueue make K claims, of
which K - 1 find nothing. So the process opens one wakeup (`SharedWakeup`), and each slot
gets a `SlotWakeup`: a pipe the main thread pokes, with the same arm/disarm/drain contract.

News goes to one idle slot, and only if no idle slot has a poke it has not read yet (that
slot claims after it reads it, so it will see what the news was about). The slot woken for
news that takes a job passes the turn on as it starts the job: the next idle slot is poked
and claims too, so a burst of N jobs wakes N slots one after another, and the last claim
that finds nothing ends it. A slot armed for a long job's cancel checks (`arm_busy`) hears
every change instead, and never gets the turn. A lost turn (its slot stopped) is passed on
too; what is lost anyway is found by each idle slot's look at every heartbeat.

The shared wakeup is armed while any slot's is, so nothing committed after a slot armed
and looked at the queue goes unheard; for new work while any slot is idle (on PostgreSQL
the process is then one registered idle listener, which an enqueue may wake), else only
for the long jobs' watches (`arm_busy`): the main thread reads each event before it decides
whom to poke. Its own calls (its connection, its inotify watch) are made under one lock,
which a slot waits for only briefly: while it is held for long (PostgreSQL's LISTEN
connection reconnecting, up to its connect timeout) a slot goes on, and whoever gets the
lock next brings the watching into line. Starting to watch again is news, since a slot
may have looked before it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from queuectl.stopping import drain_pipe, poke_pipe, wake_pipe
from queuectl.store import Wakeup

SETTLE_WAIT = 0.5  # seconds a slot waits for the shared wakeup's lock before it goes on
# How the shared wakeup watches: not at all; for the long jobs' watches only (arm_busy: on
# PostgreSQL, not registered as an idle worker that an enqueue may wake); for new work too.
OFF, BUSY, IDLE = 0, 1, 2


class SharedWakeup:
    """The process's one wakeup; the main thread tends it (`tend`)."""

    def __init__(self, source: Wakeup, nudge: Callable[[], None] = lambda: None) -> None:
        self._source = source
        self._nudge = nudge  # wakes the main thread, to tend
        self._calls = threading.Lock()  # the source's own calls
        self._state = threading.Lock()  # the slots' wakeups; held for nothing that blocks
        self._armed: set[SlotWakeup] = set()
        self._source_level = IDLE  # a new wakeup watches (set as a change begins)
        self._settling = False  # a change of the source's watching is under way
        # Every idle slot had a poke it had not read when the main thread last tended: the
        # source may not be ready for more news (PostgreSQL: unregistered), and the next
        # slot about to wait asks the main thread to tend again.
        self._unready = False
        # A poke a slot had not read when it took another job, with no idle slot left to
        # hand it to: news nobody here acts on, passed on (`Wakeup.pass_on`).
        self._unheard = False
        self.fd = source.fileno()  # constant for every backend's wakeup

    @property
    def poll_interval(self) -> float:
        return self._source.poll_interval

    def describe(self) -> str:
        return f"{self._source.describe()}, one for the process's job slots"

    def tap(self) -> SlotWakeup:
        """A slot's wakeup, armed (and idle) as a new one is."""
        tap = SlotWakeup(self)
        with self._state:
            self._armed.add(tap)
        return tap

    def set_armed(self, tap: SlotWakeup, armed: bool, idle: bool = True) -> None:
        with self._state:
            if tap.closed:
                return
            if armed:
                self._armed.add(tap)
                tap.idle = idle
            else:
                self._armed.discard(tap)
                self._pass_turn(tap)  # it took a job
            if not self._settling and self._wanted() == self._source_level:
                return  # as wanted already (a long job's watch arms at every turn)
        self._settle(SETTLE_WAIT)

    def waiting(self, tap: SlotWakeup) -> None:
        """An idle slot is about to wait for news: if the source was left unready, tend."""
        with self._state:
            if not (tap.idle and tap in self._armed and not tap.poked):
                return  # (a long job's watch: it does not make the process ready)
            nudge, self._unready = self._unready, False
        if nudge:
            self._nudge()

    def read(self, tap: SlotWakeup) -> bool:
        """A slot reads its pipe (and claims after that). Under the lock that pokes, so
        `poked` is true exactly while a poke is unread: one read meanwhile would leave
        it set on an empty pipe, and no idle slot would be woken again."""
        with self._state:
            tap.poked = False
            return not tap.closed and drain_pipe(tap.pipe_r)

    def drop(self, tap: SlotWakeup) -> None:
        """A slot's wakeup closes (once): no poke reaches its pipe after this."""
        with self._state:
            if tap.closed:
                return
            self._armed.discard(tap)
            self._pass_turn(tap)  # a stopping slot does not claim
            tap.closed = True
            tap.close_pipe()
        self._settle(SETTLE_WAIT)

    def _pass_turn(self, tap: SlotWakeup) -> None:
        """(Under _state.) A slot woken for news leaves the idle ones: wake the next. A
        poke it had not read came after its claim looked, so if no idle slot is left to
        take it over, that news is passed on (on PostgreSQL it may be a wake meant for this
        process alone)."""
        had_turn, unread = tap.turn or tap.poked, tap.poked
        tap.turn = tap.poked = False
        if had_turn and not self._wake_one() and unread:
            self._unheard = True

    def _wake_one(self) -> bool:
        """(Under _state.) Poke one idle slot, unless one has a poke it has not read;
        whether an idle slot now has one."""
        idle = [tap for tap in self._armed if tap.idle]
        if idle and not any(tap.poked for tap in idle):
            tap = idle[0]
            tap.poked = tap.turn = True
            tap.poke()
        return any(tap.poked for tap in idle)

    def _wanted(self) -> int:
        """(Under _state.) How the source should watch for the armed slots."""
        if any(tap.idle for tap in self._armed):
            return IDLE
        return BUSY if self._armed else OFF

    def _settle(self, timeout: float) -> None:
        """Arm the shared wakeup while any slot's is armed, else disarm it. Without the lock
        within `timeout`, leave it to whoever holds it, or to the main thread's `tend`."""
        if not self._calls.acquire(timeout=timeout):
            return
        try:
            self._settle_locked()
        finally:
            self._calls.release()

    def _settle_locked(self) -> None:
        """(Under _calls.)"""
        with self._state:
            unheard, self._unheard = self._unheard, False
        if unheard:
            self._source.pass_on()
        try:
            while True:  # again, in case a slot changed its mind meanwhile
                with self._state:
                    wanted, was = self._wanted(), self._source_level
                    if wanted == was:
                        return
                    self._settling, self._source_level = True, wanted
                self._watch_as(wanted)
                if wanted > was:
                    # A slot that armed while the source did not watch (for it) may have
                    # looked at the queue before it did: that is news.
                    with self._state:
                        self._news()
        finally:
            with self._state:
                self._settling = False

    def _watch_as(self, level: int) -> None:
        """(Under _calls.) The source watches as `level` says."""
        if level == IDLE:
            self._source.arm()
        elif level == BUSY:
            self._source.arm_busy()
        else:
            self._source.disarm()

    def tend(self) -> None:
        """The main thread, each time round (and as soon as the source is readable): read
        the source, which on PostgreSQL also reconnects a lost LISTEN connection (and says
        so: anything may have happened meanwhile); on news, poke the slots watching long
        jobs and one idle slot; try again a watch that could not be set (inotify's limit);
        settle what the slots asked for meanwhile; then, about to wait, let the source get
        ready (PostgreSQL: register again as an idle listener, after a wake took it out),
        but only while an idle slot has no poke it has not read: a process whose idle slots
        are all woken already must not draw the next job's wake (another worker's idle
        slot would miss it); the first of them about to wait again calls us back
        (`waiting`). Not while a slot's LISTEN or UNLISTEN holds the source for long: a
        readable descriptor stays readable for the next round."""
        if not self._calls.acquire(timeout=SETTLE_WAIT):
            return
        try:
            if self._source.drain():
                with self._state:
                    self._news()
            if self._source_level != OFF:
                self._watch_as(self._source_level)  # (a no-op where it watches)
            self._settle_locked()
            with self._state:
                free = any(tap.idle and not tap.poked for tap in self._armed)
                self._unready = self._source_level == IDLE and not free
            if free and self._source_level == IDLE:
                self._source.fileno()
        finally:
            self._calls.release()

    def _news(self) -> None:
        """(Under _state.)"""
        for tap in self._armed:
            if not tap.idle:
                tap.poke()  # a long job's cancel checks hear every change
        self._wake_one()

    def close(self) -> None:
        self._source.close()


class SlotWakeup(Wakeup):
    """What one slot waits on: its own pipe, poked by the main thread."""

    def __init__(self, shared: SharedWakeup) -> None:
        self._shared = shared
        self.pipe_r, self._w = wake_pipe()
        self.closed = False
        self.idle = True  # armed for new work, not for a long job's watch
        self.poked = False  # poked for news, and not read yet
        self.turn = False  # woken for news: if it takes a job, the next idle slot is woken

    @property
    def poll_interval(self) -> float:  # type: ignore[override]  # brisk behind a pooler
        return self._shared.poll_interval

    def describe(self) -> str:
        return self._shared.describe()

    def fileno(self) -> int | None:
        self._shared.waiting(self)
        return self.pipe_r if self._shared.fd is not None else None

    def arm(self) -> None:
        self._shared.set_armed(self, True)

    def arm_busy(self) -> None:
        self._shared.set_armed(self, True, idle=False)

    def disarm(self) -> None:
        self._shared.set_armed(self, False)

    def poke(self) -> None:
        poke_pipe(self._w)

    def drain(self) -> bool:
        return self._shared.read(self)

    def close_pipe(self) -> None:
        os.close(self.pipe_r)
        os.close(self._w)

    def close(self) -> None:
        self._shared.drop(self)
