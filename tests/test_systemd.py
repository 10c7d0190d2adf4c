"""Workers as systemd services, checked against a real systemd and journald in namespaces.

The units under test are the project's own files from systemd/, installed into a private
/etc/systemd/system as an admin would, with one change: ExecStart points at a copy of this
checkout (readable by the unprivileged `queuectl` user, which sysusers.d creates in a private
copy of /etc/passwd). /var/lib is private too, so nothing here touches the host.
"""

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from appcopy import install_app
from conftest import QUEUECTL, Queue
from systemd_ns import PrivateSystemd, require_systemd_or_skip
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
APP_INSIDE = "/srv"  # where the copied app is bind-mounted inside the namespace
WORKERS = "queuectl-worker@*"


def _install_users(base: Path) -> None:
    """Private passwd/group with the project's sysusers.d snippet applied."""
    etc = base / "root" / "etc"
    etc.mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy2(f"/etc/{name}", etc / name)
    subprocess.run(["systemd-sysusers", f"--root={base / 'root'}",
                    str(REPO / "systemd/sysusers.d/queuectl.conf")], check=True,
                   capture_output=True)


def _install_units(etc_systemd: Path) -> None:
    etc_systemd.mkdir()
    for name in ("queuectl-worker@.service", "queuectl-workers.target"):
        text = (REPO / "systemd" / name).read_text()
        (etc_systemd / name).write_text(
            text.replace("/usr/bin/queuectl", f"{APP_INSIDE}/bin/queuectl"))
    # Test speed only: a short watchdog so the watchdog test takes seconds, not a minute.
    dropin = etc_systemd / "queuectl-worker@.service.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text("[Service]\nWatchdogSec=3\n")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_systemd_or_skip()
    base = tmp_path_factory.mktemp("sd-app")
    base.chmod(0o755)
    install_app(base, visible_as=Path(APP_INSIDE))
    _install_users(base)
    return base


class Host:
    """The private systemd plus the paths a test needs."""

    def __init__(self, sd: PrivateSystemd, base: Path) -> None:
        self.sd = sd
        self.state = base / "varlib" / "queuectl"
        self.queue = Queue(self.state / "queue.db")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.sd.systemctl(*args, check=check)

    def prop(self, unit: str, name: str) -> str:
        return self.sd.show(unit, name)

    def active(self, unit: str) -> bool:
        return self.prop(unit, "ActiveState") == "active"

    def journal_json(self, *args: str) -> list[dict]:
        out = self.sd.journalctl("-u", WORKERS, "-o", "json", "--all", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self, event: str, **match: str) -> list[dict]:
        return [e for e in self.journal_json() if e.get("EVENT") == event
                and all(e.get(k) == v for k, v in match.items())]


@pytest.fixture
def host(app: Path, tmp_path: Path) -> Iterator[Host]:
    base = tmp_path / "host"
    base.mkdir()
    base.chmod(0o755)
    (base / "varlib").mkdir()
    _install_units(base / "etc-systemd")
    etc = app / "root" / "etc"
    binds = [(app, APP_INSIDE), (base / "varlib", "/var/lib"),
             (base / "etc-systemd", "/etc/systemd/system")]
    binds += [(etc / name, f"/etc/{name}") for name in ("passwd", "group", "shadow", "gshadow")]
    sd = PrivateSystemd(base / "units", binds=binds, unit_path_prefix=["/etc/systemd/system"])
    sd.start()
    try:
        yield Host(sd, base)
    finally:
        sd.stop()


def _start(host: Host, *numbers: int) -> None:
    host.systemctl("start", *(f"queuectl-worker@{n}.service" for n in numbers))


