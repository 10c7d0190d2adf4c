"""The PostgreSQL store's connection to its server: the locator, and the rules for faults.

`Target` parses a postgresql:// locator (the queue's schema, libpq's parameters with
defaults that keep a dead network from hanging a worker, and how to name it in errors
without the password). `Connected` holds one autocommit connection and runs each unit of
work on it (`_run`): "too many clients" and "starting up" are retried with jitter within
the wait budget, then DatabaseBusy; a connection found dead (server restart) is replaced
on the next call, and a unit whose commit may have been lost is repeated only if it is
idempotent, else settled (asked of the database) by the verb's own step; everything else is
one DatabaseUnavailable line without the password. The verbs are in `postgres`.

Failover: a locator may name several hosts (libpq's `host=a,b&port=x,y` or
`//a:x,b:y/`, with `target_session_attrs=read-write`), and every new connection goes to
whichever of them takes writes now. A settle needs the answer of the database that will
go on: it waits (SETTLE_WAIT) for a server to take writes again, the same one restarted or
a promoted standby, before it says that the outcome is unknown (OutcomeUnknown).

`Target` also reads `listen=` (where idle workers LISTEN: README "Connection poolers").
"""

from __future__ import annotations

import os
import re
import select
import time

from queuectl.backends import BUSY_TIMEOUT
from queuectl.backends.postgres_sql import DEFAULT_SCHEMA, Statements
from queuectl.errors import DatabaseBusy, DatabaseUnavailable, ValidationError
from queuectl.redaction import redact, scrub, secrets_in, unquote


def _import_driver() -> None:
    """Import psycopg2 without Python's `ssl` module, a third of the driver's import (about
    7 ms of every PostgreSQL command's start). psycopg2 imports `ssl` only so that Python
    sets OpenSSL's locking callbacks before libpq would (needed before OpenSSL 1.1, which
    Python 3.11 cannot use), then tells libpq to leave libcrypto's set-up alone; it still
    does that after the stand-in, so libpq's TLS works as before (tests/test_postgres_tls.py).
    The stand-in answers that one import and is gone after it: whoever imports `ssl` later
    gets the real module. A driver that wants more of `ssl` at import is imported again
    with it."""
    import sys

    stand_in = None
    if "ssl" not in sys.modules:
        stand_in = sys.modules["ssl"] = type(sys)("ssl")
    try:
        import psycopg2.extensions  # noqa: F401 - the package and its type casters
    except ImportError:
        raise
    except Exception:  # noqa: BLE001 - a driver that needs the real `ssl` at import
        for name in [m for m in sys.modules if m == "psycopg2" or m.startswith("psycopg2.")]:
            del sys.modules[name]
        if sys.modules.get("ssl") is stand_in:
            del sys.modules["ssl"]
        stand_in = None
        import psycopg2.extensions  # noqa: F401
    finally:
        if stand_in is not None and sys.modules.get("ssl") is stand_in:
            del sys.modules["ssl"]


try:
    _import_driver()
    import psycopg2
    import psycopg2.extensions
except ImportError:  # reported by open_store, with the package to install
    psycopg2 = None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

# A burst of commands can meet "too many clients" for a while: connecting waits longer.
CONNECT_BUDGET = max(BUSY_TIMEOUT, 30.0)
# The `listen=` values that are not a URL (README "Connection poolers").
LISTEN_AUTO, LISTEN_OFF = "auto", "off"
SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,47}\Z")

# Refusals worth retrying: too many connections, server starting/stopping or in recovery,
# serialization failure, deadlock, lock not available, and a full listen queue on the
# server's socket (EAGAIN: a burst of connects faster than the postmaster accepts them).
TRANSIENT_CODES = {"53300", "57P03", "40001", "40P01", "55P03"}
TRANSIENT_TEXT = (
    "too many clients", "remaining connection slots", "too many connections",
    "cannot connect now", "is starting up", "is shutting down", "in recovery mode",
    "not yet accepting connections", "not accepting connections",
    "resource temporarily unavailable",
)
# The server ended the session (restart, admin shutdown) or the socket broke.
LOST_CODES = {"57P01", "57P02", "08000", "08003", "08006", "08001"}
# How long a unit whose commit was in flight when its connection was lost waits for a
# server that takes writes, to ask it what happened (a restart, a standby's promotion).
SETTLE_WAIT = 30.0


class OutcomeUnknown(DatabaseUnavailable):
    """A commit was in flight when the connection was lost, and no server could be asked
    whether it happened: it may have, or not."""


