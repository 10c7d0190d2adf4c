"""A throwaway PostgreSQL cluster for the benchmark: one per run, shared by queuectl and its
PostgreSQL peers so that they are measured against the same server.

The bench has its own starter (it must run without the test code): `initdb` and `pg_ctl` from
Debian's `postgresql` package, as the `postgres` user when we are root (the server refuses to
run as root), data directory and Unix socket in a private temporary directory, a free high
port on 127.0.0.1. Never the system cluster, never port 5432. Stopped and removed at the end
of the run and at exit; only the postmaster this process started is ever signalled.
"""

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import CLK_TCK, log

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin that has initdb, pg_ctl and psql."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "psql")):
            try:
                found.append((int(Path(d).parent.name), Path(d)))
            except ValueError:
                continue
    return max(found)[1] if found else None


def free_port() -> int:
    """A port nobody listens on now, well away from 5432."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 5432 and port > 20000:
            return port
    raise RuntimeError("no free high port found")


class PgCluster:
    """One private cluster: start(), database(), locator(), sql(), stop()."""

    def __init__(self, parent: Path | None = None) -> None:
        self.parent = parent
        self.bindir: Path | None = None
        self.dir: Path | None = None
        self.port = 0
        self.version = ""
        self._as_postgres = os.geteuid() == 0
        self._counter = 0

    # -- life cycle ------------------------------------------------------------------------
    def unavailable(self) -> str | None:
        """Why no cluster can be started here, or None."""
        self.bindir = find_bindir()
        if self.bindir is None:
            return "PostgreSQL server binaries not found (Debian package `postgresql`)"
        if self._as_postgres:
            try:
                pwd.getpwnam(SUPERUSER)
            except KeyError:
                return "running as root but there is no `postgres` user to run the server as"
            if shutil.which("runuser") is None:
                return "running as root but `runuser` is missing"
        return None

    def _cmd(self, binary: str, *args: str | Path) -> list[str]:
        assert self.bindir is not None
        argv = [str(self.bindir / binary), *(str(a) for a in args)]
        return ["runuser", "-u", SUPERUSER, "--", *argv] if self._as_postgres else argv

    def start(self) -> None:
        """initdb + pg_ctl start (a second or two); registered for stop at exit."""
        reason = self.unavailable()
        if reason:
            raise RuntimeError(reason)
        self.dir = Path(tempfile.mkdtemp(prefix="queuectl-bench-pg-", dir=self.parent))
        atexit.register(self.stop)
        if self._as_postgres:
            pw = pwd.getpwnam(SUPERUSER)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o700)
        data = self.dir / "data"
        subprocess.run(self._cmd("initdb", "-D", data, "-A", "trust", "-U", SUPERUSER,
                                 "--no-sync", "-E", "UTF8"),
                       check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        self.port = free_port()
        opts = f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1"
        res = subprocess.run(self._cmd("pg_ctl", "-D", data, "-o", opts, "-l",
                                       self.dir / "server.log", "-w", "-t", "60", "start"),
                             capture_output=True, text=True, timeout=90,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()[-300:]} {tail}")
        self.version = self.sql("postgres", "SHOW server_version").strip()
        log(f"PostgreSQL {self.version} started in {self.dir} (port {self.port})")

    def log_tail(self, chars: int = 500) -> str:
        try:
            return (self.dir / "server.log").read_text()[-chars:] if self.dir else ""
        except OSError:
            return ""

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.dir / "data" / "postmaster.pid").read_text().split()[0]) \
                if self.dir else None
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """pg_ctl stop -m fast; SIGKILL our own postmaster if that fails; rm -rf."""
        if self.dir is None:
            return
        d, self.dir = self.dir, None
        data = d / "data"
        if (data / "postmaster.pid").exists():
            pid = None
            try:
                pid = int((data / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
            try:
                subprocess.run(self._cmd("pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30",
                                         "stop"),
                               capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if pid and _is_postmaster_of(pid, data):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(d, ignore_errors=True)

    # -- use -------------------------------------------------------------------------------
    def locator(self, database: str, schema: str | None = None) -> str:
        """A queuectl locator for `database` over the Unix socket (no password: trust)."""
        assert self.dir is not None
        url = (f"postgresql://{SUPERUSER}@/{database}?host={quote(str(self.dir), safe='/')}"
               f"&port={self.port}")
        return url + (f"&schema={schema}" if schema else "")

    def dsn(self, database: str) -> str:
        """A libpq keyword/value string, for the peers and for psycopg2."""
        assert self.dir is not None
        return f"host={self.dir} port={self.port} user={SUPERUSER} dbname={database}"

    def database(self, prefix: str, template: str | None = None) -> str:
        """A fresh database (optionally a copy of `template`); its name."""
        self._counter += 1
        name = f"{prefix}_{self._counter}".lower().replace("-", "_")
        tmpl = f" TEMPLATE {template}" if template else ""
        self.sql("postgres", f"CREATE DATABASE {name}{tmpl}")
        return name

    def drop(self, database: str) -> None:
        """Drop a database, ending any session still in it (ours only: private cluster)."""
        self.sql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def sql(self, database: str, statement: str, timeout: float = 600) -> str:
        """Run SQL through psql (unaligned, tuples only); its output."""
        assert self.dir is not None and self.bindir is not None
        argv = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                "-c", statement]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, env=_no_pg_env())
        if res.returncode != 0:
            raise RuntimeError(f"psql: {res.stderr.strip()[-400:]}")
        return res.stdout

    def connect(self, database: str) -> Any:
        """An autocommit psycopg2 connection for cheap polling, or None without the driver."""
        try:
            import psycopg2
        except ImportError:
            return None
        conn = psycopg2.connect(self.dsn(database))
        conn.autocommit = True
        return conn

    def cpu_seconds(self) -> float:
        """CPU used by the whole server so far: the postmaster (with the backends it has
        reaped) plus its live children. Differences of this over a measurement are the
        server's share of it."""
        pid = self.postmaster_pid()
        if pid is None:
            return 0.0
        total = _stat_cpu(pid, children=True)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as fh:
                        stat = fh.read().decode("ascii", "replace")
                except OSError:
                    continue
                fields = stat[stat.rfind(")") + 2:].split()
                if int(fields[1]) == pid:
                    total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total