def test_four_instances_become_active_after_ready_and_run_jobs_once(host: Host) -> None:
    # systemctl start of a Type=notify unit returns only once READY=1 arrived; that is
    # after registering, unless the database check took over READY_WITHIN (a loaded machine)
    _start(host, 1, 2, 3, 4)
    for n in (1, 2, 3, 4):
        unit = f"queuectl-worker@{n}.service"
        assert host.active(unit)
        host.sd.wait_for(lambda: host.prop(unit, "StatusText") == "idle", 30,  # noqa: B023
                         f"{unit} idle")
        assert host.prop(unit, "User") == "queuectl"
    q = host.queue
    assert q.status()["active_workers"] == 4
    assert q.json("info")["config"]["max-retries"] == 3
    out = "/var/lib/queuectl/ran.txt"  # the state directory is writable for jobs
    lines = "\n".join(json.dumps({"id": f"s{i}", "command": f"echo s{i} >> {out}"})
                      for i in range(200))
    q.run("enqueue", "--file", "-", input=lines)
    q.enqueue({"id": "env", "command": "env > /var/lib/queuectl/env.txt; umask >> "
                                       "/var/lib/queuectl/env.txt"})
    # what ordinary shell jobs do still works under the unit's hardening
    q.enqueue({"id": "shell", "command": "echo hi > /tmp/x && cat /tmp/x && ls /etc >/dev/null"
               " && python3 -c 'import json; print(json.dumps(1))' && curl --version"})
    q.wait_counts(completed=202, timeout=90)
    ran = (host.state / "ran.txt").read_text().split()
    assert sorted(ran) == sorted(f"s{i}" for i in range(200))
    env = (host.state / "env.txt").read_text()
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert env.split()[-1] == "0007"
    db = host.state / "queue.db"
    assert db.stat().st_mode & 0o777 == 0o660  # group queuectl may write, others nothing
    assert host.state.stat().st_mode & 0o7777 == 0o2770


def test_status_text_names_the_running_job_even_in_unicode(host: Host) -> None:
    _start(host, 1)
    host.queue.enqueue({"id": "作业-✓", "command": "sleep 2"})
    unit = "queuectl-worker@1.service"
    host.sd.wait_for(lambda: host.prop(unit, "StatusText") == "running 作业-✓ (attempt 1/4)",
                     10, "STATUS= with the unicode job id")
    host.queue.wait_state("作业-✓", "completed")


@pytest.mark.slow
def test_watchdog_kills_a_stuck_worker_and_its_job_still_completes(host: Host) -> None:
    q = host.queue
    _start(host, 1)
    q.run("config", "set", "backoff-base", "1")
    q.enqueue({"id": "wd", "command": "sleep 2"})
    q.wait_state("wd", "processing")
    unit = "queuectl-worker@1.service"
    main_pid = host.prop(unit, "MainPID")
    host.sd.run("kill", "-STOP", main_pid, check=True)
    host.sd.wait_for(lambda: "Failed with result 'watchdog'" in host.sd.journalctl(
        "-u", unit).stdout, 20, "systemd to kill the worker for its watchdog")
    job = q.wait_state("wd", "completed", timeout=30)
    assert [h["outcome"] for h in job["history"]] == ["lost", "completed"]
    assert int(host.prop(unit, "NRestarts")) >= 1 and host.active(unit)
    assert host.prop(unit, "MainPID") != main_pid


def test_systemctl_stop_during_a_long_job_loses_nothing(host: Host) -> None:
    q = host.queue
    _start(host, 1)
    q.enqueue({"id": "long", "command": "sleep 3; echo done > /var/lib/queuectl/long.txt"})
    q.wait_state("long", "processing")
    host.systemctl("stop", "queuectl-workers.target")  # PartOf: stops every instance
    unit = "queuectl-worker@1.service"
    host.sd.wait_for(lambda: host.prop(unit, "ActiveState") == "inactive", 45,
                     "the instance to stop within TimeoutStopSec")
    assert host.prop(unit, "Result") == "success"  # stopped by its own drain, not SIGKILL
    job = q.job("long")
    assert job["state"] == "completed" and job["attempts"] == 1
    assert (host.state / "long.txt").read_text() == "done\n"
    stopping = [e for e in host.journal_json() if e.get("EVENT") == "worker_stopping"]
    assert stopping and stopping[0]["PRIORITY"] == "6"


