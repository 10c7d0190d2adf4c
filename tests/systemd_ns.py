"""Boot a private, throwaway systemd + journald inside fresh Linux namespaces, for tests.

Why: queuectl's behaviour under systemd (Type=notify readiness, watchdog, journald fields)
can only be trusted when checked against a real systemd, but the test machines do not run
systemd as PID 1 and tests must never touch the host's services. So each PrivateSystemd
runs its own systemd as PID 1 of new PID/mount/UTS/IPC/cgroup namespaces, confined to its
own cgroup-v2 subtree, loading units only from a directory the test controls.

The namespace machinery itself (the cgroup, the launcher, finding PID 1, waiting for the boot,
nsenter, teardown) is NamespacedSystemd, which test_deb.py also uses to boot a Debian root's
own systemd; PrivateSystemd adds the host's systemd with test-controlled units.

Stdlib only (pytest is imported lazily by require_systemd_or_skip()).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
SYSTEMD_BIN = Path("/lib/systemd/systemd")
HOST_UNIT_DIR = Path("/lib/systemd/system")
BOOT_TARGET = "private-boot.target"
JOURNALD_UNITS = (
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
)
# Targets that the default dependencies of services/sockets point at; empty stubs suffice.
STUB_TARGETS = (
    "sysinit basic sockets timers paths slices local-fs network multi-user shutdown final umount"
).split()
REQUIRED_TOOLS = ("unshare", "nsenter", "mount", "systemctl", "journalctl")

# --kill-child: if unshare dies early, its child (PID 1 of the namespaces) dies with it.
_UNSHARE = (
    "unshare --fork --kill-child=SIGKILL --pid --mount --uts --ipc --cgroup --propagation private"
).split()
# Runs as PID 1 of the new namespaces, then becomes systemd ($1=name $2=unit path $3=target
# $4=systemd binary, then pairs SOURCE TARGET to bind-mount, e.g. a private /var/lib).
# /proc of the new PID namespace is its own; everything else here keeps the private
# systemd off host state:
# - /proc/sys read-only: it cannot change host sysctls;
# - /dev/console -> /dev/null: as PID 1 in a container, systemd logs by reopening
#   /dev/console, which is the host's (VM) console since /dev is shared;
# - mount -n: util-linux must not record anything in the host's /run/mount/utab.
_INNER_SCRIPT = """set -e
name=$1 unit_path=$2 target=$3 systemd=$4
shift 4
mount -n --make-rprivate /
mount -n -t proc -o nosuid,nodev,noexec proc /proc
mount -n -t tmpfs tmpfs /run
mount -n -t cgroup2 cgroup2 /sys/fs/cgroup
mount -n --bind -o ro /proc/sys /proc/sys
mount -n --bind /dev/null /dev/console
while [ $# -ge 2 ]; do mount -n --bind "$1" "$2"; shift 2; done
exec env container="$name" SYSTEMD_UNIT_PATH="$unit_path" "$systemd" --system --unit="$target"
"""
# /dev is shared with the host, so without this the dev-log socket's Symlinks=/dev/log would
# leave a dangling /dev/log on the host. (Inside, syslog(3) thus has no /dev/log either.)
_DEV_LOG_DROPIN = "[Socket]\n# reset: do not create /dev/log on the shared /dev\nSymlinks=\n"
# The launcher joins the cgroup with its *own* PID ($$ of this sh, which then execs unshare),
# so the caller (pytest) is never moved. $0 = cgroup.procs path, "$@" = the unshare command.
_LAUNCHER_SCRIPT = 'echo $$ > "$0" && exec "$@"'

_counter = itertools.count()
T = TypeVar("T")


def can_boot_systemd() -> tuple[bool, str]:
    """Return (True, "") if PrivateSystemd can work here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "needs root (namespaces, mounts and cgroups)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return False, f"missing tools: {', '.join(missing)}"
    if not (CGROUP2_ROOT / "cgroup.controllers").is_file():
        return False, f"no cgroup v2 hierarchy mounted at {CGROUP2_ROOT}"
    if not os.access(SYSTEMD_BIN, os.X_OK):
        return False, f"{SYSTEMD_BIN} not found"
    absent = [u for u in JOURNALD_UNITS if not (HOST_UNIT_DIR / u).is_file()]
    if absent:
        return False, f"missing journald units in {HOST_UNIT_DIR}: {', '.join(absent)}"
    return True, ""


def require_systemd_or_skip() -> None:
    """Skip the calling test/fixture if systemd cannot be booted here.

    With QUEUECTL_REQUIRE_SYSTEMD=1 (set in CI) it fails instead, so that a silently skipped
    suite cannot pass CI.
    """
    import pytest

    ok, reason = can_boot_systemd()
    if ok:
        return
    if os.environ.get("QUEUECTL_REQUIRE_SYSTEMD") == "1":
        pytest.fail(f"QUEUECTL_REQUIRE_SYSTEMD=1 but cannot boot systemd: {reason}")
    pytest.skip(f"cannot boot a private systemd: {reason}")


class CommandFailed(subprocess.CalledProcessError):
    """A command run with check=True exited non-zero; its message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class NamespacedSystemd:
    """A systemd booted as PID 1 of new PID/mount/UTS/IPC/cgroup namespaces, in a cgroup of
    its own. Subclasses say what runs as PID 1 (`_boot_command`); this class does the rest.

    Safety, whatever goes wrong:
    - the caller (pytest) is never moved: the launcher joins the cgroup with its own PID;
    - only processes inside this instance's own cgroup subtree are ever signalled;
    - only a cgroup this instance created is ever killed in or removed (a name clash fails);
    - a failed start() tears down everything started so far before the error propagates.
    """

    # Differ between users: which namespaces run() joins, and how long things may take.
    nsenter_namespaces: tuple[str, ...] = ("-m", "-p")
    start_timeout = 20.0
    stop_timeout = 10.0
    run_timeout = 30.0
    probe_timeout = 5.0  # one `is-system-running` while booting

    def __init__(self, name: str, env: dict[str, str] | None = None) -> None:
        """`name`: of the cgroup (and unique per instance); `env`: the environment of the
        launcher and of run() (None: the caller's)."""
        self.name = name
        self.env = env
        self.cgroup = CGROUP2_ROOT / name
        self._pid: int | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._log: Any = None  # anonymous temp file with the launcher's output
        self._last_state = ""  # last is-system-running answer, for error messages
        self._owns_cgroup = False  # never kill in / remove a cgroup someone else created

    def _boot_command(self) -> list[str]:
        """The command unshare runs as PID 1; it ends by exec'ing systemd. Called by start()
        before anything else, so it may prepare files the boot needs."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """Host-side PID of the namespaced systemd (PID 1 inside)."""
        if self._pid is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float | None = None) -> None:
        """Boot and wait until `is-system-running` says running/degraded.

        On any failure everything started so far is torn down before the error propagates.
        """
        if self._launcher is not None:
            raise RuntimeError("already started")
        timeout = self.start_timeout if timeout is None else timeout
        try:
            boot = self._boot_command()
            self.cgroup.mkdir()  # FileExistsError here means a name clash: never reuse
            self._owns_cgroup = True
            self._log = tempfile.TemporaryFile()
            self._launcher = subprocess.Popen(
                ["/bin/sh", "-c", _LAUNCHER_SCRIPT, str(self.cgroup / "cgroup.procs"), *_UNSHARE,
                 *boot],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,  # keep terminal signals (Ctrl-C) away from it
            )
            deadline = time.monotonic() + timeout
            self._pid = self._poll(self._find_init, deadline, "the namespace's PID 1")
            self._poll(self._is_up, deadline, "is-system-running to be running/degraded")
        except BaseException:
            self.stop()
            raise

    def _poll(self, probe: Callable[[], T], deadline: float, what: str) -> T:
        """Like wait_for(), but bails out with the boot log if the launcher died."""
        while True:
            value = probe()
            if value:
                return value
            assert self._launcher is not None
            if self._launcher.poll() is not None:
                raise RuntimeError(
                    f"{type(self).__name__} exited ({self._launcher.returncode}) while waiting"
                    f" for {what}; output:\n{self.boot_log()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out waiting for {what} (last state: {self._last_state!r});"
                    f" output:\n{self.boot_log()}"
                )
            time.sleep(0.05)

    def _find_init(self) -> int | None:
        """The launcher's (unshare's) child is the namespace's PID 1, i.e. systemd."""
        assert self._launcher is not None
        for pid in self._cgroup_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if int(fields.get("PPid", "0")) == self._launcher.pid:
                return pid
        return None

    def _is_up(self) -> bool:
        try:
            result = self.systemctl("is-system-running", timeout=self.probe_timeout)
        except subprocess.TimeoutExpired:  # busy while booting: just ask again
            return False
        self._last_state = (result.stdout + result.stderr).strip()
        return result.stdout.strip() in ("running", "degraded")

    def boot_log(self) -> str:
        """Output of the launcher (e.g. mount errors), for failure messages.

        systemd's own log goes to /dev/console (nulled); look at journalctl for the rest.
        """
        if self._log is None:
            return ""
        fd = self._log.fileno()  # pread: the file offset is shared with the writers
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def run(
        self,
        *args: str,
        check: bool = False,
        timeout: float | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespaces (nsenter), capturing text output.

        check=True raises CommandFailed (a CalledProcessError) on a non-zero exit.
        """
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), *self.nsenter_namespaces, "--", *args],
            env=self.env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=self.run_timeout if timeout is None else timeout,
        )
        if check and result.returncode != 0:
            raise CommandFailed(result.returncode, list(args), result.stdout, result.stderr)
        return result

    def systemctl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` against the namespaced systemd."""
        return self.run("systemctl", *args, **kw)

    def journalctl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`journalctl --no-pager ARGS` against the namespaced journal."""
        return self.run("journalctl", "--no-pager", *args, **kw)

    def show(self, unit: str, prop: str) -> str:
        """Value of one unit property (`systemctl show -p PROP --value UNIT`)."""
        return self.systemctl("show", "-p", prop, "--value", unit, check=True).stdout.strip()

    @staticmethod
    def wait_for(
        predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05
    ) -> T:
        """Poll until predicate() is truthy and return its value; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def _cgroup_dirs(self) -> list[Path]:
        """Our cgroup and all its descendants, deepest first."""
        if not self.cgroup.is_dir():
            return []
        dirs = [Path(root) for root, _, _ in os.walk(self.cgroup)]
        return sorted(dirs, key=lambda p: len(p.parts), reverse=True)

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self._cgroup_dirs():
            try:
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return pids

    def stop(self, timeout: float | None = None) -> None:
        """Kill everything in the namespaces and remove the cgroups. Idempotent.

        Only processes inside this instance's own cgroup subtree are ever signalled; the
        mounts made inside go with the mount namespace.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._launcher is not None and self._launcher.poll() is None:
            init = self._pid if self._pid in self._cgroup_pids() else self._find_init()
            if init is not None:
                # Killing PID 1 of a PID namespace makes the kernel kill all its processes;
                # unshare, still alive, reaps it and exits (no orphans for the host's init).
                os.kill(init, signal.SIGKILL)
            else:  # not forked yet: the launcher (sh or unshare) is our own child
                self._launcher.kill()
            try:
                self._launcher.wait(timeout=min(5.0, timeout))
            except subprocess.TimeoutExpired:
                pass
        self._pid = None
        # Fallback for stragglers (e.g. the launcher died but something outlived it).
        while self._owns_cgroup and self._cgroup_pids() and time.monotonic() < deadline:
            try:
                (self.cgroup / "cgroup.kill").write_text("1")
            except OSError:  # kernel < 5.14: signal each process of our own subtree
                for pid in self._cgroup_pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)
        if self._launcher is not None:
            try:
                self._launcher.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._launcher = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._owns_cgroup:
            self._remove_cgroups(deadline)
            self._owns_cgroup = False

    def _remove_cgroups(self, deadline: float) -> None:
        """rmdir depth-first; a cgroup is removable only once its processes are reaped."""
        while True:
            busy = []
            for d in self._cgroup_dirs():
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    busy.append(f"{d}: {exc.strerror}")
            if not busy:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("could not remove cgroups: " + "; ".join(busy))
            time.sleep(0.05)


class PrivateSystemd(NamespacedSystemd):
    """A private systemd (PID 1 of its own namespaces) plus journald, for one test scope.

    Usage::

        with PrivateSystemd(tmp_path / "units") as sd:
            sd.write_unit("x.service", "...")
            sd.systemctl("start", "x.service", check=True)

    The host filesystem is shared (units may ExecStart programs by absolute path), but /run is
    a private tmpfs: the journald socket is /run/systemd/journal/socket only inside.
    """

    def __init__(
        self,
        unit_dir: Path,
        name: str | None = None,
        binds: list[tuple[Path, str]] | None = None,
        unit_path_prefix: list[str] | None = None,
    ) -> None:
        """`unit_dir`: where units are loaded from; stubs are added at start().

        `binds`: (host source, path inside) pairs bind-mounted privately before systemd starts
        (a private /etc/systemd/system, /var/lib, /etc/passwd ...), so that what the units do
        there never reaches the host. `unit_path_prefix`: directories (paths inside) searched
        before unit_dir, e.g. "/etc/systemd/system" where `systemctl enable` writes.
        """
        super().__init__(name or f"queuectl-test-{os.getpid()}-{next(_counter)}")
        self.unit_dir = Path(unit_dir).resolve()
        self.binds = [(Path(src).resolve(), dst) for src, dst in (binds or [])]
        self.unit_path = ":".join([*(unit_path_prefix or []), str(self.unit_dir)])

    def write_unit(self, name: str, text: str, reload: bool = False) -> Path:
        """Write a unit file into unit_dir; with reload=True also run daemon-reload."""
        path = self.unit_dir / name
        path.write_text(text)
        if reload:
            self.systemctl("daemon-reload", check=True)
        return path

    def _boot_command(self) -> list[str]:
        self._prepare_unit_dir()
        command = ["/bin/sh", "-c", _INNER_SCRIPT, "private-systemd-init"]
        command += [self.name, self.unit_path, BOOT_TARGET, str(SYSTEMD_BIN)]
        for src, dst in self.binds:
            command += [str(src), dst]
        return command

    def _prepare_unit_dir(self) -> None:
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        for unit in JOURNALD_UNITS:
            link = self.unit_dir / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(HOST_UNIT_DIR / unit)
        dropin = self.unit_dir / "systemd-journald-dev-log.socket.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "no-dev-log-symlink.conf").write_text(_DEV_LOG_DROPIN)
        for target in STUB_TARGETS:
            (self.unit_dir / f"{target}.target").write_text(f"[Unit]\nDescription={target} stub\n")
        wants = " ".join(JOURNALD_UNITS)
        (self.unit_dir / BOOT_TARGET).write_text(
            f"[Unit]\nDescription=private test boot\nWants={wants}\nAfter={wants}\n"
        )
