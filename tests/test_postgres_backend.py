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
    # So is the worker's function a hardened database does not let everyone run.
    from queuectl.backends.postgres_sql import FUNCTION_ARGS

    pg_server.psql(f"REVOKE EXECUTE ON FUNCTION queuectl.claim({FUNCTION_ARGS['claim']})"
                   " FROM PUBLIC", dbname=roles["db"])
    store = open_store(worker, for_worker=True)
    try:
        with pytest.raises(DatabaseUnavailable, match=r"queuectl\.claim\(\)"):
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


def test_a_postgresql_enqueue_loads_no_module_it_does_not_use(pg_server: Any) -> None:
    """Every `enqueue` pays for its imports (cold enqueue in `make bench`): the PostgreSQL
    store's path keeps out what only a worker's prepared calls or a migration need
    (dataclasses and inspect cost 9 ms, hashlib 4 ms)."""
    kept_out = ("dataclasses", "inspect", "hashlib", "click")
    code = ("import sys; from queuectl.main import main; rc = main(sys.argv[1:]); "
            f"print(sorted(m for m in {kept_out!r} if m in sys.modules), file=sys.stderr); "
            "sys.exit(rc)")
    db = pg_server.fresh_locator()
    assert run(db, "status").returncode == 0  # created (a migration may import more)
    result = subprocess.run([sys.executable, "-c", code, "--db", db, "enqueue", "--cmd", "true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "[]", result.stderr


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


def test_a_disarmed_wakeup_is_not_listening(pg_server: Any) -> None:
    """A busy worker's wakeup (disarmed) leaves the server's list of listeners, so no
    commit signals it; armed again, it hears the next enqueue, and only that."""
    import select

    db = pg_server.fresh_locator()
    store = open_store(db, for_worker=True)
    wakeup = store.wakeup()
    try:
        wakeup.disarm()
        wakeup.disarm()  # twice is once
        store.enqueue([JobSpec("true", id="unheard")])
        assert not select.select([wakeup.fileno()], [], [], 0.3)[0]
        assert wakeup.drain() is False
        wakeup.arm()
        store.enqueue([JobSpec("true", id="heard")])
        wait_for(lambda: select.select([wakeup.fileno()], [], [], 0.1)[0], 10, "a notification")
        assert wakeup.drain() is True
        assert wakeup.drain() is False
    finally:
        wakeup.close()
        store.close()


def test_a_completion_notifies_only_while_someone_watches(pg_server: Any) -> None:
    """The worker's completions and its appended output send their event (NOTIFY) only
    while a watcher (`wait`, `logs --follow`: wakeup(watch=True)) is registered: a plain
    listener hears nothing of either until one is; a closed watcher leaves no row."""
    import select

    schema = pg_server.fresh_schema()
    store = open_store(pg_server.locator(schema=schema), for_worker=True)
    listener = store.wakeup()  # an idle worker's: no watcher

    def complete(job_id: str) -> None:
        store.enqueue([JobSpec("true", id=job_id)])
        job = store.claim_next("w")
        assert job is not None and job.id == job_id
        listener.drain()  # the enqueue's own NOTIFY
        assert store.append_output(job, 0, b"live")
        store.record_success(job, Outcome(0, None, b"live", 0.01, live=True))

    def heard(wakeup: Any) -> bool:
        return bool(select.select([wakeup.fileno()], [], [], 0.1)[0])

    watcher = None
    try:
        complete("unwatched")
        assert not select.select([listener.fileno()], [], [], 0.5)[0]
        watcher = store.wakeup(watch=True)
        assert pg_server.psql(f"SELECT count(*) FROM {schema}.watchers") == "1"
        complete("watched")
        wait_for(lambda: heard(watcher), 10, "the watcher to hear the completion")
        wait_for(lambda: heard(listener), 10, "the listener to hear it too")
        watcher.close()
        watcher = None
        assert pg_server.psql(f"SELECT count(*) FROM {schema}.watchers") == "0"
    finally:
        for wakeup in (watcher, listener):
            if wakeup is not None:
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
                                  "dead": 1, "canceled": 0, "blocked": 0, "active_workers": 0,
                                  "notices": 0}
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
                                           "blocked": 0, "active_workers": 0,
                                           "notices": 0}
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
        # (the server keeps the first 1024 bytes of a query: its column list, not its end)
        wait_for(lambda: _waiting_on_a_lock(pg_server, "unique_key, waiting_on"), 30,
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


# -- dependencies and reruns on PostgreSQL --------------------------------------------------
def _ok() -> Outcome:
    return Outcome(exit_code=0, error=None, output=b"", duration=0.0)


def _bad() -> Outcome:
    return Outcome(exit_code=1, error="exit 1", output=b"", duration=0.0)


def _schema(db: str) -> str:
    return db.rsplit("schema=", 1)[1]


def _run_only(store: Any, job_id: str, worker: str = "w") -> Any:
    """Claim the one eligible job, which must be `job_id`."""
    job = store.claim_next(worker)
    assert job is not None and job.id == job_id, job
    return job


def test_a_version_6_queue_migrates_to_7_keeping_every_job_unblocked(pg_server: Any) -> None:
    """A schema 6 queue with a job in every state (and keys), opened by four processes at
    once: every job is kept, none waits for anything, attempts number on from where they
    were, the old waiting job is claimable through the recreated indexes, and parents work
    beside the old jobs."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    s = f'"{_schema(db)}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (6)"]
    old += [statement.format(s=s) for v in range(1, 7) for statement in MIGRATIONS[v]]
    states = ("pending", "processing", "completed", "failed", "dead", "canceled")
    old.append(
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, worker, lease_expires_at, started_at, finished_at, queue, unique_key)"
        " VALUES " + ", ".join(
            f"('{st}', 'echo {st}', '{st}', {int(st != 'pending') * 2}, 3, 1e9, 1e9 + {n},"
            f" 1e9, {'NULL' if st == 'pending' else repr('w')},"
            f" {'4e9' if st == 'processing' else 'NULL'}, 1e9,"
            f" {'NULL' if st in ('pending', 'processing') else '1e9 + 1'}, 'q', 'k{n}')"
            for n, st in enumerate(states)))
    old.append(f"INSERT INTO {s}.attempts (job_id, attempt, worker, started_at, finished_at,"
               " outcome) VALUES ('completed', 1, 'w', 1e9, 1e9, 'failed'),"
               " ('completed', 2, 'w', 1e9, 1e9, 'completed')")
    pg_server.psql("; ".join(old))
    assert all(st["processing"] == 1 and st["blocked"] == 0
               for st in _statuses_of_four_at_once(db))
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    store = open_store(db)
    try:
        jobs = list(store.iter_jobs())
        assert [(j.id, j.state, j.unique, j.waiting_on, j.attempt_base) for j in jobs] == [
            (st, st, f"k{n}", 0, 0) for n, st in enumerate(states)]
        assert all(store.parents(st) == [] for st in states)
        # The old waiting job and the failed one are claimable (indexes recreated).
        assert store.claim_next("w2", ["q"]).id in ("pending", "failed")
        [child] = store.submit([JobSpec("true", id="child", after=["processing",
                                                                   "completed"])])
        assert child.stored and store.get("child").waiting_on == 1
        assert store.counts()["blocked"] == 1
        assert _blocked_by_queue(pg_server, db) == ({"default": 1}, {"default": 1})
        again = store.retry("completed")
        assert (again.state, again.attempts, again.attempt_base) == ("pending", 0, 2)
    finally:
        store.close()


def test_a_version_7_queue_migrates_to_8_keeping_every_job_without_cwd_or_env(
        pg_server: Any) -> None:
    """A schema 7 queue with a job in every state (a key, a parent, a history), opened by
    four processes at once: every job keeps every column and has neither a directory nor an
    environment (NULL: it runs where its worker is), old jobs are still claimed, and new jobs
    carry both beside them, through the claim too."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    s = f'"{_schema(db)}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (7)"]
    old += [statement.format(s=s) for v in range(1, 8) for statement in MIGRATIONS[v]]
    states = ("pending", "processing", "completed", "failed", "dead", "canceled")
    old.append(
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, worker, lease_expires_at, started_at, finished_at, queue, unique_key,"
        " attempt_base) VALUES " + ", ".join(
            f"('{st}', 'echo {st}', '{st}', {int(st != 'pending') * 2}, 3, 1e9, 1e9 + {n},"
            f" 1e9, {'NULL' if st == 'pending' else repr('w')},"
            f" {'4e9' if st == 'processing' else 'NULL'}, 1e9,"
            f" {'NULL' if st in ('pending', 'processing') else '1e9 + 1'}, 'q', 'k{n}', {n})"
            for n, st in enumerate(states)))
    old.append(f"INSERT INTO {s}.deps (child, parent, pos, satisfied) VALUES"
               " ('canceled', 'completed', 1, true)")
    old.append(f"INSERT INTO {s}.attempts (job_id, attempt, worker, started_at, finished_at,"
               " outcome) VALUES ('completed', 1, 'w', 1e9, 1e9, 'completed')")
    pg_server.psql("; ".join(old))
    columns = "id, command, state, attempts, max_retries, run_at, created_at, updated_at," \
              " worker, lease_expires_at, started_at, finished_at, queue, unique_key," \
              " attempt_base, waiting_on, seq"
    before = pg_server.psql(f"SELECT {columns} FROM {s}.jobs ORDER BY id")
    assert all(st["processing"] == 1 for st in _statuses_of_four_at_once(db))
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    assert SCHEMA_VERSION >= 8
    assert pg_server.psql(f"SELECT {columns} FROM {s}.jobs ORDER BY id") == before
    assert pg_server.psql(f"SELECT count(*) FROM {s}.jobs WHERE cwd IS NULL AND env IS NULL"
                          ) == str(len(states))
    store = open_store(db)
    try:
        jobs = list(store.iter_jobs())
        assert [(j.id, j.unique, j.attempt_base, j.cwd, j.env) for j in jobs] == [
            (st, f"k{n}", n, None, None) for n, st in enumerate(states)]
        assert store.get("completed", history=True).history[0]["outcome"] == "completed"
        assert store.parents("canceled")[0].satisfied
        store.submit([JobSpec("pwd", id="new", queue="q", priority=-1, cwd="/srv",
                              env={"MODE": "nightly"})])
        claimed = [store.claim_next("w2", ["q"]) for _ in range(3)]
        assert {j.id for j in claimed if j is not None} == {"pending", "failed", "new"}
        new = next(j for j in claimed if j is not None and j.id == "new")
        assert (new.cwd, new.env) == ("/srv", {"MODE": "nightly"})
        assert all((j.cwd, j.env) == (None, None) for j in claimed if j and j.id != "new")
    finally:
        store.close()


def test_a_version_8_queue_migrates_to_on_dead_notices_keeping_every_job(
        pg_server: Any) -> None:
    """A schema 8 queue (before on-dead hooks), opened by four processes at once: every job
    and queue setting is kept, no old dead job gets a notice, and a job that goes dead
    afterwards, with a hook set for its queue, gets one."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    s = f'"{_schema(db)}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (8)"]
    old += [statement.format(s=s) for v in range(1, 9) for statement in MIGRATIONS[v]]
    states = ("pending", "processing", "dead", "completed")
    old.append(
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, worker, lease_expires_at, queue) VALUES " + ", ".join(
            f"('{st}', 'true', '{st}', {int(st != 'pending')}, 0, 1e9, 1e9 + {n}, 1e9,"
            f" {'NULL' if st == 'pending' else repr('w')},"
            f" {'1e9' if st == 'processing' else 'NULL'}, 'mail')"
            for n, st in enumerate(states)))
    old.append(f"INSERT INTO {s}.queues (name, concurrency) VALUES ('mail', 2)")
    pg_server.psql("; ".join(old))
    before = pg_server.psql(f"SELECT * FROM {s}.jobs ORDER BY id")
    assert all(st["processing"] == 1 and st["notices"] == 0
               for st in _statuses_of_four_at_once(db))
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    assert pg_server.psql(f"SELECT * FROM {s}.jobs ORDER BY id") == before
    store = open_store(db)
    try:
        [mail] = [q for q in store.queues() if q.name == "mail"]
        assert (mail.concurrency, mail.on_dead, mail.notices) == (2, "", 0)
        store.set_queue_on_dead("mail", "cat")
        assert [j.state for j in store.reclaim_expired()] == ["dead"]
        notice = store.take_notice("w", 60)
        assert notice is not None and (notice.job_id, notice.hook) == ("processing", "cat")
        store.set_queue_concurrency("mail", 0)  # the hook keeps the queue's row
        assert [q.on_dead for q in store.queues() if q.name == "mail"] == ["cat"]
    finally:
        store.close()


def test_a_version_9_queue_migrates_to_job_counters_counting_every_job(
        pg_server: Any) -> None:
    """A schema 9 queue (before the counters of `status` and `queue list`), opened by four
    processes at once: the migration counts the jobs it finds, per queue and state (the
    running ones are read off their index), and from then on the counters follow every
    change."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    s = f'"{_schema(db)}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (9)"]
    old += [statement.format(s=s) for v in range(1, 10) for statement in MIGRATIONS[v]]
    states = ["pending"] * 3 + ["processing", "completed", "completed", "dead", "failed",
                                "canceled"]
    old.append(
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, finished_at, worker, lease_expires_at, queue) VALUES " + ", ".join(
            f"('j{n}', 'true', '{st}', {int(st != 'pending')}, 0, 1e9, 1e9 + {n}, 1e9,"
            f" {'NULL' if st in ('pending', 'processing') else '1e9'},"
            f" {'NULL' if st == 'pending' else repr('w')},"
            f" {'1e9' if st == 'processing' else 'NULL'}, '{'mail' if n % 2 else 'default'}')"
            for n, st in enumerate(states)))
    pg_server.psql("; ".join(old))
    before = pg_server.psql(f"SELECT * FROM {s}.jobs ORDER BY id")
    expected = {"pending": 3, "processing": 1, "completed": 2, "failed": 1, "dead": 1,
                "canceled": 1}
    for status in _statuses_of_four_at_once(db):
        assert {k: status[k] for k in expected} == expected
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    assert pg_server.psql(f"SELECT * FROM {s}.jobs ORDER BY id") == before
    assert pg_server.psql(
        f"SELECT queue, state, sum(n) FROM {s}.job_counts GROUP BY queue, state"
        " ORDER BY queue, state") == pg_server.psql(
        f"SELECT queue, state, count(*) FROM {s}.jobs WHERE state <> 'processing'"
        " GROUP BY queue, state ORDER BY queue, state")
    store = open_store(db)
    try:
        queues = {q.name: q for q in store.queues()}
        assert (queues["default"].counts["pending"], queues["mail"].counts["pending"]) == (2, 1)
        assert [j.state for j in store.reclaim_expired()] == ["dead"]  # processing -> dead
        store.record_success(_run_only(store, "j0"), _ok())
        assert store.purge("completed", None, 10) == 3
        counts = store.counts()
        assert (counts["pending"], counts["processing"], counts["completed"], counts["dead"]) \
            == (2, 0, 0, 2)
    finally:
        store.close()


