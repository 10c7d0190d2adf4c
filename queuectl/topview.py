"""`queuectl top`: the queue at a glance, refreshed every second, like htop for jobs.

Only `top` imports this module, and curses is imported only for the live view, so no other
command pays for either. It only reads the store (counts per queue, the worker registry, the
running, latest failed and dead jobs, completions in the last minute), through the storage
contract, in one read snapshot (`Store.reading`): none of those reads takes the write lock,
so watching the queue never slows it.
The screen is built as plain lines with a style each (`render`), which `--once` prints and
the live view paints, so both show the same thing and tests can read either.
"""

from __future__ import annotations

import os
import time

from queuectl.errors import DatabaseUnavailable
from queuectl.job import DEAD, FAILED, PROCESSING
from queuectl.policy import ACTIVE_WINDOW
from queuectl.record import Record
from queuectl.store import PauseInfo, QueueInfo, Store, WorkerInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from queuectl.job import Job

WINDOW = 60.0  # seconds of completions that make the throughput column
RECENT = 5  # latest failed and dead jobs fetched per refresh
MIN_WIDTH = 40


class Snapshot(Record):
    """What one refresh read from the store."""

    now: float  # the store's clock
    paused: PauseInfo | None
    queues: list[QueueInfo]
    lanes: dict[str, list[str]]  # queue -> a line on each lane file that serves it
    done: dict[str, int]  # completions per queue in the last WINDOW seconds
    workers: list[tuple[WorkerInfo, Job | None]]  # active workers and the job each runs
    failed: list[Job]
    dead: list[Job]


def collect(store: Store) -> Snapshot:
    """Read everything one screen shows: a handful of plain reads in one snapshot, so that
    the counts, the running jobs and the latest failures agree with each other."""
    with store.reading():
        now = store.now()
        running = {job.worker: job for job in store.iter_jobs(PROCESSING)}
        workers = []
        for info in store.workers():
            age = store.seconds_since_heartbeat(info.name)
            if age is not None and age < ACTIVE_WINDOW:
                workers.append((info, running.get(info.name)))
        paused, queues = store.paused(), store.queues()
        done = store.completed_since(WINDOW)
        failed, dead = store.recent_jobs(FAILED, RECENT), store.recent_jobs(DEAD, RECENT)
    workers.sort(key=lambda pair: (pair[0].host, pair[0].name))
    return Snapshot(now, paused, queues, lane_notes(), done, workers, failed, dead)


def lane_notes() -> dict[str, list[str]]:
    """queue -> `lane NAME: N workers as USER (FILE)` for each lane file serving it (a few small files in
    /etc, read afresh each refresh so a new lane shows without restarting top)."""
    from queuectl.lanes import serving

    return {queue: [f"lane {lane.name}: {lane.workers} worker{'s' if lane.workers > 1 else ''} "
                    f"as {lane.user} ({lane.path})" for lane in lanes]
            for queue, lanes in serving().items()}


# -- rendering -------------------------------------------------------------------------------
def _fit(text: object, width: int) -> str:
    """One cell: control characters flattened, cut with an ellipsis to `width`."""
    flat = "".join(c if c.isprintable() else " " for c in str(text))
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def _row(cells: Sequence[tuple[object, int]], width: int, right: frozenset[int] | set[int] = frozenset(),
         ) -> str:
    """Cells of fixed widths (the last takes what is left), joined by one space."""
    parts = []
    used = 0
    for i, (value, w) in enumerate(cells):
        if i == len(cells) - 1:
            w = max(1, width - used)
        cell = _fit(value, w)
        parts.append(cell.rjust(w) if i in right else cell.ljust(w))
        used += w + 1
    return " ".join(parts)[:width].rstrip()


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(epoch))


