"""The click commands: parse, call the store or the worker, print. No queue logic here."""

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from queuectl import __version__, locator, workerrun
from queuectl import settings as cfg
from queuectl.clock import iso_ms
from queuectl.errors import EXIT_FAILED, NotFound, QueueError, ValidationError
from queuectl.job import CANCELLABLE, DEAD, TERMINAL, Job, check_state, check_unique
from queuectl.redaction import redact
from queuectl.store import Store

# A click command's callback, on its way through the decorators that build the command.
F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMATS = click.Choice(list(workerrun.LOG_FORMATS))


def _remember_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.ensure_object(dict)["db"] = value


db_option = click.option(
    "--db", metavar="LOCATOR", expose_value=False, callback=_remember_db, is_eager=True,
    help="Database file or postgresql:// URL (default: $QUEUECTL_DB, "
    "/var/lib/queuectl/queue.db, XDG data home).",
)


def _locator(ctx: click.Context) -> str:
    return locator.resolve(ctx.ensure_object(dict).get("db"))


def _store(ctx: click.Context) -> Store:
    store = locator.open_store(_locator(ctx))
    ctx.call_on_close(store.close)
    return store


def _print_json(value: Any, indent: int | None = 2) -> None:
    click.echo(json.dumps(value, indent=indent, ensure_ascii=False))


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from queuectl.policy import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValidationError(f"invalid duration {value!r}: {exc}") from None


older_than_option = click.option(
    "--older-than", metavar="DURATION", callback=_duration,
    help="Only jobs that finished at least this long ago (90s, 15m, 12h, 7d).")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Say how many jobs it would touch; change nothing.")