def test_a_version_11_queue_migrates_to_12_keeping_every_count(pg_server: Any) -> None:
    """A schema 11 queue (blocked jobs in blocked_counts, kept by row triggers) with jobs
    of every state and two waiting children: opened by four processes at once, `status`
    shows the same figures, and the new books take over: the running parent's completion
    (the worker's function) frees its child, a cancel cancels the other child, and every
    counter stays equal to a direct count."""
    from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

    db = pg_server.fresh_locator()
    name = _schema(db)
    s = f'"{name}"'
    old = [f"CREATE SCHEMA {s}", VERSION_TABLE.format(s=s),
           f"INSERT INTO {s}.schema_version VALUES (11)"]
    old += [statement.format(s=s, channel=f"{name}_jobs")
            for v in range(1, 12) for statement in MIGRATIONS[v]]
    jobs = [("p", "processing", "a", 0), ("c", "pending", "b", 1), ("q", "pending", "a", 0),
            ("k", "pending", "c", 1), ("n", "pending", "a", 0), ("d", "completed", "a", 0),
            ("f", "failed", "a", 0), ("x", "dead", "b", 0), ("y", "canceled", "b", 0)]
    old.append(
        f"INSERT INTO {s}.jobs (id, command, state, attempts, max_retries, run_at, created_at,"
        " updated_at, worker, lease_expires_at, queue, waiting_on) VALUES " + ", ".join(
            f"('{i}', 'true', '{st}', {int(st == 'processing')}, 0, 1e9, 1e9, 1e9,"
            f" {repr('w') if st == 'processing' else 'NULL'},"
            f" {'4e9' if st == 'processing' else 'NULL'}, '{queue}', {waits})"
            for i, st, queue, waits in jobs))
    old.append(f"INSERT INTO {s}.deps (parent, child, pos)"
               " VALUES ('p', 'c', 0), ('q', 'k', 0)")
    pg_server.psql("; ".join(old))
    assert pg_server.psql(f"SELECT sum(n) FROM {s}.blocked_counts") == "2"
    expected = {"pending": 4, "processing": 1, "completed": 1, "failed": 1, "dead": 1,
                "canceled": 1, "blocked": 2}
    for status in _statuses_of_four_at_once(db):
        assert {k: status[k] for k in expected} == expected
    assert pg_server.psql(f"SELECT version FROM {s}.schema_version") == str(SCHEMA_VERSION)
    assert pg_server.psql(f"SELECT to_regclass('{name}.blocked_counts')") == ""
    store = open_store(db, for_worker=True)
    try:
        _assert_blocked(store, pg_server, db, {"b": 1, "c": 1})
        assert store.record_success(store.get("p"), _ok())
        assert store.get("c").waiting_on == 0
        _assert_blocked(store, pg_server, db, {"c": 1})
        assert store.cancel("q").state == "canceled"
        assert store.get("k").state == "canceled"
        _assert_blocked(store, pg_server, db, {})
        assert store.counts()["pending"] == 2  # c (free now) and n
    finally:
        store.close()


