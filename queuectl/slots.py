"""`worker run --slots K`: one worker process that runs up to K jobs at once.

On PostgreSQL the server's cost per job grows with the connections at work, not with the
worker processes (README "Performance"): 2 processes of 8 slots drain about as fast as 2 workers,
where 16 workers drain a fifth slower. So each slot is a thread running the ordinary
worker loop (`Worker`) under a name of its own (NAME.1 ... NAME.K), with its own lease,
heartbeat and registry row, while all slots share the process's one store, each call under
one lock: a store call is one transaction, so the lock only keeps two from interleaving on
the connection. The main thread keeps what belongs to the process: the signals, READY=1 and
the watchdog (pinged only while every slot's loop comes round), the store's check, the
delegated cgroup, and the process's one wakeup, whose news it passes to one idle slot at a
time (`slotwakeup`).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from queuectl.errors import DatabaseUnavailable
from queuectl.notify import Notifier
from queuectl.slotwakeup import SharedWakeup
from queuectl.stopping import StopRequest, drain_pipe, poke_pipe, wake_pipe
from queuectl.store import Store, Wakeup
from queuectl.worker import REPLACED_EXIT, Worker, WorkerOptions

IDLE_TICK = 1.0  # seconds: the longest the main thread sleeps between looks at the slots


class LockedStore:
    """The store, each call under the process's one lock (see the module's docstring);
    a slot's wakeup is its share of the process's one (`slotwakeup`)."""

    def __init__(self, store: Store, wakeups: Callable[[], Wakeup]) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._wakeups = wakeups

    def wakeup(self, watch: bool = False, queues: list[str] | None = None,
               exclude: list[str] | None = None) -> Wakeup:
        return self._store.wakeup(watch=True) if watch else self._wakeups()

    def __getattr__(self, name: str) -> Any:
        """Called once a name: the wrapper is kept, so a job's calls pay only the lock."""
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        lock = self._lock

        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return attr(*args, **kwargs)

        setattr(self, name, locked)
        return locked


class SlotStop(StopRequest):
    """A slot's stop request: no signals (the main thread has those and passes them on),
    a pipe of its own that `poke` makes readable; a slot's own reason to stop (a database
    replaced, a supervisor gone) wakes the main thread, which stops every slot."""

    def __init__(self, wake_main: Callable[[], None]) -> None:
        super().__init__()
        self._wake_main = wake_main
        self._poke_w = -1

    def install(self) -> None:
        self.fd, self._poke_w = wake_pipe()

    def request(self, reason: str) -> None:
        super().request(reason)
        self.wake_main()

    def wake_main(self) -> None:
        self._wake_main()

    def follow(self, lead: StopRequest) -> None:
        """Take on the process's stop request (same moment, same reason, hard or not)."""
        changed = False
        if lead.requested_at is not None and self.requested_at is None:
            self.requested_at, self.reason, changed = lead.requested_at, lead.reason, True
        if lead.hard and not self.hard:
            self.hard = changed = True
        if changed:
            self.poke()

    def poke(self) -> None:
        if self._poke_w >= 0:
            poke_pipe(self._poke_w)

    def close(self) -> None:
        for fd in (self.fd, self._poke_w):
            if fd >= 0:
                os.close(fd)
        self.fd = self._poke_w = -1


class SlotNotifier(Notifier):
    """What a slot would tell systemd, kept for the main thread: whether it is ready, what
    it is doing, and when its loop last came round (for the watchdog)."""

    def __init__(self, watchdog_interval: float | None, wake_main: Callable[[], None]) -> None:
        self._notifier = None  # sends nothing itself
        self.watchdog_interval = watchdog_interval
        self._next_ping = float("inf")
        self._wake_main = wake_main
        self.is_ready = False
        self.text = "starting"
        self.alive_at = time.monotonic()

    def ready(self, status: str = "idle") -> None:
        self.is_ready, self.text = True, status
        self._wake_main()

    def status(self, text: str) -> None:
        self.text = text

    def stopping(self, status: str) -> None:
        self.text = status

    def ping_if_due(self) -> None:
        self.alive_at = time.monotonic()

    def seconds_to_ping(self) -> float:
        """Come round at least every watchdog interval, so the main thread sees us live."""
        return self.watchdog_interval if self.watchdog_interval is not None else float("inf")


class SlotWorker(Worker):
    """One job slot: the worker loop, minus what the main thread does for the process."""

    stop: SlotStop
    notifier: SlotNotifier

    def __init__(self, store: Store, options: WorkerOptions, locator: str, lead: Worker,
                 wake_main: Callable[[], None],
                 on_step: Callable[[str], None] | None = None) -> None:
        super().__init__(store, options, locator, on_step)
        self.stop = SlotStop(wake_main)
        self.notifier = SlotNotifier(lead.notifier.watchdog_interval, wake_main)
        self._lead = lead
        self.error: BaseException | None = None

    def _report_waits(self) -> None:
        pass  # the main thread passes each of the store's waits to the slot that waits

    def _verify(self) -> None:
        pass  # the main thread checked the store once for every slot

    def _take_cgroup(self) -> None:
        self.cgroups = self._lead.cgroups

    def serve(self) -> None:
        """The thread's body: run the loop; an error ends this slot and stops the others."""
        try:
            self.exit_code = self.run()
        except BaseException as exc:  # noqa: BLE001 - raised again by the main thread
            self.error = exc
            self.stop.request(f"job slot {self.name} failed")
        finally:
            self.stop.wake_main()  # to look: a drained slot ends alone, the others on theirs