def _queue_name(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from queuectl.job import check_queue

    return check_queue(value, f"--{param.name}")


def _queue_option(what: str) -> Callable[[F], F]:
    return click.option("--queue", metavar="NAME", callback=_queue_name,
                        help=f"{what} of this queue only (a name no job has matches nothing).")


def _only(**kwargs: Any) -> dict[str, Any]:
    """The queue arguments that were given: a backend that predates named queues keeps
    working for commands that do not name one."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _queue_list(_ctx: click.Context, _param: click.Parameter,
                value: str | None) -> list[str] | None:
    """`mail,default` -> ["mail", "default"]: preference order, duplicates dropped."""
    from queuectl.workerrun import queue_list

    return queue_list(value)


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _print_jobs(jobs: Iterable[Job], jsonl: bool) -> None:
    """A JSON array (or JSON Lines) written job by job: memory stays flat however many."""
    echo = click.echo
    if jsonl:
        for job in jobs:
            echo(json.dumps(job.to_dict(), ensure_ascii=False))
        return
    first = True
    for job in jobs:
        text = json.dumps(job.to_dict(), indent=2, ensure_ascii=False)
        echo(("[\n  " if first else ",\n  ") + text.replace("\n", "\n  "), nl=False)
        first = False
    echo("[]" if first else "\n]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@db_option
@click.option("--log-format", type=LOG_FORMATS, default="auto", show_default=True,
              help="How workers log: journal, human lines, JSON lines, or auto (journald under "
              "systemd, human on a terminal, else JSON).")
@click.version_option(__version__, prog_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, log_format: str) -> None:
    """A durable background job queue for shell commands."""
    ctx.ensure_object(dict)["log_format"] = log_format


# -- enqueue ---------------------------------------------------------------------------------
def _cmd_options(func: F) -> F:
    from queuectl.submit import CMD_OPTIONS

    for option in reversed(CMD_OPTIONS):
        func = click.option(option.flag, option.key, type=option.kind, help=option.help,
                            metavar=option.flag[2:].upper().replace("-", "_"))(func)
    return func


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("job_json", required=False, metavar="JSON")
@click.option("--file", "file_", metavar="PATH", help="JSON Lines file of jobs ('-' = stdin).")
@click.option("--cmd", "command", metavar="COMMAND", help="The shell command (instead of JSON).")
@_cmd_options
@click.option("--queue", metavar="NAME",
              help="Put every job in this queue (default: the job's \"queue\", else default).")
@click.option("--unique", metavar="KEY",
              help="At most one live (pending, running or awaiting a retry) job with this key: "
              "if one is, store nothing, print its id, exit 0.")
@click.option("--after", metavar="ID[,ID...]",
              help="Run only once every one of these jobs has completed; if one ends dead or "
              "canceled, this job is canceled.")
@click.option("--cwd", metavar="DIR",
              help="Run every job in this directory (relative: from the current one, e.g. "
              "'.'; stored absolute).")
@click.option("--env", "env", metavar="KEY=VALUE", multiple=True,
              help="Set this variable for every job (repeatable); nothing else is taken from "
              "the caller's environment.")
@click.option("--if-absent", is_flag=True, help="An existing id is not an error: print it, exit 0.")
@db_option
@click.pass_context
def enqueue(ctx: click.Context, /, job_json: str | None, file_: str | None, command: str | None,
            queue: str | None, unique: str | None, after: str | None, cwd: str | None,
            env: tuple[str, ...], if_absent: bool, **cmd_options: Any) -> None:
    """Add jobs: a JSON object, --file of JSON Lines, or --cmd 'shell command'."""
    from queuectl.submit import collect_specs, print_ids, submit

    specs = collect_specs(job_json, file_, command, cmd_options, queue, unique, after, cwd,
                          env)
    print_ids(submit(ctx.ensure_object(dict).get("db"), specs, if_absent))


# -- inspecting ------------------------------------------------------------------------------
@cli.command()
@_queue_option("Jobs and workers")
@db_option
@click.pass_context
def status(ctx: click.Context, queue: str | None) -> None:
    """Jobs per state, active workers, dead-job notices still to deliver (`notices`) and
    whether the queue is paused, as one JSON object."""
    store = _store(ctx)
    counts: dict[str, Any] = store.counts(**_only(queue=queue))
    counts["paused"] = store.paused() is not None
    if queue is not None:  # paused: no job of it can start, whichever pause holds it
        counts["paused"] = counts["paused"] or store.paused(queue) is not None
        counts["queue"] = queue
    _print_json(counts, indent=None)


@cli.command(name="list")
@click.option("--state", metavar="STATE", help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N jobs.")
@click.option("--jsonl", is_flag=True, help="One JSON object per line instead of an array.")
@click.option("--unique", metavar="KEY", help="Only the jobs of this unique key, live or finished.")
@_queue_option("Jobs")
@db_option
@click.pass_context
def list_(ctx: click.Context, state: str | None, limit: int | None, jsonl: bool,
          unique: str | None, queue: str | None) -> None:
    """Jobs as a JSON array, oldest first."""
    if state is not None:
        check_state(state)
    if unique is not None:
        check_unique(unique)
    _print_jobs(_store(ctx).iter_jobs(state, limit, **_only(queue=queue, unique=unique)), jsonl)


@cli.command()
@click.argument("job_id", metavar="ID")
@db_option
@click.pass_context
def show(ctx: click.Context, job_id: str) -> None:
    """One job with its attempt history and the tail of each attempt's output."""
    store = _store(ctx)
    job = store.get(job_id, history=True)
    record = job.to_dict()
    record["after"] = [{"id": p.id, "state": p.state if p.state is not None else "deleted",
                        "satisfied": p.satisfied} for p in store.parents(job_id)]
    record["history"] = [
        {**h, "started_at": iso_ms(h["started_at"]), "finished_at": iso_ms(h["finished_at"]),
         "output": (h["output"] or b"").decode("utf-8", "replace")}
        for h in job.history or []
    ]
    _print_json(record)


@cli.command()
@db_option
@click.pass_context
def info(ctx: click.Context) -> None:
    """The database in use (never its password), schema version, backend details and the
    configuration in force."""
    data = _store(ctx).info()
    data["queuectl_version"] = __version__
    _print_json(data)


@cli.command()
@click.option("--textfile", metavar="PATH",
              help="Replace PATH atomically (node_exporter's textfile collector reads "
              "*.prom files, e.g. /var/lib/prometheus/node-exporter/queuectl.prom) "
              "instead of printing.")
@db_option
@click.pass_context
def metrics(ctx: click.Context, textfile: str | None) -> None:
    """The queue in the Prometheus text format: jobs per queue and state, oldest waiting
    job, active workers per host and per queue, each registered worker's start time,
    pauses, and counters that survive purge and retention."""
    from queuectl.metrics import render, write_textfile

    store = _store(ctx)
    with store.reading():  # the registry from the same snapshot as the rest
        text = render(store.metrics(), store.workers())
    if textfile is None:
        click.echo(text, nl=False)
        return
    try:
        write_textfile(textfile, text)
    except OSError as exc:
        raise QueueError(f"cannot write {textfile}: {exc.strerror or exc}") from None


# -- monitoring ------------------------------------------------------------------------------
class _PluginUsage(QueueError):
    """Bad arguments to `check`: UNKNOWN (3), not the CLI's usual 2, which a monitoring
    system would read as CRITICAL."""

    exit_code = 3


def _plugin_usage(message: str, path: str) -> _PluginUsage:
    """Print the plugin's UNKNOWN line (what Nagios shows) and make the error whose line
    goes to stderr as every other command's does."""
    from queuectl.check import unknown

    click.echo(unknown(f"bad arguments: {message}"))
    return _PluginUsage(f"{message} (see '{path} --help')")


class _PluginCommand(click.Command):
    """A command whose usage errors exit 3 with a status line on stdout as well."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _plugin_usage(exc.format_message(), ctx.command_path) from None
        except ValidationError as exc:
            raise _plugin_usage(str(exc), ctx.command_path) from None


@cli.command(cls=_PluginCommand)
@click.option("--dead-warn", type=click.IntRange(min=1), metavar="N",
              help="WARNING when N or more jobs are dead.")
@click.option("--dead-crit", type=click.IntRange(min=1), metavar="N",
              help="CRITICAL when N or more jobs are dead.")
@click.option("--waiting-warn", metavar="DURATION", callback=_duration,
              help="WARNING when the oldest due job has waited longer (90s, 15m, 12h).")
@click.option("--waiting-crit", metavar="DURATION", callback=_duration,
              help="CRITICAL when the oldest due job has waited longer.")
@click.option("--workers-min", type=click.IntRange(min=1), metavar="N",
              help="CRITICAL when fewer than N workers are active (serving --queue).")
@_queue_option("Jobs and workers")
@db_option
@click.pass_context
def check(ctx: click.Context, dead_warn: int | None, dead_crit: int | None,
          waiting_warn: float | None, waiting_crit: float | None, workers_min: int | None,
          queue: str | None) -> int:
    """One status line for Nagios, Icinga, Zabbix or a systemd timer, with perfdata. Exit
    0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (database unreadable, bad arguments)."""
    import os

    from queuectl import check as plugin

    limits = plugin.Thresholds(dead_warn=dead_warn, dead_crit=dead_crit,
                               waiting_warn=waiting_warn, waiting_crit=waiting_crit,
                               workers_min=workers_min)
    contradiction = plugin.problems_with(limits)
    if contradiction is not None:
        raise _plugin_usage(contradiction, ctx.command_path)
    where = _locator(ctx)
    try:
        # A file that is not there is a wrong path or a lost database: say so rather than
        # create an empty queue and report it healthy.
        if not locator.is_url(where) and not os.path.exists(where):
            raise QueueError(f"no database at {where}")
        reading = plugin.read(_store(ctx), queue)
    except QueueError as exc:
        click.echo(plugin.unknown(str(exc)))
        return plugin.UNKNOWN
    except Exception as exc:  # a bug is UNKNOWN too: exit 1 would read as WARNING
        if os.environ.get("QUEUECTL_DEBUG"):
            raise
        click.echo(plugin.unknown(f"internal error: {type(exc).__name__}: {exc}"))
        return plugin.UNKNOWN
    code, line = plugin.evaluate(reading, limits, queue)
    click.echo(line)
    return code


# -- dead letter queue -----------------------------------------------------------------------
@cli.group()
def dlq() -> None:
    """The dead letter queue: jobs whose retries are spent."""


@dlq.command(name="list")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N jobs.")
@click.option("--jsonl", is_flag=True, help="One JSON object per line instead of an array.")
@_queue_option("Dead jobs")
@db_option
@click.pass_context
def dlq_list(ctx: click.Context, limit: int | None, jsonl: bool, queue: str | None) -> None:
    """Dead jobs as a JSON array, oldest first."""
    _print_jobs(_store(ctx).iter_jobs(DEAD, limit, **_only(queue=queue)), jsonl)


@dlq.command(name="retry")
@click.argument("job_id", metavar="ID", required=False)
@click.option("--all", "all_", is_flag=True, help="Every dead job (in batches).")
@older_than_option
@dry_run_option
@db_option
@click.pass_context
def dlq_retry(ctx: click.Context, job_id: str | None, all_: bool, older_than: float | None,
              dry_run: bool) -> None:
    """Move a dead job (or --all of them) back to pending with attempts reset to 0."""
    if (job_id is None) == (not all_):
        raise ValidationError("give either one job ID or --all")
    if job_id is not None and (older_than is not None or dry_run):
        raise ValidationError("--older-than and --dry-run go with --all")
    store = _store(ctx)
    if job_id is not None:
        click.echo(store.retry_dead(job_id).id)
        return
    from queuectl.operate import in_batches

    count = store.count_matching(DEAD, older_than)
    if dry_run:
        click.echo(f"Would retry {_plural(count, 'dead job')}.")
        return
    done = in_batches(lambda n: store.retry_dead_many(older_than, n), count)
    click.echo(f"Retried {_plural(done, 'dead job')}.")


# -- operators -------------------------------------------------------------------------------
@cli.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--delay", metavar="DURATION", callback=_duration,
              help="Run again this long from now (90s, 15m, 12h; default: at once).")
@db_option
@click.pass_context
def retry(ctx: click.Context, job_ids: tuple[str, ...], delay: float | None) -> int:
    """Run finished jobs (completed, dead or canceled) again: back to pending with attempts
    reset, history kept. Jobs canceled because one of them ended are not revived."""
    from queuectl.operate import retry_each

    failed = 0
    for result in retry_each(_store(ctx), list(dict.fromkeys(job_ids)), delay):
        if result.error is not None:
            failed += 1
            click.echo(f"queuectl: error: {result.error}", err=True)
            continue
        click.echo(result.job_id)
        if result.not_revived:
            ids = " ".join(dep.id for dep in result.not_revived)
            click.echo(f"queuectl: {_plural(len(result.not_revived), 'job')} canceled when "
                       f"{result.job_id} ended stay canceled: {ids}; to run them too, after it: "
                       f"queuectl retry {ids}", err=True)
    return EXIT_FAILED if failed else 0


@cli.command()
@click.argument("job_ids", metavar="ID...", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every job of --state (in batches).")
@click.option("--state", metavar="STATE", help="With --all: pending, failed or processing.")
@_queue_option("With --all: jobs")
@dry_run_option
@db_option
@click.pass_context
def cancel(ctx: click.Context, job_ids: tuple[str, ...], all_: bool, state: str | None,
           queue: str | None, dry_run: bool) -> int:
    """Cancel jobs: waiting ones never run; a running one is stopped by its worker."""
    if job_ids and (all_ or state or dry_run or queue):
        raise ValidationError("give job IDs, or --all --state STATE [--queue NAME] [--dry-run],"
                              " not both")
    if not job_ids and not (all_ and state):
        raise ValidationError("give job IDs, or --all --state STATE to cancel every such job")
    store = _store(ctx)
    if all_:
        assert state is not None
        check_state(state, CANCELLABLE)
        from queuectl.operate import in_batches

        scope = _only(queue=queue)
        count = store.count_matching(state, **scope)
        if dry_run:
            click.echo(f"Would cancel {_plural(count, state + ' job')}.")
            return 0
        done = in_batches(lambda n: store.cancel_state(state, n, **scope), count)
        click.echo(f"Canceled {_plural(done, state + ' job')}"
                   + (" (their workers stop them within about a second)." if
                      state == "processing" else "."))
        return 0
    from queuectl.operate import cancel_each

    failed = 0
    for result in cancel_each(store, list(dict.fromkeys(job_ids))):
        if result.error is None:
            click.echo(result.line)
        else:
            failed += 1
            click.echo(f"queuectl: error: {result.line}", err=True)
    return EXIT_FAILED if failed else 0


@cli.command()
@_queue_option("Hold the jobs")
@db_option
@click.pass_context
def pause(ctx: click.Context, queue: str | None) -> None:
    """Workers finish what they run and claim nothing until `resume`."""
    from queuectl.clock import iso
    from queuectl.operate import operator

    store = _store(ctx)
    scope = _only(queue=queue)
    if store.pause(operator(), **scope):
        if queue is None:
            click.echo("Paused: workers finish their running jobs and claim nothing until "
                       "'queuectl resume'.")
        else:
            click.echo(f"Paused queue {queue}: its running jobs finish, none of its jobs start "
                       f"until 'queuectl resume --queue {queue}'.")
    else:
        info = store.paused(**scope)
        by = f" by {info.by} since {iso(info.since)}" if info else ""
        click.echo(f"Already paused{by}.")


@cli.command()
@_queue_option("Release the jobs")
@db_option
@click.pass_context
def resume(ctx: click.Context, queue: str | None) -> None:
    """Let workers claim jobs again."""
    click.echo("Resumed." if _store(ctx).resume(**_only(queue=queue)) else "Not paused.")


@cli.command(name="wait")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--timeout", type=click.FloatRange(min=0), metavar="S",
              help="Give up after S seconds (exit 124).")
@db_option
@click.pass_context
def wait_(ctx: click.Context, job_ids: tuple[str, ...], timeout: float | None) -> int:
    """Block until every job is completed, dead or canceled; print each record (JSON Lines).
    Exit 0 if all completed; for one dead job its exit code; 1 otherwise; 124 on timeout."""
    from queuectl.operate import wait_exit_code, wait_for

    jobs, timed_out = wait_for(_store(ctx), list(dict.fromkeys(job_ids)), timeout)
    for job in jobs:
        click.echo(json.dumps(job.to_dict(), ensure_ascii=False))
    if timed_out:
        left = sum(j.state not in TERMINAL for j in jobs)
        click.echo(f"queuectl: error: timed out after {timeout:g} s with "
                   f"{_plural(left, 'job')} not finished", err=True)
    return wait_exit_code(jobs, timed_out)


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N",
              help="That attempt (default: the running one, else the last).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing as the running attempt prints, until it ends.")
@db_option
@click.pass_context
def logs(ctx: click.Context, job_id: str, attempt: int | None, follow: bool) -> int:
    """The output (stdout and stderr) of one attempt of a job."""
    import sys

    from queuectl.operate import stream_output

    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    def note(text: str) -> None:
        click.echo(f"queuectl: {text}", err=True)

    return stream_output(_store(ctx), job_id, attempt, follow, write, note)


@cli.command()
@click.option("--state", required=True, type=click.Choice(TERMINAL),
              help="Which finished jobs.")
@older_than_option
@_queue_option("Jobs")
@dry_run_option
@db_option
@click.pass_context
def purge(ctx: click.Context, state: str, older_than: float | None, queue: str | None,
          dry_run: bool) -> None:
    """Delete finished jobs with their history, in short batches."""
    from queuectl.operate import in_batches

    store = _store(ctx)
    scope = _only(queue=queue)
    count = store.count_matching(state, older_than, **scope)
    if dry_run:
        click.echo(f"Would delete {_plural(count, state + ' job')}.")
        return
    done = in_batches(lambda n: store.purge(state, older_than, n, **scope), count)
    click.echo(f"Deleted {_plural(done, state + ' job')}.")


@cli.command()
@click.argument("path", metavar="FILE")
@db_option
@click.pass_context
def backup(ctx: click.Context, path: str) -> None:
    """A consistent copy of the queue in a new FILE, while workers run (SQLite)."""
    import os

    _store(ctx).backup(path)
    click.echo(f"Backup written to {path} ({os.path.getsize(path)} bytes).")


# -- configuration ---------------------------------------------------------------------------
def _shown(value: cfg.Value) -> str:
    """A setting's value as `config get` prints it: numbers short, text as it is ('' shown
    as '' where a reader needs to see it)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "''"


