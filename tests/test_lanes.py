"""Lane files and their generator, in-process and fast: the generator is run as systemd runs
it (the script itself, argv = three output directories) on a temporary lanes directory
(QUEUECTL_LANES_DIR), logging to stderr (SYSTEMD_LOG_TARGET=console, as systemd's own
generators do) instead of the host's kernel log. test_systemd_lanes.py boots a real systemd."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Queue
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "queuectl" / "lanes.py"  # installed as .../system-generators/queuectl-lane-generator

BACKUPS = """# nightly backups, as user backup
[Lane]
Queues=backups
Workers=2

[Service]
User=backup
ReadWritePaths=/srv/backups
MemoryMax=4G
"""
MAIL = "[Lane]\nQueues=mail, default\n[Service]\nMemoryMax=1G\n"


def _generate(lanes: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "QUEUECTL_LANES_DIR": str(lanes),
           "SYSTEMD_LOG_TARGET": "console"}
    out.mkdir(exist_ok=True)
    return subprocess.run([str(GENERATOR), str(out), str(out) + ".early", str(out) + ".late"],
                          env=env, capture_output=True, text=True, timeout=30)


def _tree(out: Path) -> dict[str, str]:
    """Relative path -> symlink target or file text, of everything the generator wrote."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = path.read_text()
    return found


@pytest.fixture
def lanes(tmp_path: Path) -> Path:
    d = tmp_path / "lanes"
    d.mkdir()
    return d


