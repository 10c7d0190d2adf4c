"""PostgreSQL faults, against the suite's real throwaway server: a restart mid-drain, a burst
of 300 `enqueue` processes against the default `max_connections = 100`, and unusable
servers for the read commands (`status`, `list`) and missing privileges for `enqueue`
(tests/test_postgres_backend.py covers `enqueue`/`show` for the rest).

Nothing is mocked: workers are the console script, the restart is `pg_ctl restart -m fast`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

SECRET = "Fault-s3cr:t@pw"  # needs URL escaping, so half-masked spellings would show


def _run(db: str, *args: str) -> subprocess.CompletedProcess:
    """The console script with no PG* variables of ours leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run([QUEUECTL, "--db", db, *args], capture_output=True, text=True,
                          timeout=90, env=env)


def _log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines of one worker (other lines, if any, are skipped)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _ran(out: Path) -> Counter[str]:
    """How often each job id was appended to the shared output file."""
    return Counter(out.read_text().split()) if out.exists() else Counter()


# -- a server restart while workers drain --------------------------------------------------
def test_server_restart_mid_drain_loses_nothing_and_workers_recover(
        pg_server: Any, tmp_path: Path) -> None:
    q = Queue(pg_server.fresh_locator())
    try:
        out = tmp_path / "ran.txt"
        q.run("config", "set", "lease-seconds", "10")  # a rare unanswered commit: quick reclaim
        n = 600
        jobs = "\n".join(json.dumps({"id": f"r{i}", "command": f"echo r{i} >> {out}"})
                         for i in range(n))
        q.run("enqueue", "--file", "-", input=jobs)
        logs = [tmp_path / f"w{i}.log" for i in range(2)]
        workers = [q.worker("--name", f"restart-{i}", log=logs[i]) for i in range(2)]
        wait_for(lambda: q.status()["completed"] >= n // 6, 60, "the drain to be under way")
        pg_server.restart()
        status = q.wait_counts(completed=n, timeout=120)
        assert status["pending"] == status["processing"] == status["failed"] == 0
        assert status["dead"] == 0
        ran = _ran(out)
        assert set(ran) == {f"r{i}" for i in range(n)}  # nothing lost
        for job_id in (j for j, times in ran.items() if times > 1):
            # Run twice only when a commit's answer was lost with the connection.
            outcomes = [h["outcome"] for h in q.job(job_id)["history"]]
            assert "lost" in outcomes, (job_id, outcomes)
        # The same processes recovered by themselves, and are still serving.
        assert all(w.poll() is None for w in workers)
        assert q.status()["active_workers"] == 2
        for log in logs:
            events = _log_events(log)
            names = [e.get("event") for e in events]
            # One warning per outage, not one per retry; and it says it is over. A worker
            # whose call was not in flight at the kill, and whose reconnect met only "shutting
            # down" or "starting up" (transient refusals, retried quietly: README, Faults),
            # rode through it with no warning at all; test_an_outage_during_a_running_job...
            # below holds a worker to exactly one.
            errors = names.count("database_error")
            assert errors <= 1, [e for e in events if e.get("event") == "database_error"]
            assert names.count("database_recovered") == errors
            for e in events:
                assert SECRET not in json.dumps(e)
    finally:
        q.stop_all()


@pytest.mark.slow
def test_an_outage_during_a_running_job_is_one_warning_and_the_job_completes(
        pg_server: Any, tmp_path: Path) -> None:
    """The server is down for 6 s (three missed heartbeats) while a job runs: the worker
    keeps the job running, logs one warning for the outage and one line when it is over,
    and records the result once the server is back."""
    q = Queue(pg_server.fresh_locator())
    try:
        started = tmp_path / "started"
        q.enqueue({"id": "long", "command": f"touch {started}; sleep 10"})
        log = tmp_path / "w.log"
        q.worker("--name", "outage", log=log)
        wait_for(started.exists, 60, "the job to start")
        pg_server.outage(6)
        job = q.wait_state("long", "completed", timeout=60)
        assert job["attempts"] == 1 and [h["outcome"] for h in job["history"]] == ["completed"]
        names = [e.get("event") for e in _log_events(log)]
        assert names.count("database_error") == 1, names
        assert names.count("database_recovered") == 1, names
    finally:
        q.stop_all()


# -- a burst of enqueue processes ----------------------------------------------------------
def _fill_connection_slots(dsn: str) -> list[Any]:
    """Open connections (superuser: the reserved slots too) until the server refuses one."""
    import psycopg2

    held: list[Any] = []
    try:
        while len(held) < 1000:
            held.append(psycopg2.connect(dsn))
    except psycopg2.OperationalError as exc:
        assert "too many clients" in str(exc), exc
        return held
    raise AssertionError("the server never said 'too many clients'")


@pytest.mark.slow
def test_300_enqueue_processes_at_once_all_succeed_and_each_job_runs_once(
        pg_server: Any, tmp_path: Path) -> None:
    assert pg_server.psql("SHOW max_connections") == "100"  # the default, as promised
    db = pg_server.fresh_locator()
    q = Queue(db)
    try:
        out = tmp_path / "ran.txt"
        q.run("status")  # the schema exists before the workers start
        for i in range(2):
            q.worker("--name", f"burst-{i}", log=tmp_path / f"w{i}.log")
        wait_for(lambda: q.status()["active_workers"] == 2, 60, "two idle workers")
        n = 300
        # As cron or a shell loop would: every enqueue its own process, all started at once.
        script = (f'for i in $(seq 1 {n}); do ( "$QUEUECTL" enqueue --id b$i --cmd "echo b$i >> '
                  f'{out}" >/dev/null 2>"$ERRS/$i"; echo $? > "$ERRS/$i.rc" ) & done; wait')
        errs = tmp_path / "errs"
        errs.mkdir()
        env = {**q.env, "QUEUECTL": QUEUECTL, "ERRS": str(errs)}
        # 2 cores start Python processes one after another, so the burst alone may never
        # reach the limit: hold every free slot until the first enqueue is refused for it.
        held = _fill_connection_slots(pg_server.locator())
        refusals = pg_server.log.read_text().count("too many clients")
        try:
            burst = subprocess.Popen(["bash", "-c", script], env=env)
            wait_for(lambda: pg_server.log.read_text().count("too many clients") > refusals + 10,
                     120, "enqueues to be refused for too many clients")
        finally:
            for conn in held:
                conn.close()
        assert burst.wait(timeout=300) == 0
        codes = {i: (errs / f"{i}.rc").read_text().strip() for i in range(1, n + 1)}
        failed = {i: (errs / str(i)).read_text() for i, rc in codes.items() if rc != "0"}
        assert failed == {}, f"{len(failed)} of {n} enqueues failed, e.g. {next(iter(failed.items()))}"
        q.wait_counts(completed=n, timeout=120)
        ran = _ran(out)
        assert ran == Counter({f"b{i}": 1 for i in range(1, n + 1)})  # each exactly once
        assert all(j["attempts"] == 1 for j in json.loads(q.run("list").stdout))
    finally:
        q.stop_all()


# -- unusable servers: one line, no password, exit 1 ---------------------------------------
@pytest.fixture(scope="module")
def faulty(pg_server: Any) -> dict[str, str]:
    """Locators that each fail one way, every one carrying the password in its URL."""
    n = pg_server.fresh_schema()
    user, db, schema = f"flt_{n}", f"fltdb_{n}", "queuectl"
    pg_server.create_role(user, SECRET)
    pg_server.psql(f"CREATE DATABASE {db}")
    pg_server.psql(f"GRANT CONNECT ON DATABASE {db} TO {user}")
    owner = pg_server.locator(dbname=db, schema=schema)
    assert _run(owner, "info").returncode == 0  # tables made by the superuser: no grants
    good = pg_server.tcp_locator(user, SECRET, dbname=db)
    return {
        "unreachable": good.replace(f":{pg_server.port}/", ":1/"),
        "wrong-password": pg_server.tcp_locator(user, SECRET + "x", dbname=db),
        "missing-database": pg_server.tcp_locator(user, SECRET, dbname=f"{db}_nope"),
        "missing-privileges": good,
    }


SAYS = {
    "unreachable": "Connection refused",
    "wrong-password": "password authentication failed",
    "missing-database": "does not exist",
    "missing-privileges": "permission denied",
}
CASES = [(fault, command) for command in ("status", "list") for fault in SAYS]
CASES.append(("missing-privileges", "enqueue"))


@pytest.mark.parametrize(("fault", "command"), CASES, ids=[f"{c}-{f}" for f, c in CASES])
def test_unusable_server_is_one_line_without_the_password_and_exit_1(
        faulty: dict[str, str], fault: str, command: str) -> None:
    args = ("enqueue", "--cmd", "true") if command == "enqueue" else (command,)
    result = _run(faulty[fault], *args)
    shown = f"exit {result.returncode}, stdout {result.stdout!r}, stderr {result.stderr!r}"
    assert result.returncode == 1, shown
    assert result.stdout == "" and "Traceback" not in result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: "), shown
    assert SAYS[fault] in lines[0], shown
    for spelling in (SECRET, "s3cr", "Fault-", "%3A", "t@pw"):
        assert spelling not in result.stderr, shown


# -- a connection cut with an enqueue's commit in flight ------------------------------------
class _CuttingProxy:
    """TCP between queuectl and the server that cuts the first connection whose client sends
    a query containing `marker`: before the server sees it (nothing committed), or once the
    server has answered it (committed, but the answer never arrives). Everything else is
    passed through byte for byte, later connections untouched."""

    def __init__(self, server_port: int, marker: bytes, after_answer: bool) -> None:
        import socket
        import threading

        self.server_port, self.marker, self.after_answer = server_port, marker, after_answer
        self.cut: list[bytes] = []  # the server's withheld answer (b"" when cut before it)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: Any) -> None:
        import socket

        upstream = socket.create_connection(("127.0.0.1", self.server_port))
        try:
            self._pass(client, upstream)
        except OSError:
            pass  # either side went away (a worker that exits resets its connection)
        finally:
            client.close()
            upstream.close()

    def _pass(self, client: Any, upstream: Any) -> None:
        import select

        while True:
            ready, _, _ = select.select([client, upstream], [], [], 60)
            if not ready:
                return
            if client in ready:
                data = client.recv(65536)
                if not data:
                    return
                if not self.cut and self.marker in data:
                    self.cut.append(self._withhold(upstream, data))
                    return
                upstream.sendall(data)
            if upstream in ready:
                data = upstream.recv(65536)
                if not data:
                    return
                client.sendall(data)

    def _withhold(self, upstream: Any, data: bytes) -> bytes:
        if not self.after_answer:
            return b""
        upstream.sendall(data)
        answer = b""
        while b"Z\x00\x00\x00\x05" not in answer:  # ReadyForQuery: the statement is done
            chunk = upstream.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer

    def close(self) -> None:
        self.listener.close()


def _through_proxy(pg_server: Any, schema: str, marker: bytes, after_answer: bool,
                   ) -> tuple[_CuttingProxy, str]:
    """A proxy that cuts on `marker`, and the locator of schema through it (over TCP, as a
    password role: the suite's own locator is a Unix socket)."""
    pg_server.create_role("lostcommit", "pw")
    pg_server.psql("ALTER ROLE lostcommit SUPERUSER")
    proxy = _CuttingProxy(pg_server.port, marker, after_answer)
    return proxy, (f"postgresql://lostcommit:pw@127.0.0.1:{proxy.port}/postgres"
                   f"?sslmode=disable&schema={schema}")


@pytest.mark.parametrize("extra", [(), ("--if-absent", "--id", "given")],
                         ids=["generated-id", "if-absent"])
@pytest.mark.parametrize("after_answer", [True, False], ids=["committed", "not-committed"])
def test_enqueue_whose_connection_breaks_mid_commit_stores_the_job_exactly_once(
        pg_server: Any, after_answer: bool, extra: tuple[str, ...]) -> None:
    """The answer to an enqueue's INSERT is lost with the connection: queuectl reconnects,
    looks for the ids it chose, and reports the job stored (or stores it now), so a retry
    by the caller never makes a duplicate and a stored job is never reported as failed."""
    schema = pg_server.fresh_schema()
    assert _run(pg_server.locator(schema=schema), "status").returncode == 0  # create it
    proxy, locator = _through_proxy(pg_server, schema, b"INSERT INTO", after_answer)
    try:
        result = _run(locator, "enqueue", "--cmd", "echo once", *extra)
    finally:
        proxy.close()
    assert len(proxy.cut) == 1  # the fault happened
    assert (b"INSERT 0 1" in proxy.cut[0]) == after_answer
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    job_id = result.stdout.strip()
    assert job_id == "given" or not extra
    listed = json.loads(_run(pg_server.locator(schema=schema), "list").stdout)
    assert [(j["id"], j["command"]) for j in listed] == [(job_id, "echo once")]


@pytest.mark.parametrize("held", [False, True], ids=["key-free", "key-held"])
@pytest.mark.parametrize("after_answer", [True, False], ids=["committed", "not-committed"])
def test_keyed_enqueue_whose_connection_breaks_mid_commit_stores_one_job_and_answers_it(
        pg_server: Any, after_answer: bool, held: bool) -> None:
    """The same for a job with a unique key, whose submit is an explicit transaction: the
    COMMIT (or its answer) is lost. queuectl reconnects, finds the id it stored, or decides
    again (nothing was stored): one live job of the key, and the command answers its id."""
    schema = pg_server.fresh_schema()
    direct = pg_server.locator(schema=schema)
    holder = ""
    if held:
        holder = _run(direct, "enqueue", json.dumps({"command": "true", "unique": "k",
                                                     "id": "holder"})).stdout.strip()
        assert holder == "holder"
    else:
        assert _run(direct, "status").returncode == 0  # create it
    proxy, locator = _through_proxy(pg_server, schema, b"COMMIT", after_answer)
    try:
        result = _run(locator, "enqueue", json.dumps({"command": "echo once", "unique": "k"}))
    finally:
        proxy.close()
    assert len(proxy.cut) == 1  # the fault happened
    assert (b"COMMIT" in proxy.cut[0]) == after_answer
    said = "already queued: job holder holds unique key 'k'; nothing stored\n" if held else ""
    assert (result.returncode, result.stderr) == (0, said), result.stderr
    job_id = result.stdout.strip()
    listed = json.loads(_run(direct, "list").stdout)
    assert [(j["id"], j["unique"]) for j in listed] == [(job_id, "k")]
    assert job_id == holder or not held


@pytest.mark.slow
def test_300_enqueue_processes_of_one_key_store_one_job_and_all_answer_it(
        pg_server: Any, tmp_path: Path) -> None:
    """Cron on many hosts firing one job at once: 300 `enqueue` processes with the same
    unique key, all started together against max_connections = 100, store exactly one
    job, and every one of them succeeds and prints its id."""
    db = pg_server.fresh_locator()
    q = Queue(db)
    q.run("status")  # the schema exists before the burst
    n = 300
    spec = json.dumps({"command": "true", "unique": "nightly"})
    outs = tmp_path / "outs"
    outs.mkdir()
    script = (f'for i in $(seq 1 {n}); do ( "$QUEUECTL" enqueue "$SPEC" >"$OUTS/$i"'
              ' 2>"$OUTS/$i.err"; echo $? > "$OUTS/$i.rc" ) & done; wait')
    env = {**q.env, "QUEUECTL": QUEUECTL, "OUTS": str(outs), "SPEC": spec}
    assert subprocess.run(["bash", "-c", script], env=env, timeout=300).returncode == 0
    codes = {i: (outs / f"{i}.rc").read_text().strip() for i in range(1, n + 1)}
    failed = {i: (outs / f"{i}.err").read_text() for i, rc in codes.items() if rc != "0"}
    assert failed == {}, f"{len(failed)} of {n} failed, e.g. {next(iter(failed.items()))}"
    answers = Counter((outs / str(i)).read_text().strip() for i in range(1, n + 1))
    listed = json.loads(q.run("list").stdout)
    assert [(j["id"], j["unique"]) for j in listed] == [(next(iter(answers)), "nightly")]
    assert len(answers) == 1 and answers.most_common(1)[0][1] == n


def _complete_and_claim(schema: str) -> bytes:
    """How a worker's store on a direct connection calls complete_and_claim: the EXECUTE
    of its prepared statement (postgres_sql.prepared)."""
    from queuectl.backends.postgres_sql import prepared, statements

    return f"EXECUTE {prepared(statements(schema, True).complete_and_claim).name}(".encode()


@pytest.mark.parametrize("after_answer", [True, False], ids=["committed", "not-committed"])
def test_worker_whose_connection_breaks_mid_commit_neither_loses_nor_orphans_a_job(
        pg_server: Any, tmp_path: Path, after_answer: bool) -> None:
    """The connection breaks while a worker commits a result together with its next claim.
    Committed: the worker must not log the finished job lost, and must run the job it just
    claimed instead of leaving it held until its lease (300 s here) runs out. Not
    committed: both happen again on the new connection."""
    schema = pg_server.fresh_schema()
    q = Queue(pg_server.locator(schema=schema))
    q.run("config", "set", "lease-seconds", "300")
    out, log = tmp_path / "ran.txt", tmp_path / "worker.log"
    q.run("enqueue", "--file", "-", input="".join(
        json.dumps({"id": f"j{i}", "command": f"echo j{i} >> {out}", "priority": 10 - i}) + "\n"
        for i in range(4)))
    proxy, locator = _through_proxy(pg_server, schema, _complete_and_claim(schema),
                                    after_answer)
    via_proxy = Queue(locator)
    try:
        via_proxy.worker("--name", "cut", log=log)
        status = q.wait_counts(completed=4, timeout=60)
    finally:
        via_proxy.stop_all()
        proxy.close()
    assert len(proxy.cut) == 1  # the fault happened
    assert (b"SELECT 1" in proxy.cut[0]) == after_answer
    assert status["processing"] == status["failed"] == 0
    assert _ran(out) == Counter({f"j{i}": 1 for i in range(4)})
    for i in range(4):
        assert [h["outcome"] for h in q.job(f"j{i}")["history"]] == ["completed"]
    names = [e.get("event") for e in _log_events(log)]
    assert "job_lost" not in names
    assert names.count("job_succeeded") == 4


def test_worker_whose_connection_breaks_as_it_records_a_failure_does_not_log_it_lost(
        pg_server: Any, tmp_path: Path) -> None:
    """The same for a failed attempt: recorded before the connection broke, it is logged
    as what it was (here: dead, its only try spent), not as lost."""
    schema = pg_server.fresh_schema()
    q = Queue(pg_server.locator(schema=schema))
    log = tmp_path / "worker.log"
    q.run("enqueue", json.dumps({"id": "fails", "command": "exit 3", "max_retries": 0}))
    proxy, locator = _through_proxy(pg_server, schema, b"CASE WHEN state = 'canceled' THEN",
                                    True)
    via_proxy = Queue(locator)
    try:
        via_proxy.worker("--name", "cut", log=log)
        q.wait_state("fails", "dead", timeout=60)
        wait_for(lambda: "job_dead" in [e.get("event") for e in _log_events(log)], 30,
                 "the worker to log the dead job")
    finally:
        via_proxy.stop_all()
        proxy.close()
    assert len(proxy.cut) == 1 and b"SELECT 1" in proxy.cut[0]
    assert [h["outcome"] for h in q.job("fails")["history"]] == ["failed"]
    assert "job_lost" not in [e.get("event") for e in _log_events(log)]


# -- operator verbs and a worker's release, with their commit in flight ---------------------
@pytest.mark.parametrize("after_answer", [True, False], ids=["committed", "not-committed"])
def test_cancel_whose_connection_breaks_mid_commit_reports_the_job_canceled(
        pg_server: Any, after_answer: bool) -> None:
    """`cancel` loses its connection with the commit in flight: queuectl reconnects, finds
    the job canceled (or cancels it now) and says so, exit 0; not `lost the connection`."""
    schema = pg_server.fresh_schema()
    q = Queue(pg_server.locator(schema=schema))
    q.enqueue({"id": "waits", "command": "true", "run_at": "2099-01-01T00:00:00Z"})
    proxy, locator = _through_proxy(pg_server, schema,
                                    b"cancel_requested = j.state = 'processing'", after_answer)
    try:
        result = _run(locator, "cancel", "waits")
    finally:
        proxy.close()
    assert len(proxy.cut) == 1 and (b"UPDATE 1" in proxy.cut[0]) == after_answer
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert "waits" in result.stdout
    assert q.job("waits")["state"] == "canceled"


@pytest.mark.parametrize("after_answer", [True, False], ids=["committed", "not-committed"])
def test_dlq_retry_whose_connection_breaks_mid_commit_reports_the_job_retried(
        pg_server: Any, tmp_path: Path, after_answer: bool) -> None:
    """The same for `dlq retry`: a dead job is back to pending once, and the command says
    so instead of failing (or, repeated, refusing a job that is no longer dead)."""
    schema = pg_server.fresh_schema()
    q = Queue(pg_server.locator(schema=schema))
    q.enqueue({"id": "dies", "command": "exit 3", "max_retries": 1})
    q.worker("--name", "w", log=tmp_path / "w.log")
    try:
        q.wait_state("dies", "dead", timeout=60)
    finally:
        q.stop_all()
    q.run("pause")  # nothing claims it again before we look
    proxy, locator = _through_proxy(pg_server, schema, b"AND j.state = 'dead'",
                                    after_answer)
    try:
        result = _run(locator, "dlq", "retry", "dies")
    finally:
        proxy.close()
    assert len(proxy.cut) == 1 and (b"UPDATE 1" in proxy.cut[0]) == after_answer
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    job = q.job("dies")
    assert (job["state"], job["attempts"]) == ("pending", 0)
    assert [h["outcome"] for h in job["history"]] == ["failed", "failed"]


@pytest.mark.parametrize("after_answer", [True, False], ids=["committed", "not-committed"])
def test_release_at_shutdown_whose_connection_breaks_still_puts_the_job_back_once(
        pg_server: Any, tmp_path: Path, after_answer: bool) -> None:
    """A stopping worker puts its interrupted job back to pending; the connection breaks
    with that commit in flight. The job is pending with no retry spent either way, its
    history has one interrupted attempt, and the worker logs `job_released`."""
    schema = pg_server.fresh_schema()
    q = Queue(pg_server.locator(schema=schema))
    q.enqueue({"id": "long", "command": "sleep 60"})
    proxy, locator = _through_proxy(pg_server, schema, b"ELSE 'pending' END", after_answer)
    log = tmp_path / "worker.log"
    via_proxy = Queue(locator)
    try:
        via_proxy.worker("--name", "cut", "--grace", "0", log=log)
        q.wait_state("long", "processing", timeout=60)
        via_proxy.stop_all()
    finally:
        proxy.close()
    assert len(proxy.cut) == 1 and (b"SELECT 1" in proxy.cut[0]) == after_answer
    job = q.job("long")
    assert (job["state"], job["attempts"]) == ("pending", 0)
    assert [h["outcome"] for h in job["history"]] == ["interrupted"]
    assert [e["event"] for e in _log_events(log)].count("job_released") == 1
