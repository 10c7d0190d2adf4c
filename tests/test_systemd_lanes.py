"""Lane files under a real systemd: the generator runs at `daemon-reload` (as at boot) and the
lanes' instances run as the file says, checked in a private systemd + journald (see
test_systemd.py for how the units and users are installed privately).

The generator is the project's own queuectl/lanes.py, installed where systemd is told to
find generators (SYSTEMD_GENERATOR_PATH, systemd's own variable for that), with one change:
it reads lane files from the private /var/lib/queuectl-lanes, not /etc/queuectl/lanes
(systemd gives generators a clean environment, so QUEUECTL_LANES_DIR cannot reach it; the
units' workers and the CLI get that variable). A malformed lane's line goes to /dev/kmsg as
in production, which the private journald reads back. /dev is shared, so that one line also
lands in the host's kernel log: the only trace these tests leave on the host.
"""

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from appcopy import install_app
from systemd_ns import PrivateSystemd, require_systemd_or_skip
from test_systemd import APP_INSIDE, Host, _install_units, _install_users

REPO = Path(__file__).resolve().parent.parent
QUEUECTL = f"{APP_INSIDE}/bin/queuectl"
LANE_USER = "qlane"  # a second system user, created in the private passwd like queuectl
GENERATOR_DIR = "/run/systemd/generator"  # the normal output directory: argv[1]
BACKUPS_DIR = "/var/lib/backups"  # inside: the private /var/lib
# Inside, where the generator, the units' workers and the CLI all read lane files from (not
# /tmp: the units have PrivateTmp=); a lane file's messages name it by this path.
LANES_DIR = "/var/lib/queuectl-lanes"


@pytest.fixture(scope="module")
def lane_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_systemd_or_skip()
    base = tmp_path_factory.mktemp("sd-lanes-app")
    base.chmod(0o755)
    install_app(base, visible_as=Path(APP_INSIDE))
    _install_users(base)
    conf = base / "lane-user.conf"
    conf.write_text(f'u {LANE_USER} - "queuectl lane test" /nonexistent /usr/sbin/nologin\n')
    subprocess.run(["systemd-sysusers", f"--root={base / 'root'}", str(conf)], check=True,
                   capture_output=True)
    return base


def _ids(app: Path, name: str) -> tuple[int, int]:
    """uid and gid of a user of the private passwd."""
    for line in (app / "root/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"{name} not in the private passwd")


class LaneHost(Host):
    """The private systemd with the generator installed and a lanes directory."""

    def __init__(self, sd: PrivateSystemd, base: Path, lanes: Path, app: Path) -> None:
        super().__init__(sd, base)
        self.lanes = lanes
        self.app = app
        self.backups = base / "varlib" / "backups"

    def lane(self, name: str, text: str) -> None:
        path = self.lanes / name
        path.write_text(text)
        path.chmod(0o644)

    def uid(self, name: str) -> int:
        return _ids(self.app, name)[0]

    def reload(self) -> None:
        self.systemctl("daemon-reload")

    def listed(self) -> list[str]:
        out = self.systemctl("list-units", "--plain", "--no-legend", "--full",
                             "queuectl-worker@*").stdout
        return sorted(line.split()[0] for line in out.splitlines() if line.strip())

    def journal_all(self) -> list[dict[str, str]]:
        out = self.sd.journalctl("-b", "-o", "json").stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if isinstance(e.get("MESSAGE"), str)]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sd.run("env", f"QUEUECTL_LANES_DIR={LANES_DIR}",
                           "QUEUECTL_DB=/var/lib/queuectl/queue.db", QUEUECTL, *args,
                           timeout=120)


