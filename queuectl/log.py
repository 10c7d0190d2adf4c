"""Structured events for people and machines.

Every event has a machine name (`job_claimed`) and key/value fields; the renderer chosen
for the output decides how it looks: journald fields under systemd, a short human line on a
terminal, one JSON object per line elsewhere.

The bound logger here is our own, shaped like structlog's (bind, one method per level, a
renderer called as (logger, method, event_dict)), which it replaced in 0.4: importing
structlog cost every worker start 40-60 ms of CPU (asyncio, its console renderer, the
stdlib bridge) for the one processor and the bound logger base we used of it, more than
the whole start-up budget. The output is the same, field for field.
"""

import _thread
import json
import sys
import time
from collections.abc import Callable
from json import encoder as json_encoder
from typing import Any, TextIO

# One human sentence per event; fields missing from an event render as "?".
MESSAGES = {
    "worker_started": "Worker {worker} starting (pid {pid}, database {db}, queues {queues}; "
    "wakes by {wakeup}; polls every {poll_interval} s)",
    "worker_ready": "Ready: waiting for jobs",
    "integrity_checked": "Checked the whole database {db} in {seconds} s (once per file and boot)",
    "running_as_root": "Running as root: every job runs as root too (the systemd unit runs "
    "workers as user queuectl)",
    "worker_stopping": "Stopping ({reason}); no new jobs will be claimed",
    "worker_stopped": "Worker {worker} stopped",
    "job_claimed": "Processing {job_id} → {command}",
    "job_succeeded": "Completed {job_id} in {duration_ms} ms",
    "job_failed": "Job {job_id} failed on attempt {attempt}/{max_attempts} ({error}); "
    "next try at {next_run_at}",
    "job_dead": "Job {job_id} failed on attempt {attempt}/{max_attempts} ({error}); "
    "moved to the dead letter queue",
    "job_released": "Put {job_id} back to pending ({reason}); no retry spent",
    "job_lost": "Lost the lease on {job_id}; stopped it, another worker may run it",
    "lease_reclaimed": "Reclaimed {job_id}: {error}; {killed_processes} leftover process(es) "
    "killed",
    "config_changed": "Config changed: {key} = {value}",
    "database_error": "Database problem: {error}; retrying",
    "database_recovered": "Database reachable again (after {failures} failed tries)",
    "job_canceling": "Canceling {job_id}: an operator asked; stopping its process group",
    "job_canceled": "Job {job_id} canceled on attempt {attempt}/{max_attempts}; no retry",
    "dependent_canceled": "Canceled {job_id}, which never ran: its parent {parent} ended "
    "{parent_state}",
    "job_retried": "Job {job_id} ({previous_state}) sent back to pending by {by}; its next "
    "attempt is number {next_attempt}",
    "queue_paused": "Queue paused by {paused_by} at {paused_at}: finishing running jobs, "
    "claiming nothing",
    "queue_resumed": "Queue resumed: claiming jobs again",
    "retention_purged": "Retention deleted {deleted} finished job(s) with their history",
    "database_unavailable": "Cannot use database {db}: {error}; the worker exits",
    "hook_delivered": "On-dead hook of {job_id} ran ({duration_ms} ms, try {tries})",
    "hook_retry": "On-dead hook of {job_id} failed on try {tries}/{max_tries} ({error}); "
    "retrying in {retry_in} s",
    "hook_failed": "On-dead hook of {job_id} failed on try {tries}/{max_tries} ({error}); "
    "giving up: nobody was told this job died",
    "hook_skipped": "No on-dead hook is set any more; the notice of {job_id} is dropped",
    "database_replaced": "Database {db} was deleted or replaced by another file: claiming "
    "nothing more, finishing the running job into the old file, then exiting with status "
    "{exit_code} to be restarted on the new one",
}


# journald MESSAGE_IDs of the events an admin may need explained (`journalctl -x` shows the
# text of systemd/queuectl.catalog for them; `journalctl MESSAGE_ID=...` finds every one).
# Fixed forever: scripts and alerts match on them. README "Logging" lists them.
MESSAGE_IDS = {
    "job_dead": "8d7a16b3312e42daac02372ee97167c7",
    "lease_reclaimed": "4991e95ee9db49bf8d2c098475bb4d4a",
    "database_unavailable": "f301137f9c3e48669e985f6cc8456b72",
    "disk_full": "7db2a241c45940f1836137ede423f394",
    "database_replaced": "deb954a71390427c832dcb63366d4b97",
    "hook_failed": "63aa082fe9624003a010496f5868721f",
}
# How the backends word a full disk (SQLite: our own "the disk is full"; PostgreSQL: the
# server's "No space left on device" / "could not extend file").
_DISK_FULL_TEXT = ("disk is full", "no space left on device", "could not extend file")


def message_id(event: str, fields: dict[str, Any]) -> str | None:
    """The catalog id for this event, if it has one: a database error caused by a full disk
    gets the disk-full id, whatever the event that reported it."""
    if event in ("database_error", "database_unavailable"):
        error = str(fields.get("error") or "").lower()
        if any(text in error for text in _DISK_FULL_TEXT):
            return MESSAGE_IDS["disk_full"]
    return MESSAGE_IDS.get(event)


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def message_for(event: str, fields: dict[str, Any]) -> str:
    template = MESSAGES.get(event)
    if template is None:
        return event
    try:
        return template.format_map(fields)  # the usual case: no copy of the fields
    except KeyError:
        return template.format_map(_Missing(fields))


