"""wakeup: an idle worker's wait ends soon after another process submits work."""

from __future__ import annotations

import select
import time

import pytest
from contract_helpers import DEADLINE, add
from waiting import wait_for

from queuectl.job import JobSpec
from queuectl.store import PollOnly, Store, Wakeup


def _readable(wakeup: Wakeup, fd: int, timeout: float) -> bool:
    """select() on the wakeup's descriptor until it is readable or the deadline passes."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], min(left, 0.5))[0]:
            return True
    return False


def _settled(store: Store) -> tuple[Wakeup, int]:
    """A wakeup with a descriptor and nothing pending, or a skip where the backend only polls."""
    wakeup = store.wakeup()
    fd = wakeup.fileno()
    if fd is None:
        wakeup.close()
        pytest.skip("this backend's wakeup relies on polling alone (fileno() is None)")
    _quiet(wakeup, fd)
    return wakeup, fd


def _quiet(wakeup: Wakeup, fd: int) -> None:
    """Drain until nothing is pending: a drain that says False with the descriptor not
    readable (a commit may stir several events, arriving over a moment)."""
    wait_for(lambda: not wakeup.drain() and not select.select([fd], [], [], 0)[0],
             DEADLINE, "the wakeup to go quiet", every=0.02)


def test_wakeup_is_a_wakeup_with_a_positive_poll_interval(store) -> None:
    wakeup = store.wakeup()
    try:
        assert isinstance(wakeup, Wakeup)
        assert wakeup.poll_interval > 0
        fd = wakeup.fileno()
        assert fd is None or (isinstance(fd, int) and fd >= 0)
    finally:
        wakeup.close()


def test_with_nothing_submitted_the_wakeup_stays_quiet_and_drain_says_false(
        store, open_another) -> None:
    """Drained, and with nothing committed since, the descriptor is not readable and drain()
    says False (a backend that only polls has no descriptor and always says False)."""
    wakeup = open_another(for_worker=True).wakeup()
    try:
        fd = wakeup.fileno()
        wakeup.drain()
        if fd is not None:
            assert not select.select([fd], [], [], 0)[0], "readable with nothing submitted"
        assert wakeup.drain() is False
        assert wakeup.drain() is False
    finally:
        wakeup.close()


def test_poll_only_has_no_descriptor_never_fires_and_polls_briskly() -> None:
    """PollOnly, for backends or hosts without change notification: the worker finds work
    by its poll alone, so that poll is shorter than a notifying backend's safety net."""
    wakeup = PollOnly()
    try:
        assert wakeup.fileno() is None
        assert wakeup.drain() is False
        assert 0 < wakeup.poll_interval < Wakeup.poll_interval
    finally:
        wakeup.close()


def test_enqueue_by_another_store_makes_the_wakeup_readable_and_drain_true(store, open_another) -> None:
    wakeup, fd = _settled(open_another(for_worker=True))
    try:
        add(store, "echo hi")
        assert _readable(wakeup, fd, DEADLINE), "no wakeup after another store's enqueue"
        assert wakeup.drain() is True
    finally:
        wakeup.close()


def test_wakeup_fires_again_for_each_later_enqueue(store, open_another) -> None:
    """After a drain the wakeup re-arms: a second submission wakes the worker again."""
    wakeup, fd = _settled(open_another(for_worker=True))
    try:
        for n in range(2):
            add(store, f"echo {n}")
            assert _readable(wakeup, fd, DEADLINE), f"no wakeup after enqueue {n}"
            assert wakeup.drain() is True
            _quiet(wakeup, fd)  # whatever else the commit caused, before the next one
    finally:
        wakeup.close()


def test_each_idle_worker_gets_its_own_wakeup(store, open_another) -> None:
    """Each job wakes at least one idle worker (a backend may wake more: SQLite wakes
    every one, PostgreSQL one a job): two jobs in one enqueue wake both."""
    one, fd_one = _settled(open_another(for_worker=True))
    two, fd_two = _settled(open_another(for_worker=True))
    try:
        assert fd_one != fd_two
        store.enqueue([JobSpec("true"), JobSpec("true")])
        assert _readable(one, fd_one, DEADLINE) and _readable(two, fd_two, DEADLINE)
        assert one.drain() is True and two.drain() is True
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("serving", [{"queues": ["mail", "a"]}, {"exclude": ["b"]}])
def test_a_job_wakes_an_idle_worker_that_serves_its_queue(store, open_another,
                                                          serving) -> None:
    """A wakeup told what its worker serves (its `--queue` list, or the queues an
    all-queue worker leaves to lanes) hears a job of one of them, one enqueue after
    another; it waits again after each (`fileno`, asked before each wait)."""
    wakeup, fd = _settled(open_another(for_worker=True))
    wakeup.close()
    wakeup = open_another(for_worker=True).wakeup(**serving)
    try:
        fd = wakeup.fileno()
        if fd is None:
            pytest.skip("this backend's wakeup relies on polling alone")
        _quiet(wakeup, fd)
        for n in range(2):
            add(store, f"echo {n}", queue="a")
            assert _readable(wakeup, wakeup.fileno(), DEADLINE), f"no wakeup for job {n}"
            assert wakeup.drain() is True
            _quiet(wakeup, fd)
    finally:
        wakeup.close()


def test_a_disarmed_wakeup_armed_again_wakes_for_later_work(store, open_another) -> None:
    """A busy worker disarms its wakeup; armed again (when it goes idle) it fires for what
    is submitted after, as before."""
    wakeup, fd = _settled(open_another(for_worker=True))
    try:
        wakeup.disarm()
        wakeup.disarm()  # twice is harmless
        add(store, "echo while busy")  # seen by the claim that follows arming, not the fd
        wakeup.arm()
        wakeup.arm()
        wakeup.drain()
        add(store, "echo after")
        assert _readable(wakeup, fd, DEADLINE), "no wakeup after arming again"
        assert wakeup.drain() is True
    finally:
        wakeup.close()


def test_news_passed_on_reaches_every_idle_worker(store, open_another) -> None:
    """News a wakeup was woken for but nobody behind it will act on (a process whose last
    idle slot took another job) is passed on (`pass_on`): after it, every idle worker's
    wakeup has heard of the job (where a backend wakes one idle worker a job, the others
    hear it only now; where it wakes every one, they heard it already)."""
    one, fd_one = _settled(open_another(for_worker=True))
    two, fd_two = _settled(open_another(for_worker=True))
    try:
        add(store)
        heard = wait_for(lambda: [w for w, fd in ((one, fd_one), (two, fd_two))
                                  if select.select([fd], [], [], 0.1)[0]], DEADLINE,
                         "some idle worker to hear the job")
        heard[0].drain()
        heard[0].pass_on()
        other = two if heard[0] is one else one
        assert _readable(other, other.fileno(), DEADLINE), "the other did not hear it"
        assert other.drain() is True
    finally:
        one.close()
        two.close()
