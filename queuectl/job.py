"""The job: its states, its stored record, and validation of what users submit."""

from __future__ import annotations

import json
import math
import re  # already loaded by json

from queuectl.clock import iso, iso_ms, parse_iso
from queuectl.errors import Refused, ValidationError
from queuectl.record import Record

PENDING, PROCESSING, COMPLETED, FAILED, DEAD = "pending", "processing", "completed", "failed", "dead"
CANCELED = "canceled"  # stopped by an operator: terminal, neither success nor dead, never retried
STATES = (PENDING, PROCESSING, COMPLETED, FAILED, DEAD, CANCELED)
# A job in one of these states will never run again by itself: `wait` stops here, and only
# these may be purged or expire.
TERMINAL = (COMPLETED, DEAD, CANCELED)
# States `cancel` acts on: waiting ones become canceled at once, a running one is stopped.
CANCELLABLE = (PENDING, FAILED, PROCESSING)

# execve() refuses a single argument longer than 128 KiB (MAX_ARG_STRLEN), and the command
# is one argument of `/bin/sh -c`, so a longer one could never run.
MAX_COMMAND_BYTES = 131_071
MAX_ID_CHARS = 200
MAX_TIMEOUT = 31_536_000  # one year
MAX_PARENTS = 100  # `after`: a job waits for at most this many others
MAX_CWD_BYTES = 4095  # PATH_MAX less its NUL: chdir() refuses anything longer
MAX_ENV_BYTES = 65_536  # `env`: names and values together, in UTF-8
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names queuectl sets (or removes) itself in a job's environment: a job's `env` may not
# carry them, so a job can neither pose as its worker nor as another job or attempt.
RESERVED_ENV = ("NOTIFY_SOCKET",)
RESERVED_ENV_PREFIXES = ("QUEUECTL_", "WATCHDOG_", "LISTEN_")

# Named queues: the characters fit a systemd instance name (`queuectl-worker@mail:1`), a
# shell word and a journal field without quoting.
DEFAULT_QUEUE = "default"
MAX_QUEUE_CHARS = 64
_QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # MAX_QUEUE_CHARS

_CONTROL = re.compile("[\x00-\x1f\x7f]")
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

USER_KEYS = ("command", "id", "max_retries", "timeout", "priority", "run_at", "delay", "queue",
             "memory_max", "cpu_max", "tasks_max", "unique", "after", "cwd", "env")
MANAGED_KEYS = (
    "state", "attempts", "created_at", "updated_at", "worker", "started_at", "finished_at",
    "exit_code", "last_error", "lease_expires_at",
)


class JobSpec(Record):
    """A validated request to enqueue one job; None means 'use the queue default'."""

    command: str
    id: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    priority: int = 0
    run_at: float | None = None  # absolute, as the user meant it (wall clock)
    delay: float | None = None  # seconds from when the store accepts it (the store's clock)
    queue: str | None = None  # None: DEFAULT_QUEUE
    # Job limits: what each attempt's cgroup may use; None: the queue-wide default, 0: none.
    memory_max: int | None = None  # bytes
    cpu_max: float | None = None  # cores
    tasks_max: int | None = None
    unique: str | None = None  # at most one live job (pending, processing, failed) per key
    # Parents: ids of jobs that must all be `completed` before this one may be claimed
    # (distinct, in the order given, at most MAX_PARENTS, never the job's own id).
    after: list[str] | None = None
    cwd: str | None = None  # absolute directory the command runs in; None: the worker's
    env: dict[str, str] | None = None  # laid over the worker's environment; None: nothing

    def env_json(self) -> str | None:
        """`env` as the backends store it: a JSON object, keys in the order given."""
        return encode_env(self.env)

    def limits_with(self, defaults: Any) -> tuple[int, float, int]:
        """(memory_max, cpu_max, tasks_max) to store: this job's own, else the queue-wide
        defaults (a settings.QueueConfig) as they are at enqueue; 0 means none."""
        return (defaults.memory_max if self.memory_max is None else self.memory_max,
                defaults.cpu_max if self.cpu_max is None else self.cpu_max,
                defaults.tasks_max if self.tasks_max is None else self.tasks_max)