def test_submit_with_parents_checks_them_all_or_none(pg_server: Any) -> None:
    from queuectl.errors import Conflict, NotFound
    from queuectl.store import Parent

    db = pg_server.fresh_locator()
    store = open_store(db)
    try:
        store.enqueue([JobSpec("true", id="p1"), JobSpec("true", id="p2", max_retries=0)])
        _run_only(store, "p1")
        store.record_success(store.get("p1"), _ok())
        store.cancel("p2")
        with pytest.raises(NotFound, match="parent job 'nope' not found"):
            store.submit([JobSpec("true", id="a"), JobSpec("true", id="b", after=["p1", "nope"])])
        with pytest.raises(Conflict, match="parent job 'p2' is canceled: this job would never"):
            store.submit([JobSpec("true", id="a"), JobSpec("true", id="b", after=["p2"])])
        # A parent stored later in the same call is not there yet.
        with pytest.raises(NotFound, match="parent job 'later' not found"):
            store.submit([JobSpec("true", id="b", after=["later"]),
                          JobSpec("true", id="later")])
        assert [j.id for j in store.iter_jobs()] == ["p1", "p2"]  # nothing of those stored
        assert int(pg_server.psql(f"SELECT count(*) FROM {_schema(db)}.deps")) == 0
        # An earlier spec of the call is a parent; a completed one is satisfied at once.
        done = store.submit([JobSpec("true", id="first"),
                             JobSpec("true", id="second", after=["first", "p1"])])
        assert [d.stored for d in done] == [True, True]
        assert store.get("second").waiting_on == 1
        assert store.parents("second") == [Parent("first", "pending", False),
                                           Parent("p1", "completed", True)]
        with pytest.raises(NotFound):
            store.parents("nope")
        # Only completed parents: ready at once.
        store.submit([JobSpec("true", id="free", after=["p1"])])
        assert store.get("free").waiting_on == 0
        # A spec that stores nothing (if_absent, a held key) adds no dependency, nor checks.
        assert store.submit([JobSpec("true", id="second", after=["nope"])],
                            if_absent=True) == [Submitted("second", False)]
        store.submit([JobSpec("true", id="k1", unique="k")])
        assert store.submit([JobSpec("true", id="k2", unique="k", after=["nope"])]) == [
            Submitted("k1", False)]
        assert [p.id for p in store.parents("second")] == ["first", "p1"]
        counts = store.counts()
        assert (counts["pending"], counts["blocked"]) == (4, 1)
        assert store.remaining() == 4  # blocked jobs still may run
        # The blocked job is never claimed; the others are, then it is.
        ran = set()
        while (job := store.claim_next("w")) is not None:
            ran.add(job.id)
            store.record_success(job, _ok())
        assert ran == {"first", "free", "k1", "second"}
        assert store.counts()["blocked"] == 0
    finally:
        store.close()


