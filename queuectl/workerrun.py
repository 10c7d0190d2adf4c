"""`queuectl worker run`: the command itself, and its options read without click.

Every systemd restart and every `worker run --drain` from cron starts a worker; importing
click and the whole CLI for it cost about 25 ms of CPU a start. So main() tries
fast_worker_run() first: the usual forms run here, anything else (help, an unknown or
malformed option) returns None and the click command runs and explains, as for `enqueue`.
Both routes end in run_command(), so a worker behaves the same whichever parsed its options.
"""

from __future__ import annotations

from typing import Any

from queuectl.errors import ValidationError

LOG_FORMATS = ("auto", "human", "json", "journal")
# worker run's limits and default, which its click options (cli.py) use too.
GRACE_DEFAULT = 30.0
GRACE_MIN: float = 0  # shown as "x>=0" in --help
POLL_INTERVAL_MIN = 0.01
SLOTS_MAX = 64
SLOTS_ENV = "QUEUECTL_SLOTS"  # --slots's default: a systemd drop-in sets it for every instance
# Option -> (keyword of run_command, converter, lowest value); None: a flag.
_VALUED: dict[str, tuple[str, Any, float | None]] = {
    "--name": ("name", str, None),
    "--label": ("label", str, None),
    "--grace": ("grace", float, GRACE_MIN),
    "--poll-interval": ("poll_interval", float, POLL_INTERVAL_MIN),
    "--queue": ("queues", str, None),
    "--instance": ("instance", str, None),
    "--supervised-by": ("supervised_by", int, None),
    "--slots": ("slots", int, 1),
    "--db": ("db", str, None),
}


def queue_list(value: str | None) -> list[str] | None:
    """`mail,default` -> ["mail", "default"]: preference order, duplicates dropped."""
    if value is None:
        return None
    from queuectl.job import check_queue

    names = [check_queue(n.strip(), "--queue") for n in value.split(",")]
    return list(dict.fromkeys(names))


def fast_worker_run(args: list[str]) -> int | None:
    """`queuectl [--db P] [--log-format F] worker run ...` without click. None: not a form
    handled here, so the click command runs and explains."""
    values: dict[str, Any] = {"db": None, "log_format": "auto", "drain": False}
    rest = list(args)
    while rest and rest[0] != "worker":  # global options before the command
        arg, value, rest = _split(rest)
        if arg == "--db" and value is not None:
            values["db"] = value
        elif arg == "--log-format" and value in LOG_FORMATS:
            values["log_format"] = value
        else:
            return None
    if rest[:2] != ["worker", "run"]:
        return None
    rest = rest[2:]
    while rest:
        arg, value, rest = _split(rest)
        if arg == "--drain" and value is None:
            values["drain"] = True
            continue
        spec = _VALUED.get(arg)
        if spec is None or value is None:
            return None
        key, kind, lowest = spec
        try:
            values[key] = kind(value)
        except ValueError:
            return None
        if lowest is not None and values[key] < lowest:
            return None
        if key == "slots" and values[key] > SLOTS_MAX:
            return None
    values["queues"] = queue_list(values.get("queues"))
    return run_command(**values)


def _split(rest: list[str]) -> tuple[str, str | None, list[str]]:
    """The next option, its value (None: none given or a flag) and what follows."""
    arg = rest[0]
    if arg.startswith("--") and "=" in arg:
        name, value = arg.split("=", 1)
        return (arg if name == "--drain" else name), value, rest[1:]  # a flag takes none
    if arg in _VALUED or arg == "--log-format":
        if len(rest) < 2:
            return arg, None, rest[1:]
        return arg, rest[1], rest[2:]
    return arg, None, rest[1:]


def run_command(db: str | None, log_format: str, drain: bool, name: str | None = None,
                label: str | None = None, grace: float = GRACE_DEFAULT,
                poll_interval: float | None = None, queues: list[str] | None = None,
                instance: str | None = None, supervised_by: int | None = None,
                slots: int | None = None) -> int:
    """Run one worker in the foreground (what the systemd unit runs)."""
    from queuectl.locator import resolve
    from queuectl.process import caller_umask
    from queuectl.worker import WorkerOptions, run_worker

    if instance is not None:  # the unit's %i: `mail:1` serves mail, `1` every queue
        from queuectl.units import lane_of

        if queues is not None:
            raise ValidationError("give --queue or --instance, not both")
        queues = lane_of(instance)
        surplus = _beyond_its_lane_file(instance, queues)
        if surplus is not None:
            return _decline(surplus)
    options = WorkerOptions(name=name, label=label, grace=grace, poll_interval=poll_interval,
                            drain=drain, job_umask=caller_umask(), parent_pid=supervised_by,
                            queues=queues, slots=slots if slots is not None else env_slots())
    return run_worker(resolve(db or None), options, log_format)


def env_slots() -> int:
    """QUEUECTL_SLOTS, the default of --slots (1 when unset)."""
    import os

    value = os.environ.get(SLOTS_ENV, "").strip()
    if not value:
        return 1
    if not value.isdigit() or not 1 <= int(value) <= SLOTS_MAX:
        raise ValidationError(f"{SLOTS_ENV}={value!r}: expected a whole number from 1 to "
                              f"{SLOTS_MAX}")
    return int(value)


def _beyond_its_lane_file(instance: str, queues: list[str] | None) -> str | None:
    """Why this instance must not run, if a lane file declares its lane with fewer workers:
    after Workers= is lowered, the target's restart (PartOf=) restarts the surplus instances
    too, and those no longer get the lane's drop-in (its User=, its paths)."""
    if queues is None:
        return None
    from queuectl.lanes import declaring

    lane = declaring(queues)
    number = int(instance.rpartition(":")[2])
    if lane is None or number <= lane.workers:
        return None
    return (f"instance {instance} is beyond Workers={lane.workers} of {lane.path}: "
            "not starting")


def _decline(reason: str) -> int:
    """Exit 0 after READY=1 and STOPPING=1: the unit ends inactive, not failed, and
    Restart=on-failure leaves it stopped."""
    import sys

    from queuectl.notify import Notifier

    notifier = Notifier()
    notifier.ready(reason)
    notifier.stopping(reason)
    print(f"queuectl: {reason}", file=sys.stderr)
    return 0