class SlotProcess:
    """The main thread of a worker process with job slots."""

    def __init__(self, store: Store, options: WorkerOptions, locator: str, slots: int,
                 on_step: Callable[[str], None] | None = None) -> None:
        shared = cast(Store, LockedStore(store, self._tap))
        self._wakeup: SharedWakeup | None = None  # opened once the store checked out
        # The main thread's worker only checks the store (unlocked: a stop interrupts the
        # check from this thread while another holds it) and holds the cgroup.
        self.lead = Worker(store, options, locator)
        self._wake_r, self._wake_w = wake_pipe()
        self._current = threading.local()
        base = self.lead.name  # a stable --name gives stable slot names: a restart reclaims
        self.slots = [
            SlotWorker(shared, _slot_options(options, base, i), locator, self.lead,
                       self._wake_main, on_step)
            for i in range(1, slots + 1)]
        for slot in self.slots:
            slot.stable_name = self.lead.stable_name
            slot.announce_root = slot is self.slots[0]
        self._threads: list[threading.Thread] = []

    def _wake_main(self) -> None:
        poke_pipe(self._wake_w)

    def _tap(self) -> Wakeup:
        assert self._wakeup is not None, "slots start once the shared wakeup is open"
        return self._wakeup.tap()

    def _serve(self, slot: SlotWorker) -> None:
        """A slot's thread: the store's waits in this thread are the slot's (`_waiting`)."""
        self._current.slot = slot
        slot.serve()

    def _waiting(self, exc: DatabaseUnavailable, retry_in: float) -> None:
        """A store call waits for the server: the warning is the calling slot's (its own
        one per outage), or the main thread's during the check."""
        slot = getattr(self._current, "slot", None)
        (slot or self.lead)._db_failed(exc, retry_in)

    def run(self) -> int:
        lead = self.lead
        lead.stop.install()
        lead.store.report_waits(self._waiting)
        try:
            # The store's check, once, and every slot's name free: a name in use stops the
            # process before any slot registers, with the one line a worker gives.
            lead.start(register=self._refuse_names_in_use)
            if lead.stop.requested:
                return 0
            lead._take_cgroup()
            self._wakeup = SharedWakeup(lead.lane_wakeup(), nudge=self._wake_main)
            try:
                for i, slot in enumerate(self.slots, 1):
                    thread = threading.Thread(target=self._serve, args=(slot,),
                                              name=f"slot-{i}")
                    thread.start()  # (may fail: no thread left under a limit)
                    self._threads.append(thread)
                self._watch()
            finally:
                lead.stop.request("worker stopping")
                for slot in self.slots:
                    slot.stop.follow(lead.stop)
                for thread in self._threads:  # those that started
                    thread.join()
                self._wakeup.close()
        finally:
            for slot in self.slots:
                slot.stop.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        for slot in self.slots:
            if slot.error is not None:
                raise slot.error
        codes = [slot.exit_code for slot in self.slots]
        return REPLACED_EXIT if REPLACED_EXIT in codes else max(codes)

    def _refuse_names_in_use(self) -> None:
        for slot in self.slots:
            slot.refuse_if_taken()

    def _watch(self) -> None:
        """Until every slot has ended: pass stop requests on, tell systemd."""
        lead, notifier, wakeup = self.lead, self.lead.notifier, self._wakeup
        assert wakeup is not None
        fds = [lead.stop.fd, self._wake_r] + ([wakeup.fd] if wakeup.fd is not None else [])
        ready_sent = lead._ready_sent  # READY=1 went early, during a long check
        stopping_sent = False
        while any(thread.is_alive() for thread in self._threads):
            ended = next((s.stop.reason for s in self.slots if s.stop.requested), None)
            if ended is not None:
                lead.stop.request(ended)  # a slot's own reason stops the whole process
            for slot in self.slots:
                slot.stop.follow(lead.stop)
            if lead.stop.requested:  # STOPPING=1 once, and no READY=1 after it
                if not stopping_sent:
                    stopping_sent = True
                    notifier.stopping("stopping: " + self._summary())
                else:
                    notifier.status("stopping: " + self._summary())
            elif not ready_sent and all(s.notifier.is_ready or s.error for s in self.slots):
                ready_sent = True
                notifier.ready(self._summary())
            elif ready_sent:
                notifier.status(self._summary())
            wait = IDLE_TICK
            if self._all_alive():  # else no ping, and no spin on the ping that is due
                notifier.ping_if_due()
                wait = max(0.0, min(wait, notifier.seconds_to_ping()))
            wakeup.tend()
            ready, _, _ = select.select(fds, [], [], wait)
            if lead.stop.fd in ready:
                lead.stop.drain()
            if self._wake_r in ready:
                drain_pipe(self._wake_r)  # (news on wakeup.fd: tended at the loop's top)

    def _all_alive(self) -> bool:
        """Whether every running slot's loop came round within the watchdog's timeout:
        a slot that hangs stops the pings, and systemd restarts the process."""
        interval = self.lead.notifier.watchdog_interval
        if interval is None:
            return True
        oldest = time.monotonic() - 2 * interval  # the interval is half the timeout
        return all(slot.notifier.alive_at >= oldest for slot, thread
                   in zip(self.slots, self._threads, strict=False) if thread.is_alive())

    def _summary(self) -> str:
        busy = sum(s.notifier.text.startswith("running") for s in self.slots)
        return f"{busy} of {len(self.slots)} job slots busy"


def _slot_options(options: WorkerOptions, base: str, number: int) -> WorkerOptions:
    """NAME.N, and the label (`Worker-2` of a supervisor) LABEL.N."""
    values = {field: getattr(options, field) for field in WorkerOptions.fields()}
    values.update(name=f"{base}.{number}",
                  label=f"{options.label}.{number}" if options.label else None)
    return WorkerOptions(**values)