def _chain(store: Any, *, under: str = "top") -> None:
    """`under` <- c1 <- c2 <- c3, plus c1b that waits for c1 and a finished job."""
    store.enqueue([JobSpec("true", id="done-one")])
    _run_only(store, "done-one")
    store.record_success(store.get("done-one"), _ok())
    store.enqueue([JobSpec("true", id=under, max_retries=0, queue="top")])
    store.submit([JobSpec("true", id="c1", after=[under]),
                  JobSpec("true", id="c2", after=["c1"]),
                  JobSpec("true", id="c3", after=["c2"]),
                  JobSpec("true", id="c1b", after=["done-one", "c1"])])


def _end(store: Any, pg_server: Any, db: str, path: str) -> str:
    """End the job `top` by `path`; the state it ends in."""
    if path == "cancel":
        store.cancel("top")
        return "canceled"
    if path == "cancel_state":
        assert store.cancel_state("pending", 10, queue="top") == 1
        return "canceled"
    job = _run_only(store, "top")
    if path == "record_failure":
        assert store.record_failure(job, _bad()).state == "dead"
        return "dead"
    if path == "cancel_processing":
        store.cancel("top")
        assert store.record_failure(job, _bad()).state == "canceled"
        return "canceled"
    if path == "release_canceled":
        store.cancel("top")
        assert store.release(job, "stopping")
        return "canceled"
    if path == "reclaim_expired":
        pg_server.psql(f"UPDATE {_schema(db)}.jobs SET lease_expires_at = 0 WHERE id = 'top'")
        assert [j.state for j in store.reclaim_expired()] == ["dead"]
        return "dead"
    if path == "reclaim_worker":
        assert [j.state for j in store.reclaim_worker("w")] == ["dead"]
        return "dead"
    if path == "record_success":
        assert store.record_success(job, _ok())
        return "completed"
    assert path == "complete_and_claim"
    held, following = store.complete_and_claim(job, _ok(), "w")
    assert held and following is None  # c1 is freed by the trigger after this claim
    return "completed"


@pytest.mark.parametrize("path", [
    "cancel", "cancel_state", "record_failure", "cancel_processing", "release_canceled",
    "reclaim_expired", "reclaim_worker", "record_success", "complete_and_claim"])
def test_a_parents_end_decides_its_dependents_whatever_ends_it(pg_server: Any,
                                                                path: str) -> None:
    """Every way a job ends fires the trigger, in its transaction: dead or canceled cancels
    the whole chain below it (each job naming its own parent, no history row); completed
    frees the next job down and wakes idle workers."""
    import select

    db = pg_server.fresh_locator()
    store = open_store(db, for_worker=True)
    wakeup = store.wakeup()
    try:
        _chain(store)
        assert store.counts()["blocked"] == 4
        wakeup.drain()
        ended = _end(store, pg_server, db, path)
        chain = {i: store.get(i, history=True) for i in ("c1", "c2", "c3", "c1b")}
        if ended == "completed":
            assert chain["c1"].state == "pending" and chain["c1"].waiting_on == 0
            assert [chain[i].waiting_on for i in ("c2", "c3", "c1b")] == [1, 1, 1]
            wait_for(lambda: select.select([wakeup.fileno()], [], [], 0.1)[0]
                     and wakeup.drain(), 10, "the freed child to wake idle workers")
            assert store.parents("c1")[0].satisfied
            assert store.canceled_dependents("top") == []
            store.record_success(_run_only(store, "c1"), _ok())
            freed = [store.claim_next("w2"), store.claim_next("w3"), store.claim_next("w4")]
            assert sorted(j.id for j in freed if j) == ["c1b", "c2"]
            assert store.counts()["blocked"] == 1  # c3
            return
        assert {i: (j.state, j.last_error, j.history, j.finished_at is not None)
                for i, j in chain.items()} == {
            "c1": ("canceled", f"parent top ended {ended}", [], True),
            "c2": ("canceled", "parent c1 ended canceled", [], True),
            "c3": ("canceled", "parent c2 ended canceled", [], True),
            "c1b": ("canceled", "parent c1 ended canceled", [], True)}
        assert [j.id for j in store.canceled_dependents("top")] == ["c1", "c2", "c3", "c1b"]
        assert [j.id for j in store.canceled_dependents("c1")] == ["c2", "c3", "c1b"]
        assert store.counts()["blocked"] == 0 and store.remaining() == 0
        # A canceled dependent is not revived by retrying its parent; retrying it first is
        # refused while that parent is dead or canceled.
        from queuectl.errors import Conflict
        with pytest.raises(Conflict, match=f"parent job 'top' is {ended}: retry it first"):
            store.retry("c1")
        assert store.get("c1").state == "canceled"
    finally:
        wakeup.close()
        store.close()


def test_a_failed_attempt_that_will_be_retried_decides_nothing(pg_server: Any) -> None:
    db = pg_server.fresh_locator()
    store = open_store(db)
    try:
        store.set_config("backoff-max", 0)
        store.enqueue([JobSpec("true", id="top", max_retries=1)])
        store.submit([JobSpec("true", id="c1", after=["top"])])
        assert store.record_failure(_run_only(store, "top"), _bad()).state == "failed"
        assert (store.get("c1").state, store.get("c1").waiting_on) == ("pending", 1)
        assert store.record_success(_run_only(store, "top"), _ok())
        assert store.get("c1").waiting_on == 0
    finally:
        store.close()


