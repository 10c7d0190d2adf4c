"""A throwaway PostgreSQL server for the test session: real, private, and never the system's.

Debian's server binaries run as the unprivileged `postgres` user (`runuser`; the server
refuses to run as root) with data and Unix socket in a temporary directory and TCP on a
free high port of 127.0.0.1 — never port 5432, never the system cluster. Unix-socket
connections are trusted; TCP ones need a password (scram-sha-256), so tests can check
passwords, passfiles and errors without touching anyone else's server.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

REQUIRE_ENV = "QUEUECTL_REQUIRE_POSTGRES"
SUPERUSER = "postgres"


def _unavailable(reason: str) -> None:
    """Skip, or fail where CI says a server must be there."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"no throwaway PostgreSQL: {reason}")


def find_bindir() -> str | None:
    """The newest Debian server install, else initdb on PATH."""
    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def free_port() -> int:
    """A free high TCP port on 127.0.0.1 (never 5432)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 5432 and port > 1024:
            return port


class PgServer:
    """One private cluster: `initdb`, `pg_ctl start/restart/stop`, and locators for it."""

    _counter = itertools.count(1)

    def __init__(self, bindir: str, base: Path, run_as: str | None) -> None:
        self.bindir = bindir
        self.base = base  # holds data/, log and the Unix socket
        self.data = base / "data"
        self.log = base / "log"
        self.run_as = run_as  # None: this user runs the server (not root)
        self.port = 0

    # -- running the server's own tools ------------------------------------------------------
    def _tool(self, name: str, *args: str, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [os.path.join(self.bindir, name), *args]
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                cwd=str(self.base))
        if check and result.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}\n"
                               f"{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        self._tool("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "--no-sync",
                   "-E", "UTF8", "--locale=C")
        # Unix sockets are trusted (setup, peer-like tests); TCP needs a password.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def start(self) -> None:
        """Start on a free port, trying another if someone takes it first."""
        last = ""
        for _ in range(5):
            self.port = free_port()
            opts = (f"-k {self.base} -p {self.port} -c listen_addresses=127.0.0.1"
                    " -c fsync=off -c full_page_writes=off")
            result = self._tool("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log),
                                "-w", "-t", "60", "start", check=False)
            if result.returncode == 0:
                return
            last = result.stderr.strip() + "\n" + self.log_tail()
        raise RuntimeError(f"pg_ctl start failed: {last}")

    def restart(self) -> None:
        """`pg_ctl -m fast -w restart`: every connection is cut, as in a real restart."""
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w",
                   "-t", "60", "restart")

    def outage(self, seconds: float) -> None:
        """Stop the server for `seconds` (the length of the fault is the point, so this
        sleeps), then start it again on the same port, so locators stay valid."""
        import time

        self._tool("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        time.sleep(seconds)
        opts = (f"-k {self.base} -p {self.port} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c full_page_writes=off")
        self._tool("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                   "-t", "60", "start")

    def stop(self) -> None:
        if self.data.exists():
            self._tool("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop",
                       check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- talking to it -----------------------------------------------------------------------
    def psql(self, sql: str, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """Run SQL as the superuser over the Unix socket; the unaligned output."""
        result = subprocess.run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.base),
             "-p", str(self.port), "-U", user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PGPASSWORD": ""})
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def locator(self, schema: str | None = None, dbname: str = "postgres",
                user: str = SUPERUSER, **params: str) -> str:
        """A Unix-socket locator (`host=` names the socket directory)."""
        query = {"host": str(self.base), "port": str(self.port), **params}
        if schema:
            query["schema"] = schema
        text = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
        return f"postgresql://{quote(user)}@/{quote(dbname)}?{text}"

    def tcp_locator(self, user: str, password: str | None = None, dbname: str = "postgres",
                    schema: str | None = None, **params: str) -> str:
        """A TCP locator on 127.0.0.1, with the password in the URL if given."""
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        query = {**params, **({"schema": schema} if schema else {})}
        text = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
        return (f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname)}"
                + (f"?{text}" if text else ""))

    def fresh_schema(self) -> str:
        return f"q{os.getpid()}_{next(self._counter)}"

    def fresh_locator(self) -> str:
        """A locator naming a queue schema nobody has used: an empty queue."""
        return self.locator(schema=self.fresh_schema())

    def create_role(self, name: str, password: str | None = None, login: bool = True) -> None:
        pw = f" PASSWORD '{password}'" if password else ""
        self.psql(f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name} {'LOGIN' if login else ''}{pw}")

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the server accepts connections (after a restart)."""
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [os.path.join(self.bindir, "pg_isready"), "-h", str(self.base), "-p",
                 str(self.port)], capture_output=True, timeout=30)
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"server not ready after {timeout} s")
            time.sleep(0.1)


def start_or_skip() -> PgServer:
    """Start a private server, or skip (fail under QUEUECTL_REQUIRE_POSTGRES=1) saying why."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("the PostgreSQL server binaries are not installed "
                     "(Debian: apt install postgresql)")
    if shutil.which("psql") is None:
        _unavailable("psql is not installed (Debian: apt install postgresql-client)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("the driver psycopg2 is not installed (pip install 'queuectl[postgres]')")
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("there is no user 'postgres' to run the server as")
        if shutil.which("runuser") is None:
            _unavailable("runuser is not installed")
        run_as = "postgres"
    base = Path(tempfile.mkdtemp(prefix="queuectl-pg-"))
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    base.chmod(0o755)  # other users' clients reach the socket; data/ stays 0700
    server = PgServer(bindir, base, run_as)
    try:
        server.init()
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        server.stop()
        _unavailable(f"it could not be started: {exc}")
    return server
