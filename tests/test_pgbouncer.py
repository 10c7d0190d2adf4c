"""PostgreSQL behind PgBouncer in transaction pooling mode (`pool_mode = transaction`).

A transaction pooler hands each transaction whichever server connection is free, so nothing
may rely on session state between transactions: no session advisory locks, no session SET,
no prepared statements, no LISTEN through it. Here a real PgBouncer (tests/pgserver.py,
`default_pool_size = 10`) stands in front of the suite's throwaway server: the verbs, the
migration race, each wakeup mode (`listen=`), and a fleet of 64 workers on 4 hosts (UTS
namespaces, tests/hosts.py) draining 20,000 jobs while the server's connections are counted.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

from queuectl.backends import postgres_sql
from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION

POOL = 10


@pytest.fixture(scope="module")
def bouncer(pg_server: Any) -> Iterator[Any]:
    """One PgBouncer (transaction pooling, pool of 10) in front of the session's server."""
    from pgserver import pgbouncer_or_skip

    b = pgbouncer_or_skip(pg_server, POOL)
    yield b
    b.stop()


def _database(pg_server: Any) -> str:
    """A fresh database: its own pool in PgBouncer, its own rows in pg_stat_activity."""
    name = f"db_{pg_server.fresh_schema()}"
    pg_server.psql(f"CREATE DATABASE {name}")
    return name


def _direct(pg_server: Any, dbname: str = "postgres") -> Any:
    """An autocommit connection straight to the server (for what the test looks at)."""
    import psycopg2

    conn = psycopg2.connect(pg_server.locator(dbname=dbname))
    conn.autocommit = True
    return conn


LISTENER = "queuectl-listen"  # the application_name of the tests' direct LISTEN connections


def _listen_param(pg_server: Any, dbname: str) -> str:
    """`listen=` naming the server itself, percent-encoded as a locator parameter."""
    return quote(pg_server.locator(dbname=dbname, application_name=LISTENER), safe="/:@")


class Connections:
    """Samples, every 20 ms until stopped, the server's client connections to one database:
    the LISTEN ones (named by their application_name from the first packet on) and the
    rest (PgBouncer's server connections)."""

    def __init__(self, pg_server: Any, dbname: str) -> None:
        self._conn = _direct(pg_server)
        self._dbname = dbname
        self.pooled: list[int] = []
        self.listening: list[int] = []
        self.at: list[float] = []  # time.monotonic() of each sample
        self.busiest: list[tuple[Any, ...]] = []  # the pooled ones when there were most
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        with self._conn.cursor() as cur:
            cur.execute("SELECT pid, application_name, state, backend_start, query"
                        " FROM pg_stat_activity"
                        " WHERE datname = %s AND backend_type = 'client backend'",
                        (self._dbname,))
            rows = cur.fetchall()
        listening = sum(1 for r in rows if r[1] == LISTENER)
        pooled = len(rows) - listening
        if pooled > max(self.pooled, default=0):
            self.busiest = [r for r in rows if r[1] != LISTENER]
        return pooled, listening

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            at = time.monotonic()
            pooled, listening = self.sample()
            self.pooled.append(pooled)
            self.listening.append(listening)
            self.at.append(at)

    def pooled_outside(self, start: float, end: float) -> int:
        """The most pooled connections sampled before start or after end."""
        return max((n for n, t in zip(self.pooled, self.at, strict=True)
                    if not start <= t <= end), default=0)

    def __enter__(self) -> Connections:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()


# -- no session state: what the statements say ------------------------------------------------
SESSION_STATE = {
    "a session advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
    "a prepared statement": re.compile(r"(^|;)\s*(PREPARE|EXECUTE|DEALLOCATE)\b", re.I),
    "a session SET": re.compile(r"(^|;)\s*SET\s+(?!LOCAL\b)(SESSION\b)?", re.I),
    "set_config for the session": re.compile(r"set_config\s*\([^)]*,\s*false\s*\)", re.I),
    "a temporary table": re.compile(r"\bCREATE\s+(LOCAL\s+|GLOBAL\s+)?TEMP(ORARY)?\b", re.I),
    "a cursor held across transactions": re.compile(r"\bWITH\s+HOLD\b", re.I),
    "LISTEN": re.compile(r"(^|;)\s*LISTEN\b", re.I),
}