def test_purging_a_completed_parent_leaves_its_child_runnable(pg_server: Any) -> None:
    """The satisfaction is recorded in deps: deleting the parent (purge, retention) keeps
    it; deleting the child takes its own dependency rows, never those naming it parent."""
    from queuectl.store import Parent

    db = pg_server.fresh_locator()
    deps = f"SELECT count(*) FROM {_schema(db)}.deps"
    store = open_store(db)
    try:
        store.enqueue([JobSpec("true", id="a"), JobSpec("true", id="b")])
        store.submit([JobSpec("true", id="c", after=["a", "b"]),
                      JobSpec("true", id="d", after=["c"])])
        store.record_success(_run_only(store, "a"), _ok())
        assert store.purge("completed", None, 10) == 1
        assert store.parents("c") == [Parent("a", None, True), Parent("b", "pending", False)]
        assert pg_server.psql(deps) == "3"
        store.record_success(_run_only(store, "b"), _ok())
        store.record_success(_run_only(store, "c"), _ok())
        assert store.purge("completed", None, 10) == 2  # b and c: c's rows go, d's stay
        assert store.parents("d") == [Parent("c", None, True)]
        assert pg_server.psql(deps) == "1"
        store.record_success(_run_only(store, "d"), _ok())
        assert store.purge("completed", None, 10) == 1
        assert pg_server.psql(deps) == "0"
    finally:
        store.close()


def test_retry_numbers_attempts_on_and_checks_its_parents(pg_server: Any) -> None:
    from queuectl.errors import Conflict, NotFound

    db = pg_server.fresh_locator()
    store = open_store(db, for_worker=True)
    try:
        store.set_config("backoff-max", 0)
        store.enqueue([JobSpec("true", id="j", max_retries=1)])
        first = _run_only(store, "j")
        assert store.append_output(first, 0, b"one")
        assert store.read_output("j", 1, 0).data == b"one"
        store.record_failure(first, Outcome(1, "exit 1", b"one", 0.0))
        second = _run_only(store, "j")
        assert second.attempt_number == 2
        store.record_failure(second, Outcome(1, "exit 1", b"two", 0.0))
        assert store.get("j").state == "dead"
        with pytest.raises(NotFound):
            store.retry("nope")
        again = store.retry("j", delay=0)
        assert (again.state, again.attempts, again.attempt_base, again.waiting_on,
                again.last_error, again.finished_at) == ("pending", 0, 2, 0, None, None)
        third = _run_only(store, "j")
        assert (third.attempts, third.attempt_number) == (1, 3)
        with pytest.raises(Conflict, match="job 'j' is processing: only a completed, dead or"
                                          " canceled job can be retried"):
            store.retry("j")
        assert store.append_output(third, 0, b"three-live")
        live = store.read_output("j", None, 0)
        assert (live.attempt, live.data, live.running) == (3, b"three-live", True)
        assert store.read_output("j", 1, 0).data == b"one"
        held, _ = store.complete_and_claim(third, Outcome(0, None, b"three", 0.0), "w")
        assert held
        history = store.get("j", history=True).history
        assert [(h["attempt"], h["outcome"], h["output"]) for h in history] == [
            (1, "failed", b"one"), (2, "failed", b"two"), (3, "completed", b"three")]
        assert store.read_output("j", 3, 0).data == b"three"
        assert store.read_output("j", None, 0).attempt == 3
        # A delay counts from the server's now.
        later = store.retry("j", delay=100)
        assert later.attempt_base == 3 and later.run_at > store.now() + 90
        assert store.claim_next("w") is None and 90 < store.seconds_until_due() <= 100
        # Parents: a completed one (even deleted) is satisfied; a live one is waited for;
        # a dead or deleted unsatisfied one refuses the retry.
        store.enqueue([JobSpec("true", id="p"), JobSpec("true", id="q")])
        store.submit([JobSpec("true", id="c", after=["p", "q"])])
        store.cancel("c")
        store.record_success(_run_only(store, "p"), _ok())
        assert store.purge("completed", None, 10) == 1  # p
        assert store.retry("c").waiting_on == 1  # q only
        store.cancel("c")
        store.cancel("q")
        with pytest.raises(Conflict, match="parent job 'q' is canceled: retry it first"):
            store.retry("c")
    finally:
        store.close()


def test_retry_refuses_a_parent_that_no_longer_exists_and_a_held_key(pg_server: Any) -> None:
    from queuectl.errors import Conflict

    db = pg_server.fresh_locator()
    store = open_store(db)
    try:
        store.enqueue([JobSpec("true", id="p")])
        store.submit([JobSpec("true", id="c", after=["p"])])
        store.cancel("c")
        store.cancel("p")
        pg_server.psql(f"DELETE FROM {_schema(db)}.jobs WHERE id = 'p'")
        with pytest.raises(Conflict, match="parent job 'p' no longer exists"):
            store.retry("c")
        store.submit([JobSpec("true", id="k1", unique="k")])
        store.record_success(_run_only(store, "k1"), _ok())
        store.submit([JobSpec("true", id="k2", unique="k")])
        with pytest.raises(Conflict, match="held by live job 'k2'"):
            store.retry("k1")
        assert store.get("k1").state == "completed"
    finally:
        store.close()


def test_retry_through_a_lost_commit_is_settled(pg_server: Any) -> None:
    """The connection breaks as the COMMIT is sent: retry asks the row what happened and
    answers the revived job, without reviving it twice (its attempt base grew once)."""
    db = pg_server.fresh_locator()
    store: Any = open_store(db)
    try:
        store.enqueue([JobSpec("true", id="j")])
        store.record_success(_run_only(store, "j"), _ok())
        real = store.sql
        sent = []

        class Breaking:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            @property
            def commit(self) -> str:
                if not sent:
                    sent.append(1)
                    # committed, then the session is gone before the answer arrives
                    return ("COMMIT; SELECT pg_terminate_backend(pg_backend_pid())")
                return real.commit

        store.sql = Breaking()
        job = store.retry("j")
        store.sql = real
        assert sent and (job.state, job.attempt_base) == ("pending", 1)
        assert store.get("j").attempt_base == 1
    finally:
        store.close()