# The stored job's columns, in Job's field order less `history`: every backend selects these
# and maps the row with `Job.from_row`.
ROW_COLUMNS = (
    "id", "command", "state", "attempts", "max_retries", "created_at", "updated_at", "priority",
    "timeout", "run_at", "worker", "started_at", "finished_at", "exit_code", "last_error",
    "lease_expires_at", "cancel_requested", "queue", "memory_max", "cpu_max", "tasks_max",
    "unique_key", "waiting_on", "attempt_base", "cwd", "env",
)


class Job(Record):
    """One row of the queue as the worker and the CLI see it."""

    id: str
    command: str
    state: str
    attempts: int
    max_retries: int
    created_at: float
    updated_at: float
    priority: int = 0
    timeout: float | None = None
    run_at: float | None = None
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    last_error: str | None = None
    lease_expires_at: float | None = None
    history: list[dict[str, Any]] | None = None  # attempts, when asked for
    cancel_requested: bool = False  # processing, and an operator asked for it to stop
    queue: str = DEFAULT_QUEUE
    memory_max: int | None = None  # as stored at enqueue (its default applied); 0/None: none
    cpu_max: float | None = None
    tasks_max: int | None = None
    unique: str | None = None  # its unique key (column unique_key): one live job per key
    waiting_on: int = 0  # parents (`after`) not completed yet: claimed only at 0 ("blocked")
    # Attempts made before the latest `retry` (which sets attempts back to 0): the history
    # numbers an attempt attempt_base + attempts, so a rerun's attempts number on.
    attempt_base: int = 0
    cwd: str | None = None  # the directory it runs in; None: the worker's
    env: dict[str, str] | None = None  # laid over the worker's environment; None: nothing

    @classmethod
    def from_row(cls, row: tuple[Any, ...] | list[Any]) -> Job:
        """The job of a row selected as ROW_COLUMNS (without its history)."""
        # The ignore: mypy cannot count the values of a row slice to match them to fields.
        return cls(*row[:16], None, bool(row[16]), *row[17:25],  # type: ignore[call-arg]
                   decode_env(row[25]))

    @property
    def attempt_number(self) -> int:
        """The running (or latest) attempt's number as the history shows it."""
        return self.attempt_base + self.attempts

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "command": self.command,
            "queue": self.queue,
            "state": self.state,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "priority": self.priority,
            "timeout": self.timeout,
            "run_at": iso_ms(self.run_at),
            "worker": self.worker,
            "started_at": iso_ms(self.started_at),
            "finished_at": iso_ms(self.finished_at),
            "exit_code": self.exit_code,
            "last_error": self.last_error,
            "unique": self.unique,
            "waiting_on": self.waiting_on,
            "cwd": self.cwd,
            "env": self.env,
            **({"cancel_requested": True} if self.cancel_requested else {}),
            **{k: v for k in LIMIT_KEYS if (v := getattr(self, k))},
        }


def check_state(state: str, allowed: tuple[str, ...] = STATES) -> str:
    if state not in allowed:
        what = "unknown state" if state not in STATES else "not allowed here: state"
        raise ValidationError(f"{what} {state!r} (valid: {', '.join(allowed)})")
    return state


