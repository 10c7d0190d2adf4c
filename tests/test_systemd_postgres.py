"""The project's worker unit on PostgreSQL, under the suite's private systemd.

As an admin would set it up (README, "PostgreSQL (many hosts)"): the real
`queuectl-worker@.service` plus a drop-in with `EnvironmentFile=` (a file in the private
/var/lib standing in for /etc/queuectl/db.env), which
names the database and a passfile (`PGPASSFILE`, 0600, owned by user queuectl); the server
demands scram-sha-256 over TCP on 127.0.0.1 (the unit's /tmp is private, so no Unix socket
under /tmp). The password must show up nowhere: not in `systemctl show`, not in the workers'
command lines, not in the journal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Queue
from systemd_ns import PrivateSystemd
from test_systemd import APP_INSIDE, WORKERS, _install_units, app  # noqa: F401 (fixture)
from test_systemd import Host as SystemdHost

PASSWORD = "Unit-pw-9f3c2a71"
SECRETS_INSIDE = "/var/lib/queuectl-db"  # in the private /var/lib: nothing lands in the host's /etc


def _uid_gid(etc: Path, user: str) -> tuple[int, int]:
    """A user's ids from the private passwd the sysusers.d snippet wrote."""
    for line in (etc / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no user {user} in {etc / 'passwd'}")


class PgHost(SystemdHost):
    """The private systemd, with `queue` the same PostgreSQL queue the units use."""

    def __init__(self, sd: PrivateSystemd, base: Path, queue: Queue, server: Any,
                 role: str) -> None:
        super().__init__(sd, base)
        self.queue = queue
        self.server = server
        self.role = role  # the workers' login role (password in the passfile only)


@pytest.fixture
def pg_host(app: Path, pg_server: Any, tmp_path: Path) -> Iterator[PgHost]:  # noqa: F811
    n = pg_server.fresh_schema()
    role, db = f"unit_{n}", f"unitdb_{n}"
    pg_server.create_role(role, PASSWORD)
    pg_server.psql(f"CREATE DATABASE {db} OWNER {role}")
    base = tmp_path / "host"
    base.mkdir()
    base.chmod(0o755)
    (base / "varlib").mkdir()
    etc_systemd = base / "etc-systemd"
    _install_units(etc_systemd)
    dropin = etc_systemd / "queuectl-worker@.service.d"
    (dropin / "postgres.conf").write_text(
        f"[Service]\nEnvironmentFile={SECRETS_INSIDE}/db.env\n")
    secrets = base / "varlib" / "queuectl-db"
    secrets.mkdir()
    secrets.chmod(0o755)
    locator = pg_server.tcp_locator(role, dbname=db)  # no password in it
    (secrets / "db.env").write_text(
        f"QUEUECTL_DB={locator}\nPGPASSFILE={SECRETS_INSIDE}/pgpass\n")
    passfile = secrets / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_server.port}:{db}:{role}:{PASSWORD}\n")
    passfile.chmod(0o600)
    etc = app / "root" / "etc"
    os.chown(passfile, *_uid_gid(etc, "queuectl"))
    binds = [(app, APP_INSIDE), (base / "varlib", "/var/lib"),
             (etc_systemd, "/etc/systemd/system")]
    binds += [(etc / name, f"/etc/{name}") for name in ("passwd", "group", "shadow", "gshadow")]
    sd = PrivateSystemd(base / "units", binds=binds, unit_path_prefix=["/etc/systemd/system"])
    # The test's own commands: same queue as the superuser over the Unix socket.
    queue = Queue(pg_server.locator(dbname=db))
    sd.start()
    try:
        yield PgHost(sd, base, queue, pg_server, role)
    finally:
        queue.stop_all()
        sd.stop()


def test_worker_unit_on_postgres_with_a_passfile(pg_host: PgHost) -> None:
    host, q = pg_host, pg_host.queue
    units = ["queuectl-worker@1.service", "queuectl-worker@2.service"]
    # Type=notify: start returns once READY=1 arrived, i.e. connected and migrated; verified
    # and registered too, unless the check took over READY_WITHIN (a loaded machine).
    host.systemctl("start", *units)
    for unit in units:
        assert host.active(unit), host.sd.journalctl("-u", unit).stdout
        host.sd.wait_for(lambda: host.prop(unit, "StatusText") == "idle", 30,  # noqa: B023
                         f"{unit} idle")
    assert q.status()["active_workers"] == 2
    # They logged in over TCP as their role, so with the passfile's password (scram-sha-256).
    tcp = pg_host.server.psql("SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE usename ="
                              f" '{pg_host.role}' AND client_addr = '127.0.0.1'")
    assert int(tcp) >= 2
    ran = "/var/lib/queuectl/ran.txt"
    q.run("enqueue", "--file", "-", input="\n".join(
        json.dumps({"id": f"u{i}", "command": f"echo u{i} >> {ran}"}) for i in range(50)))
    q.enqueue({"id": "bad", "command": "echo oops >&2; exit 4", "max_retries": 0})
    q.wait_counts(completed=50, dead=1, timeout=90)
    assert sorted((host.state / "ran.txt").read_text().split()) == sorted(
        f"u{i}" for i in range(50))
    # journald fields, natively, per job
    host.sd.wait_for(lambda: host.events("job_dead", JOB_ID="bad"), 10, "job_dead in the journal")
    done = host.events("job_succeeded", JOB_ID="u7")
    assert len(done) == 1 and done[0]["EXIT_CODE"] == "0" and done[0]["PRIORITY"] == "6"
    worker = done[0]["WORKER"]
    assert worker.endswith(("@1", "@2")) and "@" in worker
    assert [h["worker"] for h in q.job("u7")["history"]] == [worker]  # show names the host
    claimed = host.events("job_claimed", JOB_ID="u7")[0]
    assert claimed["MESSAGE"].startswith("Processing u7") and claimed["ATTEMPT"] == "1"
    dead = host.events("job_dead", JOB_ID="bad")[0]
    assert dead["EXIT_CODE"] == "4" and dead["PRIORITY"] == "3"
    started = host.events("worker_started")
    assert started and all(e["DB"].startswith("postgresql://") for e in started)
    # The password is nowhere to be seen.
    shown = host.systemctl("show", *units).stdout
    assert f"EnvironmentFiles={SECRETS_INSIDE}/db.env" in shown
    pids = [host.prop(u, "MainPID") for u in units]
    for pid in pids:
        cmdline = host.sd.run("cat", f"/proc/{pid}/cmdline", check=True).stdout
        assert "worker" in cmdline and PASSWORD not in cmdline
    ps = host.sd.run("ps", "-eo", "pid,args", "ww", check=True).stdout
    assert all(pid in ps for pid in pids)
    journal = host.sd.journalctl("-o", "json", "--all").stdout
    assert journal.count("job_succeeded") >= 50
    for text in (shown, ps, journal):
        assert PASSWORD not in text
    host.systemctl("stop", *units)
    assert all(host.prop(u, "Result") == "success" for u in units)
