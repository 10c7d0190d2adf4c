"""What a worker's start costs: the modules it loads, and the click-free reading of its options.

Start-up CPU itself is measured by `make bench` (bench/throughput.py startup_cpu_ms); here
only the import set is guarded, so a module that creeps back onto the worker's path (click
through the CLI, the PostgreSQL driver, asyncio) fails a test, not a figure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Loaded by none of the log formats of a SQLite worker from its start to its first claim.
KEPT_OUT = ("click", "queuectl.cli", "queuectl.submit", "psycopg2", "importlib.metadata",
            "pkg_resources", "structlog", "asyncio")

PROBE = ("import sys; from queuectl.main import main; rc = main(sys.argv[1:]); "
         f"print(sorted(m for m in {KEPT_OUT!r} if m in sys.modules)); sys.exit(rc)")


@pytest.mark.parametrize("fmt", ["json", "human", "journal", "auto"])
def test_a_draining_worker_loads_neither_click_nor_the_pg_driver(
        tmp_path: Path, fmt: str) -> None:
    db = tmp_path / "q.db"
    result = subprocess.run([sys.executable, "-c", PROBE, "--db", str(db), "--log-format", fmt,
                             "worker", "run", "--drain"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_a_worker_with_a_job_still_runs_it_without_click(tmp_path: Path) -> None:
    db = str(tmp_path / "q.db")
    enqueue = subprocess.run([sys.executable, "-m", "queuectl", "--db", db, "enqueue", "--cmd",
                              "echo hi"], capture_output=True, text=True, timeout=60)
    assert enqueue.returncode == 0, enqueue.stderr
    result = subprocess.run([sys.executable, "-c", PROBE, "--db", db, "--log-format", "json",
                             "worker", "run", "--drain"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"event": "job_succeeded"' in result.stderr, result.stderr
    assert "click" not in result.stdout, result.stdout


# -- the options, read by main without click, as click reads them --------------------------
FORMS = [
    ["worker", "run"],
    ["worker", "run", "--drain"],
    ["--db", "/x/q.db", "--log-format", "human", "worker", "run", "--drain"],
    ["--db=/x/q.db", "--log-format=journal", "worker", "run"],
    ["worker", "run", "--name", "h@1", "--instance", "1", "--grace", "30"],
    ["worker", "run", "--name=a", "--label", "Worker-0", "--grace=2.5", "--poll-interval",
     "0.5", "--queue", "mail, default,mail", "--supervised-by", "123", "--db", "/y.db"],
    ["--db", "/x.db", "worker", "run", "--db", "/y.db", "--name", "--drain"],
    ["worker", "run", "--grace", "0", "--poll-interval", "0.01", "--name", ""],
    ["worker", "run", "--slots", "8", "--name", "w"],
    ["worker", "run", "--slots=1"],
    ["worker", "run", "--slots", "64", "--drain"],
]
# Help, unknown, malformed or out-of-range: click's command runs and explains.
TO_CLICK = [
    ["worker", "run", "--help"],
    ["worker", "run", "-h"],
    ["--help", "worker", "run"],
    ["--version", "worker", "run"],
    ["worker", "start"],
    ["worker", "stop"],
    ["worker"],
    ["worker", "run", "--nme", "x"],
    ["worker", "run", "--grace"],
    ["worker", "run", "--grace", "-1"],
    ["worker", "run", "--grace", "soon"],
    ["worker", "run", "--poll-interval", "0"],
    ["worker", "run", "--supervised-by", "1.5"],
    ["worker", "run", "--drain=yes"],
    ["worker", "run", "extra"],
    ["--log-format", "xml", "worker", "run"],
    ["--log-format", "worker", "run"],
    ["worker", "run", "--"],
    ["worker", "run", "--slots", "0"],
    ["worker", "run", "--slots", "65"],
    ["worker", "run", "--slots", "2.5"],
    ["worker", "run", "--slots"],
]


def _captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import queuectl.workerrun

    calls: list[dict[str, Any]] = []

    def record(db: str | None, log_format: str, drain: bool, **kw: Any) -> int:
        calls.append({"db": db or None, "log_format": log_format, "drain": drain, **kw})
        return 0

    monkeypatch.setattr(queuectl.workerrun, "run_command", record)
    return calls


@pytest.mark.parametrize("args", FORMS, ids=" ".join)
def test_main_reads_worker_run_options_as_click_does(monkeypatch: pytest.MonkeyPatch,
                                                     args: list[str]) -> None:
    from queuectl.cli import cli
    from queuectl.workerrun import fast_worker_run

    calls = _captured(monkeypatch)
    assert fast_worker_run(list(args)) == 0
    assert cli.main(args=list(args), prog_name="queuectl", standalone_mode=False) == 0
    fast, slow = calls
    defaults = {"name": None, "label": None, "grace": 30.0, "poll_interval": None,
                "queues": None, "instance": None, "supervised_by": None, "slots": None}
    assert {**defaults, **fast} == {**defaults, **slow}


@pytest.mark.parametrize("args", TO_CLICK, ids=" ".join)
def test_main_leaves_other_forms_to_click(monkeypatch: pytest.MonkeyPatch,
                                          args: list[str]) -> None:
    from queuectl.workerrun import fast_worker_run

    calls = _captured(monkeypatch)
    assert fast_worker_run(list(args)) is None
    assert calls == []


def test_a_bad_queue_name_is_the_same_error_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from queuectl.cli import cli
    from queuectl.errors import ValidationError
    from queuectl.workerrun import fast_worker_run

    _captured(monkeypatch)
    args = ["worker", "run", "--queue", "mail,no such queue"]
    with pytest.raises(ValidationError) as fast:
        fast_worker_run(list(args))
    with pytest.raises(ValidationError) as slow:
        cli.main(args=list(args), prog_name="queuectl", standalone_mode=False)
    assert str(fast.value) == str(slow.value) and "--queue" in str(fast.value)
