"""Structured events for people and machines.

Every event has a machine name (`job_claimed`) and key/value fields; the renderer chosen
for the output decides how it looks: a short human line on a terminal, one JSON object per
line elsewhere (and journald fields under systemd).
"""

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

# One human sentence per event; fields missing from an event render as "?".
MESSAGES = {
    "worker_started": "Worker {worker} started (pid {pid}, database {db})",
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
    "lease_reclaimed": "Reclaimed {job_id}: {error}",
    "config_changed": "Config changed: {key} = {value}",
    "database_error": "Database problem: {error}; retrying",
}


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def message_for(event: str, fields: dict[str, Any]) -> str:
    template = MESSAGES.get(event)
    if template is None:
        return event
    return template.format_map(_Missing(fields))


def _human(_: Any, __: str, event_dict: dict[str, Any]) -> str:
    event = event_dict.pop("event")
    label = event_dict.get("label") or event_dict.get("worker") or "queuectl"
    text = message_for(event, event_dict)
    if event_dict.get("level") in ("warning", "error", "critical") and event != "job_failed":
        text = f"{event_dict['level'].upper()}: {text}"
    return f"[{label}] {text}"


def _json(_: Any, __: str, event_dict: dict[str, Any]) -> str:
    event = event_dict["event"]
    record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    record.update(event_dict)
    record["message"] = message_for(event, event_dict)
    return json.dumps(record, ensure_ascii=False, default=str)


def setup_logging(fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process: fmt is auto, human or json."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "human" if out.isatty() else "json"
    renderer = _human if fmt == "human" else _json
    structlog.configure(
        processors=[structlog.processors.add_log_level, renderer],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
