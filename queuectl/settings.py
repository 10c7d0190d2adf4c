"""Queue-wide settings kept in the database, so every worker and CLI sees the same values.

Backends store each value as text under its canonical key; parsing, defaults and the
short-lived cache are here so every backend treats them alike."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from queuectl.errors import ValidationError
from queuectl.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def _number_between(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        ok = (value > low if low_open else value >= low) and value <= high
        if not ok or math.isnan(value):
            bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
            raise ValueError(f"expected a number {bound} and at most {high:g}")
        return value

    return parse


def _duration(text: str) -> int:
    from queuectl.policy import parse_duration

    return round(parse_duration(text))


def _size(text: str) -> int:
    from queuectl.job import check_memory_max

    try:
        return check_memory_max(text)
    except ValidationError:
        raise ValueError("expected bytes or a size such as 512M, at least 1M (0: none)") from None


def _cores(text: str) -> float:
    from queuectl.job import check_cpu_max

    try:
        return check_cpu_max(float(text.strip()))
    except (ValueError, ValidationError):
        raise ValueError("expected a number of cores from 0.01 to 4096 (0: none)") from None


def _command(text: str) -> str:
    """A shell command, run later by `/bin/sh -c`; '' removes it. One line: a newline in a
    stored command is more likely a paste accident than intent."""
    if "\n" in text or "\0" in text:
        raise ValueError("expected a one-line shell command ('' for none)")
    return text.strip()


Value = float | int | str  # a setting's value: numbers, and text for commands (on-dead)


class Setting(Record):
    default: Value
    parse: Callable[[str], Value]
    help: str


SETTINGS: dict[str, Setting] = {
    "max-retries": Setting(3, _int_between(0, 1000), "retries after the first run for new jobs"),
    "backoff-base": Setting(2.0, _number_between(1.0, 1000.0), "delay after k-th failure = base**k s"),
    "backoff-max": Setting(3600.0, _number_between(0.0, 31_536_000.0), "cap on one backoff delay, s"),
    "lease-seconds": Setting(30, _int_between(2, 86_400), "a silent worker loses its job after this"),
    # Retention: seconds a finished job is kept (durations such as 12h, 7d); 0 keeps forever.
    "keep-completed": Setting(7 * 86400, _duration, "keep completed jobs this long, s (0 = forever)"),
    "keep-dead": Setting(30 * 86400, _duration, "keep dead jobs this long, s (0 = forever)"),
    "keep-canceled": Setting(7 * 86400, _duration, "keep canceled jobs this long, s (0 = forever)"),
    # Job limits: each attempt's cgroup limits for jobs that do not set their own (0 = none).
    "memory-max": Setting(0, _size, "memory limit of a job's cgroup, bytes or 512M (0 = none)"),
    "cpu-max": Setting(0.0, _cores, "CPU limit of a job's cgroup, cores (0 = none)"),
    "tasks-max": Setting(0, _int_between(0, 4_194_304), "process limit of a job (0 = none)"),
    # The dead-job hook: a shell command run once for each job that goes dead (queues may
    # have their own: `queue set Q --on-dead`), and the first delay before retrying it.
    "on-dead": Setting("", _command, "command run for each job that dies ('' = none)"),
    "on-dead-backoff": Setting(2.0, _number_between(0.0, 3600.0),
                               "first retry delay of a failed on-dead command, s (doubles)"),
}


def canonical_key(key: str) -> str:
    """`max_retries`, `MAX-RETRIES` and `max-retries` name the same setting."""
    name = key.strip().lower().replace("_", "-")
    if name not in SETTINGS:
        raise ValidationError(f"unknown config key {key!r} (known: {', '.join(SETTINGS)})")
    return name


def parse_value(key: str, text: str) -> Value:
    try:
        return SETTINGS[key].parse(text)
    except ValueError as exc:
        raise ValidationError(f"invalid value {text!r} for {key}: {exc}") from None


def decode(key: str, stored: str) -> Value:
    """Stored values were validated on the way in; fall back to the default if one is damaged."""
    try:
        return SETTINGS[key].parse(stored)
    except ValueError:
        return SETTINGS[key].default


# Seconds a process reuses the settings it read: longer than a worker's heartbeat interval
# (policy.HEARTBEAT_EVERY, 2 s), whose read of every setting (to log changes) refreshes the
# cache, so a worker reads them once per beat, not once more for its claims; a change still
# reaches it within about 3 s (README "Settings").
CACHE_TTL = 2.5


def merge(stored: dict[str, str]) -> dict[str, Value]:
    """Every setting: its stored value, or its default where none (or a damaged one) is stored."""
    return {key: decode(key, stored[key]) if key in stored else s.default
            for key, s in SETTINGS.items()}


class QueueConfig(Record):
    max_retries: int = 3
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    lease_seconds: int = 30
    keep_completed: int = 7 * 86400
    keep_dead: int = 30 * 86400
    keep_canceled: int = 7 * 86400
    memory_max: int = 0
    cpu_max: float = 0.0
    tasks_max: int = 0
    on_dead: str = ""
    on_dead_backoff: float = 2.0

    def keep_for(self, state: str) -> int:
        """Seconds a finished job of this state is kept; 0 forever."""
        return int(getattr(self, "keep_" + state))

    @classmethod
    def from_items(cls, items: dict[str, Value]) -> QueueConfig:
        # Each value has the type its setting's parser gives, which the field declares.
        fields: dict[str, Any] = {k.replace("-", "_"): v for k, v in items.items()}
        return cls(**fields)

    def backoff_delay(self, attempts: int) -> float:
        from queuectl.policy import backoff_delay

        return backoff_delay(attempts, self.backoff_base, self.backoff_max)


class SettingsCache:
    """Settings as of at most CACHE_TTL ago: read once per claim they would cost every job a
    query, and a change may well take a moment to reach running workers."""

    def __init__(self) -> None:
        self._at = 0.0
        self._conf: QueueConfig | None = None

    def get(self, load: Callable[[], dict[str, str]]) -> QueueConfig:
        if self._conf is not None and time.monotonic() - self._at < CACHE_TTL:
            return self._conf
        return self.fill(merge(load()))

    def fill(self, items: dict[str, Value]) -> QueueConfig:
        """Every setting (merge's answer), just read for another reason (`config_items`, a
        worker's beat): as fresh as a read of the cache's own."""
        self._conf = QueueConfig.from_items(items)
        self._at = time.monotonic()
        return self._conf

    def forget(self) -> None:
        self._conf = None