def _write(lanes: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = lanes / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_lane_gets_a_dropin_and_a_wants_link_per_worker(lanes: Path, tmp_path: Path) -> None:
    _write(lanes, "backups.conf", BACKUPS)
    _write(lanes, "mail.conf", MAIL)
    _write(lanes, "example.conf.sample", "[Lane]\nQueues=never\n")  # not active
    result = _generate(lanes, tmp_path / "out")
    assert (result.returncode, result.stderr) == (0, "")
    tree = _tree(tmp_path / "out")
    wants = "queuectl-workers.target.wants/"
    units = ["queuectl-worker@backups:1.service", "queuectl-worker@backups:2.service",
             "queuectl-worker@mail:default:1.service"]
    assert sorted(k for k in tree if k.startswith(wants)) == [wants + u for u in units]
    assert all(tree[wants + u].endswith("/queuectl-worker@.service") for u in units)
    assert sorted(k for k in tree if k.endswith(".conf")) == [f"{u}.d/lane.conf" for u in units]
    backups = tree["queuectl-worker@backups:2.service.d/lane.conf"]
    settings = [line for line in backups.splitlines() if line and not line.startswith("#")]
    assert settings == ["[Service]", "Group=", "User=backup", "ReadWritePaths=/srv/backups",
                        "MemoryMax=4G", "SupplementaryGroups=queuectl", "StateDirectory=",
                        "ReadWritePaths=-/var/lib/queuectl"]
    assert str(lanes / "backups.conf") in backups  # says where to edit
    mail = tree["queuectl-worker@mail:default:1.service.d/lane.conf"]
    assert [line for line in mail.splitlines() if line and not line.startswith("#")] == [
        "[Service]", "MemoryMax=1G"]  # user queuectl already reaches the queue
    assert not any(".early" in p or ".late" in p for p in map(str, tmp_path.iterdir()))


def test_no_lanes_directory_writes_nothing(tmp_path: Path) -> None:
    result = _generate(tmp_path / "absent", tmp_path / "out")
    assert (result.returncode, result.stderr) == (0, "")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("text, line, says", [
    ("[Lane]\nQueues=a\nWorkrs=2\n", 3, "unknown key Workrs= in [Lane]"),
    ("[Lane]\nQueues=a b\n", 2, "'a b' is not a queue name"),
    ("[Lane]\nQueues=a,a\n", 2, "a queue is named twice"),
    ("[Lane]\nQueues=a\nWorkers=0\n", 3, "Workers= must be a number from 1 to 256"),
    ("[Lane]\nQueues=a\nWorkers=two\n", 3, "Workers= must be a number"),
    ("Queues=a\n[Lane]\n", 1, "before any section"),
    ("[Lane]\nQueues=a\n[Unit]\nDescription=x\n", 3, "unknown section [Unit]"),
    ("[Lane]\nQueues=a\n[Service]\nthis is not a setting\n", 4, "expected Key=Value"),
    ("[Lane]\nQueues=a\n[Service]\nEnvironment=A=1 \\\n", 4, "line continuation"),
    ("[Service]\nUser=x\n", None, "no [Lane] section with Queues="),
], ids=["typo", "bad-queue", "twice", "zero-workers", "workers-word", "no-section",
        "other-section", "not-a-setting", "continuation", "no-lane"])
def test_a_malformed_lane_is_skipped_with_one_line_naming_file_and_line(
        lanes: Path, tmp_path: Path, text: str, line: int | None, says: str) -> None:
    bad = _write(lanes, "bad.conf", text)
    _write(lanes, "mail.conf", MAIL)
    result = _generate(lanes, tmp_path / "out")
    assert result.returncode == 0
    [message] = result.stderr.splitlines()
    where = f"{bad}:{line}:" if line else f"{bad}:"
    assert message.startswith(f"queuectl-lane-generator: {where}"), message
    assert says in message and message.endswith("lane skipped")
    assert list(_tree(tmp_path / "out")) == [  # the other lane still comes up
        "queuectl-worker@mail:default:1.service.d/lane.conf",
        "queuectl-workers.target.wants/queuectl-worker@mail:default:1.service"]


@pytest.mark.parametrize("mode", [0o664, 0o646], ids=["group-writable", "world-writable"])
def test_a_lane_file_others_may_write_is_refused(lanes: Path, tmp_path: Path,
                                                 mode: int) -> None:
    bad = _write(lanes, "backups.conf", BACKUPS, mode)
    result = _generate(lanes, tmp_path / "out")
    assert result.returncode == 0
    assert result.stderr == (f"queuectl-lane-generator: {bad}: writable by group or others "
                             f"(mode {mode:04o}): refused; lane skipped\n")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.root
def test_a_lane_file_not_owned_by_root_is_refused(lanes: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    bad = _write(lanes, "backups.conf", BACKUPS)
    os.chown(bad, 65534, 65534)
    result = _generate(lanes, tmp_path / "out")
    assert result.returncode == 0
    assert result.stderr == (f"queuectl-lane-generator: {bad}: owned by uid 65534, not root: "
                             "refused; lane skipped\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_second_file_declaring_a_lane_is_skipped(lanes: Path, tmp_path: Path) -> None:
    _write(lanes, "a.conf", BACKUPS)
    second = _write(lanes, "b.conf", "[Lane]\nQueues=backups\nWorkers=5\n")
    result = _generate(lanes, tmp_path / "out")
    assert result.returncode == 0
    assert result.stderr == (f"queuectl-lane-generator: {second}: lane backups is already "
                             f"declared by {lanes / 'a.conf'}; lane skipped\n")
    assert len(list((tmp_path / "out" / "queuectl-workers.target.wants").iterdir())) == 2


def test_an_unwritable_output_directory_still_exits_0(lanes: Path, tmp_path: Path) -> None:
    _write(lanes, "backups.conf", BACKUPS)
    out = tmp_path / "out"
    out.write_text("a file, not a directory")
    result = subprocess.run([str(GENERATOR), str(out)], capture_output=True, text=True,
                            env={"QUEUECTL_LANES_DIR": str(lanes),
                                 "SYSTEMD_LOG_TARGET": "console"}, timeout=30)
    assert result.returncode == 0
    assert result.stderr.startswith(f"queuectl-lane-generator: {lanes / 'backups.conf'}: "
                                    f"cannot write its units into {out}")


def test_the_generator_imports_nothing_beyond_what_python_loads_anyway(lanes: Path,
                                                                       tmp_path: Path) -> None:
    """Generators run at every boot and daemon-reload: -IS, and only os, sys and stat (frozen
    into the interpreter since 3.11: no file is even looked up)."""
    _write(lanes, "backups.conf", BACKUPS)
    out = tmp_path / "out"
    out.mkdir()
    assert GENERATOR.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"
    baseline = subprocess.run([sys.executable, "-IS", "-X", "importtime", "-c",
                               "import os, stat, sys"],
                              capture_output=True, text=True, check=True).stderr
    ran = subprocess.run([sys.executable, "-IS", "-X", "importtime", str(GENERATOR), str(out)],
                         capture_output=True, text=True, timeout=30,
                         env={"QUEUECTL_LANES_DIR": str(lanes), "SYSTEMD_LOG_TARGET": "console"})

    def modules(log: str) -> set[str]:
        return {line.rsplit("|", 1)[1].strip() for line in log.splitlines()
                if line.startswith("import time:") and "imported package" not in line}

    assert ran.returncode == 0
    assert modules(ran.stderr) == modules(baseline)


# -- the CLI reads the same files ---------------------------------------------------------------
@pytest.fixture
def laned(queue: Queue, lanes: Path) -> Queue:
    _write(lanes, "backups.conf", BACKUPS)
    _write(lanes, "mail.conf", MAIL)
    queue.env["QUEUECTL_LANES_DIR"] = str(lanes)
    return queue


def test_worker_start_refuses_a_lane_a_file_declares(laned: Queue, lanes: Path) -> None:
    result = laned.run("worker", "start", "--count", "2", "--queue", "backups", check=False)
    assert result.returncode == 2
    assert result.stderr == (f"queuectl: error: lane backups is declared by {lanes / 'backups.conf'}: "
                             "change Workers= there, then systemctl daemon-reload && "
                             "systemctl restart queuectl-workers.target\n")
    assert result.stdout == ""


def test_queue_list_and_top_show_the_lane_and_its_user(laned: Queue, lanes: Path) -> None:
    for queue in ("backups", "default", "other"):
        laned.run("enqueue", "--queue", queue, "--cmd", "true")
    _write(lanes, "broken.conf", "[Lane]\nQueues=x\nWorkers=-1\n")
    result = laned.run("queue", "list")
    rows = {row["queue"]: row for row in json.loads(result.stdout)}
    assert rows["backups"]["lanes"] == [{"lane": "backups", "user": "backup", "workers": 2,
                                         "file": str(lanes / "backups.conf")}]
    assert rows["default"]["lanes"] == [{"lane": "mail:default", "user": "queuectl",
                                         "workers": 1, "file": str(lanes / "mail.conf")}]
    assert rows["other"]["lanes"] == []  # served by numbered workers only, if any
    assert result.stderr == (f"queuectl: {lanes / 'broken.conf'}:3: Workers= must be a number"
                             " from 1 to 256, got '-1'; lane skipped\n")
    top = laned.run("top", "--once").stdout.splitlines()
    backups = top.index(next(line for line in top if line.startswith("backups ")))
    assert top[backups + 1].startswith("  lane backups: 2 workers as backup (/")
    assert len(top[backups + 1]) <= 80
    default = top.index(next(line for line in top if line.startswith("default ")))
    assert top[default + 1].startswith("  lane mail:default: 1 worker as queuectl (")
    other = top.index(next(line for line in top if line.startswith("other ")))
    assert not top[other + 1].startswith("  lane")


def test_an_instance_beyond_its_lane_files_workers_declines_to_run(laned: Queue,
                                                                   lanes: Path) -> None:
    result = laned.run("worker", "run", "--instance", "backups:3", check=False, timeout=10)
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (f"queuectl: instance backups:3 is beyond Workers=2 of "
                             f"{lanes / 'backups.conf'}: not starting\n")
    assert laned.status()["active_workers"] == 0


def test_the_shipped_example_and_the_readmes_are_valid_lanes(lanes: Path, tmp_path: Path) -> None:
    """Copied to NAME.conf as their comments say, both work as documented."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("# /etc/queuectl/lanes/backups.conf")
    _write(lanes, "from-readme.conf", readme[start:readme.index("```", start)])
    example = (REPO / "systemd/lanes/example.conf.sample").read_text()
    _write(lanes, "example.conf", example.replace("Queues=backups", "Queues=backups2"))
    result = _generate(lanes, tmp_path / "out")
    assert (result.returncode, result.stderr) == (0, "")
    dropins = sorted(p.parent.name for p in (tmp_path / "out").rglob("lane.conf"))
    assert dropins == sorted(f"queuectl-worker@{lane}:{n}.service.d"
                             for lane in ("backups", "backups2") for n in (1, 2))
    for path in (tmp_path / "out").rglob("lane.conf"):
        assert "\nUser=backup\nReadWritePaths=/srv/backups\nMemoryMax=4G\n" in path.read_text()


# -- a lane file reserves its queues from this host's workers of every queue -----------------
def test_a_worker_of_every_queue_leaves_a_lane_files_queues_to_its_lane(queue: Queue,
                                                                       lanes: Path,
                                                                       tmp_path: Path) -> None:
    """Real workers and /bin/sh: `worker run` without --queue drains the default queue's jobs
    (a drain ends: remaining ignores the lane's job too) and leaves the lane's job pending,
    however urgent; `worker run --queue backups` then runs it."""
    _write(lanes, "backups.conf", BACKUPS)
    _write(lanes, "broken.conf", "[Lane]\nQueues=never\nWorkers=-1\n")  # reserves nothing
    queue.env["QUEUECTL_LANES_DIR"] = str(lanes)
    jobs = [{"id": "lane", "command": "echo lane", "queue": "backups", "priority": 100},
            {"id": "d1", "command": "echo 1"}, {"id": "d2", "command": "echo 2"},
            {"id": "n", "command": "echo n", "queue": "never"}]
    queue.run("enqueue", "--file", "-", input="".join(json.dumps(j) + "\n" for j in jobs))
    log = tmp_path / "all.log"
    everything = queue.worker("--drain", log=log)
    assert everything.wait(timeout=20) == 0
    states = {j["id"]: j["state"] for j in queue.json("list")}
    assert states == {"lane": "pending", "d1": "completed", "d2": "completed", "n": "completed"}
    events = [json.loads(line) for line in log.read_text().splitlines()]
    [started] = [e for e in events if e["event"] == "worker_started"]
    assert (started["queues"], started["excluded"]) == ("all", "backups")
    [skipped] = [e for e in events if e["event"] == "lane_file_skipped"]
    assert "broken.conf:3: Workers=" in skipped["error"]
    lane = queue.worker("--drain", "--queue", "backups", log=tmp_path / "lane.log")
    assert lane.wait(timeout=20) == 0
    assert queue.job("lane")["state"] == "completed"
    started = next(json.loads(line) for line in (tmp_path / "lane.log").read_text().splitlines()
                   if '"worker_started"' in line)
    assert started["queues"] == "backups" and "excluded" not in started


def test_a_worker_of_every_queue_is_not_counted_for_a_reserved_queue(queue: Queue,
                                                                     lanes: Path) -> None:
    """Real workers: `queue list` and `status --queue` count, for the lane's queue, its
    lane's worker and not this host's worker of every queue, which serves every other."""
    _write(lanes, "backups.conf", BACKUPS)
    queue.env["QUEUECTL_LANES_DIR"] = str(lanes)
    queue.run("enqueue", "--queue", "backups", "--cmd", "echo lane")
    queue.run("enqueue", "--cmd", "echo default")

    def workers() -> dict[str, int]:
        return {row["queue"]: row["workers"]
                for row in map(json.loads, queue.run("queue", "list", "--jsonl").stdout.splitlines())}

    everything = queue.worker()
    wait_for(lambda: workers().get("default") == 1, 20, "the worker of every queue to register")
    assert workers()["backups"] == 0
    assert queue.json("status", "--queue", "backups")["active_workers"] == 0
    lane = queue.worker("--queue", "backups")
    wait_for(lambda: workers()["backups"] == 1, 20, "the lane's worker to register")
    assert workers()["default"] == 1
    assert queue.json("status", "--queue", "default")["active_workers"] == 1
    for proc in (everything, lane):
        proc.terminate()
        assert proc.wait(timeout=20) == 0