# -- the locator ---------------------------------------------------------------------------
class Target:
    """A parsed locator: what libpq gets, the queue's schema, and how to name it in errors."""

    def __init__(self, locator: str) -> None:
        self.display = redact(locator)
        base, _, query = locator.partition("?")
        params, schema, listen = [], DEFAULT_SCHEMA, LISTEN_AUTO
        for part in query.split("&") if query else []:
            key, _, value = part.partition("=")
            if key == "schema":
                schema = unquote(value)
            elif key == "listen":
                listen = unquote(value)
            elif part:
                params.append(part)
        if not SCHEMA_RE.match(schema):
            raise ValidationError(
                f"invalid schema= {schema!r} in the database URL: use 1 to 48 lower-case "
                "letters, digits and _, not starting with a digit")
        self.schema = schema
        self.dsn = base + ("?" + "&".join(params) if params else "")
        self._secrets = sorted({*secrets_in(locator), *secrets_in(listen)}, key=len,
                               reverse=True)
        # Where idle workers LISTEN: this locator's server unless it is a pooler (auto),
        # nowhere (off: they poll), or the server another URL names.
        self.listen = listen
        self.listen_target: Target | None = None
        if listen not in (LISTEN_AUTO, LISTEN_OFF):
            if not listen.startswith(("postgresql://", "postgres://")):
                raise ValidationError(
                    f"invalid listen= {redact(listen)!r} in the database URL: use "
                    f"{LISTEN_AUTO}, {LISTEN_OFF} or a postgresql:// URL of the server itself")
            if any(part.partition("=")[0] in ("schema", "listen")
                   for part in listen.partition("?")[2].split("&")):
                raise ValidationError(
                    "the listen= URL in the database URL names only a connection: its "
                    "queue is the outer URL's (no schema= or listen= inside it)")
            self.listen_target = Target(listen)
        try:
            given = psycopg2.extensions.parse_dsn(self.dsn)
        except psycopg2.Error as exc:
            raise ValidationError(
                f"invalid database URL {self.display}: {self.scrub(_first_line(exc))}") from None
        # Defaults that keep a dead network from hanging a worker; the URL (or the PG*
        # environment) wins where it says otherwise.
        defaults = {
            "application_name": ("PGAPPNAME", "queuectl"),
            "connect_timeout": ("PGCONNECT_TIMEOUT", "10"),
            "keepalives_idle": (None, "15"),
            "keepalives_interval": (None, "5"),
            "keepalives_count": (None, "3"),
            "tcp_user_timeout": (None, "20000"),
        }
        self.kwargs = {key: value for key, (env, value) in defaults.items()
                       if key not in given and not (env and os.environ.get(env))}

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def connect(self) -> Any:
        conn = psycopg2.connect(self.dsn, **self.kwargs)
        conn.autocommit = True
        return conn


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc)
    tried = [line.strip() for line in text.splitlines()
             if line.startswith("connection to server ")]
    if len(tried) > 1:  # a locator of several hosts: why each one failed, without the hints
        return "; ".join(tried)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text.replace("FATAL:  ", "").replace("ERROR:  ", "")


def _transient(exc: BaseException) -> bool:
    code = getattr(exc, "pgcode", None)
    if code in TRANSIENT_CODES:
        return True
    low = str(exc).lower()
    return any(t in low for t in TRANSIENT_TEXT)


def _lost(exc: BaseException, conn: Any) -> bool:
    if conn is None or conn.closed:
        return True
    if isinstance(exc, psycopg2.InterfaceError):
        return True
    return getattr(exc, "pgcode", None) in LOST_CODES


def _jitter(pause: float) -> float:
    return pause * (0.5 + int.from_bytes(os.urandom(2), "little") / 131072)


