"""Entry point: run the CLI and turn every error into one stderr line and an exit code."""

import os
import sys

from queuectl.errors import EXIT_FAILED, EXIT_USAGE, QueueError


def _fail(message: str, code: int) -> int:
    line = " ".join(str(message).split())
    print(f"queuectl: error: {line}", file=sys.stderr)
    return code


def _shared_umask() -> None:
    """Files we create (the database and its -wal/-shm) must be writable by group queuectl,
    or other members could not enqueue; jobs get the caller's own umask back."""
    previous = os.umask(0o007)
    os.environ.setdefault("QUEUECTL_CALLER_UMASK", f"{previous:04o}")


def _stdout_failed(exc: OSError) -> bool:
    """Did exc come from writing our output (`status >/dev/full`)? Told by the frame that
    raised it holding our stdout; then the rest of the output is dropped."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    streams = (sys.stdout, getattr(sys.stdout, "buffer", None))
    if not any(value is stream for value in tb.tb_frame.f_locals.values() for stream in streams):
        return False
    from queuectl.submit import discard_stdout

    discard_stdout()
    return True


def _command_path(args: list[str]) -> str:
    """The (sub)command that args name, for the help hint of an error click raised before
    it had a context (`enqueue --cmd` with no command)."""
    from queuectl.cli import cli

    path, group, skip = ["queuectl"], cli, False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in ("--db", "--log-format")  # their value is not a command
            continue
        found = getattr(group, "commands", {}).get(arg)
        if found is None:
            if path[-1] != "queuectl":
                break
            continue  # a global option's value (--db PATH)
        path.append(arg)
        group = found
    return " ".join(path)


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown (about a millisecond of freeing modules,
    on every call cron makes). Only after the database is closed and the output flushed;
    if flushing fails, the normal exit reports it."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    _shared_umask()
    args = sys.argv[1:] if argv is None else argv
    if not args:  # the same on every click version: help on stdout, success
        args = ["--help"]
    try:
        if "enqueue" in args[:5]:  # what cron pays for on every call: no click
            from queuectl.submit import fast_enqueue

            code = fast_enqueue(args)
            if code is not None:
                if argv is None:  # the console script: everything is written and closed
                    _exit_now(code)
                return code
        elif "worker" in args[:5]:  # every systemd restart and cron `--drain`: no click
            from queuectl.workerrun import fast_worker_run

            code = fast_worker_run(args)
            if code is not None:
                return code
        from queuectl.cli import cli

        result = cli.main(args=args, prog_name="queuectl", standalone_mode=False)
    except QueueError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`queuectl list | head`): not an error worth a traceback.
        from queuectl.submit import discard_stdout

        discard_stdout()
        return 141
    except Exception as exc:
        if isinstance(exc, OSError) and _stdout_failed(exc):
            return _fail(f"cannot write to standard output: {exc.strerror or exc}", EXIT_FAILED)
        import click

        if isinstance(exc, click.UsageError):
            path = exc.ctx.command_path if exc.ctx else _command_path(args)
            return _fail(f"{exc.format_message()} (see '{path} --help')", EXIT_USAGE)
        if isinstance(exc, click.ClickException):
            return _fail(exc.format_message(), exc.exit_code)
        if isinstance(exc, click.Abort):
            return 130
        if isinstance(exc, NotImplementedError):  # a backend that lacks a newer verb
            return _fail("this database backend does not support that command yet", EXIT_USAGE)
        # a bug: still one line, with the traceback on request
        if os.environ.get("QUEUECTL_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (QUEUECTL_DEBUG=1 shows more)",
                     1)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
