"""`worker start` / `worker stop` on a systemd host: scale queuectl-worker@N instances.

systemd already supervises, restarts and logs workers far better than a foreground process
can, so where the unit is installed the CLI only enables/starts and disables/stops instances.
A lane is the instance name's prefix: `queuectl-worker@mail:2` is worker 2 of the lane that
serves `mail` (`mail:default:1` serves mail, then default), `queuectl-worker@2` serves every
queue; the unit passes %i to `worker run --instance`, so one unit file serves every lane.
"""

import os
import re
import shutil
import subprocess

from queuectl.errors import QueueError

TEMPLATE = "queuectl-worker@.service"
TARGET = "queuectl-workers.target"
_INSTANCE = re.compile(r"^queuectl-worker@(.+)\.service$")


def instance(name: str | int) -> str:
    return f"queuectl-worker@{name}.service"


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)


UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")


def available() -> bool:
    """systemd is PID 1 here and the worker unit is installed (a file check: it needs no
    D-Bus, so it answers the same for root and for users)."""
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        return False
    dirs = [d for d in os.environ.get("SYSTEMD_UNIT_PATH", "").split(":") if d] + list(UNIT_DIRS)
    return any(os.path.exists(os.path.join(d, TEMPLATE)) for d in dirs)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise QueueError(
            "managing queuectl-worker@ units needs root: run it with sudo, or use --foreground "
            "to run workers in this terminal"
        )


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["(no message)"])[0]
        raise QueueError(f"systemctl {what} failed: {first}")


def current() -> dict[str, tuple[bool, bool]]:
    """Every known instance -> (enabled, active)."""
    wants = _systemctl("show", "-p", "Wants", "--value", TARGET).stdout.split()
    states: dict[str, tuple[bool, bool]] = {u: (True, False) for u in wants if _INSTANCE.match(u)}
    listing = _systemctl("list-units", "--all", "--plain", "--no-legend", "--full",
                         "queuectl-worker@*.service").stdout
    for line in listing.splitlines():
        cols = line.split()
        if len(cols) >= 3 and _INSTANCE.match(cols[0]):
            enabled = states.get(cols[0], (False, False))[0]
            states[cols[0]] = (enabled, cols[2] in ("active", "activating", "reloading"))
    return states


def lane_of(instance_name: str) -> list[str] | None:
    """The queues an instance serves: `mail:1` -> [mail], `mail:default:1` -> [mail,
    default]; a name without `:` (`1`, as before lanes existed) -> None, every queue. A name
    with `:` not ending in a number is a usage error."""
    from queuectl.errors import ValidationError
    from queuectl.job import check_queue

    *names, number = instance_name.split(":")
    if names and not number.isdigit():
        raise ValidationError(f"instance {instance_name!r}: expected N or QUEUE:N "
                              "(queuectl-worker@mail:1)")
    return [check_queue(n, f"instance {instance_name!r}: queue") for n in names] or None


def _parts(unit: str) -> tuple[str | None, int | None]:
    """(lane, number) of an instance: ('mail', 2) for @mail:2, (None, 2) for @2; number
    None for instance names that are neither (left alone by scaling)."""
    name = _INSTANCE.match(unit).group(1)  # type: ignore[union-attr]  # units come from current()
    lane, _, number = name.rpartition(":")
    return (lane or None), (int(number) if number.isdigit() else None)


def _number(unit: str) -> int | None:
    return _parts(unit)[1]


def _lane_name(queues: list[str] | None) -> str | None:
    return ":".join(queues) if queues else None


def scale(count: int, queues: list[str] | None = None) -> list[str]:
    """Enable and start instances 1..count of the lane (`LANE:N`, or plain N without
    queues); stop and disable that lane's numbered instances above it. Other lanes are
    left alone."""
    _require_root()
    lane = _lane_name(queues)
    before = current()
    wanted = [instance(f"{lane}:{i}" if lane else i) for i in range(1, count + 1)]
    surplus = sorted((u for u in before if _parts(u)[0] == lane and (_number(u) or 0) > count),
                     key=lambda u: _number(u) or 0)  # each has a number above count
    report = []
    if surplus:
        _check(_systemctl("disable", "--now", *surplus), "disable --now")
        report += [f"{u}: stopped and disabled" for u in surplus]
    _check(_systemctl("enable", TARGET), f"enable {TARGET}")
    _check(_systemctl("enable", "--now", *wanted), "enable --now")
    for unit in wanted:
        enabled, active = before.get(unit, (False, False))
        if enabled and active:
            report.append(f"{unit}: already running")
        elif active:
            report.append(f"{unit}: enabled (was running)")
        else:
            report.append(f"{unit}: {'started' if enabled else 'enabled and started'}")
    return report


def stop_all(queues: list[str] | None = None) -> list[str]:
    """Stop and disable every instance (with queues: that lane's only); an empty list if
    there was none."""
    lane = _lane_name(queues)
    units = sorted((u for u in current() if lane is None or _parts(u)[0] == lane),
                   key=lambda u: (_number(u) is None, _number(u) or 0, u))
    if not units:
        return []
    _require_root()
    _check(_systemctl("disable", "--now", *units), "disable --now")
    return [f"{u}: stopped and disabled" for u in units]
