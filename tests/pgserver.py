"""A throwaway PostgreSQL server: real, private, and never the system's. The one starter of
the test session (`start_or_skip`) and of the benchmark (bench/pgserver.py loads this file by
path and keeps what is its own on top: the peers' databases, the server's CPU).

Debian's server binaries run as the unprivileged `postgres` user (`runuser`; the server
refuses to run as root) with data and Unix socket in a temporary directory and TCP on a
free high port of 127.0.0.1 — never port 5432, never the system cluster. Unix-socket
connections are trusted; TCP ones need a password (scram-sha-256), so tests can check
passwords, passfiles and errors without touching anyone else's server. Stopping it signals
only the postmaster this server started.

No pytest at import time: the bench imports this file too.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

REQUIRE_ENV = "QUEUECTL_REQUIRE_POSTGRES"
SUPERUSER = "postgres"
TOOLS = ("initdb", "pg_ctl", "psql")
# The tests' server: nothing to keep across a power loss. The bench keeps the defaults
# (fsync on): they are part of what it measures.
TEST_SETTINGS = ("fsync=off", "full_page_writes=off")


class Unavailable(RuntimeError):
    """No throwaway server can be started here; the message says why."""


def _unavailable(reason: str) -> None:
    """Skip, or fail where CI says a server must be there."""
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"no throwaway PostgreSQL: {reason}")


def find_bindir() -> str | None:
    """The newest Debian server install with initdb, pg_ctl and psql, else initdb's
    directory on PATH if those are there."""
    def complete(d: str | Path) -> bool:
        return all(os.access(os.path.join(d, tool), os.X_OK) for tool in TOOLS)

    found = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            if complete(d):
                found.append((float(d.parent.name), str(d)))
        except ValueError:
            continue
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb and complete(os.path.dirname(initdb)) else None


def free_port() -> int:
    """A port nobody listens on now on 127.0.0.1, well away from 5432."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 5432 and port > 20000:
            return port
    raise RuntimeError("no free high port found")