@pytest.mark.parametrize("other_does", ["completes", "rolls-back", "deletes"])
def test_a_submit_waits_for_a_parent_being_ended_and_reads_how_it_ended(
        pg_server: Any, other_does: str) -> None:
    """Another host's transaction is completing (or deleting) the parent and has not
    committed: the submit's FOR SHARE waits for it, then reads the outcome: satisfied at
    once, still waited for, or not found. Never a child stranded behind a completed
    parent."""
    import threading

    import psycopg2

    from queuectl.errors import NotFound

    db = pg_server.fresh_locator()
    schema = _schema(db)
    store = open_store(db)
    other = psycopg2.connect(pg_server.locator())
    try:
        store.enqueue([JobSpec("true", id="p")])
        if other_does == "deletes":
            store.record_success(_run_only(store, "p"), _ok())
        with other.cursor() as cur:  # a transaction of its own, left open
            if other_does == "deletes":
                cur.execute(f"DELETE FROM {schema}.jobs WHERE id = 'p'")
            else:
                cur.execute(f"UPDATE {schema}.jobs SET state = 'completed' WHERE id = 'p'")
        answer: list[Any] = []

        def submit() -> None:
            try:
                answer.append(store.submit([JobSpec("true", id="c", after=["p"])]))
            except NotFound as exc:
                answer.append(exc)

        thread = threading.Thread(target=submit)
        thread.start()
        wait_for(lambda: _waiting_on_a_lock(pg_server, "FOR SHARE"), 30,
                 "the submit to wait on the parent")
        (other.rollback if other_does == "rolls-back" else other.commit)()
        thread.join(30)
        if other_does == "deletes":
            assert [str(a) for a in answer] == ["parent job 'p' not found"]
            assert list(store.iter_jobs()) == []
            return
        assert answer == [[Submitted("c", True)]]
        child = store.get("c")
        assert child.waiting_on == (0 if other_does == "completes" else 1)
        assert store.parents("c")[0].satisfied == (other_does == "completes")
    finally:
        other.close()
        store.close()


@pytest.mark.slow
def test_submits_racing_their_parents_completion_never_strand_a_child(pg_server: Any) -> None:
    """Rounds of one parent completed by a worker while six other connections submit
    children of it at the same instant: afterwards every child of a completed parent is
    free (waiting_on 0, its dependency satisfied), whichever committed first."""
    import threading

    db = pg_server.fresh_locator()
    schema = _schema(db)
    store = open_store(db, for_worker=True)
    submitters = [open_store(db) for _ in range(6)]
    errors: list[BaseException] = []
    try:
        for round_ in range(25):
            parent = f"p{round_}"
            store.enqueue([JobSpec("true", id=parent, queue="parents")])
            job = store.claim_next("w", ["parents"])  # children are in `default`
            assert job is not None and job.id == parent
            start = threading.Barrier(len(submitters) + 1)

            def submit(s: Any, n: int, parent: str = parent,
                       start: threading.Barrier = start) -> None:
                try:
                    start.wait()
                    s.submit([JobSpec("true", id=f"{parent}-c{n}", after=[parent])])
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=submit, args=(s, n))
                       for n, s in enumerate(submitters)]
            for t in threads:
                t.start()
            start.wait()
            assert store.record_success(job, _ok())
            for t in threads:
                t.join(30)
            assert not errors, errors
        stranded = pg_server.psql(
            f"SELECT count(*) FROM {schema}.jobs c JOIN {schema}.deps d ON d.child = c.id"
            f" JOIN {schema}.jobs p ON p.id = d.parent WHERE p.state = 'completed'"
            " AND (NOT d.satisfied OR c.waiting_on > 0)")
        assert stranded == "0"
        assert store.counts()["blocked"] == 0
        assert store.counts()["pending"] == 25 * len(submitters)
    finally:
        for s in submitters:
            s.close()
        store.close()


@pytest.mark.parametrize("other_does", ["completes", "rolls-back"])
def test_a_retry_waits_for_a_parent_being_completed_and_counts_what_it_left(
        pg_server: Any, other_does: str) -> None:
    """The parent's completion is in flight in another transaction (its trigger has run
    there, touching the child): the retry of the child waits on the parent's lock, then
    counts the parent as satisfied, or still waited for after a rollback."""
    import threading

    import psycopg2

    db = pg_server.fresh_locator()
    store = open_store(db)
    other = psycopg2.connect(pg_server.locator())
    try:
        store.enqueue([JobSpec("true", id="p")])
        store.submit([JobSpec("true", id="c", after=["p"])])
        store.cancel("c")
        with other.cursor() as cur:
            cur.execute(f"UPDATE {_schema(db)}.jobs SET state = 'completed' WHERE id = 'p'")
        answer: list[Any] = []
        thread = threading.Thread(target=lambda: answer.append(store.retry("c")))
        thread.start()
        wait_for(lambda: _waiting_on_a_lock(pg_server, "FOR SHARE"), 30,
                 "the retry to wait on the parent")
        (other.commit if other_does == "completes" else other.rollback)()
        thread.join(30)
        expected = 0 if other_does == "completes" else 1
        assert [(j.state, j.waiting_on) for j in answer] == [("pending", expected)]
        assert store.get("c").waiting_on == expected
    finally:
        other.close()
        store.close()


def _blocked_by_queue(pg_server: Any, db: str) -> tuple[dict[str, int], dict[str, int]]:
    """The counter (job_counts' `blocked` rows, summed over shards, queues at 0 left out)
    and a direct count, per queue; and every state's counter equal to a direct count."""
    s = _schema(db)

    def rows(query: str) -> dict[str, int]:
        out = pg_server.psql(query)
        return {q: int(n) for q, n in (line.split("|") for line in out.splitlines() if line)}

    kept = rows(f"SELECT queue, sum(n) FROM {s}.job_counts WHERE state = 'blocked'"
                " GROUP BY queue HAVING sum(n) <> 0 ORDER BY queue")
    direct = rows(f"SELECT queue, count(*) FROM {s}.jobs"
                  " WHERE state = 'pending' AND waiting_on > 0 GROUP BY queue ORDER BY queue")
    states = rows(f"SELECT queue || '/' || state, sum(n) FROM {s}.job_counts"
                  " WHERE state <> 'blocked' GROUP BY queue, state HAVING sum(n) <> 0")
    assert states == rows(f"SELECT queue || '/' || state, count(*) FROM {s}.jobs"
                          " WHERE state <> 'processing' GROUP BY queue, state")
    return kept, direct


def _assert_blocked(store: Any, pg_server: Any, db: str, expected: dict[str, int]) -> None:
    kept, direct = _blocked_by_queue(pg_server, db)
    assert kept == direct == expected
    assert store.counts()["blocked"] == sum(expected.values())
    for queue in ("a", "b", "c", "nowhere"):
        assert store.counts(queue)["blocked"] == expected.get(queue, 0), queue


