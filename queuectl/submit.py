"""`queuectl enqueue`: from what the user typed to stored jobs.

Kept free of click, logging and the worker, because cron and scripts pay this module's
start-up on every call: `main.py` runs it directly for the common forms, and the click
command (for --help and unusual spellings) calls the same functions.
"""

from __future__ import annotations

import os
import sys

from queuectl.errors import OutputError, ValidationError
from queuectl.job import (
    JobSpec,
    check_after,
    check_cwd,
    check_env,
    check_not_own_parent,
    check_queue,
    check_unique,
    spec_from_json,
    spec_from_object,
)
from queuectl.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class CmdOption(Record):
    flag: str
    key: str
    kind: type
    help: str


# Options of the `--cmd` form, shared by the click command and the fast path.
CMD_OPTIONS = (
    CmdOption("--id", "id", str, "With --cmd: the job id."),
    CmdOption("--max-retries", "max_retries", int, "With --cmd: retries after the first run."),
    CmdOption("--timeout", "timeout", float, "With --cmd: seconds before the job is killed."),
    CmdOption("--priority", "priority", int, "With --cmd: higher runs first (default 0)."),
    CmdOption("--run-at", "run_at", str, "With --cmd: ISO 8601 time to run at."),
    CmdOption("--delay", "delay", float, "With --cmd: seconds from now to run at."),
)


def specs_from_file(source: str) -> list[JobSpec]:
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise ValidationError(f"cannot read {source}: {exc.strerror}") from None
    specs = []
    seen: dict[str, int] = {}
    for number, line in enumerate(data.decode("utf-8", "surrogateescape").splitlines(), 1):
        if not line.strip():
            continue
        try:
            spec = spec_from_json(line)
        except ValidationError as exc:
            raise ValidationError(f"line {number}: {exc}") from None
        if spec.id is not None:
            if spec.id in seen:
                raise ValidationError(
                    f"line {number}: id {spec.id!r} repeats the one on line {seen[spec.id]}")
            seen[spec.id] = number
        specs.append(spec)
    if not specs:
        raise ValidationError(f"{source}: no jobs found")
    return specs


def into_queue(specs: list[JobSpec], queue: str | None) -> list[JobSpec]:
    """`--queue NAME` for every job; a job whose JSON names another queue is refused rather
    than one of the two silently ignored."""
    if queue is None:
        return specs
    check_queue(queue, "--queue")
    for spec in specs:
        if spec.queue is None:
            spec.queue = queue
        elif spec.queue != queue:
            raise ValidationError(f'--queue {queue} but the job says "queue": "{spec.queue}"')
    return specs


def with_unique(specs: list[JobSpec], key: str | None) -> list[JobSpec]:
    """`--unique KEY` for the one job given; a job whose JSON names another key is refused
    rather than one of the two silently ignored."""
    if key is None:
        return specs
    check_unique(key)
    if len(specs) > 1:
        raise ValidationError(f'--unique gives one job a key, not {len(specs)}: put "unique" '
                              "in each line of the file instead")
    [spec] = specs
    if spec.unique is not None and spec.unique != key:
        raise ValidationError(f'--unique {key} but the job says "unique": "{spec.unique}"')
    spec.unique = key
    return specs


def with_after(specs: list[JobSpec], after: str | None) -> list[JobSpec]:
    """`--after ID[,ID...]`: every job waits for these, before the parents its own JSON
    names (a file of steps can still chain them line after line)."""
    if after is None:
        return specs
    parents = check_after([part.strip() for part in after.split(",")])
    for spec in specs:
        spec.after = check_after(parents + (spec.after or []))
        check_not_own_parent(spec)
    return specs


def resolve_cwd(value: str) -> str:
    """`--cwd DIR` as stored: absolute, a relative DIR (`.`) taken from the caller's own
    directory now, since the worker that runs the job has another."""
    if "\0" in value:
        check_cwd(value, "--cwd")
    try:
        return check_cwd(os.path.abspath(value) if value else value, "--cwd")
    except FileNotFoundError:  # the caller's directory was deleted under it
        raise ValidationError(f"--cwd {value}: the current directory no longer exists") from None


def parse_env_options(pairs: list[str] | tuple[str, ...]) -> dict[str, str] | None:
    """`--env KEY=VALUE`, repeatable, into one object (checked as JSON's "env" is)."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError(f"--env {pair}: expected KEY=VALUE")
        if name in env:
            raise ValidationError(f"--env {name} is given twice")
        env[name] = value
    return check_env(env, "--env") if env else None


def with_cwd_env(specs: list[JobSpec], cwd: str | None,
                 env: list[str] | tuple[str, ...] | None) -> list[JobSpec]:
    """`--cwd DIR` and `--env KEY=VALUE` for every job of the call. A job whose JSON says
    otherwise (another "cwd", another value for a variable) is refused rather than one of
    the two silently ignored; its other variables are kept, the options' after them."""
    if cwd is not None:
        where = resolve_cwd(cwd)
        for spec in specs:
            if spec.cwd is not None and spec.cwd != where:
                raise ValidationError(f'--cwd {where} but the job says "cwd": "{spec.cwd}"')
            spec.cwd = where
    extra = parse_env_options(env or ())
    if extra:
        for spec in specs:
            if not spec.env:  # the options alone, checked once above
                spec.env = dict(extra)
                continue
            merged = dict(spec.env)
            for name, value in extra.items():
                if merged.get(name, value) != value:
                    raise ValidationError(f'--env {name}={value} but the job says "env": '
                                          f'{{"{name}": "{merged[name]}"}}')
                merged[name] = value
            spec.env = check_env(merged)
    return specs