def _no_pg_env() -> dict[str, str]:
    """The environment without the caller's libpq variables (PGHOST, PGPASSWORD ...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def socket_locator(base: Path, port: int, schema: str | None, dbname: str, user: str,
                   params: dict[str, str]) -> str:
    """A locator over the Unix socket in `base` (libpq's `host=` names the directory)."""
    query = {"host": str(base), "port": str(port), **params}
    if schema:
        query["schema"] = schema
    text = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
    return f"postgresql://{quote(user)}@/{quote(dbname)}?{text}"


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
        self.settings: tuple[str, ...] = ()

    # -- running the server's own tools ------------------------------------------------------
    def _tool(self, name: str, *args: str, check: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [os.path.join(self.bindir, name), *args]
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                cwd=str(self.base), stdin=subprocess.DEVNULL)
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

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_statements(self, dbname: str) -> None:
        """Every statement of new sessions on `dbname` into the log (see logged_since)."""
        self.psql(f"ALTER DATABASE {dbname} SET log_statement = 'all'")

    def logged_since(self, offset: int) -> str:
        """The server log written after `offset` (log_size() before)."""
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def init(self, locale: str | None = "C") -> None:
        """initdb; locale None: the environment's (the bench's, as it always measured)."""
        self._tool("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "--no-sync",
                   "-E", "UTF8", *([f"--locale={locale}"] if locale else []))
        # Unix sockets are trusted (setup, peer-like tests, the bench); TCP needs a password.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def _options(self) -> str:
        return " ".join([f"-k {self.base} -p {self.port} -c listen_addresses=127.0.0.1",
                         *(f"-c {s}" for s in self.settings)])

    def start(self, settings: Sequence[str] = TEST_SETTINGS) -> None:
        """Start on a free port, trying another if someone takes it first. `settings`:
        `name=value` server settings on top of the defaults."""
        self.settings = tuple(settings)
        last = ""
        for _ in range(5):
            self.port = free_port()
            result = self._tool("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l",
                                str(self.log), "-w", "-t", "60", "start", check=False)
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
        self._tool("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", str(self.log),
                   "-w", "-t", "60", "start")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def crash(self) -> None:
        """SIGKILL the postmaster, then what it had started (checkpointer, WAL sender,
        backends), as a machine that dies takes all of them: nothing of this server may
        answer a client afterwards, and nothing is left running."""
        from waiting import wait_for

        pid = self.postmaster_pid()
        if pid is None or not _is_postmaster_of(pid, self.data):
            raise RuntimeError(f"no postmaster of {self.data} to kill")
        children = _children_of(pid)
        os.kill(pid, signal.SIGKILL)
        for child in [*children, *_children_of(pid)]:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not any(_is_alive_postgres(p) for p in [pid, *children]), 30,
                 "the killed server's processes to be gone")

    def promote(self) -> None:
        """`pg_ctl promote -w`: a standby becomes a primary that takes writes."""
        self._tool("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def stop(self) -> None:
        """pg_ctl stop -m fast; SIGKILL our own postmaster if that fails; rm -rf. Again: no-op."""
        if not self.base.exists():
            return
        pid = self.postmaster_pid()
        if pid is not None:
            try:
                self._tool("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                           "stop", check=False, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if _is_postmaster_of(pid, self.data):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)

    # -- talking to it -----------------------------------------------------------------------
    def psql(self, sql: str, dbname: str = "postgres", user: str = SUPERUSER,
             timeout: float = 60) -> str:
        """Run SQL over the Unix socket (no libpq variables of the caller's); the unaligned
        output, stripped."""
        result = subprocess.run(
            [os.path.join(self.bindir, "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.base), "-p", str(self.port), "-U", user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=timeout, env=_no_pg_env(),
            stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()[-400:]}")
        return result.stdout.strip()

    def locator(self, schema: str | None = None, dbname: str = "postgres",
                user: str = SUPERUSER, **params: str) -> str:
        """A Unix-socket locator (`host=` names the socket directory)."""
        return socket_locator(self.base, self.port, schema, dbname, user, params)

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
        """Until the server accepts connections (after a restart). Tests only."""
        from waiting import wait_for

        wait_for(lambda: subprocess.run(
            [os.path.join(self.bindir, "pg_isready"), "-h", str(self.base), "-p",
             str(self.port)], capture_output=True, timeout=30).returncode == 0,
            timeout, "the server to accept connections", every=0.1)


def _is_postmaster_of(pid: int, data: Path) -> bool:
    """pid is still a postgres server whose data directory is ours (never anyone else's)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"postgres") and str(data).encode() in cmdline


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is pid (the postmaster's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _is_alive_postgres(pid: int) -> bool:
    """pid is a live (not zombie) process of a postgres server program."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return stat.rsplit(")", 1)[1].split()[0] not in "ZX" and name.startswith(("postgres",
                                                                               "postmaster"))


def _new_base(prefix: str, parent: Path | None, run_as: str | None) -> Path:
    """A new temporary directory for a server, owned by the user it runs as."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    base.chmod(0o755)  # other users' clients reach the socket; data/ stays 0700
    return base


def start_server(prefix: str = "queuectl-pg-", parent: Path | None = None,
                 locale: str | None = "C",
                 settings: Sequence[str] = TEST_SETTINGS) -> PgServer:
    """initdb and start a private server in a new temporary directory (`prefix`, under
    `parent`); Unavailable saying why if there can be none here."""
    bindir = find_bindir()
    if bindir is None:
        raise Unavailable("the PostgreSQL server binaries (initdb, pg_ctl, psql) are not "
                          "installed (Debian: apt install postgresql)")
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise Unavailable(f"there is no user '{SUPERUSER}' to run the server as") from None
        if shutil.which("runuser") is None:
            raise Unavailable("runuser is not installed")
        run_as = SUPERUSER
    server = PgServer(bindir, _new_base(prefix, parent, run_as), run_as)
    try:
        server.init(locale)
        server.start(settings)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        server.stop()
        raise Unavailable(f"it could not be started: {exc}") from exc
    except BaseException:
        server.stop()
        raise
    return server


def start_or_skip() -> PgServer:
    """Start a private server, or skip (fail under QUEUECTL_REQUIRE_POSTGRES=1) saying why."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("the driver psycopg2 is not installed (pip install 'queuectl[postgres]')")
    try:
        return start_server()
    except Unavailable as exc:
        _unavailable(str(exc))
        raise  # not reached: _unavailable skips or fails


def start_standby(primary: PgServer, synchronous: bool = True) -> PgServer:
    """A streaming standby of `primary` in a new temporary directory: `pg_basebackup -R`
    (it writes standby.signal and primary_conninfo) over the primary's Unix socket, then
    the same start as any server here. synchronous: the primary then waits for this
    standby to flush each commit before it answers (`synchronous_standby_names = '*'`),
    in force when this returns. Unavailable saying why if there can be none here."""
    from waiting import TimedOut, wait_for

    if not os.access(os.path.join(primary.bindir, "pg_basebackup"), os.X_OK):
        raise Unavailable("pg_basebackup is not installed next to initdb")
    # A replication connection matches no `all` line of pg_hba.conf: it needs its own.
    with open(primary.data / "pg_hba.conf", "a") as hba:
        hba.write("local replication all trust\n")
    primary.psql("SELECT pg_reload_conf()")
    standby = PgServer(primary.bindir, _new_base("queuectl-pg-standby-", primary.base.parent,
                                                 primary.run_as), primary.run_as)
    try:
        standby._tool("pg_basebackup", "-D", str(standby.data), "-h", str(primary.base),
                      "-p", str(primary.port), "-U", SUPERUSER, "-R", "-X", "stream",
                      "-c", "fast", "--no-sync")
        standby.start(primary.settings)
        if synchronous:
            primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            primary.psql("SELECT pg_reload_conf()")
            wait_for(lambda: primary.psql(
                "SELECT sync_state FROM pg_stat_replication") == "sync", 60,
                "the standby to be synchronous")
    except (RuntimeError, subprocess.TimeoutExpired, OSError, TimedOut) as exc:
        standby.stop()
        raise Unavailable(f"a standby could not be started: {exc}") from exc
    except BaseException:
        standby.stop()
        raise
    return standby


# -- PgBouncer in front of it ----------------------------------------------------------------
PGBOUNCER = "/usr/sbin/pgbouncer"


class PgBouncer:
    """One private PgBouncer in transaction pooling mode in front of one PgServer: its own
    0700 directory (ini, userlist, log, Unix socket), a free port, every database of the
    server (`* =`), trusted clients. Stopping it signals only the process it started."""

    def __init__(self, server: PgServer, base: Path, pool_size: int) -> None:
        self.server = server
        self.base = base
        self.pool_size = pool_size
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = base / "pgbouncer.log"

    def _config(self) -> str:
        return "\n".join([
            "[databases]",
            f"* = host={self.server.base} port={self.server.port}",
            "[pgbouncer]",
            f"unix_socket_dir = {self.base}",
            "listen_addr =",  # the Unix socket only
            f"listen_port = {self.port}",
            "auth_type = trust",
            f"auth_file = {self.base}/userlist.txt",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 500",
            "ignore_startup_parameters = extra_float_digits",
            f"logfile = {self.log}",
            "",
        ])

    def start(self) -> None:
        """Start in the foreground (as the server's user when root); until it accepts
        connections on its socket."""
        from waiting import wait_for

        self.port = free_port()
        files = {"userlist.txt": f'"{SUPERUSER}" ""\n', "pgbouncer.ini": self._config()}
        for name, text in files.items():
            (self.base / name).write_text(text)
            if self.server.run_as:
                shutil.chown(self.base / name, self.server.run_as, self.server.run_as)
        argv = [PGBOUNCER, str(self.base / "pgbouncer.ini")]
        if self.server.run_as:
            argv = ["setpriv", f"--reuid={self.server.run_as}", f"--regid={self.server.run_as}",
                    "--init-groups", *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        socket_path = self.base / f".s.PGSQL.{self.port}"

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            return socket_path.exists()

        wait_for(up, 30, "pgbouncer to listen", every=0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def locator(self, schema: str | None = None, dbname: str = "postgres",
                user: str = SUPERUSER, **params: str) -> str:
        """A locator through the pooler (its Unix socket)."""
        return socket_locator(self.base, self.port, schema, dbname, user, params)

    def stop(self) -> None:
        """SIGTERM (PgBouncer exits at once), SIGKILL if not; rm -rf. Again: no-op."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def start_pgbouncer(server: PgServer, pool_size: int = 10,
                    parent: Path | None = None) -> PgBouncer:
    """A PgBouncer (transaction pooling, `pool_size` server connections per database and
    user) in front of `server`; Unavailable saying why if there can be none here."""
    if not os.access(PGBOUNCER, os.X_OK):
        raise Unavailable(f"{PGBOUNCER} is not installed (Debian: apt install pgbouncer)")
    if server.run_as and shutil.which("setpriv") is None:
        raise Unavailable("setpriv is not installed")
    base = Path(tempfile.mkdtemp(prefix="queuectl-pgbouncer-", dir=parent))
    if server.run_as:
        shutil.chown(base, server.run_as, server.run_as)
    base.chmod(0o700)  # root's clients reach the socket; other users' do not need to
    bouncer = PgBouncer(server, base, pool_size)
    try:
        bouncer.start()
    except (RuntimeError, OSError) as exc:
        bouncer.stop()
        raise Unavailable(f"pgbouncer could not be started: {exc}") from exc
    except BaseException:
        bouncer.stop()
        raise
    return bouncer


def pgbouncer_or_skip(server: PgServer, pool_size: int = 10) -> PgBouncer:
    """start_pgbouncer, or skip (fail under QUEUECTL_REQUIRE_POSTGRES=1) saying why."""
    try:
        return start_pgbouncer(server, pool_size)
    except Unavailable as exc:
        _unavailable(str(exc))
        raise  # not reached: _unavailable skips or fails