def test_the_blocked_counter_follows_every_path(pg_server: Any) -> None:
    """The blocked counter (job_counts, schema 12) equals a direct count of the blocked jobs per
    queue after submits in two queues (one satisfied at once: +1 then -1 in its
    transaction), a parent completing, a chain canceled by a dead parent, a cancel, a
    cancel_state, a retry making a canceled dependent wait again, purge and a delete."""
    db = pg_server.fresh_locator()
    store = open_store(db, for_worker=True)
    try:
        store.enqueue([JobSpec("true", id="p1", queue="qp1"),
                       JobSpec("true", id="p2", queue="qp2", max_retries=0),
                       JobSpec("true", id="p3", queue="qp3"),
                       JobSpec("true", id="done", queue="qd")])
        assert store.record_success(store.claim_next("w", ["qd"]), _ok())
        _assert_blocked(store, pg_server, db, {})
        store.submit([JobSpec("true", id="a1", queue="a", after=["p1", "p2"]),
                      JobSpec("true", id="a2", queue="a", after=["p1"]),
                      JobSpec("true", id="b1", queue="b", after=["p2"]),
                      JobSpec("true", id="b1c", queue="b", after=["b1"]),
                      JobSpec("true", id="b2", queue="b", after=["p1", "done"]),
                      JobSpec("true", id="free", queue="a", after=["done"])])
        assert store.get("free").waiting_on == 0
        _assert_blocked(store, pg_server, db, {"a": 2, "b": 3})
        # p1 completes: a1 still waits for p2, a2 and b2 are free.
        assert store.record_success(store.claim_next("w", ["qp1"]), _ok())
        assert store.get("a1").waiting_on == 1
        _assert_blocked(store, pg_server, db, {"a": 1, "b": 2})
        # p2 dies: a1, b1 and (down the chain) b1c are canceled.
        assert store.record_failure(store.claim_next("w", ["qp2"]), _bad()).state == "dead"
        assert store.get("b1c").state == "canceled"
        _assert_blocked(store, pg_server, db, {})
        # Refused after its rows were inserted waiting: rolled back, +1s and all.
        from queuectl.errors import Conflict
        with pytest.raises(Conflict):
            store.submit([JobSpec("true", id="late", queue="a", after=["p3", "p2"])])
        _assert_blocked(store, pg_server, db, {})
        store.submit([JobSpec("true", id="x", queue="a", after=["p3"]),
                      JobSpec("true", id="y", queue="b", after=["p3"]),
                      JobSpec("true", id="z", queue="b", after=["p3"])])
        _assert_blocked(store, pg_server, db, {"a": 1, "b": 2})
        assert store.cancel("x").state == "canceled"
        _assert_blocked(store, pg_server, db, {"b": 2})
        assert store.cancel_state("pending", 100, queue="b") == 3  # y z, and b2 (free)
        _assert_blocked(store, pg_server, db, {})
        # Retried while its parent is still pending: it waits (is blocked) again.
        again = store.retry("x")
        assert (again.state, again.waiting_on) == ("pending", 1)
        _assert_blocked(store, pg_server, db, {"a": 1})
        assert store.purge("canceled", None, 100) == 6  # a1 b1 b1c y z b2
        _assert_blocked(store, pg_server, db, {"a": 1})
        # A row deleted by hand leaves the count too; its queue's rows stay, at 0.
        s = _schema(db)
        pg_server.psql(f"DELETE FROM {s}.deps WHERE child = 'x';"
                       f" DELETE FROM {s}.jobs WHERE id = 'x'")
        _assert_blocked(store, pg_server, db, {})
        assert pg_server.psql(f"SELECT sum(n) FROM {s}.job_counts WHERE queue = 'a'"
                              " AND state = 'blocked'") == "0"
    finally:
        store.close()


