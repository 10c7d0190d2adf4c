"""`queuectl check`: one status line and a monitoring-plugins exit code, for Nagios, Icinga,
Zabbix or a systemd timer.

The plugin convention differs from the rest of the CLI on purpose: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN, and a database that cannot be read or arguments that make no sense
are UNKNOWN (3), because a monitoring system reads queuectl's usual 2 as CRITICAL. Reads go
through the storage contract only (`counts`, `queues`), so both backends answer alike.
"""

from __future__ import annotations

from queuectl.record import Record
from queuectl.store import Store

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
PREFIX = "QUEUECTL"


class Thresholds(Record):
    """What the caller asked to be alerted on; None: not checked."""

    dead_warn: int | None = None  # dead jobs >= this: WARNING
    dead_crit: int | None = None  # dead jobs >= this: CRITICAL
    waiting_warn: float | None = None  # oldest due job waited longer (seconds): WARNING
    waiting_crit: float | None = None  # ... CRITICAL
    workers_min: int | None = None  # fewer active workers: CRITICAL


def problems_with(t: Thresholds) -> str | None:
    """Why these thresholds contradict each other (a warning level above the critical one
    would never warn), or None."""
    if t.dead_warn is not None and t.dead_crit is not None and t.dead_warn > t.dead_crit:
        return f"--dead-warn {t.dead_warn} is above --dead-crit {t.dead_crit}"
    if (t.waiting_warn is not None and t.waiting_crit is not None
            and t.waiting_warn > t.waiting_crit):
        return (f"--waiting-warn {_seconds(t.waiting_warn)} is above --waiting-crit "
                f"{_seconds(t.waiting_crit)}")
    return None


class Reading(Record):
    """What the check looked at, read from one snapshot of the queue."""

    pending: int
    dead: int
    workers: int  # active workers (serving the queue, with --queue)
    oldest_waiting: float | None  # seconds the longest-due eligible job has waited; None: none


def read(store: Store, queue: str | None) -> Reading:
    """The numbers, through the contract only: jobs and active workers from `counts`, the
    oldest waiting job from `queues` (the largest of every queue's, or the one queue's)."""
    with store.reading():
        counts = store.counts(queue) if queue is not None else store.counts()
        waits = [q.oldest_waiting for q in store.queues()
                 if q.oldest_waiting is not None and (queue is None or q.name == queue)]
    return Reading(counts.get("pending", 0), counts.get("dead", 0),
                   counts.get("active_workers", 0), max(waits) if waits else None)


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def _range_above(limit: float | None, integer: bool) -> str:
    """A monitoring-plugins range that alerts where this check does: a count at or above
    N is "above N-1"; a wait longer than S is "above S"."""
    if limit is None:
        return ""
    return str(int(limit) - 1) if integer else f"{limit:g}"


def evaluate(r: Reading, t: Thresholds, queue: str | None = None) -> tuple[int, str]:
    """The exit code and the one line: status, the readings (those that crossed a threshold
    first, saying which), then perfdata ('label'=value[UOM];[warn];[crit];[min];[max])."""
    items: list[tuple[int, str]] = []  # (state, text), in display order

    def level(value: float, warn: float | None, crit: float | None,
              at_or_above: bool) -> tuple[int, str]:
        def crossed(limit: float | None) -> bool:
            return limit is not None and (value >= limit if at_or_above else value > limit)
        if crossed(crit):
            return CRITICAL, f"{'>=' if at_or_above else '>'} {crit:g}"
        if crossed(warn):
            return WARNING, f"{'>=' if at_or_above else '>'} {warn:g}"
        return OK, ""

    items.append((OK, f"{r.pending} pending"))
    state, why = level(r.dead, t.dead_warn, t.dead_crit, at_or_above=True)
    items.append((state, f"{r.dead} dead" + (f" ({why})" if why else "")))
    worker_word = "worker" if r.workers == 1 else "workers"
    if t.workers_min is not None and r.workers < t.workers_min:
        items.append((CRITICAL, f"{r.workers} {worker_word} (< {t.workers_min})"))
    else:
        items.append((OK, f"{r.workers} {worker_word}"))
    waited = r.oldest_waiting or 0.0
    state, _ = level(waited, t.waiting_warn, t.waiting_crit, at_or_above=False)
    if state != OK:
        limit = t.waiting_crit if state == CRITICAL else t.waiting_warn
        assert limit is not None
        items.append((state, f"oldest waiting {_seconds(waited)} (> {_seconds(limit)})"))
    elif r.oldest_waiting is not None:
        items.append((OK, f"oldest waiting {_seconds(waited)}"))
    else:
        items.append((OK, "none waiting"))

    code = max(s for s, _ in items)
    shown = [text for s, text in sorted(items, key=lambda item: -item[0])]  # stable: worst first
    scope = f"queue {queue}: " if queue is not None else ""
    workers_crit = f"{t.workers_min}:" if t.workers_min is not None else ""
    perfdata = " ".join([
        f"pending={r.pending};;;0",
        f"dead={r.dead};{_range_above(t.dead_warn, True)};{_range_above(t.dead_crit, True)};0",
        f"workers={r.workers};;{workers_crit};0",
        f"oldest_waiting={waited:.1f}s;{_range_above(t.waiting_warn, False)};"
        f"{_range_above(t.waiting_crit, False)};0",
    ])
    return code, f"{PREFIX} {NAMES[code]} - {scope}{', '.join(shown)} | {perfdata}"


def unknown(reason: str) -> str:
    """The line for a check that could not tell: the database unreadable, bad arguments."""
    return f"{PREFIX} {NAMES[UNKNOWN]} - {' '.join(reason.split())}"
