"""Key journal events carry a stable MESSAGE_ID that the shipped catalog explains.

The catalog is checked with the host's own journalctl (it must parse, and name every id the
code sends), then under the private systemd of test_systemd.py: a dead job's entry found by
`journalctl MESSAGE_ID=...` and explained by `journalctl -x`. The namespace shares the host's
/usr (whose catalog directory must stay untouched) but has a private /var/lib, where
journalctl reads its compiled catalog: the test compiles the project's catalog with
`journalctl --root=DIR --update-catalog` and puts the database where the namespace looks.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# the private systemd's fixtures, used by name (hence F811 on the tests that take `host`)
from test_systemd import APP_INSIDE, WORKERS, Host, _start, app, host  # noqa: F401

from queuectl.log import MESSAGE_IDS

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "systemd" / "queuectl.catalog"


def _sections() -> dict[str, str]:
    """id -> the text of its catalog section."""
    parts = re.split(r"^-- ([0-9a-f]{32})$", CATALOG.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _compile_catalog(root: Path) -> Path:
    """The project's catalog compiled by journalctl, as `--update-catalog` does on install."""
    catalog_dir = root / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(CATALOG, catalog_dir)
    subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], check=True,
                   capture_output=True, text=True, timeout=30)
    return root / "var/lib/systemd/catalog/database"


def test_every_message_id_is_explained_by_the_catalog(tmp_path: Path) -> None:
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is not installed")
    ids = list(MESSAGE_IDS.values())
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)
    sections = _sections()
    assert set(sections) == set(ids)
    for text in sections.values():
        for field in ("Subject: ", "Defined-By: queuectl", "Documentation: man:queuectl(1)"):
            assert field in text
        assert "What to do" in text
    _compile_catalog(tmp_path)
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                            check=True, capture_output=True, text=True).stdout
    assert sorted(line.split()[0] for line in listed.splitlines()) == sorted(ids)


def test_journalctl_x_explains_a_dead_job_and_message_id_finds_every_one(
        host: Host, tmp_path: Path) -> None:  # noqa: F811
    q = host.queue
    _start(host, 1)
    q.run("config", "set", "backoff-base", "1")
    q.enqueue({"id": "gone1", "command": "echo broken >&2; exit 7", "max_retries": 0})
    q.enqueue({"id": "gone2", "command": "exit 3", "max_retries": 1})
    q.enqueue({"id": "fine", "command": "true"})
    for job_id in ("gone1", "gone2"):
        q.wait_state(job_id, "dead", timeout=60)
    q.wait_state("fine", "completed")
    dead_id = MESSAGE_IDS["job_dead"]

    def dead_entries() -> list[dict]:
        out = host.sd.journalctl(f"MESSAGE_ID={dead_id}", "-o", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    entries = host.sd.wait_for(lambda: len(dead_entries()) == 2 and dead_entries(), 10,
                               "two job_dead entries with the MESSAGE_ID")
    assert sorted(e["JOB_ID"] for e in entries) == ["gone1", "gone2"]
    assert {e["EVENT"] for e in entries} == {"job_dead"}
    # nothing else carries it: not the failed first attempt of gone2, not the completed job
    failed = host.events("job_failed", JOB_ID="gone2")
    assert failed and "MESSAGE_ID" not in failed[0]

    database = _compile_catalog(tmp_path / "root")
    inside = host.state.parent / "systemd" / "catalog"  # the namespace's /var/lib/...
    inside.mkdir(parents=True)
    shutil.copy(database, inside / "database")
    shown = host.sd.journalctl("-x", "-u", WORKERS, f"MESSAGE_ID={dead_id}",
                               "JOB_ID=gone1").stdout
    assert "Subject: Job gone1 moved to the dead letter queue" in shown
    assert "Defined-By: queuectl" in shown
    assert "failed on attempt 1 of 1 (exit status 7)" in shown  # fields filled in
    assert "queuectl dlq retry gone1" in shown  # what to do


def test_a_worker_that_cannot_use_its_database_logs_the_catalogued_entry(
        host: Host) -> None:  # noqa: F811
    dropin = host.sd.unit_dir.parent / "etc-systemd" / "queuectl-worker@8.service.d"
    dropin.mkdir()
    # a directory that does not exist: the worker cannot open the database and exits
    (dropin / "db.conf").write_text("[Service]\nEnvironment=QUEUECTL_DB=/nonexistent/q.db\n")
    host.systemctl("daemon-reload")
    unit = "queuectl-worker@8.service"
    assert host.systemctl("start", unit, check=False).returncode != 0
    wanted = MESSAGE_IDS["database_unavailable"]

    def entries() -> list[dict]:
        return [e for e in host.journal_json("-u", unit) if e.get("MESSAGE_ID") == wanted]

    found = host.sd.wait_for(entries, 10, "the database_unavailable entry")
    assert found[0]["EVENT"] == "database_unavailable" and found[0]["PRIORITY"] == "3"
    assert "directory /nonexistent does not exist" in found[0]["ERROR"]
    assert found[0]["DB"] == "/nonexistent/q.db"
    host.systemctl("stop", unit, check=False)


def test_a_chain_s_cancellations_and_an_operator_s_retry_are_in_the_journal(
        host: Host) -> None:  # noqa: F811
    """The worker tells of each job a dead parent canceled; `retry`, typed by root inside
    the namespace, leaves `job_retried` with who did it."""
    q = host.queue
    _start(host, 1)
    q.run("pause")  # A must not end before B waits for it
    q.enqueue({"id": "A", "command": "exit 1", "max_retries": 0})
    q.run("enqueue", "--id", "B", "--after", "A", "--cmd", "true")
    q.run("resume")
    q.wait_state("B", "canceled", timeout=60)
    told = host.sd.wait_for(lambda: host.events("dependent_canceled", JOB_ID="B"), 10,
                            "the worker's dependent_canceled entry for B")
    assert (told[0]["PARENT"], told[0]["PARENT_STATE"]) == ("A", "dead")
    assert "Canceled B, which never ran: its parent A ended dead" == told[0]["MESSAGE"]
    typed = host.sd.run(f"{APP_INSIDE}/bin/queuectl", "--db", "/var/lib/queuectl/queue.db",
                        "retry", "A", check=True)
    assert typed.stdout == "A\n" and "stay canceled: B" in typed.stderr

    def retried() -> list[dict]:
        out = host.sd.journalctl("EVENT=job_retried", "-o", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    [entry] = host.sd.wait_for(retried, 10, "the job_retried entry")
    assert (entry["JOB_ID"], entry["PREVIOUS_STATE"], entry["NEXT_ATTEMPT"]) == ("A", "dead", "2")
    assert entry["BY"].startswith("root@")
    assert entry["SYSLOG_IDENTIFIER"] == "queuectl"
