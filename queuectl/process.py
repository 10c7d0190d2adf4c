"""A job's process from spawn to reap: start it in its own session, collect the tail of its
output, time it out, kill its whole process group, and report how it ended.

Read top to bottom this is the whole life of a command; the worker only decides *when*.
"""

import math
import os
import select
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from queuectl.cgroup import AttemptCgroup, Delegation, Limits, Usage
from queuectl.policy import OUTPUT_LIMIT
from queuectl.store import Outcome

_SPAWNING = threading.Lock()  # see _spawn
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for the job's process group

# The worker's own liveness channel must never leak to the command it runs:
# a job that inherits NOTIFY_SOCKET could fake the worker's watchdog pings.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES", "QUEUECTL_CALLER_UMASK")


def caller_umask() -> int | None:
    """The umask queuectl was started with, for the jobs it runs."""
    value = os.environ.get("QUEUECTL_CALLER_UMASK", "")
    try:
        return int(value, 8)
    except ValueError:
        return None


def inheritable_environment(base: Mapping[str, str]) -> dict[str, str]:
    """What every job of a worker inherits: its environment less the private channels."""
    return {k: v for k, v in base.items() if k not in PRIVATE_ENV}


def job_environment(inherited: Mapping[str, str], job_id: str, attempt: int,
                    own: Mapping[str, str] | None = None) -> dict[str, str]:
    """One job's environment; `inherited` comes from inheritable_environment(), once. The
    job's own variables (its `env`) are laid over it, and queuectl's last, so that nothing
    a job was given can hide which job and attempt a process belongs to."""
    env = dict(inherited)
    if own:
        env.update(own)
    env["QUEUECTL_JOB_ID"] = job_id
    env["QUEUECTL_ATTEMPT"] = str(attempt)
    return env


# Under a delegated cgroup the shell is first this wrapper: it blocks reading fd 3 until the
# worker has moved it into the attempt's cgroup (the go byte), then execs the command's own
# shell in place, keeping its pid. Until the byte arrives it runs nothing and never forks,
# so no process of the job can start outside the cgroup; if the worker dies first, the read
# sees end of file and the command never runs.
_WRAPPER = 'read -r _ <&3 || exit 125; exec /bin/sh -c "$1" 3<&-'
NO_CGROUP = ("this worker has no delegated cgroup to enforce it in (run it under systemd:"
             " queuectl-worker@.service)")


class _NoDirectory(Exception):
    """The job's directory cannot be entered: `cannot enter directory DIR: REASON`."""