def collect_specs(job_json: str | None, file_: str | None, command: str | None,
                  cmd_options: dict[str, Any], queue: str | None = None,
                  unique: str | None = None, after: str | None = None,
                  cwd: str | None = None,
                  env: list[str] | tuple[str, ...] | None = None) -> list[JobSpec]:
    """Exactly one source of jobs; --cmd's options only with --cmd; --queue, --after,
    --cwd and --env with any; --unique with one job."""
    specs = with_unique(_collect(job_json, file_, command, cmd_options, queue), unique)
    return with_cwd_env(with_after(specs, after), cwd, env)


def _collect(job_json: str | None, file_: str | None, command: str | None,
             cmd_options: dict[str, Any], queue: str | None) -> list[JobSpec]:
    if sum(x is not None for x in (job_json, file_, command)) != 1:
        raise ValidationError(
            "give exactly one of: a JSON argument, --file PATH or --cmd COMMAND "
            "(see 'queuectl enqueue --help')")
    given = {k: v for k, v in cmd_options.items() if v is not None}
    if command is None and given:
        flag = "--" + next(iter(given)).replace("_", "-")
        raise ValidationError(f"{flag} goes with --cmd; put it in the JSON instead")
    if command is not None:
        return into_queue([spec_from_object({"command": command, **given})], queue)
    if file_ is not None:
        return into_queue(specs_from_file(file_), queue)
    return into_queue([spec_from_json(job_json or "")], queue)


def submit(db: str | None, specs: list[JobSpec], if_absent: bool) -> list[str]:
    """Store the jobs; their ids, in order. A job not stored because a live job holds its
    unique key is said on stderr (the id printed is that job's)."""
    from queuectl import locator

    store = locator.open_store(locator.resolve(db))
    try:
        done = store.submit(specs, if_absent=if_absent)
    finally:
        store.close()
    for spec, result in zip(specs, done, strict=True):
        # Not stored: a live job holds the key, or (only under --if-absent, which asked for
        # silence, and answers the spec's own id) the id was taken.
        if spec.unique is not None and not result.stored and (
                result.id != spec.id or not if_absent):
            sys.stderr.write(f"already queued: job {result.id} holds unique key "
                             f"{spec.unique!r}; nothing stored\n")
    return [result.id for result in done]


def fast_enqueue(args: list[str]) -> int | None:
    """`queuectl [--db P] enqueue ...` without click. None: not a form handled here (help,
    unknown or malformed options), so the click command runs and explains."""
    db: str | None = None
    rest = list(args)
    while rest and rest[0] != "enqueue":  # global options before the command
        if rest[0] == "--db" and len(rest) > 1:
            db, rest = rest[1], rest[2:]
        elif rest[0].startswith("--db="):
            db, rest = rest[0][5:], rest[1:]
        elif rest[0] == "--log-format" and len(rest) > 1:
            rest = rest[2:]
        else:
            return None
    if not rest:
        return None
    rest = rest[1:]
    by_flag = {o.flag: o for o in CMD_OPTIONS}
    values: dict[str, Any] = {}
    job_json = file_ = command = queue = unique = after = cwd = None
    env: list[str] = []
    if_absent = False
    while rest:
        arg = rest.pop(0)
        if arg == "--if-absent":
            if_absent = True
            continue
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
            rest.insert(0, value)
        if arg in ("--file", "--cmd", "--db", "--queue", "--unique", "--after", "--cwd",
                   "--env") or arg in by_flag:
            if not rest:
                return None
            value = rest.pop(0)
            if arg == "--file":
                file_ = value
            elif arg == "--cmd":
                command = value
            elif arg == "--db":
                db = value
            elif arg == "--queue":
                queue = value
            elif arg == "--unique":
                unique = value
            elif arg == "--after":
                after = value
            elif arg == "--cwd":
                cwd = value
            elif arg == "--env":
                env.append(value)
            else:
                try:
                    values[by_flag[arg].key] = by_flag[arg].kind(value)
                except ValueError:
                    return None
        elif arg.startswith("-") and arg != "-" or job_json is not None:
            return None
        else:
            job_json = arg
    specs = collect_specs(job_json, file_, command, values, queue, unique, after, cwd, env)
    ids = submit(db, specs, if_absent)
    print_ids(ids)
    return 0


def discard_stdout() -> None:
    """Point fd 1 at /dev/null, so that what is still buffered for it is dropped at exit
    instead of failing again there (a second message, after ours)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_ids(ids: list[str]) -> None:
    """The ids on stdout, one per line. The jobs are already stored, so a stdout that
    cannot take them (a full disk) must not read like a failed enqueue."""
    try:
        sys.stdout.write("".join(f"{job_id}\n" for job_id in ids))
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        discard_stdout()
        which = (f"job {ids[0]} was" if len(ids) == 1 else
                 f"{len(ids)} jobs ({ids[0]} to {ids[-1]}) were")
        raise OutputError(f"{which} enqueued, but cannot write to standard output: "
                          f"{exc.strerror or exc}") from None