_SETTINGS_HELP = "\n\n\b\n" + "\n".join(
    f"{key:<15} {s.help} (default {_shown(s.default)})" for key, s in cfg.SETTINGS.items())


@cli.group(help="Queue-wide settings, stored in the database (every worker sees them)."
           + _SETTINGS_HELP)
def config() -> None:
    pass


@config.command(name="set", context_settings={"ignore_unknown_options": True},
                help="Set KEY to VALUE." + _SETTINGS_HELP)
@click.argument("key")
@click.argument("value")
@db_option
@click.pass_context
def config_set(ctx: click.Context, key: str, value: str) -> None:
    name = cfg.canonical_key(key)
    parsed = cfg.parse_value(name, value)
    _store(ctx).set_config(name, parsed)
    click.echo(f"{name} = {_shown(parsed)}")


@config.command(name="get")
@click.argument("key")
@db_option
@click.pass_context
def config_get(ctx: click.Context, key: str) -> None:
    """Print one setting's value."""
    name = cfg.canonical_key(key)
    value = _store(ctx).config_items()[name]
    click.echo(f"{value:g}" if isinstance(value, float) else str(value))  # '' as an empty line


@config.command(name="list")
@db_option
@click.pass_context
def config_list(ctx: click.Context) -> None:
    """All settings as a JSON object."""
    _print_json(_store(ctx).config_items())