def _stat_cpu(pid: int, children: bool = False) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read().decode("ascii", "replace")
    f = stat[stat.rfind(")") + 2:].split()
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def _is_postmaster_of(pid: int, data: Path) -> bool:
    """pid is still a postgres server whose data directory is ours (never anyone else's)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"postgres") and str(data).encode() in cmdline


def _no_pg_env() -> dict[str, str]:
    """The environment without libpq variables of the caller's (PGHOST, PGPASSWORD ...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def pg_env(extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Like common.clean_env, also without the caller's libpq variables."""
    from bench.common import clean_env

    env = {k: v for k, v in clean_env().items() if not k.startswith("PG")}
    env.update(dict(extra))
    return env


_CLUSTER: PgCluster | None = None
_REASON: str | None = None


def shared_cluster(parent: Path | None) -> tuple[PgCluster | None, str | None]:
    """The run's one cluster, started on first use: (cluster, None) or (None, why not)."""
    global _CLUSTER, _REASON
    if _CLUSTER is None and _REASON is None:
        cluster = PgCluster(parent)
        try:
            started = time.monotonic()
            cluster.start()
            log(f"cluster ready in {time.monotonic() - started:.1f} s")
            _CLUSTER = cluster
        except Exception as exc:  # noqa: BLE001 - recorded as the reason to skip
            _REASON = f"cannot start a throwaway PostgreSQL: {type(exc).__name__}: {exc}"
    return _CLUSTER, _REASON


def stop_shared() -> None:
    """Stop the run's cluster (also done at exit)."""
    global _CLUSTER, _REASON
    if _CLUSTER is not None:
        _CLUSTER.stop()
    _CLUSTER, _REASON = None, None