# The renderers take the level from the method name (info, warning...), as structlog's
# add_log_level did, without a processor per event.
def _human(_: Any, level: str, event_dict: dict[str, Any]) -> str:
    event = event_dict.pop("event")
    label = event_dict.get("label") or event_dict.get("worker") or "queuectl"
    text = message_for(event, event_dict)
    if level in ("warning", "error", "critical") and event != "job_failed":
        text = f"{level.upper()}: {text}"
    return f"[{label}] {text}"


def _make_encode() -> Callable[[dict[str, Any]], str]:
    """One JSON encoder for every event. JSONEncoder.encode builds its C encoder anew on each
    call; this builds it once, unless this Python's C encoder differs from what we expect."""
    slow = json.JSONEncoder(ensure_ascii=False, default=str).encode
    try:
        fast = json_encoder.c_make_encoder(  # type: ignore[attr-defined]  # private, not in typeshed
            None, str, json_encoder.encode_basestring, None, ": ", ", ", False, False, True)
        sample = {"a": "é\n\"", "b": 1.5, "c": None, "d": [True, 2], "e": object}
        if "".join(fast(sample, 0)) != slow(sample):
            return slow
    except Exception:  # noqa: BLE001 - no C accelerator, or another signature
        return slow
    return lambda record: "".join(fast(record, 0))


_encode = _make_encode()
_second = [-1, ""]  # the last whole second rendered, and its text


def timestamp() -> str:
    """Now in UTC as 2026-01-31T12:34:56.789Z; the date and time part is made once a second
    (the pair is read and replaced whole: job slots stamp lines from several threads)."""
    global _second
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    last = _second
    if sec != last[0]:
        last = _second = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
    return f"{last[1]}.{ns // 1_000_000:03d}Z"


def _json(_: Any, level: str, event_dict: dict[str, Any]) -> str:
    record = {"ts": timestamp(), **event_dict, "level": level}
    record["message"] = message_for(event_dict["event"], event_dict)
    return _encode(record)


PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _journal_fields(_: Any, level: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """journald's native form: MESSAGE for people, every key as an upper-case field."""
    event = event_dict["event"]
    fields: dict[str, Any] = {
        "MESSAGE": message_for(event, event_dict),
        "PRIORITY": PRIORITIES.get(level, 6),
        "SYSLOG_IDENTIFIER": "queuectl",
    }
    catalog_id = message_id(event, event_dict)
    if catalog_id is not None:
        fields["MESSAGE_ID"] = catalog_id
    for key, value in event_dict.items():
        if key not in ("level", "label") and value is not None:
            fields[key.upper()] = value
    return fields


class _JournalLogger:
    """Sends each event to journald, or as JSON to stderr if journald cannot take it (so an
    event is never silently lost)."""

    def __init__(self, fallback: TextIO) -> None:
        from queuectl.journal import JournalSender

        self._sender = JournalSender()
        self._fallback = fallback

    def msg(self, fields: dict[str, Any]) -> None:
        try:
            self._sender.send(fields)
        except OSError:
            record = {k.lower(): v for k, v in fields.items()}
            print(json.dumps(record, ensure_ascii=False, default=str), file=self._fallback,
                  flush=True)


# One for every writer (each logger has its own): job slots (threads) log too, and a text
# stream is not safe to write from two threads at once. (threading's Lock; _thread is built
# in, so verbs that log import nothing more for it.)
_WRITING = _thread.allocate_lock()


class _LineWriter:
    """One event, one line, one write, under _WRITING."""

    def __init__(self, out: TextIO) -> None:
        self._write = out.write
        self._flush = out.flush

    def msg(self, line: str) -> None:
        with _WRITING:
            self._write(line + "\n")
            self._flush()


# A renderer: (logger, level method, event dict) -> what the logger's msg() takes.
Renderer = Callable[[Any, str, dict[str, Any]], Any]


class _EventLogger:
    """A bound logger with one method per level: builds an event's dict once (context, then
    the event's fields, then "event") and hands the renderer's result to the output."""

    __slots__ = ("_logger", "_render", "_context")

    def __init__(self, logger: Any, render: Renderer, context: dict[str, Any]) -> None:
        self._logger = logger
        self._render = render
        self._context = context

    def bind(self, **new_values: Any) -> "_EventLogger":
        """A logger with these fields added to every event (the same output)."""
        return _EventLogger(self._logger, self._render, {**self._context, **new_values})

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        self._logger.msg(self._render(self._logger, method, {**self._context, **fields,
                                                             "event": event}))

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)


def choose_format(fmt: str, out: TextIO) -> str:
    """auto: journald when systemd connected our stream to it, human on a terminal, else json."""
    if fmt != "auto":
        return fmt
    from queuectl.journal import stream_is_journal

    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return "json"
    if stream_is_journal(fd):
        return "journal"
    return "human" if out.isatty() else "json"


# The renderer and the output-maker setup_logging chose; None until it runs.
_config: list[Any] = [None, None]


def setup_logging(fmt: str = "auto", stream: TextIO | None = None) -> str:
    """Configure logging once per process: fmt is auto, human, json or journal; returns
    the format chosen."""
    out = stream or sys.stderr
    fmt = choose_format(fmt, out)
    if fmt == "journal":
        _config[:] = _journal_fields, lambda: _JournalLogger(out)
    else:
        _config[:] = _human if fmt == "human" else _json, lambda: _LineWriter(out)
    return fmt


def get_logger(**context: Any) -> _EventLogger:
    """A logger with these fields on every event; each has its own output object, made now.
    Before setup_logging, the auto format on stderr is set up (what a worker would get)."""
    if _config[0] is None:
        setup_logging()
    render, factory = _config
    return _EventLogger(factory(), render, dict(context))
