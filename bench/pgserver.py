"""The benchmark's PostgreSQL: one throwaway cluster per run, shared by queuectl and its
PostgreSQL peers so that they are measured against the same server.

The server itself comes from the one starter the tests use too, tests/pgserver.py (loaded
by path; no pytest needed): Debian's `initdb` and `pg_ctl`, as the `postgres` user when we
are root, data directory and Unix socket in a private temporary directory, a free port above
20000 on 127.0.0.1. Never the system cluster, never port 5432. The bench starts it with the
server's defaults (fsync on) and the environment's locale, as it always measured; on top it
keeps what is its own: databases per measurement, DSNs for the peers, the server's CPU.
Stopped and removed at the end of the run and at exit; only the postmaster this process
started is ever signalled.
"""

import atexit
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import clean_env, load_test_module, log, run_seconds, stat_cpu
from queuectl.procinfo import stat_fields

starter = load_test_module("pgserver")  # the one throwaway-server starter
SUPERUSER = starter.SUPERUSER


class PgCluster:
    """One private cluster: start(), database(), locator(), sql(), stop()."""

    def __init__(self, parent: Path | None = None) -> None:
        self.parent = parent
        self.server: Any = None  # a started tests/pgserver.py PgServer
        self.version = ""
        self._counter = 0

    @property
    def dir(self) -> Path | None:
        """Holds data/, the log and the Unix socket (libpq's `host`)."""
        return self.server.base if self.server else None

    @property
    def port(self) -> int:
        return self.server.port if self.server else 0

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """initdb + pg_ctl start (a second or two); registered for stop at exit."""
        self.server = starter.start_server(prefix="queuectl-bench-pg-", parent=self.parent,
                                           locale=None, settings=())
        atexit.register(self.stop)
        self.version = self.sql("postgres", "SHOW server_version")
        log(f"PostgreSQL {self.version} started in {self.dir} (port {self.port})")

    def postmaster_pid(self) -> int | None:
        return self.server.postmaster_pid() if self.server else None

    def stop(self) -> None:
        """Stop and remove the cluster (again: nothing)."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    # -- use -------------------------------------------------------------------------------
    def locator(self, database: str, schema: str | None = None) -> str:
        """A queuectl locator for `database` over the Unix socket (no password: trust)."""
        assert self.server is not None
        return self.server.locator(schema=schema, dbname=database)

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
        """Run SQL through psql (unaligned, tuples only); its output, stripped."""
        assert self.server is not None
        return self.server.psql(statement, dbname=database, timeout=timeout)

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
        # A child reaped between the postmaster's reading and the walk of /proc would be in
        # neither (measured: 9 of 60 backends closed just as the server was read): read
        # again until the postmaster reaped nobody meanwhile.
        # The live processes are read to the nanosecond (schedstat): 16 idle backends use
        # about 8 ms a second between them, less than one clock tick of /proc/PID/stat each.
        # Reaped ones are known only in ticks, from the postmaster's stat.
        for _ in range(100):
            reaped = stat_cpu(pid)[1]
            own = run_seconds(pid)
            children = self._children_cpu(pid)
            if stat_cpu(pid)[1] == reaped:
                break
        return own + reaped + children

    @staticmethod
    def _children_cpu(pid: int) -> float:
        """The CPU of the live children of `pid`, their own."""
        total = 0.0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if int(stat_fields(int(entry.name))[1]) == pid:
                        total += run_seconds(int(entry.name))
                except OSError:
                    continue  # gone: reaped, so in the postmaster's count (see cpu_seconds)
        return total


def pg_env(extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Like common.clean_env, also without the caller's libpq variables."""
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