@pytest.fixture
def lane_host(lane_app: Path, tmp_path: Path) -> Iterator[LaneHost]:
    base = tmp_path / "host"
    base.mkdir()
    base.chmod(0o755)
    varlib = base / "varlib"
    state = varlib / "queuectl"
    state.mkdir(parents=True)
    # what the package's tmpfiles.d does: a lane's other user cannot create it itself
    uid, gid = _ids(lane_app, "queuectl")
    os.chown(state, uid, gid)
    state.chmod(0o2770)
    backups = varlib / "backups"
    backups.mkdir()
    os.chown(backups, *_ids(lane_app, LANE_USER))
    backups.chmod(0o777)  # so a refusal there can only be the read-only mount
    lanes = varlib / "queuectl-lanes"
    lanes.mkdir()
    generators = base / "generators"
    generators.mkdir()
    generator = generators / "queuectl-lane-generator"
    source = (REPO / "queuectl" / "lanes.py").read_text()
    assert 'LANES_DIR = "/etc/queuectl/lanes"' in source
    generator.write_text(source.replace('LANES_DIR = "/etc/queuectl/lanes"',
                                        f'LANES_DIR = "{LANES_DIR}"'))
    generator.chmod(0o755)
    _install_units(base / "etc-systemd")
    # where a worker reads lane files (the CLI's variable; the units' environment is theirs)
    (base / "etc-systemd/queuectl-worker@.service.d/lanes-dir.conf").write_text(
        f"[Service]\nEnvironment=QUEUECTL_LANES_DIR={LANES_DIR}\n")
    etc = lane_app / "root" / "etc"
    binds = [(lane_app, APP_INSIDE), (varlib, "/var/lib"),
             (base / "etc-systemd", "/etc/systemd/system")]
    binds += [(etc / name, f"/etc/{name}") for name in ("passwd", "group", "shadow", "gshadow")]
    # The generator's output directories are on systemd's unit path only when
    # SYSTEMD_UNIT_PATH leaves room for them: name the normal one, where /etc ranks above it.
    sd = PrivateSystemd(base / "units", binds=binds,
                        unit_path_prefix=["/etc/systemd/system", GENERATOR_DIR])
    sd.env = {**os.environ, "SYSTEMD_GENERATOR_PATH": str(generators)}
    sd.start()
    try:
        yield LaneHost(sd, base, lanes, lane_app)
    finally:
        sd.stop()


BACKUPS = f"""[Lane]
Queues=backups
Workers=1
[Service]
User={LANE_USER}
ReadWritePaths={BACKUPS_DIR}
MemoryMax=256M
"""
OTHER = "[Lane]\nQueues=other\n"
TARGET = "queuectl-workers.target"


@pytest.mark.slow
def test_a_lane_runs_as_its_user_and_writes_where_its_file_says(lane_host: LaneHost) -> None:
    h = lane_host
    h.lane("backups.conf", BACKUPS)
    h.lane("other.conf", OTHER)
    h.reload()
    h.systemctl("start", TARGET)  # what the boot does: multi-user.target wants it
    assert h.listed() == ["queuectl-worker@backups:1.service", "queuectl-worker@other:1.service"]
    unit = "queuectl-worker@backups:1.service"
    assert h.active(unit) and h.prop(unit, "User") == LANE_USER
    assert h.prop(unit, "SupplementaryGroups") == "queuectl"
    assert h.prop(unit, "MemoryMax") == str(256 << 20)
    assert h.prop("queuectl-worker@other:1.service", "User") == "queuectl"
    q = h.queue
    q.enqueue({"id": "b", "queue": "backups",
               "command": f"id -un > {BACKUPS_DIR}/who && touch {BACKUPS_DIR}/made"})
    q.enqueue({"id": "o", "queue": "other", "max_retries": 0,
               "command": f"touch {BACKUPS_DIR}/intruder"})
    assert q.wait_state("b", "completed")["worker"].endswith("@backups:1")
    assert (h.backups / "who").read_text() == f"{LANE_USER}\n"
    made = (h.backups / "made").stat()  # as the user, with its own primary group
    assert (made.st_uid, made.st_gid) == _ids(h.app, LANE_USER)
    dead = q.wait_state("o", "dead")
    assert "Read-only file system" in q.run("logs", "o").stdout + dead.get("last_error", "")
    assert not (h.backups / "intruder").exists()
    # the lane's user did not take the shared directory from user queuectl
    assert h.state.stat().st_uid == h.uid("queuectl")
    db = (h.state / "queue.db").stat()  # whichever worker created it: shared by group
    assert db.st_gid == _ids(h.app, "queuectl")[1] and db.st_mode & 0o777 == 0o660
    # Workers= is read at the next daemon-reload; restarting the target starts the new one
    h.lane("backups.conf", BACKUPS.replace("Workers=1", "Workers=2"))
    h.reload()
    h.systemctl("restart", TARGET)
    assert h.active("queuectl-worker@backups:2.service")
    assert h.prop("queuectl-worker@backups:2.service", "User") == LANE_USER
    # lowered: the restart (PartOf=) restarts the surplus too, which now declines to run
    h.lane("backups.conf", BACKUPS)
    h.reload()
    h.systemctl("restart", TARGET)
    surplus = "queuectl-worker@backups:2.service"
    h.sd.wait_for(lambda: h.prop(surplus, "ActiveState") == "inactive", 30, "@backups:2 to end")
    assert h.prop(surplus, "Result") == "success" and h.active(unit)
    assert h.listed() == ["queuectl-worker@backups:1.service", "queuectl-worker@other:1.service"]
    assert "instance backups:2 is beyond Workers=1" in h.sd.journalctl(
        "-u", surplus, "-o", "cat").stdout
    # worker start may not scale a declared lane; worker stop still stops it
    refused = h.cli("worker", "start", "--count", "3", "--queue", "backups")
    assert refused.returncode == 2 and "backups.conf" in refused.stderr
    stopped = h.cli("worker", "stop", "--queue", "backups")
    assert stopped.returncode == 0, stopped.stderr
    assert f"{unit}: stopped and disabled" in stopped.stdout
    assert "its workers start again at the next boot" in stopped.stdout
    assert not h.active(unit)
    assert h.active("queuectl-worker@other:1.service")


