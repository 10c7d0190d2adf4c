"""Waiting on a condition with a deadline: the one poll loop of the tests and the bench.

No pytest here: bench/ loads this file by its path (tests/ is no package).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class TimedOut(AssertionError, RuntimeError):
    """A test failure under pytest; a RuntimeError to the bench, which reports and goes on."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll until predicate() is truthy and return its value; fail naming `what` at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def holds_for(predicate: Callable[[], Any], seconds: float, what: str,
              every: float = 0.05) -> None:
    """Check throughout `seconds` that predicate() stays truthy, failing the moment it is
    not: for what must not happen within a window (a worker must not give up), where a
    sleep followed by one look would miss what happened and undid itself meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        if not predicate():
            raise AssertionError(f"not {what}, {seconds - (deadline - time.monotonic()):.1f} s in")
        if time.monotonic() >= deadline:
            return
        time.sleep(every)