@contextmanager
def _working_directory(path: str | None) -> Iterator[None]:
    """Be in `path` for the spawn, then back where the worker was. posix_spawn has no
    chdir action here, so the worker (under _SPAWNING, as for the umask) enters the
    directory itself and the child inherits it: the check and the child's directory are
    one and the same chdir, made with the job's own credentials, under the cgroup wrapper
    too. Returning goes through a descriptor of the old directory (O_PATH: no read
    permission needed), so it works even if that one was renamed or removed meanwhile."""
    if path is None:
        yield
        return
    back = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.chdir(path)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _NoDirectory(f"cannot enter directory {path}: {reason}") from None
        try:
            yield
        finally:
            os.fchdir(back)
    finally:
        os.close(back)


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class JobProcess:
    """One running command. `wait()` returns when it exits or the timeout elapses."""

    def __init__(self, command: str, env: dict[str, str], umask: int | None = None,
                 cgroups: Delegation | None = None, limits: Limits | None = None,
                 cwd: str | None = None, stdin: bytes | None = None) -> None:
        """With cgroups (a delegated subtree) the attempt runs in a cgroup of its own;
        limits that cannot be enforced fail the attempt before anything runs. With cwd the
        command runs in that directory; one that cannot be entered fails the attempt
        before anything runs (the command never runs elsewhere). stdin: what the command
        reads on its standard input (None: /dev/null), from an anonymous file, so a
        command that never reads it cannot block us as a full pipe would."""
        self.started = time.monotonic()
        self.start_error: str | None = None
        self.returncode: int | None = None
        self._tail = bytearray()
        self.total = 0  # bytes the command printed so far; the tail is the last of them
        self._killed_for: str | None = None
        self._term_sent_at: float | None = None
        self._kill_sent = False  # SIGKILL went out: only the exit is left to wait for
        self.pid = 0
        self.limits = limits or Limits()
        self.cgroup: AttemptCgroup | None = None
        self.usage = Usage()
        wanted = self.limits.wanted()
        if wanted and cgroups is None:
            self.start_error = f"cannot enforce {self.limits.show(wanted[0][1])}: {NO_CGROUP}"
            return
        if cgroups is not None:
            self.start_error = cgroups.unenforceable(self.limits)
            if self.start_error:
                return
            try:
                self.cgroup = cgroups.new_attempt(self.limits)
            except OSError as exc:
                self.start_error = f"cannot create the job's cgroup: {exc.strerror or exc}"
                return
        try:
            self._out = self._spawn(command, env, umask, cwd, stdin)
        except _NoDirectory as exc:
            self.start_error = str(exc)
            if self.cgroup is not None:
                self.cgroup.finish()
            return
        except OSError as exc:
            self.start_error = f"cannot start /bin/sh: {exc.strerror or exc}"
            if self.cgroup is not None:
                self.cgroup.finish()
            return
        self._pidfd = os.pidfd_open(self.pid)
        os.set_blocking(self._out, False)
        self._poll = select.poll()
        self._poll.register(self._pidfd, select.POLLIN)
        self._poll.register(self._out, select.POLLIN)
        self._out_open = True

    def _spawn(self, command: str, env: dict[str, str], umask: int | None,
               cwd: str | None = None, stdin: bytes | None = None) -> int:
        """posix_spawn rather than subprocess: the same work for a fraction of the CPU, which
        matters when jobs are short. Returns the read end of the job's stdout+stderr pipe.
        With cwd, _NoDirectory if it cannot be entered (nothing was started)."""
        in_fd = -1
        if stdin is not None:
            in_fd = os.memfd_create("queuectl-stdin", os.MFD_CLOEXEC)
            try:
                data = memoryview(stdin)
                while data:
                    data = data[os.write(in_fd, data):]
                os.lseek(in_fd, 0, os.SEEK_SET)
            except BaseException:
                os.close(in_fd)
                raise
        out_r, out_w = os.pipe()  # both close-on-exec; the child gets dup2'ed copies
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0) if in_fd < 0
            else (os.POSIX_SPAWN_DUP2, in_fd, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, out_w, 2),
        ]
        argv = ["/bin/sh", "-c", command]
        go_r = go_w = -1
        if self.cgroup is not None:
            go_r, go_w = os.pipe()
            actions.append((os.POSIX_SPAWN_DUP2, go_r, 3))
            argv = ["/bin/sh", "-c", _WRAPPER, "/bin/sh", command]
        try:
            # The worker's umask and directory stand in for the job's meanwhile; they are
            # the process's, so job slots (threads) take turns here.
            with _SPAWNING:
                previous = None if umask is None else os.umask(umask)
                try:
                    with _working_directory(cwd):  # the child starts there, the worker returns
                        self.pid = os.posix_spawn(
                            "/bin/sh", argv, env, file_actions=actions,
                            setsid=True,  # its own session and process group, off our terminal
                            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores these
                        )
                finally:
                    if previous is not None:
                        os.umask(previous)
            if self.cgroup is not None:
                os.close(go_r)
                go_r = -1
                self._enter_cgroup(go_w)
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
            for fd in (go_r, go_w, in_fd):
                if fd >= 0:
                    os.close(fd)
        return out_r

    def _enter_cgroup(self, go: int) -> None:
        """Move the waiting wrapper into the attempt's cgroup, then let it run. If the move
        fails the wrapper is killed and reaped: the command never ran."""
        assert self.cgroup is not None
        try:
            self.cgroup.add(self.pid)
        except OSError:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
            raise
        os.write(go, b"\n")

    @property
    def done(self) -> bool:
        return self.start_error is not None or self.returncode is not None

    def wait(self, timeout: float, extra_fds: tuple[int, ...] = ()) -> bool:
        """Block up to timeout seconds (or until an extra fd is readable); True once exited.
        Output is collected meanwhile without returning: the caller's loop runs once per
        deadline or event of its own, not once per chunk of output (nor for the end of
        the output, which usually comes just before the exit)."""
        if self.done:
            return True
        for fd in extra_fds:
            self._poll.register(fd, select.POLLIN)
        end = time.monotonic() + timeout
        try:
            while True:
                events = self._poll.poll(max(0, int((end - time.monotonic()) * 1000)))
                ready = {fd for fd, _ in events}
                if self._out in ready and self._out_open:
                    self._read_output()
                if self._pidfd in ready:
                    self._reap()
                    break
                if not events or ready - {self._out} or time.monotonic() >= end:
                    break
        finally:
            for fd in extra_fds:
                self._poll.unregister(fd)
        self._ready = ready
        return self.done

    def last_ready(self, fd: int) -> bool:
        """Was fd (one of wait()'s extra fds) readable when the last wait() returned?"""
        return fd in getattr(self, "_ready", ())

    def _read_output(self) -> bool:
        """Append what is available to the bounded tail; False at end of file."""
        try:
            chunk = os.read(self._out, 65_536)
        except BlockingIOError:
            return True
        if not chunk:
            if self._out_open:
                self._poll.unregister(self._out)
                self._out_open = False
            return False
        self._tail += chunk
        self.total += len(chunk)
        if len(self._tail) > 2 * OUTPUT_LIMIT:
            del self._tail[:-OUTPUT_LIMIT]
        return True

    def output_since(self, offset: int) -> tuple[int, bytes]:
        """What the command printed from byte `offset` on, as far as the tail still holds it:
        (where the returned bytes start, the bytes). For live output (`logs --follow`)."""
        begins = self.total - len(self._tail)
        start = max(offset, begins)
        return start, bytes(self._tail[start - begins:])

    def _reap(self) -> None:
        # The shell is a zombie until waited for, so its process group id cannot be reused
        # yet: kill whatever it left behind in the group (in its cgroup: all of it, however
        # it detached), then collect the last output.
        self._kill_all()
        if self._out_open and self._read_output():  # the usual end: the pipe is at its end
            deadline = time.monotonic() + 1.0
            os.set_blocking(self._out, True)
            while self._out_open and time.monotonic() < deadline:
                ready, _, _ = select.select([self._out], [], [],
                                            max(0, deadline - time.monotonic()))
                if not ready or not self._read_output():
                    break
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        os.close(self._pidfd)
        os.close(self._out)
        if self.cgroup is not None:
            self.usage = self.cgroup.finish()

    def _kill_all(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
        self._killpg(signal.SIGKILL)

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, reason: str) -> None:
        """Ask the whole process group to stop now (SIGTERM), SIGKILL after KILL_GRACE."""
        if self.done:
            return
        if self._term_sent_at is None:
            self._killed_for = reason
            self._term_sent_at = time.monotonic()
            self._killpg(signal.SIGTERM)
        elif time.monotonic() - self._term_sent_at >= KILL_GRACE:
            self._kill_all()
            self._kill_sent = True

    def enforce(self, timeout: float | None, now: float) -> None:
        """Kill the command past its `timeout` (None or 0: none), and SIGKILL it once
        SIGTERM's grace is over, whoever sent the SIGTERM: what every caller's loop does
        at each wake-up."""
        if timeout and now - self.started >= timeout:
            self.kill(f"timed out after {timeout:g} s")
        elif self._term_sent_at is not None:
            self.kill("")  # SIGKILL, once the grace is over

    def deadline(self, timeout: float | None) -> float:
        """When enforce(timeout) has something to do next (inf: nothing, the exit is all
        that is left): the timeout's end until the SIGTERM, then the SIGKILL's time. A
        deadline already past is never returned twice, so a caller's loop sleeps."""
        if self.done or self._kill_sent:
            return math.inf
        if self._term_sent_at is not None:
            return self._term_sent_at + KILL_GRACE
        return self.started + timeout if timeout else math.inf

    def outcome(self) -> Outcome:
        outcome = self._outcome()
        used = self.usage
        outcome.cpu_user_usec = used.cpu_user_usec
        outcome.cpu_system_usec = used.cpu_system_usec
        outcome.memory_peak_bytes = used.memory_peak_bytes
        return outcome

    def _outcome(self) -> Outcome:
        duration = time.monotonic() - self.started
        if self.start_error is not None:
            return Outcome(None, self.start_error, b"", duration, 0)
        output = bytes(self._tail[-OUTPUT_LIMIT:])
        code = self.returncode
        if self._killed_for:
            return Outcome(None if code is None or code < 0 else code, self._killed_for,
                           output, duration, self.total)
        if code and self.usage.oom_kills:  # the kernel's OOM killer, inside our cgroup
            limit = f" ({self.limits.show('memory_max')})" if self.limits.memory_max else ""
            return Outcome(None if code < 0 else code, f"out of memory{limit}", output,
                           duration, self.total)
        if code is not None and code < 0:
            return Outcome(None, f"killed by {signal_name(-code)}", output, duration, self.total)
        if code:
            return Outcome(code, f"exit status {code}", output, duration, self.total)
        return Outcome(0, None, output, duration, self.total)

    @property
    def succeeded(self) -> bool:
        return self.start_error is None and self._killed_for is None and self.returncode == 0