def test_journal_holds_structured_events_per_job(host: Host) -> None:
    q = host.queue
    _start(host, 1)
    q.run("config", "set", "backoff-base", "1")
    q.enqueue({"id": "ok1", "command": "echo fine"})
    q.enqueue({"id": "bad1", "command": "echo 'line one\nline two' >&2; exit 3",
               "max_retries": 0})
    q.wait_state("ok1", "completed")
    q.wait_state("bad1", "dead")
    host.sd.wait_for(lambda: host.events("job_dead", JOB_ID="bad1"), 10, "job_dead event")
    claimed = host.events("job_claimed", JOB_ID="ok1")[0]
    assert claimed["MESSAGE"] == "Processing ok1 → echo fine"
    assert claimed["SYSLOG_IDENTIFIER"] == "queuectl"
    assert claimed["WORKER"].endswith("@1") and claimed["ATTEMPT"] == "1"
    assert claimed["MAX_RETRIES"] == "3" and claimed["PRIORITY"] == "6"
    done = host.events("job_succeeded", JOB_ID="ok1")[0]
    assert done["EXIT_CODE"] == "0" and int(done["DURATION_MS"]) >= 0
    dead = host.events("job_dead", JOB_ID="bad1")[0]
    assert dead["EXIT_CODE"] == "3" and dead["PRIORITY"] == "3"
    assert dead["OUTPUT_TAIL"] == "line one\nline two\n"  # newlines intact (binary form)
    # one job's history across all workers, by field match
    per_job = host.sd.journalctl("-u", WORKERS, "JOB_ID=ok1", "-o", "json").stdout
    events = [json.loads(line)["EVENT"] for line in per_job.splitlines()]
    assert events == ["job_claimed", "job_succeeded"]
    started = host.events("worker_started")[0]
    assert started["PID"] == started["_PID"]  # sent natively by the worker itself