def test_the_blocked_counter_stays_right_under_concurrent_submits_and_completions(
        pg_server: Any) -> None:
    """Submitters add blocked children (batches mixing two queues, after parents that
    workers are completing or failing at the same moment, and after each other) while
    workers end the parents: the counter rows are hot and may deadlock with the job rows
    (the server then aborts one transaction, which the verb runs again whole). At the
    end the counter equals a direct count, queue by queue."""
    import random
    import threading

    from queuectl.errors import Conflict

    db = pg_server.fresh_locator()
    setup = open_store(db)
    parents = [f"p{n}" for n in range(80)]
    setup.enqueue([JobSpec("true", id=p, queue="par", max_retries=0) for p in parents])
    setup.close()
    errors: list[BaseException] = []
    refused = [0]
    children: list[str] = []
    lock = threading.Lock()

    def submitter(k: int) -> None:
        rnd = random.Random(k)
        store = open_store(db)
        try:
            for b in range(25):
                with lock:
                    earlier = list(children[-20:])
                specs = []
                for c in range(4):
                    after = rnd.sample(parents, 2)
                    if earlier and rnd.random() < 0.3:
                        after.append(rnd.choice(earlier))
                    specs.append(JobSpec("true", id=f"s{k}-{b}-{c}",
                                         queue=rnd.choice(["a", "b"]), after=after))
                try:
                    store.submit(specs)
                except Conflict:  # a parent died (or was canceled) first
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    children.extend(spec.id for spec in specs if spec.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    def worker(k: int) -> None:
        rnd = random.Random(100 + k)
        store = open_store(db, for_worker=True)
        try:
            while (job := store.claim_next(f"w{k}", ["par"])) is not None:
                if rnd.random() < 0.2:
                    store.record_failure(job, _bad())  # dead: its chains are canceled
                else:
                    store.record_success(job, _ok())
                time.sleep(rnd.random() * 0.01)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = ([threading.Thread(target=submitter, args=(k,)) for k in range(4)]
               + [threading.Thread(target=worker, args=(k,)) for k in range(3)])
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    kept, direct = _blocked_by_queue(pg_server, db)
    assert kept == direct, (kept, direct)
    store = open_store(db)
    try:
        assert store.counts()["blocked"] == sum(direct.values())
        assert store.counts("a")["blocked"] == direct.get("a", 0)
        # Everything ended: what is left blocked waits only for a child still pending.
        states = pg_server.psql(f"SELECT count(*) FROM {_schema(db)}.jobs"
                                " WHERE queue = 'par' AND state NOT IN ('completed', 'dead')")
        assert states == "0"
    finally:
        store.close()
    assert len(children) > 0 and refused[0] < 100


def _logged_calls(pg_server: Any, dbname: str) -> str:
    """A fresh database whose every statement the server logs (log_statement = all)."""
    pg_server.psql(f"CREATE DATABASE {dbname}")
    pg_server.log_statements(dbname)
    return pg_server.locator(schema=pg_server.fresh_schema(), dbname=dbname)


def test_an_idle_workers_reads_are_prepared_once_per_connection(pg_server: Any) -> None:
    """An idle worker's every pass reads when the next job is due, whether a dead job's
    notice is due and whether a lease expired: on a direct connection each is PREPAREd
    once and then only EXECUTEd (their planning over a dozen indexes was most of what
    they cost the server), with the same answers; a CLI's store sends them as text."""
    from queuectl.backends.postgres_sql import prepared

    db = _logged_calls(pg_server, f"db_{pg_server.fresh_schema()}")
    store, cli = open_store(db, for_worker=True), open_store(db)
    try:
        store.enqueue([JobSpec("true", id="later", delay=600)])
        reads = [prepared(text) for text in (
            store.sql.seconds_until_due, store.sql.seconds_until_due_listed,
            store.sql.seconds_until_due_except, store.sql.any_notice_due,
            store.sql.reclaim_expired_probe)]
        start = pg_server.log_size()
        for _ in range(7):  # past the server's first five (custom) plans
            assert 500 < store.seconds_until_due() <= 600
            assert 500 < store.seconds_until_due(queues=["other", "default"]) <= 600
            assert store.seconds_until_due(queues=["other"]) is None
            assert store.seconds_until_due(exclude=["default"]) is None
            assert 500 < store.seconds_until_due(exclude=["other"]) <= 600
            assert store.take_notice("w", 30) is None
            assert store.reclaim_expired() == []
        log = pg_server.logged_since(start)
        for read in reads:
            assert log.count(f"statement: PREPARE {read.name} AS") == 1, log
        assert log.count(f"statement: EXECUTE {reads[0].name}\n") == 7, log
        assert log.count(f"statement: EXECUTE {reads[1].name}(") == 14, log
        assert log.count(f"statement: EXECUTE {reads[2].name}(") == 14, log
        assert log.count(f"statement: EXECUTE {reads[3].name}\n") == 7, log
        assert log.count(f"statement: EXECUTE {reads[4].name}\n") == 7, log
        assert "statement: SELECT (SELECT min(run_at)" not in log, log  # never as text
        start = pg_server.log_size()
        assert 500 < cli.seconds_until_due() <= 600
        log = pg_server.logged_since(start)
        assert "statement: SELECT (SELECT min(run_at)" in log and "PREPARE" not in log, log
    finally:
        store.close()
        cli.close()


@pytest.mark.slow
def test_an_idle_workers_pass_is_one_call_and_its_beat_one_more(pg_server: Any) -> None:
    """An idle worker's pass asks for a job and, finding none, when the next is due, in
    one prepared call (never the due read on its own), which calls the claim function
    only when a job is due; every 2 s its heartbeat, also one prepared call, brings what
    it reads on every beat: the settings (never read again for its claims), the global
    pause, whether a lease ran out."""
    from queuectl.backends.postgres_sql import prepared, statements

    dbname = f"db_{pg_server.fresh_schema()}"
    db = _logged_calls(pg_server, dbname)
    pg_server.psql(f"ALTER DATABASE {dbname} SET track_functions = 'pl'")
    schema = db.rsplit("schema=", 1)[1]
    sql = statements(schema, for_worker=True)
    passes, beats = prepared(sql.claim_or_due), prepared(sql.beat_idle)
    q = Queue(db)

    def claims() -> int:
        return int(pg_server.psql(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
            f" WHERE schemaname = '{schema}' AND funcname = 'claim'", dbname=dbname))

    try:
        q.enqueue({"id": "later", "command": "true", "delay": 600})
        start = pg_server.log_size()
        q.worker()

        def beaten() -> int:
            return pg_server.logged_since(start).count(f"statement: EXECUTE {beats.name}(")

        wait_for(lambda: beaten() >= 4, 60, "four heartbeats of the idle worker")
        log = pg_server.logged_since(start)
        assert log.count(f"statement: EXECUTE {passes.name}(") >= 4, log
        for read in (sql.seconds_until_due, sql.seconds_until_due_listed,
                     sql.seconds_until_due_except, sql.reclaim_expired_probe):
            assert f"EXECUTE {prepared(read).name}" not in log, log
        assert "statement: SELECT (SELECT min(run_at)" not in log, log
        # the settings: at most once at start, then only within the beat
        assert log.count("statement: SELECT key, value FROM") <= 1, log
        assert "statement: SELECT set_by, since" not in log, log
        assert log.count(f"statement: PREPARE {beats.name} AS") == 1, log
        assert q.job("later")["state"] == "pending"
        # Nothing was due: the passes never called the claim function. A due job does.
        q.enqueue({"id": "now", "command": "true"})
        q.wait_state("now", "completed")
        wait_for(lambda: claims() >= 1, 30, "the claim's call to reach the statistics")
        assert claims() <= 2 < log.count(f"statement: EXECUTE {passes.name}(")
    finally:
        q.stop_all()


def test_a_workers_calls_are_prepared_once_per_connection(pg_server: Any) -> None:
    """On a direct connection a worker's store PREPAREs its claim and its
    complete-and-claim once, at first use, then only EXECUTEs them (the server parses and
    plans each call once). A session reset (DISCARD ALL, as a pooler's reset query runs)
    loses them: the next call is refused, sent again as text, and every job still runs
    exactly once."""
    from queuectl.backends.postgres_sql import prepared

    db = _logged_calls(pg_server, f"db_{pg_server.fresh_schema()}")
    store = open_store(db, for_worker=True)
    try:
        claim, both = (prepared(text) for text in (store.sql.claim, store.sql.complete_and_claim))
        store.enqueue([JobSpec("true", id=f"j{i}") for i in range(5)])
        start = pg_server.log_size()
        done = Outcome(exit_code=0, error=None, output=b"", duration=0.0)
        job, ran = store.claim_next("w"), []
        for _ in range(2):
            ran.append(job.id)
            held, job = store.complete_and_claim(job, done, "w")
            assert held
        log = pg_server.logged_since(start)
        assert log.count(f"statement: PREPARE {claim.name} AS") == 1, log
        assert log.count(f"statement: PREPARE {both.name} AS") == 1, log
        assert log.count(f"statement: EXECUTE {both.name}(") == 2, log
        assert "statement: SELECT o_done" not in log, log
        store._run(lambda cur: cur.execute("DISCARD ALL"))
        start = pg_server.log_size()
        while job is not None:
            ran.append(job.id)
            held, job = store.complete_and_claim(job, done, "w")
            assert held
        log = pg_server.logged_since(start)
        assert f"prepared statement \"{both.name}\" does not exist" in log, log
        assert log.count(f"statement: EXECUTE {both.name}(") == 1, log  # refused, then text
        assert log.count("statement: SELECT o_done, o_queue") == 3, log
        assert sorted(ran) == [f"j{i}" for i in range(5)]
        assert store.counts()["completed"] == 5
        assert all(store.get(f"j{i}").attempts == 1 for i in range(5))
        info = run(db, "info")
        assert json.loads(info.stdout)["postgresql"]["worker_calls"] == (
            "prepared once per worker connection")
    finally:
        store.close()
