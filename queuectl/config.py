"""Queue-wide settings kept in the database, so every worker and CLI sees the same values."""

from __future__ import annotations

import math
from collections.abc import Callable

from queuectl.errors import ValidationError
from queuectl.record import Record


def _int_at_least(low: int, high: int) -> Callable[[str], int]:
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


class Setting(Record):
    default: float | int
    parse: Callable[[str], float | int]
    help: str


SETTINGS: dict[str, Setting] = {
    "max-retries": Setting(3, _int_at_least(0, 1000), "retries after the first run for new jobs"),
    "backoff-base": Setting(2.0, _number_between(1.0, 1000.0), "delay after k-th failure = base**k s"),
    "backoff-max": Setting(3600.0, _number_between(0.0, 31_536_000.0), "cap on one backoff delay, s"),
    "lease-seconds": Setting(30, _int_at_least(2, 86_400), "a silent worker loses its job after this"),
}


def canonical_key(key: str) -> str:
    """`max_retries`, `MAX-RETRIES` and `max-retries` name the same setting."""
    name = key.strip().lower().replace("_", "-")
    if name not in SETTINGS:
        raise ValidationError(f"unknown config key {key!r} (known: {', '.join(SETTINGS)})")
    return name


def parse_value(key: str, text: str) -> float | int:
    try:
        return SETTINGS[key].parse(text)
    except ValueError as exc:
        raise ValidationError(f"invalid value {text!r} for {key}: {exc}") from None


def decode(key: str, stored: str) -> float | int:
    """Stored values were validated on the way in; fall back to the default if one is damaged."""
    try:
        return SETTINGS[key].parse(stored)
    except ValueError:
        return SETTINGS[key].default


class QueueConfig(Record):
    max_retries: int = 3
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    lease_seconds: int = 30

    @classmethod
    def from_items(cls, items: dict[str, float | int]) -> QueueConfig:
        return cls(**{k.replace("-", "_"): v for k, v in items.items()})

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait after the attempts-th failed run: base ** attempts, capped."""
        try:
            delay = self.backoff_base**attempts
        except OverflowError:
            return self.backoff_max
        return min(delay, self.backoff_max)