def test_no_statement_keeps_session_state() -> None:
    """Every statement the store sends and every migration: transaction-scoped only (SET
    LOCAL, pg_advisory_xact_lock, set_config(..., true)); LISTEN only on the wakeup's own
    connection. The driver sends no prepared statements (psycopg2 interpolates client-side),
    the store PREPAREs a worker's calls only on a direct connection (the next test) and
    opens no named (server-side) cursor."""
    texts = {name: text for name, text in postgres_sql.TEMPLATES.items()}
    texts.update({f"migration {v}.{i}": text for v, statements in MIGRATIONS.items()
                  for i, text in enumerate(statements)})
    found = [(name, what) for name, text in texts.items()
             for what, pattern in SESSION_STATE.items()
             if pattern.search(text) and not (what == "LISTEN" and name == "listen")]
    assert found == []
    assert "pg_advisory_xact_lock" in postgres_sql.Statements.migrate_lock
    backend = Path(postgres_sql.__file__).parent
    for path in backend.glob("postgres*.py"):
        source = path.read_text()
        assert not re.search(r"\.cursor\(\s*(name\s*=|['\"])", source), path  # named cursor
        assert "set_session" not in source and "autocommit = False" not in source, path


def test_a_workers_calls_go_as_text_through_the_pooler(bouncer: Any, pg_server: Any) -> None:
    """Through a transaction pooler a worker's store prepares nothing (an EXECUTE could
    reach a server connection that never saw the PREPARE): the server sees its calls as
    text, and `info` says so."""
    from queuectl.backends.postgres_sql import prepared
    from queuectl.job import JobSpec
    from queuectl.locator import open_store
    from queuectl.store import Outcome

    dbname = _database(pg_server)
    pg_server.log_statements(dbname)
    db = bouncer.locator(schema=pg_server.fresh_schema(), dbname=dbname)
    store = open_store(db, for_worker=True)
    try:
        store.enqueue([JobSpec("true", id=f"j{i}") for i in range(3)])
        start = pg_server.log_size()
        done = Outcome(exit_code=0, error=None, output=b"", duration=0.0)
        job, ran = store.claim_next("w"), []
        while job is not None:
            ran.append(job.id)
            held, job = store.complete_and_claim(job, done, "w")
            assert held
        assert sorted(ran) == ["j0", "j1", "j2"]
        log = pg_server.logged_since(start)
        assert log.count("statement: SELECT o_done, o_queue") == 3, log
        assert "PREPARE" not in log and "EXECUTE" not in log, log
        assert prepared(store.sql.complete_and_claim).name not in log
    finally:
        store.close()
    info = json.loads(subprocess.run([QUEUECTL, "--db", db, "info"], capture_output=True,
                                     text=True, timeout=60, check=True).stdout)
    assert info["postgresql"]["worker_calls"] == (
        "sent as text: a connection pooler is in the way")