def test_a_malformed_lane_is_named_in_the_journal_and_the_others_start(
        lane_host: LaneHost) -> None:
    h = lane_host
    # /dev/kmsg is the host's (the ring buffer is shared), and the private journald reads
    # all of it: a name of this run's own, so that an earlier run's line cannot pass for it
    broken = f"broken-{uuid.uuid4().hex[:12]}.conf"
    h.lane(broken, "[Lane]\nQueues=backups\nWorkrs=3\n")
    h.lane("other.conf", OTHER)
    h.reload()  # fails if the generator did; systemd would also log its exit status
    h.systemctl("start", TARGET)
    assert h.listed() == ["queuectl-worker@other:1.service"]
    assert h.active("queuectl-worker@other:1.service")
    where = f"{LANES_DIR}/{broken}:3: unknown key Workrs="
    line = h.sd.wait_for(lambda: [e for e in h.journal_all() if where in e["MESSAGE"]], 10,
                         "the generator's line in the journal")[0]
    assert line["SYSLOG_IDENTIFIER"] == "queuectl-lane-generator"  # journalctl -t
    assert line["_TRANSPORT"] == "kernel"
    assert not [e for e in h.journal_all() if "queuectl-lane-generator" in e["MESSAGE"]
                and "failed" in e["MESSAGE"]]


def test_a_lane_file_gives_its_instances_job_slots(lane_host: LaneHost) -> None:
    """[Service] Environment=QUEUECTL_SLOTS=2: the lane's one instance runs two of its
    queue's jobs at once, as two slots of the lane."""
    h = lane_host
    h.lane("other.conf", "[Lane]\nQueues=other\n[Service]\nEnvironment=QUEUECTL_SLOTS=2\n")
    h.reload()
    h.systemctl("start", TARGET)
    unit = "queuectl-worker@other:1.service"
    h.sd.wait_for(lambda: h.prop(unit, "StatusText") == "0 of 2 job slots busy", 30,
                  "the lane's instance ready with two slots")
    for i in range(2):
        h.cli("enqueue", "--queue", "other", "--id", f"o{i}", "--cmd", "sleep 3")
    h.sd.wait_for(lambda: h.prop(unit, "StatusText") == "2 of 2 job slots busy", 15,
                  "both slots running the lane's jobs")
    status = json.loads(h.cli("status", "--queue", "other").stdout)
    assert status["processing"] == 2 and status["active_workers"] == 2
    h.queue.wait_state("o1", "completed")
    assert h.queue.job("o0")["state"] == "completed"