def check_id(value: Any, key: str = "id") -> str:
    """A job id, or another name of the same shape (`unique`)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f'"{key}" must be a non-empty string')
    if len(value) > MAX_ID_CHARS:
        raise ValidationError(f'"{key}" is longer than {MAX_ID_CHARS} characters')
    if _CONTROL.search(value):
        raise ValidationError(f'"{key}" must not contain control characters (newline, tab, NUL...)')
    _check_utf8(value, key)
    return value


def check_unique(value: Any) -> str:
    """A unique key: shaped like an id (cron lines use the job's name)."""
    return check_id(value, "unique")


def check_after(value: Any) -> list[str]:
    """Parent ids: a list of 1 to MAX_PARENTS ids (repeats dropped, order kept)."""
    if not isinstance(value, list) or not value:
        raise ValidationError('"after" must be a non-empty list of job ids')
    parents = list(dict.fromkeys(check_id(v, "after") for v in value))
    if len(parents) > MAX_PARENTS:
        raise Refused(f'"after" lists {len(parents)} jobs; a job may wait for at most '
                      f'{MAX_PARENTS}')
    return parents


def check_queue(value: Any, what: str = '"queue"') -> str:
    """A queue name: letters, digits, `-`, `_`, `.`, at most 64 (it becomes part of systemd
    instance names and journal fields, so nothing else is allowed)."""
    if not isinstance(value, str) or not _QUEUE_NAME.fullmatch(value):
        shown = value if isinstance(value, str) else type(value).__name__
        raise ValidationError(f"{what} must be 1-{MAX_QUEUE_CHARS} letters, digits, '-', '_' or"
                              f" '.', got {shown!r}")
    return value


def _is_utf8(value: str) -> bool:
    """False for text holding lone surrogates (undecodable bytes of argv or a file)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_utf8(value: str, name: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f'"{name}" is not valid UTF-8') from None


def check_command(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError('"command" must be a string')
    if not value.strip():
        raise ValidationError('"command" must not be empty')
    if "\0" in value:
        raise ValidationError('"command" must not contain NUL bytes')
    _check_utf8(value, "command")
    size = len(value.encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise ValidationError(f'"command" is {size} bytes; the limit is {MAX_COMMAND_BYTES}')
    return value


def check_max_retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise ValidationError('"max_retries" must be a whole number from 0 to 1000')
    return value


def check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise ValidationError(f'"timeout" must be a number of seconds above 0, at most {MAX_TIMEOUT}')
    return float(value)


def check_priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 1_000_000:
        raise ValidationError('"priority" must be a whole number from -1000000 to 1000000')
    return value


def check_run_at(value: Any) -> float:
    if not isinstance(value, str):
        raise ValidationError('"run_at" must be an ISO 8601 time such as 2025-11-04T10:30:00Z')
    try:
        ts = parse_iso(value)
        iso_ms(ts)  # must also be showable in UTC (not past year 9999 or before year 1)
    except (ValueError, OverflowError, OSError):
        raise ValidationError(f'"run_at" is not an ISO 8601 time between years 1 and 9999: '
                              f'{value!r}') from None
    return ts


def check_delay(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= MAX_TIMEOUT:
        raise ValidationError(f'"delay" must be a number of seconds from 0 to {MAX_TIMEOUT}')
    return float(value)


LIMIT_KEYS = ("memory_max", "cpu_max", "tasks_max")
MAX_CPUS = 4096.0
MAX_TASKS = 4_194_304  # the kernel's pid_max ceiling
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any) -> int:
    """Bytes from a whole number or text such as `512M`, `1.5G` (binary units); ValueError."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("not a size")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def check_memory_max(value: Any) -> int:
    """Bytes or `512M`; 0 means no limit (overrides a queue-wide default)."""
    try:
        size = parse_size(value)
    except ValueError:
        size = -1
    if size != 0 and not 1 << 20 <= size <= 1 << 50:
        raise ValidationError('"memory_max" must be bytes or a size such as 512M or 2G, at '
                              'least 1M (0: no limit)')
    return size


def check_cpu_max(value: Any) -> float:
    """Cores, e.g. 1.5; 0 means no limit."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not (value == 0 or 0.01 <= value <= MAX_CPUS):
        raise ValidationError(f'"cpu_max" must be a number of cores from 0.01 to {MAX_CPUS:g}'
                              ' (0: no limit)')
    return float(value)


def check_tasks_max(value: Any) -> int:
    """Processes and threads at once; 0 means no limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TASKS:
        raise ValidationError(f'"tasks_max" must be a whole number from 1 to {MAX_TASKS}'
                              ' (0: no limit)')
    return value


def check_cwd(value: Any, key: str = '"cwd"') -> str:
    """The directory a job runs in: absolute, since it is resolved on whichever host runs
    the job, never against the caller's directory (`--cwd` resolves before this)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{key} must be a non-empty string (an absolute directory)")
    if "\0" in value:
        raise ValidationError(f"{key} must not contain NUL bytes")
    if not _is_utf8(value):
        raise ValidationError(f"{key} is not valid UTF-8")
    if not value.startswith("/"):
        raise ValidationError(f"{key} must be an absolute directory (starting with /), got "
                              f"{value!r}")
    if len(value.encode("utf-8")) > MAX_CWD_BYTES:
        raise ValidationError(f"{key} is longer than {MAX_CWD_BYTES} bytes")
    return value


def check_env_name(name: Any, key: str = '"env"') -> str:
    """A variable name a shell can use, and not one queuectl sets itself."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        shown = name if isinstance(name, str) else type(name).__name__
        raise ValidationError(f"{key}: {shown!r} is not a variable name (letters, digits and"
                              " '_', not starting with a digit)")
    if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        raise ValidationError(f"{key}: {name} is set by queuectl itself and cannot be given"
                              " (reserved: QUEUECTL_*, NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*)")
    return name


def check_env(value: Any, key: str = '"env"') -> dict[str, str] | None:
    """Variables for the job: names a shell can use, values without NUL (execve ends a
    string there), at most MAX_ENV_BYTES in all. An empty object means none (None)."""
    if not isinstance(value, dict):
        raise ValidationError(f'{key} must be an object of names and string values, such as '
                              '{"MODE": "nightly"}')
    size = 0
    for name, text in value.items():
        check_env_name(name, key)
        if not isinstance(text, str):
            raise ValidationError(f"{key}: the value of {name} must be a string")
        if "\0" in text:
            raise ValidationError(f"{key}: the value of {name} must not contain NUL bytes")
        if not _is_utf8(text):
            raise ValidationError(f"{key}: the value of {name} is not valid UTF-8")
        size += len(name) + len(text.encode("utf-8"))
        if size > MAX_ENV_BYTES:
            raise ValidationError(f"{key} is over {MAX_ENV_BYTES} bytes (names and values "
                                  f"together) at {name}")
    return dict(value) or None


def encode_env(env: dict[str, str] | None) -> str | None:
    """The stored form of `env`: compact JSON, order kept; None stays NULL."""
    if not env:
        return None
    return json.dumps(env, ensure_ascii=False, separators=(",", ":"))


def decode_env(text: str | None) -> dict[str, str] | None:
    """`env` as stored (JSON text, or NULL)."""
    return None if text is None else json.loads(text)


def spec_from_object(obj: Any) -> JobSpec:
    """Validate one decoded JSON value; every rejection names the offending key."""
    if not isinstance(obj, dict):
        kinds: dict[type, str] = {list: "an array", str: "a string"}
        kind = kinds.get(type(obj), "not an object")
        raise ValidationError(f"a job must be a JSON object, got {kind}")
    fields: dict[str, Any] = {}
    for raw_key, value in obj.items():
        key = raw_key.replace("-", "_")
        if key in MANAGED_KEYS:
            raise ValidationError(f'"{raw_key}" is managed by queuectl and cannot be set')
        if key not in USER_KEYS:
            raise ValidationError(f'unknown key "{raw_key}" (allowed: {", ".join(USER_KEYS)})')
        if key in fields:
            raise ValidationError(f'"{key}" is given twice')
        fields[key] = value
    if "command" not in fields:
        raise ValidationError('missing required key "command"')
    if "run_at" in fields and "delay" in fields:
        raise ValidationError('give either "run_at" or "delay", not both')
    spec = JobSpec(command=check_command(fields["command"]))
    for key, check in _CHECKS.items():  # a fixed order: the same key is reported first
        if key in fields:
            setattr(spec, key, check(fields[key]))
    check_not_own_parent(spec)
    return spec


def check_not_own_parent(spec: JobSpec) -> None:
    if spec.id is not None and spec.after and spec.id in spec.after:
        raise Refused(f"job {spec.id!r} lists itself in \"after\": a job cannot wait for "
                      "itself")


# The optional keys of a job, each with its check; each key is also the JobSpec field it sets.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "id": check_id, "max_retries": check_max_retries, "timeout": check_timeout,
    "priority": check_priority, "run_at": check_run_at, "delay": check_delay,
    "queue": check_queue, "memory_max": check_memory_max, "cpu_max": check_cpu_max,
    "tasks_max": check_tasks_max, "unique": check_unique, "after": check_after,
    "cwd": check_cwd, "env": check_env,
}


def _reject_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A repeated key would silently replace the first: refuse it like a typo."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValidationError(f'"{key}" is given twice')
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def spec_from_json(text: str) -> JobSpec:
    try:
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ValidationError("invalid JSON: nested too deeply") from None
    return spec_from_object(obj)