# -- named queues ----------------------------------------------------------------------------
@cli.group(name="queue")
def queue_group() -> None:
    """Named queues: per-queue concurrency limits, dead-job hooks and an overview."""


@queue_group.command(name="set")
@click.argument("name")
@click.option("--concurrency", type=click.IntRange(0, 1_000_000), metavar="N",
              help="At most N of its jobs run at once, across every worker on every host "
              "(0: no limit).")
@click.option("--on-dead", "on_dead", metavar="CMD",
              help="Run CMD (/bin/sh -c) once for each of its jobs that goes dead, instead of "
              "the global `config set on-dead` ('': remove; the global one applies again).")
@db_option
@click.pass_context
def queue_set(ctx: click.Context, name: str, concurrency: int | None,
              on_dead: str | None) -> None:
    """Set a queue's limit or dead-job hook (the queue need not have jobs yet)."""
    from queuectl.job import check_queue

    check_queue(name, "queue name")
    if concurrency is None and on_dead is None:
        raise ValidationError("nothing to set: give --concurrency N and/or --on-dead CMD")
    command = None if on_dead is None else cfg.parse_value("on-dead", on_dead)
    store = _store(ctx)
    if concurrency is not None:
        store.set_queue_concurrency(name, concurrency)
        click.echo(f"{name}: concurrency = {concurrency or 'unlimited'}")
    if command is not None:
        store.set_queue_on_dead(name, str(command))
        click.echo(f"{name}: on-dead = {_shown(command)}")