@pytest.mark.parametrize("listen, says", [
    ("bogus", "invalid listen= 'bogus'"),
    ("postgresql://w:s3cret@db/jobs%3Fschema=x", "no schema= or listen= inside it"),
    ("postgresql%3A%2F%2Fw%3As3cret%40db%2Fjobs%3Flisten=off", "no schema= or listen="),
])
def test_a_bad_listen_value_is_exit_2_without_the_password(listen: str, says: str) -> None:
    """Refused before any connection is made, in one line that shows no password."""
    result = subprocess.run([QUEUECTL, "--db", f"postgresql://w@/jobs?host=/nowhere&listen={listen}",
                             "status"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert says in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_listen_url_is_masked_in_every_spelling() -> None:
    from queuectl.redaction import redact

    for locator in ("postgresql://w@pgb/jobs?listen=postgresql://w:s3cret@db/jobs",
                    "postgresql://w@pgb/jobs?listen=postgresql%3A%2F%2Fw%3As3cret%40db%2Fjobs"):
        assert "s3cret" not in redact(locator) and "***" in redact(locator)


# -- through a real PgBouncer -------------------------------------------------------------------
@pytest.mark.slow
def test_the_verbs_work_through_a_transaction_pooler(bouncer: Any, pg_server: Any,
                                                     tmp_path: Path) -> None:
    """Verbs with explicit transactions (keys, parents, chunked submits, snapshots, pages)
    through the pool; `info` names the pooler and the poll that replaces LISTEN."""
    q = Queue(bouncer.locator(schema=pg_server.fresh_schema()))
    try:
        info = q.json("info")["postgresql"]
        assert info["pooler"] is True
        assert info["wakeup"].startswith("polling every 0.5 s: a connection pooler")
        q.run("enqueue", "--file", "-", timeout=120, input="\n".join(
            json.dumps({"id": f"b{i}", "command": "true", "queue": "bulk"})
            for i in range(6000)))  # more than a chunk: BEGIN, chunks, COMMIT
        q.enqueue({"id": "keyed", "command": "true", "unique": "k1"})
        dup = q.run("enqueue", json.dumps({"command": "true", "unique": "k1"}), check=False)
        assert dup.stdout.strip() == "keyed" and "nothing stored" in dup.stderr
        q.enqueue({"id": "child", "command": "exit 3", "after": ["keyed"], "max_retries": 0})
        assert len(q.json("list", "--limit", "5900")) == 5900  # pages, no cursor held
        top = q.run("top", "--once").stdout  # one REPEATABLE READ snapshot, many reads
        assert re.search(r"^bulk +6000 ", top, re.M), top
        worker = q.start("worker", "run", "--drain", "--queue", "default",
                         log=tmp_path / "w.log")
        assert worker.wait(timeout=120) == 0
        status = q.status()
        assert status["completed"] == 1 and status["dead"] == 1, status
        assert q.run("dlq", "retry", "child").returncode == 0
        assert q.job("child")["state"] == "pending"
        assert q.run("cancel", "child").returncode == 0
        assert q.job("child")["state"] == "canceled"
        assert q.run("metrics").returncode == 0
        # Nothing was left behind on the pool's server connections.
        with _direct(pg_server).cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert cur.fetchone()[0] == 0
    finally:
        q.stop_all()


def test_the_migration_runs_once_when_two_processes_start_at_once(bouncer: Any,
                                                                  pg_server: Any) -> None:
    """Both first commands on a new queue meet at the migration's lock (held here until
    both wait on it): one migrates, the other finds the schema made; the lock is the
    transaction's, so the pool's server connections hold none afterwards."""
    from queuectl.backends.postgres import migrate_lock_key

    schema = pg_server.fresh_schema()
    locator = bouncer.locator(schema=schema)
    holder = _direct(pg_server)
    watcher = _direct(pg_server)
    procs: list[subprocess.Popen] = []
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN; SELECT pg_advisory_xact_lock(%s)", (migrate_lock_key(schema),))
        procs = [subprocess.Popen([QUEUECTL, "--db", locator, "enqueue", "--cmd", "true"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]

        def waiting() -> int:
            with watcher.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_locks"
                            " WHERE locktype = 'advisory' AND NOT granted")
                return int(cur.fetchone()[0])

        wait_for(lambda: waiting() == 2, 60, "both processes to wait on the migration's lock")
        with holder.cursor() as cur:
            cur.execute("COMMIT")
        results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
        assert [r for r in results if r[0] != 0] == []
        with watcher.cursor() as cur:
            cur.execute(f'SELECT version FROM "{schema}".schema_version')
            assert cur.fetchall() == [(SCHEMA_VERSION,)]
            cur.execute(f'SELECT count(*) FROM "{schema}".jobs')
            assert cur.fetchone()[0] == 2
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            assert cur.fetchone()[0] == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        holder.close()
        watcher.close()


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 2])
def test_each_listen_mode_behind_the_pooler(bouncer: Any, pg_server: Any,
                                            tmp_path: Path, slots: int) -> None:
    """Default through the pooler: no LISTEN ever reaches the server (it would be lost),
    workers poll. listen=URL of the server: one LISTEN connection per idle worker (per
    process of job slots), straight to it. listen=off: none. Every mode picks jobs up."""
    db = _database(pg_server)
    base = bouncer.locator(dbname=db, schema="queuectl")
    modes = {"auto": base, "direct": f"{base}&listen={_listen_param(pg_server, db)}",
             "off": f"{base}&listen=off"}
    with Connections(pg_server, db) as conns:
        for mode, locator in modes.items():
            q = Queue(locator)
            try:
                worker = q.start("worker", "run", "--name", mode, "--slots", str(slots),
                                 log=tmp_path / f"{mode}.log")
                wait_for(lambda q=q: q.status()["active_workers"] == slots, 60,
                         f"the {mode} worker")
                if mode == "direct":
                    wait_for(lambda: conns.sample()[1] == 1, 30, "the worker's LISTEN")
                else:
                    assert conns.sample()[1] == 0
                job = q.enqueue({"command": "true"})
                q.wait_state(job, "completed")
                assert q.job(job)["history"][-1]["worker"].split(".")[0] == mode
                worker.terminate()
                assert worker.wait(timeout=30) == 0
            finally:
                q.stop_all()
    # Each worker said at start how it hears of new work.
    says = {"auto": ("polling: a connection pooler is in the way", 0.5),
            "direct": (f"LISTEN on postgresql://postgres@/{db}?", 1.0),
            "off": ("polling (listen=off)", 0.5)}
    for mode, (wakeup, poll) in says.items():
        started = next(json.loads(line) for line in (tmp_path / f"{mode}.log").read_text()
                       .splitlines() if '"worker_started"' in line)
        assert started["wakeup"].startswith(wakeup) and started["poll_interval"] == poll, started
    # Only the direct mode's worker ever listened, on one connection of its own.
    assert max(conns.listening) == 1
    assert max(conns.pooled) <= POOL
    # What each mode's wakeup found out when it connected (before any LISTEN).
    from queuectl.locator import open_store

    for mode, (pooled, poll) in {"auto": (True, 0.5), "direct": (False, 1.0),
                                 "off": (False, 0.5)}.items():
        store = open_store(modes[mode], for_worker=True)
        wakeup = store.wakeup()
        try:
            assert (getattr(wakeup, "pooled", False), wakeup.poll_interval) == (pooled, poll)
        finally:
            wakeup.close()
            store.close()


# -- the fleet ------------------------------------------------------------------------------------
FLEET_JOBS = 20_000
PER_HOST = 16


@pytest.mark.slow
@pytest.mark.root
def test_64_workers_on_4_hosts_drain_through_one_pool(bouncer: Any, pg_server: Any,
                                                      tmp_path: Path) -> None:
    """4 hosts × 16 workers, one PgBouncer with a pool of 10: hosts a and b LISTEN straight
    to the server (listen=URL), c and d poll (the default behind a pooler). Host d is
    SIGKILLed mid-drain. Every job completes once; a job ran twice only if an attempt of
    it was reclaimed (its history says so: d's in-flight jobs); the server never sees more
    than the pool's connections plus the 32 LISTEN ones (but for the moment of the kill)."""
    from hosts import Host, can_make_hosts

    if not can_make_hosts():
        pytest.skip("host names of their own (unshare --uts) need root and unshare")
    started = time.monotonic()
    db = _database(pg_server)
    pooled = bouncer.locator(dbname=db)
    listening = f"{pooled}&listen={_listen_param(pg_server, db)}"
    q = Queue(pooled)
    out = tmp_path / "ran.txt"
    q.run("config", "set", "lease-seconds", "10")  # d's jobs come back soon
    q.run("enqueue", "--file", "-", timeout=120, input="\n".join(
        json.dumps({"id": f"j{i}", "command": f"echo j{i} >> {out}"})
        for i in range(FLEET_JOBS)))
    hosts = [Host(name, {**q.env, "QUEUECTL_DB": locator}, tmp_path / f"{name}.log",
                  count=PER_HOST)
             for name, locator in (("hosta", listening), ("hostb", listening),
                                   ("hostc", pooled), ("hostd", pooled))]
    try:
        with Connections(pg_server, db) as conns:
            for host in hosts:
                host.start()
            wait_for(lambda: q.status()["active_workers"] == 4 * PER_HOST, 180,
                     "64 active workers on 4 hosts", every=0.5)
            wait_for(lambda: q.status()["completed"] >= FLEET_JOBS // 4, 300,
                     "a quarter of the drain", every=0.5)
            killed = time.monotonic()
            hosts[3].kill()
            dead = time.monotonic()
            in_flight = {j["id"] for j in q.json("list", "--state", "processing")
                         if j["worker"].startswith("hostd-")}
            status = q.wait_counts(completed=FLEET_JOBS, timeout=900)
        assert status["dead"] == status["failed"] == status["pending"] == 0
        ran = Counter(out.read_text().split())
        assert set(ran) == {f"j{i}" for i in range(FLEET_JOBS)}  # nothing lost
        twice = {job_id for job_id, times in ran.items() if times > 1}
        for job_id in twice:  # completed once; run again only after a reclaimed attempt
            history = q.job(job_id)["history"]
            outcomes = [a["outcome"] for a in history]
            assert outcomes.count("completed") == 1 and "lost" in outcomes, history
            assert len(history) == ran[job_id], history
        elsewhere = twice - in_flight  # reclaimed from a live worker (a stall past its lease)
        # The pool's 10 server connections at most, but for the moment d was killed: a client
        # that dies mid-statement costs PgBouncer that server connection, which it replaces at
        # once while the orphaned backend finishes the statement (one per killed worker).
        assert conns.pooled_outside(killed, dead + 2.0) <= POOL, conns.busiest
        assert max(conns.pooled) <= POOL + PER_HOST, conns.busiest
        assert max(conns.listening) <= 2 * PER_HOST, max(conns.listening)
        assert max(conns.listening) >= PER_HOST  # the direct hosts did listen
        workers = Counter(q.job(f"j{i}")["history"][-1]["worker"].split("-")[0]
                          for i in range(0, FLEET_JOBS, 499))
        assert set(workers) <= {"hosta", "hostb", "hostc", "hostd"} and len(workers) >= 3
        print(f"fleet drain: {FLEET_JOBS} jobs in {time.monotonic() - started:.0f} s, "
              f"server connections at most {conns.pooled_outside(killed, dead + 2.0)} pooled "
              f"({max(conns.pooled)} as d was killed) + {max(conns.listening)} listening, "
              f"{len(twice)} ran twice ({len(elsewhere)} not d's)")
    finally:
        for host in hosts:
            host.stop()
        q.stop_all()