# -- the connection ------------------------------------------------------------------------
class Connected:
    """One connection to the server, opened at once, and the unit of work on it (`_run`).
    `reconnect_budget`: how long a replacement connection may wait for a busy server."""

    def __init__(self, target: Target, reconnect_budget: float) -> None:
        self.target = target
        self._conn: Any = None
        self._pinned = False  # inside reading(): one transaction, one connection, no retry
        self._reconnect_budget = reconnect_budget
        self._waiting: Callable[[DatabaseUnavailable, float], None] | None = None
        self._conn = self._connect(CONNECT_BUDGET)

    def report_waits(self, waiting: Callable[[DatabaseUnavailable, float], None]) -> None:
        """Who is told each time a settle waits for a server (see `_connect`)."""
        self._waiting = waiting

    def _describe(self, exc: BaseException, what: str = "") -> str:
        msg = self.target.scrub(_first_line(exc))
        low = msg.lower()
        hint = ""
        if "password authentication failed" in low or "no password supplied" in low:
            hint = " (check the password: PGPASSFILE, passfile= or the URL)"
        elif "permission denied" in low:
            hint = (" (the role needs the privileges listed in the README, "
                    "'PostgreSQL (many hosts)')")
        return f"PostgreSQL {self.target.display}: {what}{msg}{hint}"

    def _connect(self, budget: float, settling: bool = False) -> Any:
        """A new connection, waiting out transient refusals for `budget` seconds; settling
        (a commit's outcome is to be asked), any failure is waited out, for SETTLE_WAIT: a
        restart or a standby's promotion gives a server that takes writes again."""
        deadline = time.monotonic() + (SETTLE_WAIT if settling else budget)
        pause = 0.01
        while True:
            try:
                return self.target.connect()
            except psycopg2.Error as exc:
                if not settling and not _transient(exc):
                    raise DatabaseUnavailable(self._describe(exc, "cannot connect: ")) from None
                if time.monotonic() >= deadline:
                    if settling:
                        raise OutcomeUnknown(self._describe(exc, "cannot connect: ") + (
                            f" (still, {SETTLE_WAIT:g} s after the connection was lost with"
                            " a change in flight: whether it was stored is unknown)")) from None
                    raise DatabaseBusy(self._describe(
                        exc, f"server refused new connections for {budget:g} s: ")) from None
                if settling and self._waiting is not None:
                    self._waiting(DatabaseUnavailable(self._describe(exc, "cannot connect: ")),
                                  pause)
            time.sleep(_jitter(pause))
            pause = min(pause * 2, 1.0 if settling else 0.5)

    def _live(self, settling: bool = False) -> Any:
        """The connection, replaced if the server ended it while we were idle (a restart
        sends a FATAL message and closes: the socket turns readable); settling, see
        _connect."""
        conn = self._conn
        if conn is not None and not conn.closed:
            if self._pinned:
                return conn  # a new connection would not be in the snapshot: let it fail
            try:
                if select.select([conn], [], [], 0)[0]:
                    conn.poll()
                    del conn.notifies[:]
            except (psycopg2.Error, OSError, ValueError):
                self._drop()
            else:
                return conn
        self._drop()
        self._conn = self._connect(self._reconnect_budget, settling)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def _run(self, fn: Callable[[Any], T], idempotent: bool = False,
             settle: Callable[[Any], T] | None = None) -> T:
        """Run fn(cursor) as one unit: retry transient refusals within the wait budget;
        after a lost connection reconnect, and repeat fn only if it is idempotent (a
        commit in flight may have happened). Otherwise settle(cursor), if given, runs on
        the new connection instead: it finds out whether that commit happened and
        finishes the work (or raises)."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = 0.002
        retry_lost = idempotent and not self._pinned
        settling = False  # fn is the settle step: it waits for a server (failover)
        while True:
            conn = self._live(settling)
            try:
                with conn.cursor() as cur:
                    return fn(cur)
            except psycopg2.Error as exc:
                if _lost(exc, conn):
                    self._drop()
                    if retry_lost:
                        retry_lost = False
                        continue
                    if settle is not None and not self._pinned:
                        fn, settle, settling = settle, None, True
                        continue
                    if settling:
                        raise OutcomeUnknown(self._describe(
                            exc, "lost the connection again while finding out whether a "
                                 "change was stored: ")) from None
                    raise DatabaseUnavailable(
                        self._describe(exc, "lost the connection: ")) from None
                self._rollback(conn)
                if _transient(exc):
                    if time.monotonic() < deadline:
                        time.sleep(_jitter(pause))
                        pause = min(pause * 2, 0.1)
                        continue
                    raise DatabaseBusy(self._describe(
                        exc, f"still busy after {BUSY_TIMEOUT:g} s: ")) from None
                raise DatabaseUnavailable(self._describe(exc)) from None
            except BaseException:
                self._rollback(conn)
                raise

    @staticmethod
    def _rollback(conn: Any) -> None:
        """Leave no transaction open on the connection (explicit BEGIN ... cut short)."""
        try:
            if not conn.closed and conn.get_transaction_status() in (
                    psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
                    psycopg2.extensions.TRANSACTION_STATUS_INERROR):
                with conn.cursor() as cur:
                    cur.execute(Statements.rollback)
        except psycopg2.Error:
            pass

    def _fetch(self, sql: str, params: Any = None,
               send: Callable[[Any, str, Any], None] | None = None) -> list[tuple[Any, ...]]:
        """A read: one statement, repeated on a new connection if the old one died. Sent as
        text, or by send(cursor, sql, params) (a worker's: prepared where it can be)."""
        def read(cur: Any) -> list[tuple[Any, ...]]:
            if send is None:
                cur.execute(sql, params)
            else:
                send(cur, sql, params)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows

        return self._run(read, idempotent=True)


class Reading:
    """`with store.reading():` one read-only REPEATABLE READ transaction on one connection,
    so that every read inside it sees the same snapshot. A lost connection ends it with an
    error (reconnecting would read outside the snapshot). Inside another one it is that one."""

    def __init__(self, store: Connected) -> None:
        self._store = store
        self._began = False

    def __enter__(self) -> None:
        store = self._store
        if not store._pinned:
            store._run(lambda cur: cur.execute(Statements.read_snapshot), idempotent=True)
            store._pinned = self._began = True

    def __exit__(self, *_exc: object) -> None:
        if self._began:
            store = self._store
            store._pinned = self._began = False
            conn = store._conn
            if conn is not None:
                store._rollback(conn)  # read only: ending it any way releases the snapshot