@queue_group.command(name="list")
@click.option("--jsonl", is_flag=True, help="One JSON object per line instead of an array.")
@db_option
@click.pass_context
def queue_list(ctx: click.Context, jsonl: bool) -> None:
    """Every queue: jobs per state, paused, limit, active workers serving it, how long its
    longest-due job has waited (seconds), its own on-dead command (null: the global one
    applies), its dead-job notices still to deliver, and the lanes (files in
    /etc/queuectl/lanes) whose workers serve it, with the user their jobs run as."""
    import sys

    from queuectl.lanes import read_lanes
    from queuectl.operate import queue_rows

    lanes, skipped = read_lanes()
    for line in skipped:
        print(f"queuectl: {line}", file=sys.stderr)
    rows = queue_rows(_store(ctx), lanes)
    if jsonl:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
    else:
        _print_json(rows)


# -- watching --------------------------------------------------------------------------------
@cli.command()
@click.option("--once", is_flag=True, help="Print one snapshot as plain text and exit.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="Seconds between refreshes.")
@db_option
@click.pass_context
def top(ctx: click.Context, once: bool, interval: float) -> int:
    """A live view of the queue (q quits): jobs per queue and completions in the last minute,
    each active worker with its host, job, command and elapsed time, the latest failed and
    dead jobs, pauses. Reads only."""
    import shutil
    import sys

    from queuectl import topview  # curses too, only here: no other command pays for them

    store = _store(ctx)
    label = redact(_locator(ctx))
    if once:
        width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
        click.echo(topview.snapshot_text(store, label, width))
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ValidationError("top needs a terminal; use 'queuectl top --once' in scripts")
    return topview.run_live(store, label, interval)


# -- workers ---------------------------------------------------------------------------------
@cli.group()
def worker() -> None:
    """Run and stop workers."""


@worker.command(name="run")
@click.option("--name", help="Stable worker identity (default: HOST:PID).")
@click.option("--label", hidden=True)
@click.option("--grace", type=click.FloatRange(min=workerrun.GRACE_MIN),
              default=workerrun.GRACE_DEFAULT, show_default=True,
              help="Seconds a running job may finish after SIGTERM before it is stopped.")
@click.option("--poll-interval", type=click.FloatRange(min=workerrun.POLL_INTERVAL_MIN),
              default=None,
              help="Seconds between looks at an idle queue, besides waking on every database "
              "change [default: 1, or 0.25 where inotify is unavailable].")
@click.option("--drain", is_flag=True, help="Exit once no job is left to run.")
@click.option("--queue", "queues", metavar="NAME[,NAME...]", callback=_queue_list,
              help="Serve only these queues, the first preferred (default: every queue).")
@click.option("--slots", type=click.IntRange(1, workerrun.SLOTS_MAX), default=None,
              help="Jobs this worker runs at once, each in a job slot of its own "
              f"[default: ${workerrun.SLOTS_ENV}, or 1].")
@click.option("--instance", hidden=True)
@click.option("--supervised-by", type=int, hidden=True)
@db_option
@click.pass_context
def worker_run(ctx: click.Context, name: str | None, label: str | None, grace: float,
               poll_interval: float | None, drain: bool, queues: list[str] | None,
               slots: int | None, instance: str | None, supervised_by: int | None) -> int:
    """Run one worker in the foreground (what the systemd unit runs)."""
    from queuectl.workerrun import run_command

    return run_command(ctx.ensure_object(dict).get("db"), ctx.obj.get("log_format", "auto"),
                       drain, name=name, label=label, grace=grace, poll_interval=poll_interval,
                       queues=queues, instance=instance, supervised_by=supervised_by,
                       slots=slots)


@worker.command(name="start")
@click.option("--count", type=click.IntRange(1, 256), default=1, show_default=True,
              help="How many workers.")
@click.option("--grace", type=click.FloatRange(min=workerrun.GRACE_MIN),
              default=workerrun.GRACE_DEFAULT, show_default=True,
              help="Seconds a running job may finish after Ctrl-C or SIGTERM (foreground).")
@click.option("--drain", is_flag=True, help="Exit once no job is left to run (foreground).")
@click.option("--foreground", is_flag=True,
              help="Run the workers in this terminal even where systemd manages them.")
@click.option("--queue", "queues", metavar="NAME[,NAME...]", callback=_queue_list,
              help="Workers that serve only these queues (a lane: instances NAME:1..COUNT); "
              "other lanes are left alone.")
@click.option("--slots", type=click.IntRange(1, workerrun.SLOTS_MAX), default=None,
              help="Jobs each worker runs at once (foreground; systemd instances take "
              f"{workerrun.SLOTS_ENV} from a drop-in) [default: ${workerrun.SLOTS_ENV}, or 1].")
@db_option
@click.pass_context
def worker_start(ctx: click.Context, count: int, grace: float, drain: bool,
                 foreground: bool, queues: list[str] | None, slots: int | None) -> int:
    """Run COUNT workers: systemd instances 1..COUNT where the unit is installed, otherwise
    in the foreground until Ctrl-C or SIGTERM."""
    from queuectl import units

    if queues is not None and not foreground:
        from queuectl.lanes import declaring

        lane = declaring(queues)
        if lane is not None:  # the file decides how many workers and as whom
            raise ValidationError(
                f"lane {lane.name} is declared by {lane.path}: change Workers= there, then "
                "systemctl daemon-reload && systemctl restart queuectl-workers.target")
    if not foreground and not drain and units.available():
        if slots is not None:
            raise ValidationError(
                f"systemd instances take job slots from a drop-in, Environment="
                f"{workerrun.SLOTS_ENV}={slots} (systemctl edit queuectl-worker@.service); "
                "or run them here with --foreground")
        for line in units.scale(count, queues):
            click.echo(line)
        return 0
    from queuectl.supervisor import supervise

    _store(ctx)  # fail here, once and clearly, if the database is unusable
    where = _locator(ctx)
    if not locator.is_url(where):
        import os

        where = os.path.abspath(where)
    return supervise(where, count, grace, drain, ctx.obj.get("log_format", "auto"), queues,
                     slots)


@worker.command(name="stop")
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for foreground workers to exit.")
@click.option("--foreground", is_flag=True, help="Leave systemd instances alone.")
@click.option("--queue", "queues", metavar="NAME[,NAME...]", callback=_queue_list,
              help="Only the workers of this lane (exactly these queues, in this order).")
@db_option
@click.pass_context
def worker_stop(ctx: click.Context, timeout: float, foreground: bool,
                queues: list[str] | None) -> int:
    """Gracefully stop the workers of this host: systemd instances (stopped and disabled),
    then foreground workers that use this database."""
    from queuectl import units

    lines = units.stop_all(queues) if not foreground and units.available() else []
    for line in lines:
        click.echo(line)
    if lines and queues is not None:
        from queuectl.lanes import declaring

        lane = declaring(queues)
        if lane is not None:
            click.echo(f"Lane {lane.name} is declared by {lane.path}: its workers start again "
                       "at the next boot, or systemctl daemon-reload && systemctl start "
                       "queuectl-workers.target; remove the file to retire the lane.")
    from queuectl.errors import DatabaseUnavailable
    from queuectl.supervisor import stop_local_workers

    where = _locator(ctx)
    try:
        store: Store | None = _store(ctx)
    except DatabaseUnavailable as exc:  # its workers may still run: find them by process
        click.echo(f"Cannot read the worker registry ({exc}); looking for worker processes.")
        store = None
    targets, left, unregistered = stop_local_workers(store, where, timeout, queues)
    if not targets:
        if not lines:
            click.echo("No running workers.")
        return 0
    stopped = len(targets) - len(left)
    click.echo(f"Stopped {stopped} worker{'s' if stopped != 1 else ''}.")
    if unregistered:
        pids = ", ".join(str(w.pid) for w in unregistered)
        click.echo(f"Of these, {_plural(len(unregistered), 'worker')} (pid {pids}) "
                   f"{'was' if len(unregistered) == 1 else 'were'} found by process, not in "
                   f"the registry of {redact(where)}: the database was deleted or "
                   "replaced while they ran, or they had not registered yet.")
    if left:
        names = ", ".join(f"{w.name} (pid {w.pid})" for w in left)
        raise NotFound(f"{len(left)} worker(s) still running after {timeout:g} s: {names}")
    return 0
