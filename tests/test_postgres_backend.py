"""PostgreSQL-only promises: roles and passwords, one-line errors, concurrent first use,
reconnecting after a restart, and the driver staying off the SQLite path.

Everything runs against the throwaway server of tests/pgserver.py through the console
script or the factory, as a user or a worker would."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

from queuectl.errors import DatabaseUnavailable
from queuectl.job import JobSpec
from queuectl.locator import open_store
from queuectl.store import Outcome, Submitted, WorkerInfo

SECRET = "s3cr:t@pw%"  # characters a URL must escape, to catch half-masked passwords


def run(db: str, *args: str, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run([QUEUECTL, "--db", db, *args], capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})}, input=input)


def one_line_error(result: subprocess.CompletedProcess, *says: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: "), result.stderr
    for text in says:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def _statuses_of_four_at_once(db: str) -> list[dict[str, Any]]:
    """Four `status` processes opening the queue at once (a migration races itself); each
    must succeed."""
    procs = [subprocess.Popen([QUEUECTL, "--db", db, "status"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    found = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        found.append(json.loads(out))
    return found


@pytest.fixture
def roles(pg_server: Any) -> Any:
    """A database with an owner role that migrates and a least-privilege worker role (the
    README's setup, verbatim in spirit), both with passwords, reached over TCP."""
    n = pg_server.fresh_schema()
    owner, worker, db = f"own_{n}", f"wrk_{n}", f"db_{n}"
    pg_server.create_role(owner, SECRET.replace("'", "''"))
    pg_server.create_role(worker, SECRET.replace("'", "''"))
    pg_server.psql(f"CREATE DATABASE {db} OWNER {owner}")
    pg_server.psql(
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;"
        f" GRANT CONNECT ON DATABASE {db} TO {worker};"
        f" CREATE SCHEMA queuectl AUTHORIZATION {owner};"
        f" GRANT USAGE ON SCHEMA queuectl TO {worker};"
        f" ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA queuectl"
        f"   GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {worker};", dbname=db)
    return {"owner": owner, "worker": worker, "db": db}


def test_least_privilege_worker_role_with_a_passfile(pg_server: Any, roles: Any,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    passfile = tmp_path / "pgpass"
    escaped = SECRET.replace("\\", "\\\\").replace(":", "\\:")
    passfile.write_text("".join(f"127.0.0.1:{pg_server.port}:{roles['db']}:{r}:{escaped}\n"
                                for r in (roles["owner"], roles["worker"])))
    passfile.chmod(0o600)
    env = {"PGPASSFILE": str(passfile)}
    owner = pg_server.tcp_locator(roles["owner"], dbname=roles["db"])
    worker = pg_server.tcp_locator(roles["worker"], dbname=roles["db"])
    info = json.loads(run(owner, "info", env=env).stdout)  # the owner creates the tables
    assert info["backend"] == "postgresql" and info["postgresql"]["schema"] == "queuectl"
    assert run(worker, "enqueue", '{"id": "a", "command": "echo hi"}', env=env).returncode == 0
    # Every verb a worker uses, with the worker role's rights only.
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    store = open_store(worker, for_worker=True)
    try:
        store.verify()
        store.register_worker(WorkerInfo("w", "host", 1, None, 0.0, 0.0, "idle", None))
        job = store.claim_next("w")
        assert store.heartbeat("w", "busy", job)
        assert store.reclaim_expired() == []
        held, following = store.complete_and_claim(job, Outcome(0, None, b"hi\n", 0.1), "w")
        assert held and following is None
        store.unregister_worker("w")
    finally:
        store.close()
    shown = json.loads(run(worker, "show", "a", env=env).stdout)
    assert shown["state"] == "completed"
    # A missing grant is one clear line before the worker is READY (verify), not mid-job.
    pg_server.psql(f"REVOKE DELETE ON queuectl.workers FROM {roles['worker']}",
                   dbname=roles["db"])
    store = open_store(worker, for_worker=True)
    try:
        with pytest.raises(DatabaseUnavailable, match="queuectl.workers"):
            store.verify()
    finally:
        store.close()


def test_password_never_shown(pg_server: Any, roles: Any) -> None:
    good = pg_server.tcp_locator(roles["owner"], SECRET, dbname=roles["db"])
    result = run(good, "info")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["database"].count("***") == 1
    bad = pg_server.tcp_locator(roles["owner"], SECRET + "x", dbname=roles["db"])
    for db in (bad, bad.replace(f":{pg_server.port}/", ":1/")):
        result = run(db, "enqueue", "--cmd", "true")
        line = one_line_error(result)
        for spelling in (SECRET, SECRET + "x", "s3cr", "pw%"):
            assert spelling not in result.stderr + result.stdout, line
    line = one_line_error(run(bad, "show", "x"), "password authentication failed")
    assert "s3cr" not in line


@pytest.mark.parametrize("case", ["unreachable", "missing-database", "newer-schema"])
def test_unusable_server_is_one_line_and_exit_1(pg_server: Any, case: str) -> None:
    if case == "unreachable":
        db, says = pg_server.tcp_locator("nobody", dbname="x").replace(
            f":{pg_server.port}/", ":1/"), "Connection refused"
    elif case == "missing-database":
        db, says = pg_server.locator(dbname="no_such_db"), 'database "no_such_db" does not exist'
    else:
        db = pg_server.fresh_locator()
        assert run(db, "info").returncode == 0
        schema = db.rsplit("schema=", 1)[1]
        pg_server.psql(f"UPDATE {schema}.schema_version SET version = 999")
        says = "upgrade queuectl"
    one_line_error(run(db, "enqueue", "--cmd", "true"), says)


def test_schema_parameter_is_validated_and_separates_queues(pg_server: Any) -> None:
    bad = run(pg_server.locator(schema="Bad-Name"), "info")
    assert bad.returncode == 2 and "schema=" in bad.stderr
    a, b = pg_server.fresh_locator(), pg_server.fresh_locator()
    run(a, "enqueue", "--cmd", "true")
    assert len(json.loads(run(a, "list").stdout)) == 1
    assert json.loads(run(b, "list").stdout) == []


def test_many_processes_create_the_schema_at_once(pg_server: Any) -> None:
    db = pg_server.fresh_locator()
    procs = [subprocess.Popen([QUEUECTL, "--db", db, "enqueue", "--cmd", "true"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    assert [r for r in results if r[0] != 0] == []
    assert len(json.loads(run(db, "list").stdout)) == 8


@pytest.mark.slow
def test_a_store_and_its_wakeup_survive_a_server_restart(pg_server: Any) -> None:
    db = pg_server.fresh_locator()
    store = open_store(db, for_worker=True)
    wakeup = store.wakeup()
    try:
        store.enqueue([JobSpec("true", id="before")])
        wait_for(wakeup.drain, 10, "the enqueue's notification")
        pg_server.restart()
        pg_server.wait_ready()
        # The dead connection is noticed and replaced: no error reaches the caller.
        assert store.counts()["pending"] == 1
        assert store.claim_next("w").id == "before"
        assert wakeup.drain() is False  # the broken listener says nothing and never raises
        other = open_store(db)
        try:
            # The listener comes back on its own within its retry period, then hears NOTIFY.
            def heard() -> bool:
                other.enqueue([JobSpec("true")])
                import select
                fd = wakeup.fileno()
                return bool(select.select([fd], [], [], 0.2)[0]) and wakeup.drain()
            wait_for(heard, 20, "the wakeup to hear an enqueue after the restart", every=0.3)
        finally:
            other.close()
    finally:
        wakeup.close()
        store.close()


def test_missing_driver_is_one_line_naming_the_package(pg_server: Any) -> None:
    code = ("import sys; sys.modules['psycopg2'] = None; from queuectl.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "--db", pg_server.fresh_locator(),
                             "enqueue", "--cmd", "true"], capture_output=True, text=True,
                            timeout=60)
    one_line_error(result, "python3-psycopg2", "queuectl[postgres]")


def test_sqlite_enqueue_never_imports_the_driver(tmp_path: Path) -> None:
    code = ("import sys; from queuectl.main import main; rc = main(sys.argv[1:]); "
            "print('psycopg2' in sys.modules, file=sys.stderr); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, "--db", str(tmp_path / "q.db"),
                             "enqueue", "--cmd", "true"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "False", result.stderr


def test_times_come_from_the_server_clock(pg_server: Any) -> None:
    """created_at and a delay's run_at are the server's now (plus the delay), so hosts
    with skewed clocks agree; compared with the server's own clock read alongside."""
    db = pg_server.fresh_locator()
    store = open_store(db)
    try:
        def server_now() -> float:
            return float(pg_server.psql("SELECT extract(epoch FROM clock_timestamp())"))
        before = server_now()
        store.enqueue([JobSpec("true", id="d", delay=100.0)])
        after = server_now()
        job = store.get("d")
        assert before <= job.created_at <= after
        assert job.run_at == pytest.approx(job.created_at + 100.0)
        assert 99 < store.seconds_until_due() <= 100
    finally:
        store.close()


def test_many_notifications_while_busy_do_not_pile_up(pg_server: Any) -> None:
    """A wakeup drained after a burst reports once and is quiet again."""
    db = pg_server.fresh_locator()
    store = open_store(db)
    wakeup = store.wakeup()
    try:
        for _ in range(50):
            store.enqueue([JobSpec("true")])
        import select
        wait_for(lambda: select.select([wakeup.fileno()], [], [], 0.1)[0], 10, "a notification")
        assert wakeup.drain() is True
        assert wakeup.drain() is False
    finally:
        wakeup.close()
        store.close()


# -- operators' verbs on PostgreSQL: migration from schema 1, retention, live output -------
def test_a_version_1_queue_migrates_forward_keeping_everything(pg_server: Any) -> None:
    """A queue made by an older release (schema 1, built here from its own migration)
    is migrated by the first processes that open it, all at once, and keeps every job,
    attempt, worker and setting; the new verbs then work on the old jobs."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    s = f'"{schema}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (1)"]
    old += [statement.format(s=s) for statement in MIGRATIONS[1]]
    old += [
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, finished_at, exit_code) VALUES"
        " ('waiting', 'true', 'pending', 0, 3, 1e9, 1e9, 1e9, NULL, NULL),"
        " ('done', 'echo hi', 'completed', 1, 3, 1e9, 1e9, 1e9, 1e9 + 1, 0),"
        " ('gone', 'false', 'dead', 1, 0, 1e9, 1e9, 1e9, 1e9 + 1, 1)",
        f"INSERT INTO {s}.attempts (job_id, attempt, worker, started_at, finished_at, outcome,"
        " exit_code, output) VALUES ('done', 1, 'w', 1e9, 1e9 + 1, 'completed', 0, '\\x68690a'),"
        " ('gone', 1, 'w', 1e9, 1e9 + 1, 'failed', 1, '')",
        f"INSERT INTO {s}.config VALUES ('max-retries', '7')",
        f"INSERT INTO {s}.workers VALUES ('old', 'h', 1, NULL, 1e9, 1e9, 'idle', NULL)",
    ]
    pg_server.psql("; ".join(old))
    assert all(st["canceled"] == 0 for st in _statuses_of_four_at_once(db))
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    store = open_store(db)
    try:
        assert store.info()["schema_version"] == SCHEMA_VERSION
        assert store.config_items()["max-retries"] == 7
        assert [w.name for w in store.workers()] == ["old"]
        done = store.get("done", history=True)
        assert done.state == "completed" and done.history[0]["output"] == b"hi\n"
        tail = store.read_output("done", None, 0)  # no output_total in an old row: its tail
        assert (tail.offset, tail.data, tail.running) == (0, b"hi\n", False)
        assert store.get("gone").state == "dead" and not store.get("gone").cancel_requested
        assert store.counts() == {"pending": 1, "processing": 0, "completed": 1, "failed": 0,
                                  "dead": 1, "canceled": 0, "active_workers": 0}
        assert store.pause("me@here") and store.claim_next("w") is None
        assert store.resume()
        assert store.cancel("waiting").state == "canceled"
        assert store.purge("completed", None, 10) == 1
    finally:
        store.close()


@pytest.mark.slow
def test_retention_keeps_the_tables_bounded(pg_server: Any) -> None:
    """keep-completed 1s: 4,000 jobs drained by two workers, fed 500 at a time; the jobs
    table never holds more than a fraction of them, history goes with its jobs."""
    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    q = Queue(db)
    try:
        q.run("config", "set", "keep-completed", "1s")
        batch = "".join(json.dumps({"command": "true"}) + "\n" for _ in range(500))

        def rows(where: str = "") -> int:
            return int(pg_server.psql(f"SELECT count(*) FROM {schema}.jobs {where}"))

        def waiting() -> int:
            return rows("WHERE state IN ('pending', 'processing')")

        q.worker()
        q.worker()
        most = 0
        for chunk in range(8):
            q.run("enqueue", "--file", "-", input=batch)
            wait_for(lambda: waiting() < 100, 120, f"chunk {chunk} to drain", every=0.1)
            most = max(most, rows())
        wait_for(lambda: waiting() == 0, 120, "the last jobs to finish")
        assert most < 2500, f"{most} jobs in the table at once: retention did not keep up"
        wait_for(lambda: rows() == 0, 60, "the last completed jobs to expire")
        assert pg_server.psql(f"SELECT count(*) FROM {schema}.attempts") == "0"
        assert pg_server.psql(f"SELECT count(*) FROM {schema}.live_output") == "0"
    finally:
        q.stop_all()


def test_a_chatty_job_keeps_bounded_live_output(pg_server: Any) -> None:
    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    q = Queue(db)
    try:
        q.enqueue({"id": "chatty",
                   "command": "head -c 20000000 /dev/zero | tr '\\0' x; sleep 2"})
        q.worker()
        q.wait_state("chatty", "processing")
        stored = f"SELECT coalesce(sum(length(data)), 0) FROM {schema}.live_output"
        wait_for(lambda: int(pg_server.psql(stored)) > 0, 20, "live output to be written")
        for _ in range(10):
            assert int(pg_server.psql(stored)) <= 4 * 65_536
            time.sleep(0.1)
        q.wait_state("chatty", "completed")
        assert pg_server.psql(f"SELECT count(*) FROM {schema}.live_output") == "0"
        assert q.job("chatty")["state"] == "completed"
    finally:
        q.stop_all()


# -- named queues on PostgreSQL -------------------------------------------------------------
def test_a_version_2_queue_migrates_to_3_keeping_everything(pg_server: Any) -> None:
    """A queue of the previous release (schema 2, built here from its own migrations) is
    migrated by the first processes that open it, all at once, and keeps every job, attempt,
    setting, worker and the global pause; old jobs are in `default`, old workers serve every
    queue, and the queue verbs work on them."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    s = f'"{schema}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (2)"]
    old += [statement.format(s=s) for v in (1, 2) for statement in MIGRATIONS[v]]
    old += [
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, finished_at, exit_code) VALUES"
        " ('waiting', 'true', 'pending', 0, 3, 1e9, 1e9, 1e9, NULL, NULL),"
        " ('done', 'echo hi', 'completed', 1, 3, 1e9, 1e9, 1e9, 1e9 + 1, 0),"
        " ('gone', 'false', 'dead', 1, 0, 1e9, 1e9, 1e9, 1e9 + 1, 1)",
        f"INSERT INTO {s}.attempts (job_id, attempt, worker, started_at, finished_at, outcome,"
        " exit_code, output, output_total) VALUES"
        " ('done', 1, 'w', 1e9, 1e9 + 1, 'completed', 0, '\\x68690a', 3),"
        " ('gone', 1, 'w', 1e9, 1e9 + 1, 'failed', 1, '', 0)",
        f"INSERT INTO {s}.config VALUES ('max-retries', '7')",
        f"INSERT INTO {s}.workers VALUES ('old', 'h', 1, NULL, 1e9, 1e9, 'idle', NULL)",
        f"INSERT INTO {s}.flags VALUES ('paused', 'alice@h', 1e9)",
    ]
    pg_server.psql("; ".join(old))
    assert all(st["paused"] is True for st in _statuses_of_four_at_once(db))
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    store = open_store(db)
    try:
        assert store.info()["schema_version"] == SCHEMA_VERSION
        assert store.config_items()["max-retries"] == 7
        [old_worker] = store.workers()
        assert old_worker.name == "old" and old_worker.queues is None
        done = store.get("done", history=True)
        assert done.queue == "default" and done.history[0]["output"] == b"hi\n"
        assert store.paused().by == "alice@h"
        assert store.counts("default") == {"pending": 1, "processing": 0, "completed": 1,
                                           "failed": 0, "dead": 1, "canceled": 0,
                                           "active_workers": 0}
        assert [q.name for q in store.queues()] == ["default"]
        assert store.claim_next("w", ["default"]) is None  # still paused
        assert store.resume()
        store.set_queue_concurrency("default", 1)
        job = store.claim_next("w", ["default"])
        assert job.id == "waiting" and job.queue == "default"
        assert store.purge("completed", None, 10, queue="default") == 1
    finally:
        store.close()


def test_a_limited_queue_on_many_connections_never_exceeds_its_limit(pg_server: Any) -> None:
    """Twelve claimers on their own connections, lanes mixed, drain a queue limited to 3
    beside an unlimited one: every snapshot taken right after a claim shows at most 3 of
    its jobs processing, and every job of both queues runs exactly once."""
    import threading

    db = pg_server.fresh_locator()
    store = open_store(db)
    stores = [open_store(db, for_worker=True) for _ in range(12)]
    try:
        store.enqueue([JobSpec("true", id=f"t{i}", queue="tight", priority=5)
                       for i in range(40)]
                      + [JobSpec("true", id=f"f{i}", queue="free") for i in range(40)])
        store.set_queue_concurrency("tight", 3)
        start = threading.Barrier(len(stores))
        lock = threading.Lock()
        seen: list[int] = []
        ran: list[str] = []
        errors: list[BaseException] = []
        done_ok = Outcome(exit_code=0, error=None, output=b"", duration=0.0)
        deadline = time.monotonic() + 90

        def drain(s: Any, name: str, lane: list[str] | None) -> None:
            try:
                start.wait()
                job = s.claim_next(name, lane)
                while time.monotonic() < deadline:
                    if job is None:
                        if s.remaining(lane) == 0:
                            return
                        time.sleep(0.01)
                        job = s.claim_next(name, lane)
                        continue
                    processing = s.counts("tight")["processing"]
                    with lock:
                        seen.append(processing)
                        ran.append(job.id)
                    time.sleep(0.005)
                    _, job = s.complete_and_claim(job, done_ok, name, lane)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        lanes = [None, ["tight", "free"], ["free", "tight"], ["tight"]]
        threads = [threading.Thread(target=drain, args=(s, f"w{i}", lanes[i % 4]))
                   for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert sorted(ran) == sorted([f"t{i}" for i in range(40)] + [f"f{i}" for i in range(40)])
        assert max(seen) <= 3, f"{max(seen)} jobs of a queue limited to 3 ran at once"
        assert 3 in seen  # the limit was reached, not just never approached
        assert store.counts()["completed"] == 80
    finally:
        for s in stores:
            s.close()
        store.close()


# -- unique keys on PostgreSQL --------------------------------------------------------------
def test_a_version_5_queue_migrates_to_6_keeping_every_job_without_a_key(
        pg_server: Any) -> None:
    """A queue of the previous release (schema 5, built here from its own migrations) with a
    job in every state is migrated by the first processes that open it, all at once: every
    job is kept, none has a unique key, and keys work beside them."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    s = f'"{schema}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (5)"]
    old += [statement.format(s=s) for v in range(1, 6) for statement in MIGRATIONS[v]]
    states = ("pending", "processing", "completed", "failed", "dead", "canceled")
    old.append(
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, worker, lease_expires_at, started_at, finished_at, queue) VALUES "
        + ", ".join(
            f"('{st}', 'echo {st}', '{st}', {int(st != 'pending')}, 3, 1e9, 1e9 + {n},"
            f" 1e9, {'NULL' if st == 'pending' else repr('w')},"
            f" {'4e9' if st == 'processing' else 'NULL'}, 1e9,"
            f" {'NULL' if st in ('pending', 'processing') else '1e9 + 1'}, 'q')"
            for n, st in enumerate(states)))
    pg_server.psql("; ".join(old))
    assert all(st["processing"] == 1 for st in _statuses_of_four_at_once(db))
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    store = open_store(db)
    try:
        jobs = list(store.iter_jobs())
        assert [(j.id, j.state, j.command, j.unique) for j in jobs] == [
            (st, st, f"echo {st}", None) for st in states]
        assert store.get("processing").worker == "w"
        assert list(store.iter_jobs(unique="nightly")) == []
        [first] = store.submit([JobSpec("true", unique="nightly", queue="q")])
        assert first.stored
        assert store.submit([JobSpec("true", unique="nightly")]) == [
            Submitted(first.id, False)]
        assert store.retry_dead("dead").state == "pending"  # no key: nothing to hold
        assert [j.id for j in store.iter_jobs(unique="nightly")] == [first.id]
    finally:
        store.close()


def test_the_index_refuses_a_second_live_job_of_a_key_whatever_writes_it(
        pg_server: Any) -> None:
    """The guarantee lives in the schema: a direct INSERT or UPDATE that would make a second
    live job of a key fails, while finished jobs of the key are as many as ever."""
    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    store = open_store(db)
    try:
        [held] = store.submit([JobSpec("true", id="a", unique="k")])
        assert held.stored
        cols = "(id, command, state, max_retries, run_at, created_at, updated_at, unique_key)"
        for state in ("pending", "processing", "failed"):
            bad = (f"INSERT INTO {schema}.jobs {cols} VALUES"
                   f" ('b', 'true', '{state}', 0, 0, 0, 0, 'k')")
            with pytest.raises(RuntimeError, match="jobs_unique_live"):
                pg_server.psql(bad)
        for n, state in enumerate(("completed", "dead", "canceled")):
            pg_server.psql(f"INSERT INTO {schema}.jobs {cols} VALUES"
                           f" ('old{n}', 'true', '{state}', 0, 0, {n}, 0, 'k')")
        with pytest.raises(RuntimeError, match="jobs_unique_live"):
            pg_server.psql(f"UPDATE {schema}.jobs SET state = 'pending' WHERE id = 'old1'")
        assert [j.id for j in store.iter_jobs(unique="k")] == ["old0", "old1", "old2", "a"]
        assert [j.id for j in store.iter_jobs(unique="k", state="dead")] == ["old1"]
    finally:
        store.close()


def _waiting_on_a_lock(pg_server: Any, what: str) -> bool:
    return pg_server.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE '%{}%'".format(what.replace("'", "''"))) != "0"


@pytest.mark.parametrize("holder_commits", [True, False], ids=["commits", "rolls-back"])
def test_a_submit_waits_for_a_holder_not_yet_committed_and_answers_it(
        pg_server: Any, holder_commits: bool) -> None:
    """Another host's submit of the key is in flight (inserted, not committed): ours waits
    on the unique index, then answers that job once it commits, or stores its own when it
    rolls back. Never a second live job, never an error."""
    import threading

    import psycopg2

    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    store = open_store(db)
    other = psycopg2.connect(pg_server.locator())
    try:
        with other.cursor() as cur:  # a transaction of its own, left open
            cur.execute(f"INSERT INTO {schema}.jobs (id, command, state, max_retries, run_at,"
                        " created_at, updated_at, unique_key)"
                        " VALUES ('theirs', 'true', 'pending', 0, 0, 0, 0, 'k')")
        answer: list[Any] = []
        thread = threading.Thread(
            target=lambda: answer.append(store.submit([JobSpec("true", id="ours",
                                                               unique="k")])))
        thread.start()
        wait_for(lambda: _waiting_on_a_lock(pg_server, "ON CONFLICT (unique_key)"), 30,
                 "the submit to wait on the holder")
        (other.commit if holder_commits else other.rollback)()
        thread.join(30)
        if holder_commits:
            assert answer == [[Submitted("theirs", False)]]
        else:
            assert answer == [[Submitted("ours", True)]]
        assert [j.id for j in store.iter_jobs(unique="k")] == [
            "theirs" if holder_commits else "ours"]
    finally:
        other.close()
        store.close()


def test_dlq_retry_that_loses_the_race_for_its_key_is_a_conflict_naming_the_winner(
        pg_server: Any) -> None:
    """A submit of the key commits after retry_dead read that the key was free: the unique
    index refuses the revival, and retry_dead answers the same Conflict as if it had seen
    the holder, with nothing changed."""
    import threading

    import psycopg2

    from queuectl.errors import Conflict

    db = pg_server.fresh_locator()
    schema = db.rsplit("schema=", 1)[1]
    store = open_store(db)
    worker = open_store(db, for_worker=True)
    other = psycopg2.connect(pg_server.locator())
    try:
        store.submit([JobSpec("exit 1", id="dies", unique="k", max_retries=0)])
        job = worker.claim_next("w")
        worker.record_failure(job, Outcome(exit_code=1, error="exit 1", output=b"",
                                           duration=0.0))
        assert store.get("dies").state == "dead"
        with other.cursor() as cur:
            cur.execute(f"INSERT INTO {schema}.jobs (id, command, state, max_retries, run_at,"
                        " created_at, updated_at, unique_key)"
                        " VALUES ('winner', 'true', 'pending', 0, 0, 0, 0, 'k')")
        refused: list[BaseException] = []

        def retry() -> None:
            try:
                store.retry_dead("dies")
            except Conflict as exc:
                refused.append(exc)

        thread = threading.Thread(target=retry)
        thread.start()
        wait_for(lambda: _waiting_on_a_lock(pg_server, "AND j.state = 'dead'"), 30,
                 "retry_dead to wait on the uncommitted holder")
        other.commit()
        thread.join(30)
        assert [str(e) for e in refused] == [
            "job 'dies' has unique key 'k', held by live job 'winner' (pending): it cannot"
            " run again until that one ends"]
        assert store.get("dies").state == "dead"
        assert store.retry_dead_many(None, 10) == 0  # held: skipped, not an error
    finally:
        other.close()
        worker.close()
        store.close()
