"""The package's live upgrade on PostgreSQL: two hosts sharing one queue, upgraded at once.

test_deb.py upgrades one host's SQLite queue from 0.1.0, which had no PostgreSQL backend.
Here the release upgraded from is 0.3.1 (PG_COMMIT of this repository's history, built by its
own `make deb`), whose PostgreSQL schema is older than this version's. Two copies of the same
pristine Debian 12 root (test_deb.py's cache and helpers), with other hostnames, boot their
own systemd each; on both, apt installs 0.3.1 (python3-psycopg2 comes with it, recommended),
and the admin points the workers at one database of the suite's throwaway server as README
"PostgreSQL (many hosts)" says: a drop-in naming /etc/queuectl/db.env, which names the
locator (no password) and a passfile. Each host's db.env also sets PGAPPNAME, so the server
tells the two hosts' connections apart.

Two 0.3.1 workers a host drain a queue; mid-drain, `apt install ./queuectl_NEW_all.deb` runs
on both hosts at the same moment. Meanwhile the test holds the schema's migration lock (the
transaction-level advisory lock every queuectl takes to migrate) until the new workers of
both hosts wait on it, so that all four start against the old schema at once; then it lets
go. The server logs the database's DDL (`log_statement = ddl`, for this database only): the
new migrations ran exactly once, in one session. Then nothing is lost, the new workers of
both hosts drain the rest, and 0.3.1's CLI and worker refuse the migrated schema with one
line, changing nothing in it (pg_dump before and after).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_deb import (
    DEB_INSIDE,
    HOLD_JOB,
    RELEASE,
    RUNS_LOG,
    SHORT_JOB,
    VERSION,
    WORKERS,
    Admin,
    BootedRoot,
    assert_left_nothing,
    copy_root,
    deb,  # noqa: F401 (fixture)
    release_deb,
    require_booting,
    spawned,
)
from waiting import wait_for

from queuectl.backends.postgres import migrate_lock_key
from queuectl.backends.postgres_schema import MIGRATIONS, SCHEMA_VERSION

# The release upgraded from: the last commit at version 0.3.1 (the next one bumped to 0.4.0).
PG_COMMIT = "403a21de31776fe7140feeb0ab3a47eff6c9485e"
PG_RELEASE = "0.3.1"
PG_DEB_INSIDE = f"/root/queuectl_{PG_RELEASE}_all.deb"
HOSTS = ("pghost1", "pghost2")
WORKER_NUMBERS = (1, 2)  # instances per host
PASSWORD = "Deb-pg-4c1e7a90"
SCHEMA = "queuectl"  # the default: the admin's locator names none
DB_ENV = "/etc/queuectl/db.env"
PGPASS = "/etc/queuectl/pgpass"
DROPINS = "/etc/systemd/system/queuectl-worker@.service.d"
SHORT = [f"p{i:03d}" for i in range(400)]
HOLD = ["hold1", "hold2"]
DOOMED = ["doomed1", "doomed2"]
# What the server logs under log_statement = ddl: "[pid] LOG:  statement: CREATE ..."
_DDL = re.compile(r"\[(\d+)\] LOG:  statement: ((?:CREATE|ALTER|DROP|COMMENT)\b.*)")
T = TypeVar("T")


class PgAdmin(Admin):
    """One of the hosts, with the admin's PostgreSQL settings in DB_ENV."""

    def __init__(self, host: BootedRoot, name: str) -> None:
        super().__init__(host)
        self.name = name

    def qctl(self, *args: str, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """queuectl as root types it on this host, with the workers' environment file."""
        return self.sh(f"set -a; . {DB_ENV}; set +a; exec {shlex.join(['queuectl', *args])}",
                       input=input, check=check)

    def pids(self) -> dict[int, str]:
        return {n: self.prop(f"queuectl-worker@{n}.service", "MainPID") for n in WORKER_NUMBERS}

    def unpacked_at(self) -> tuple[float, float]:
        """When the new package's files were unpacked: (CLOCK_MONOTONIC, epoch seconds)."""
        out = self.host.run("python3", "-c", (
            "import os, sys, time\n"
            "ctime = os.stat(sys.argv[1]).st_ctime\n"
            "print(time.monotonic() - (time.time() - ctime), ctime)"),
            "/usr/lib/python3/dist-packages/queuectl/__init__.py", check=True).stdout.split()
        return float(out[0]), float(out[1])


class Cluster:
    """The two hosts and the database they share."""

    def __init__(self, admins: list[PgAdmin], server: Any, db: str) -> None:
        self.admins = admins
        self.server = server
        self.db = db

    def psql(self, sql: str) -> str:
        return str(self.server.psql(sql, dbname=self.db))

    def snapshot(self) -> dict[str, Any]:
        """The queue in one read-only statement: schema version, jobs, history, settings."""
        s = SCHEMA
        return json.loads(self.psql(
            "SELECT json_build_object("
            f"'version', (SELECT max(version) FROM {s}.schema_version),"
            f"'version_rows', (SELECT count(*) FROM {s}.schema_version),"
            f"'jobs', (SELECT coalesce(jsonb_object_agg(id, to_jsonb(j)), '{{}}') FROM {s}.jobs j),"
            f"'attempts', (SELECT coalesce(jsonb_agg(to_jsonb(a) - 'output' ORDER BY seq), '[]')"
            f" FROM {s}.attempts a),"
            f"'config', (SELECT coalesce(jsonb_object_agg(key, value), '{{}}') FROM {s}.config))"))

    def lock_waiters(self, key: int) -> dict[str, int]:
        """Sessions waiting for the advisory lock `key` in this database, by application
        name (a bigint key is classid = high 32 bits, objid = low 32 bits, objsubid 1)."""
        rows = self.psql(
            "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a"
            " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND NOT l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            f" AND l.classid = {(key >> 32) & 0xFFFFFFFF} AND l.objid = {key & 0xFFFFFFFF}"
            " AND l.objsubid = 1 GROUP BY 1")
        return {name: int(n) for name, n in (r.split("|") for r in rows.splitlines() if r)}

    def dump(self) -> str:
        """pg_dump of the queue's schema, tables and rows (over the server's Unix socket)."""
        result = subprocess.run(
            [str(Path(self.server.bindir) / "pg_dump"), "-h", str(self.server.base), "-p",
             str(self.server.port), "-U", "postgres", "-d", self.db, "--schema", SCHEMA],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        assert result.returncode == 0, result.stderr
        # newer pg_dumps fence the script with \restrict KEY ... \unrestrict KEY, a new
        # random KEY each time
        return re.sub(r"(?m)^\\(un)?restrict .*$", "", result.stdout)


def app_name(host: str) -> str:
    return f"queuectl@{host}"


def on_each(admins: list[PgAdmin], fn: Callable[[PgAdmin], T]) -> list[T]:
    """fn on every host at the same time (each in a thread of its own)."""
    with ThreadPoolExecutor(len(admins)) as pool:
        return list(pool.map(fn, admins))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_hosts(deb: Path, pg_server: Any,  # noqa: F811 (deb: the fixture imported above)
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two booted copies of the pristine root with 0.3.1 installed and configured for one
    PostgreSQL database (its owner: the workers' role, so they create and migrate the
    schema), no worker started."""
    old = release_deb(PG_COMMIT, PG_RELEASE, tmp_path_factory)
    pristine = require_booting()
    name = f"deb{pg_server.fresh_schema()}"  # role and database, new in this session
    pg_server.create_role(name, PASSWORD)
    pg_server.psql(f"CREATE DATABASE {name} OWNER {name}")
    pg_server.psql(f"ALTER DATABASE {name} SET log_statement = 'ddl'")
    locator = pg_server.tcp_locator(name, dbname=name)  # no password in it
    base = Path(tempfile.mkdtemp(prefix="queuectl-debpg-", dir=tmp_path_factory.getbasetemp()))
    hosts = [BootedRoot(base / host, host) for host in HOSTS]
    try:
        for host, hostname in zip(hosts, HOSTS, strict=True):
            copy_root(pristine, host.root, hostname, [deb, old])
            host.start()
        admins = [PgAdmin(host, hostname) for host, hostname in zip(hosts, HOSTS, strict=True)]
        on_each(admins, lambda a: a.apt("install", PG_DEB_INSIDE))
        for a in admins:
            assert a.host.run("dpkg-query", "-W", "-f=${Status}", "python3-psycopg2"
                              ).stdout == "install ok installed"
            env = (f"QUEUECTL_DB={locator}\nPGPASSFILE={PGPASS}\n"
                   f"PGAPPNAME={app_name(a.name)}\n")
            a.sh(f"install -d {DROPINS} && "
                 f"printf '%s\\n' '[Service]' 'EnvironmentFile={DB_ENV}' > {DROPINS}/postgres.conf"
                 f" && cat > {DB_ENV} && chown root:queuectl {DB_ENV} && chmod 0640 {DB_ENV} && "
                 f"install -o queuectl -g queuectl -m 0600 /dev/null {PGPASS} && "
                 f"echo {shlex.quote(f'127.0.0.1:{pg_server.port}:{name}:{name}:{PASSWORD}')}"
                 f" > {PGPASS} && systemctl daemon-reload", input=env, check=True)
        yield Cluster(admins, pg_server, name)
    finally:
        for host in hosts:
            host.stop()
        shutil.rmtree(base, ignore_errors=True)
        pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg_server.psql(f"DROP ROLE IF EXISTS {name}")
    for host in hosts:
        assert_left_nothing(host)


# -- the upgrade -------------------------------------------------------------------------------
def history(snap: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return [a for a in snap["attempts"] if a["job_id"] == job_id]


@pytest.mark.slow
def test_two_hosts_upgrading_at_once_migrate_the_schema_once_and_lose_nothing(
        pg_hosts: Cluster) -> None:
    c = pg_hosts
    # 0.3.1's workers, two a host, with `--grace 2` (a drop-in removed again at once, as in
    # test_deb.py) so that the upgrade interrupts the hold jobs quickly
    for a in c.admins:
        a.sh(f"printf '%s\\n' '[Service]' 'ExecStart=' 'ExecStart=/usr/bin/queuectl worker run "
             f"--name %H@%i --instance %i --grace 2' > {DROPINS}/grace.conf && systemctl daemon-reload && "
             "systemctl start queuectl-worker@{1,2} && "
             f"rm {DROPINS}/grace.conf && systemctl daemon-reload", check=True)
        assert a.sh("queuectl --version").stdout.strip() == f"queuectl, version {PG_RELEASE}"
        for pid in a.pids().values():
            argv = a.host.run("cat", f"/proc/{pid}/cmdline", check=True).stdout.split("\0")
            assert argv[-3:-1] == ["--grace", "2"], argv
    first = c.admins[0]
    first.qctl("config", "set", "max-retries", "5")
    first.qctl("config", "set", "backoff-base", "1.5")
    extras = ([{"id": i, "command": HOLD_JOB, "priority": 10} for i in HOLD]
              + [{"id": i, "command": "echo doomed; exit 7", "priority": 5, "max_retries": 0}
                 for i in DOOMED])
    first.qctl("enqueue", "--file", "-", input="".join(json.dumps(j) + "\n" for j in extras))
    first.qctl("enqueue", "--file", "-",
               input="".join(json.dumps({"id": i, "command": SHORT_JOB}) + "\n" for i in SHORT))

    def mid_drain() -> dict[str, Any] | None:
        snap = c.snapshot()
        states = {i: j["state"] for i, j in snap["jobs"].items()}
        done = sum(states[i] == "completed" for i in SHORT)
        ready = (all(states[i] == "processing" for i in HOLD) and done >= 100
                 and all(states[i] == "dead" for i in DOOMED))
        return snap if ready else None

    before = wait_for(mid_drain, 300, "0.3.1 to be mid-drain, the hold jobs running", every=0.5)
    assert before["version_rows"] == 1 and before["version"] < SCHEMA_VERSION
    old_pids = {a.name: a.pids() for a in c.admins}
    busy = [r["worker"] for r in before["attempts"]] + [
        j["worker"] for j in before["jobs"].values() if j["state"] == "processing"]
    assert {w.split("@")[0] for w in busy} == set(HOSTS), f"0.3.1 ran jobs on {set(busy)} only"
    log_from = c.server.log.stat().st_size

    # The upgrade, on both hosts at once, as an admin types it; the test holds the lock the
    # migration takes until the new workers of both hosts wait for it.
    import psycopg2

    key = migrate_lock_key(SCHEMA)
    gate = psycopg2.connect(c.server.locator(dbname=c.db))
    try:
        gate.cursor().execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        with ThreadPoolExecutor(len(c.admins)) as pool:
            upgrades = [pool.submit(a.sh, f"cd /root && apt install -y ./{Path(DEB_INSIDE).name}",
                                    timeout=600) for a in c.admins]
            try:
                waiting = wait_for(lambda: (w := c.lock_waiters(key)) == {
                    app_name(h): len(WORKER_NUMBERS) for h in HOSTS} and w, 300,
                    "the new workers of both hosts to wait for the migration lock", every=0.2)
                at_gate = c.snapshot()
                starting = {a.name: [a.active(n) for n in WORKER_NUMBERS] for a in c.admins}
            finally:
                gate.rollback()  # lets go of the lock: the workers race for it
            for a, upgrade in zip(c.admins, upgrades, strict=True):
                result = upgrade.result()
                assert result.returncode == 0, f"{a.name}:\n{result.stdout}\n{result.stderr}"
    finally:
        gate.close()
    for a in c.admins:
        a.sh(f"touch {RELEASE}", check=True)
        assert a.sh("queuectl --version").stdout.strip() == f"queuectl, version {VERSION}"
    # while they waited, every new worker was starting (Type=notify: READY=1 comes after
    # the migration), and no old one ran any more
    assert starting == {h: ["activating"] * len(WORKER_NUMBERS) for h in HOSTS}, starting
    left = sum(at_gate["jobs"][i]["state"] != "completed" for i in SHORT)
    assert left >= 20, f"only {left} jobs were left at the migration: not mid-drain"
    assert at_gate["version"] == before["version"]

    # the new migrations ran exactly once, all in one session of one of the hosts, and the
    # schema is at this version's number
    log = c.server.log.read_bytes()[log_from:].decode(errors="replace")
    ddl = [(int(pid), text.strip()) for pid, text in _DDL.findall(log)]
    expected = Counter(
        first for v in range(before["version"] + 1, SCHEMA_VERSION + 1) for statement in MIGRATIONS[v]
        if (first := statement.format(s=f'"{SCHEMA}"', channel=f"{SCHEMA}_jobs").strip()
            .splitlines()[0]).startswith(("CREATE", "ALTER", "DROP", "COMMENT")))
    assert expected, "no DDL expected: the test would show nothing"
    assert Counter(text for _, text in ddl) == expected, ddl
    [migrator] = {pid for pid, _ in ddl}
    migrated_by = c.psql(f"SELECT application_name FROM pg_stat_activity WHERE pid = {migrator}")
    assert migrated_by in {app_name(h) for h in HOSTS}, migrated_by

    # the old workers stopped before the new files were unpacked (the interrupted attempts
    # ended first: the server's and the hosts' clock is the one machine's); the new ones run
    # from the packaged unit, in processes started after the unpacking
    unpacked = {a.name: a.unpacked_at() for a in c.admins}
    new_pids: dict[str, dict[int, str]] = {}
    for a in c.admins:
        new_pids[a.name] = a.pids()
        for n, pid in new_pids[a.name].items():
            assert a.active(n) == "active"
            assert pid not in ("0", old_pids[a.name][n]), f"{a.name} @{n} was not restarted"
            assert a.events("EVENT=worker_stopped", f"_PID={old_pids[a.name][n]}"), \
                f"{a.name}: the old @{n} did not stop cleanly"
            started = int(a.prop(f"queuectl-worker@{n}.service",
                                 "ExecMainStartTimestampMonotonic")) / 1e6
            assert started > unpacked[a.name][0], f"{a.name} @{n} started before the unpacking"
            argv = a.host.run("cat", f"/proc/{pid}/cmdline", check=True).stdout
            assert "\0--grace\x0030\0" in argv, f"{a.name} @{n} not from the packaged unit: {argv}"

    # the rest of the queue drains on the new code, on both hosts
    after = wait_for(lambda: (s := c.snapshot()) and all(
        s["jobs"][i]["state"] == "completed" for i in SHORT + HOLD) and s, 600,
        "every job to finish after the upgrade", every=1)
    for a in c.admins:
        for n, pid in new_pids[a.name].items():
            assert a.events("EVENT=job_succeeded", f"_PID={pid}"), \
                f"the new {a.name} @{n} (pid {pid}) ran no job"
    assert after["version"] == SCHEMA_VERSION and after["version_rows"] == 1

    # every job, the history finished before the upgrade and the settings survived
    assert set(after["jobs"]) == set(before["jobs"]) == set(SHORT + HOLD + DOOMED)
    for job_id, old in before["jobs"].items():
        new = after["jobs"][job_id]
        kept = ("command", "max_retries", "priority", "timeout", "created_at")
        assert {k: new[k] for k in kept} == {k: old[k] for k in kept}, job_id
        if old["state"] in ("completed", "dead"):
            assert {k: new[k] for k in old} == old, f"{job_id} changed"
    new_rows = {a["seq"]: a for a in after["attempts"]}
    for old in before["attempts"]:
        assert old["seq"] in new_rows, f"history row {old} lost"
        if old["finished_at"] is not None:
            assert {k: new_rows[old["seq"]][k] for k in old} == old
    assert {k: after["config"].get(k) for k in before["config"]} == before["config"]
    assert after["config"].get("max-retries") == "5"
    assert after["config"].get("backoff-base") == "1.5"

    # each job finished exactly once; one an upgrade interrupted (each host's may have: a
    # job released by the first host's old workers may be taken by the other's before it
    # stops) ran again, its history says so, and that cost no retry
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for a in c.admins:
        for line in a.host.run("cat", RUNS_LOG, check=True).stdout.splitlines():
            what, job_id = line.split()
            (starts if what == "start" else ends)[job_id] += 1
    interrupted = []
    for job_id in SHORT + HOLD:
        job, rows = after["jobs"][job_id], history(after, job_id)
        outcomes = [r["outcome"] for r in rows]
        k = len(outcomes) - 1
        assert outcomes == ["interrupted"] * k + ["completed"] and k <= len(HOSTS), \
            (job_id, outcomes)
        assert job["attempts"] == 1, f"{job_id}: attempts {job['attempts']} after {outcomes}"
        assert starts[job_id] == len(spawned(rows)), (job_id, starts[job_id], rows)
        # a job stopped between its last line and its exit may have done its work again;
        # one that was not interrupted (and a hold job: it cannot end early) exactly once
        assert ends[job_id] == 1 or (1 < ends[job_id] <= len(outcomes) and job_id not in HOLD), \
            (job_id, ends[job_id], outcomes)
        for row in rows[:-1]:
            assert "shutdown" in (row["error"] or ""), row
            host = row["worker"].split("@")[0]
            assert row["finished_at"] < unpacked[host][1], \
                f"{job_id} was interrupted on {host} after the new files were unpacked"
        if k:
            interrupted.append(job_id)
    assert set(HOLD) <= set(interrupted), "the jobs running at the upgrade were not interrupted"
    for job_id in DOOMED:
        assert [r["outcome"] for r in history(after, job_id)] == ["failed"]
        assert after["jobs"][job_id]["state"] == "dead"
        assert after["jobs"][job_id]["exit_code"] == 7
    gap = {h: f"{unpacked[h][1] - min(u[1] for u in unpacked.values()):.2f}" for h in HOSTS}
    print(f"upgrade: {left} of {len(SHORT)} jobs left at the migration, waited for by "
          f"{waiting}; migrated by {migrated_by}; unpacked at +{gap} s; "
          f"{len(interrupted)} interrupted and run again: {sorted(interrupted)}")


def test_the_release_before_refuses_the_migrated_schema_with_one_line_and_changes_nothing(
        pg_hosts: Cluster) -> None:
    # the admin stops every worker of both hosts (an idle one writes its heartbeats) and
    # downgrades one host; the queue's schema is dumped before and after 0.3.1 touches it
    c = pg_hosts
    on_each(c.admins, lambda a: a.sh(f"systemctl stop '{WORKERS}.service'", check=True))
    before = c.dump()
    assert "CREATE TABLE queuectl.jobs" in before
    a = c.admins[0]
    downgrade = a.sh(f"cd /root && apt install -y --allow-downgrades ./{Path(PG_DEB_INSIDE).name}",
                     timeout=600)
    assert downgrade.returncode == 0, downgrade.stdout + downgrade.stderr
    assert a.sh("queuectl --version").stdout.strip() == f"queuectl, version {PG_RELEASE}"
    for args in (("status",), ("enqueue", "--cmd", "true"), ("list",)):
        result = a.qctl(*args, check=False)
        assert result.returncode == 1 and result.stdout == "", (args, result)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("queuectl: error:"), \
            (args, result.stderr)
        assert (f"has version {SCHEMA_VERSION}, newer than this queuectl understands"
                in result.stderr), result.stderr
        assert result.stderr.endswith("upgrade queuectl\n") and PASSWORD not in result.stderr
    # a worker of 0.3.1 does not start on it either, and says why in one journal line
    start = a.systemctl("start", "queuectl-worker@1.service", check=False)
    assert start.returncode != 0, "a 0.3.1 worker started on the migrated schema"
    a.systemctl("stop", "queuectl-worker@1.service", check=False)
    journal = a.host.journalctl("-u", "queuectl-worker@1.service", "-o", "json",
                                check=True).stdout
    said = [str(json.loads(line).get("MESSAGE", "")) for line in journal.splitlines() if line]
    assert any("newer than this queuectl understands" in m for m in said), said[-10:]
    assert c.dump() == before, "0.3.1 changed the migrated schema"