def test_worker_start_and_stop_scale_systemd_instances(host: Host) -> None:
    def run(*args: str) -> str:
        result = host.sd.run(QUEUECTL, *args, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def state() -> dict[int, tuple[str, str]]:
        return {n: (host.sd.systemctl("is-enabled", f"queuectl-worker@{n}.service").stdout
                    .strip(), host.prop(f"queuectl-worker@{n}.service", "ActiveState"))
                for n in range(1, 5)}

    out = run("worker", "start", "--count", "3")
    assert "queuectl-worker@3.service: enabled and started" in out
    assert state() == {1: ("enabled", "active"), 2: ("enabled", "active"),
                       3: ("enabled", "active"), 4: ("disabled", "inactive")}
    assert host.sd.systemctl("is-enabled", "queuectl-workers.target").stdout.strip() == "enabled"
    out = run("worker", "start", "--count", "1")
    assert "queuectl-worker@2.service: stopped and disabled" in out
    assert "queuectl-worker@1.service: already running" in out
    assert state() == {1: ("enabled", "active"), 2: ("disabled", "inactive"),
                       3: ("disabled", "inactive"), 4: ("disabled", "inactive")}
    out = run("worker", "stop")
    assert out.strip() == "queuectl-worker@1.service: stopped and disabled"
    assert all(v == ("disabled", "inactive") for v in state().values())
    wait_for(lambda: host.queue.status()["active_workers"] == 0, 10, "no active workers")


def test_worker_start_without_root_suggests_sudo(host: Host) -> None:
    result = host.sd.run("runuser", "-u", "nobody", "--", f"{APP_INSIDE}/bin/queuectl",
                         "worker", "start", "--count", "2")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "sudo" in result.stderr
    assert "--foreground" in result.stderr


def test_unwritable_database_fails_the_unit_with_one_clear_line(host: Host) -> None:
    dropin = host.sd.unit_dir.parent / "etc-systemd" / "queuectl-worker@9.service.d"
    dropin.mkdir()
    # /usr is read-only for the worker (ProtectSystem=strict)
    (dropin / "db.conf").write_text("[Service]\nEnvironment=QUEUECTL_DB=/usr/queue.db\n")
    host.systemctl("daemon-reload")
    unit = "queuectl-worker@9.service"
    assert host.systemctl("start", unit, check=False).returncode != 0
    lines = [e["MESSAGE"] for e in host.journal_json("-u", unit)
             if e.get("_COMM") in ("python3", "queuectl") or "queuectl:" in e.get("MESSAGE", "")]
    errors = [m for m in lines if m.startswith("queuectl: error:")]
    assert errors and "cannot create database /usr/queue.db" in errors[0]
    assert not any("Traceback" in m for m in lines)
    assert host.prop(unit, "Result") in ("exit-code", "start-limit-hit")
    host.systemctl("stop", unit, check=False)


def test_worker_start_and_stop_scale_one_lane_only(host: Host) -> None:
    def run(*args: str) -> str:
        result = host.sd.run(QUEUECTL, *args, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = run("worker", "start", "--count", "2", "--queue", "mail")
    assert "queuectl-worker@mail:2.service: enabled and started" in out
    lane = ("queuectl-worker@mail:1.service", "queuectl-worker@mail:2.service")
    assert all(host.active(u) for u in lane)
    q = host.queue
    q.enqueue({"id": "o", "command": "true", "queue": "other"})
    q.enqueue({"id": "m", "command": "true", "queue": "mail"})
    q.wait_state("m", "completed")
    assert q.job("m")["worker"].endswith(("@mail:1", "@mail:2"))
    assert q.job("o")["state"] == "pending"  # the lane serves mail only
    out = run("worker", "start", "--count", "1")  # every queue; the lane is left alone
    assert "queuectl-worker@1.service: enabled and started" in out and "mail" not in out
    q.wait_state("o", "completed")
    assert q.job("o")["worker"].endswith("@1") and all(host.active(u) for u in lane)
    [row] = [r for r in q.json("queue", "list") if r["queue"] == "mail"]
    assert row["workers"] == 3  # two of the lane plus the one that serves every queue
    claimed = host.sd.wait_for(lambda: host.events("job_claimed", JOB_ID="m"), 10,
                               "job_claimed in the journal")
    assert claimed[0]["QUEUE"] == "mail"
    started = [e for e in host.events("worker_started") if e["WORKER"].endswith("@mail:1")]
    assert started and started[0]["QUEUE"] == "mail" and started[0]["QUEUES"] == "mail"
    out = run("worker", "stop", "--queue", "mail")
    assert sorted(out.split("\n")[:2]) == [f"{u}: stopped and disabled" for u in lane]
    assert not any(host.active(u) for u in lane)
    assert host.active("queuectl-worker@1.service")
    run("worker", "stop")


def test_a_drop_in_gives_each_instance_job_slots_that_keep_the_watchdog_fed(
        host: Host) -> None:
    """QUEUECTL_SLOTS in a drop-in: one process, three jobs at once, READY=1 once every
    slot is registered, watchdog pings while all three run past its timeout (3 s), and a
    stop lets each job finish."""
    refused = host.sd.run(f"{APP_INSIDE}/bin/queuectl", "worker", "start", "--count", "1",
                          "--slots", "3")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "Environment=QUEUECTL_SLOTS=3" in refused.stderr
    assert not host.active("queuectl-worker@1.service")
    dropin = host.sd.unit_dir.parent / "etc-systemd" / "queuectl-worker@.service.d"
    (dropin / "slots.conf").write_text("[Service]\nEnvironment=QUEUECTL_SLOTS=3\n")
    host.systemctl("daemon-reload")
    unit = "queuectl-worker@1.service"
    _start(host, 1)
    host.sd.wait_for(lambda: host.prop(unit, "StatusText") == "0 of 3 job slots busy", 30,
                     "READY=1 and the slots' status")
    q = host.queue
    assert q.status()["active_workers"] == 3
    for i in range(3):
        q.enqueue({"id": f"s{i}", "command": "sleep 7"})
    host.sd.wait_for(lambda: host.prop(unit, "StatusText") == "3 of 3 job slots busy", 15,
                     "all three slots busy")
    for i in range(3):
        job = q.wait_state(f"s{i}", "completed", timeout=30)
        assert job["attempts"] == 1  # nobody restarted the worker meanwhile
    assert host.prop(unit, "NRestarts") == "0" and host.active(unit)
    for i in range(3):
        q.enqueue({"id": f"t{i}", "command": f"sleep 2; echo done > /var/lib/queuectl/t{i}"})
    q.wait_counts(processing=3, timeout=15)
    host.systemctl("stop", unit)
    assert host.prop(unit, "Result") == "success"  # one SIGTERM: a graceful stop
    for i in range(3):
        assert q.job(f"t{i}")["state"] == "completed"
        assert (host.state / f"t{i}").read_text() == "done\n"
    assert q.status()["active_workers"] == 0
