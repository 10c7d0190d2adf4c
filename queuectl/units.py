"""`worker start` / `worker stop` on a systemd host: scale queuectl-worker@N instances.

systemd already supervises, restarts and logs workers far better than a foreground process
can, so where the unit is installed the CLI only enables/starts and disables/stops instances.
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


def _systemctl(*args: str) -> subprocess.CompletedProcess:
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


def _check(result: subprocess.CompletedProcess, what: str) -> None:
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


def _number(unit: str) -> int | None:
    name = _INSTANCE.match(unit).group(1)  # type: ignore[union-attr]
    return int(name) if name.isdigit() else None


def scale(count: int) -> list[str]:
    """Enable and start instances 1..count; stop and disable numbered instances above it."""
    _require_root()
    before = current()
    wanted = [instance(i) for i in range(1, count + 1)]
    surplus = sorted((u for u in before if (_number(u) or 0) > count), key=_number)
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


def stop_all() -> list[str]:
    """Stop and disable every instance; an empty list if there was none."""
    units = sorted(current(), key=lambda u: (_number(u) is None, _number(u) or 0, u))
    if not units:
        return []
    _require_root()
    _check(_systemctl("disable", "--now", *units), "disable --now")
    return [f"{u}: stopped and disabled" for u in units]