def render(snap: Snapshot, label: str, width: int = 80,
           height: int | None = None) -> list[tuple[str, str]]:
    """The screen as (text, style) lines, at most `width` characters each and, given a
    height, at most `height` lines (long sections are cut to fit, saying how many more).
    Styles: title, head, paused, run, failed, dead, plain, dim."""
    width = max(MIN_WIDTH, width)
    lines: list[tuple[str, str]] = []
    title = f"queuectl top · {label}"
    stamp = _clock(snap.now)
    lines.append((_fit(title, width - len(stamp) - 1).ljust(width - len(stamp)) + stamp,
                  "title"))
    if snap.paused is not None:
        lines.append((_fit(f"PAUSED by {snap.paused.by} since {_clock(snap.paused.since)}: "
                           "no job starts", width), "paused"))

    qhead = _row([("QUEUE", 16), ("WAIT", 6), ("RUN", 4), ("FAIL", 5), ("DEAD", 5),
                  ("DONE", 7), ("DONE/MIN", 8), ("WORKERS", 7), ("", 1)], width,
                 {1, 2, 3, 4, 5, 6, 7})
    queues = []
    for q in snap.queues:
        c = q.counts
        state = "paused" if q.paused else ""
        limit = f"max {q.concurrency}" if q.concurrency else ""
        hooks = f"{q.notices} on-dead pending" if q.notices else ""
        queues.append((_row([(q.name, 16), (c.get("pending", 0), 6), (c.get("processing", 0), 4),
                             (c.get("failed", 0), 5), (c.get("dead", 0), 5),
                             (c.get("completed", 0), 7), (snap.done.get(q.name, 0), 8),
                             (q.workers, 7), (" ".join(filter(None, (state, limit, hooks))), 1)],
                            width, {1, 2, 3, 4, 5, 6, 7}),
                       "paused" if q.paused else "plain"))
        queues += [(_fit(f"  {note}", width), "dim") for note in snap.lanes.get(q.name, [])]
    if not queues:
        queues.append(("(no jobs yet)", "dim"))

    whead = _row([("HOST", 12), ("WORKER", 16), ("JOB", 14), ("ELAPSED", 7), ("COMMAND", 1)],
                 width, {3})
    workers = []
    for info, job in snap.workers:
        if job is None:
            cells = [(info.host, 12), (info.name, 16), ("idle", 14), ("", 7), ("", 1)]
        else:
            elapsed = _duration(snap.now - job.started_at) if job.started_at else ""
            cells = [(info.host, 12), (info.name, 16), (job.id, 14), (elapsed, 7),
                     (job.command, 1)]
        workers.append((_row(cells, width, {3}), "run" if job else "plain"))
    if not workers:
        workers.append(("(no active worker)", "dim"))

    def recent(jobs: list[Job], style: str) -> list[tuple[str, str]]:
        rows = []
        for job in jobs:
            tries = f"{job.attempts}/{job.max_retries + 1}"
            rows.append((_row([(job.id, 14), (tries, 5), (_ago(snap.now - job.updated_at), 8),
                               (job.last_error or "", 22), (job.command, 1)], width, {2}),
                         style))
        return rows or [("(none)", "dim")]

    sections = [
        [(f"QUEUES ({len(snap.queues)})", "head"), (qhead, "dim")], queues,
        [(f"WORKERS ({len(snap.workers)} active)", "head"), (whead, "dim")], workers,
        [("LATEST FAILED (retrying)", "head")], recent(snap.failed, "failed"),
        [("LATEST DEAD", "head")], recent(snap.dead, "dead"),
    ]
    footer = ("q quit · completions per minute over the last 60 s", "dim")
    heads = [s for i, s in enumerate(sections) if i % 2 == 0]
    bodies = [s for i, s in enumerate(sections) if i % 2 == 1]
    if height is not None:
        fixed = len(lines) + sum(len(h) for h in heads) + 1
        bodies = _fit_rows(bodies, max(len(bodies), height - fixed))
    for head, body in zip(heads, bodies, strict=True):
        lines += head + body
    if height is not None:
        lines.append(footer)
        lines = lines[:height]
    return lines


def _fit_rows(bodies: list[list[tuple[str, str]]], budget: int) -> list[list[tuple[str, str]]]:
    """Share `budget` rows among the sections, one row at a time in turn, so each keeps a
    few; a cut section ends with a line saying how many more it has."""
    give = [0] * len(bodies)
    while budget > 0 and any(g < len(b) for g, b in zip(give, bodies, strict=True)):
        for i, body in enumerate(bodies):
            if budget > 0 and give[i] < len(body):
                give[i] += 1
                budget -= 1
    out = []
    for body, n in zip(bodies, give, strict=True):
        if n < len(body):
            n = max(1, n)
            out.append(body[: n - 1] + [(f"… and {len(body) - n + 1} more", "dim")])
        else:
            out.append(body)
    return out


def snapshot_text(store: Store, label: str, width: int = 80) -> str:
    """`top --once`: one snapshot as plain text (no colour, no height limit)."""
    return "\n".join(text for text, _ in render(collect(store), label, width))


# -- the live view ---------------------------------------------------------------------------
def run_live(store: Store, label: str, interval: float = 1.0) -> int:
    """Repaint every `interval` seconds until `q` (or Ctrl-C)."""
    import curses
    import locale

    locale.setlocale(locale.LC_ALL, "")  # so curses writes job ids and commands as UTF-8
    try:
        curses.wrapper(lambda screen: _live(curses, screen, store, label, interval))
    except KeyboardInterrupt:
        pass
    return 0


def _styles(curses: Any) -> dict[str, int]:
    """Attributes per style: colours only where the terminal has them (and NO_COLOR is
    unset), bold and reverse video otherwise."""
    bold, reverse = curses.A_BOLD, curses.A_REVERSE
    styles = {"title": reverse, "head": bold, "paused": bold, "run": 0, "failed": 0,
              "dead": bold, "plain": 0, "dim": 0}
    if curses.has_colors() and not os.environ.get("NO_COLOR"):
        curses.start_color()
        try:
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        for n, colour in enumerate((curses.COLOR_RED, curses.COLOR_GREEN, curses.COLOR_YELLOW,
                                    curses.COLOR_CYAN), start=1):
            curses.init_pair(n, colour, background)
        red, green, yellow, cyan = (curses.color_pair(n) for n in range(1, 5))
        styles.update(head=bold | cyan, paused=bold | red, run=green, failed=yellow,
                      dead=bold | red)
    return styles


def _live(curses: Any, screen: Any, store: Store, label: str, interval: float) -> None:
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    styles = _styles(curses)
    snap: Snapshot | None = None
    error = ""
    while True:
        try:
            snap, error = collect(store), ""
        except DatabaseUnavailable as exc:
            error = f"database unavailable: {exc} (retrying)"
        height, width = screen.getmaxyx()
        lines = render(snap, label, width - 1, height) if snap is not None else []
        if error:
            lines = [(_fit(error, width - 1), "paused"), *lines][:height]
        screen.erase()
        for y, (text, style) in enumerate(lines[:height]):
            try:
                screen.addnstr(y, 0, text, max(0, width - 1), styles[style])
            except curses.error:  # the terminal shrank under us: the next paint fits
                pass
        screen.refresh()
        deadline = time.monotonic() + interval
        while (left := deadline - time.monotonic()) > 0:
            screen.timeout(max(1, int(left * 1000)))
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                break
