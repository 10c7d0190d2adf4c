"""`queuectl top`: what a person sees, in a real terminal (tmux) and as `--once` text.

The live view runs under tmux in an 80x24 window on a private tmux server (`-L`, never the
user's); the test reads the screen with `capture-pane`, as a person would look at it.
"""

import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

HOST = os.uname().nodename


class Tmux:
    """One private tmux server with one 80x24 window running a command."""

    def __init__(self, command: str, env: dict[str, str], rc_file: Path) -> None:
        self.socket = f"queuectl-test-{uuid.uuid4().hex[:12]}"
        shell = f"{command}; echo $? > {rc_file}"
        self.tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24",
                  *(arg for k, v in env.items() for arg in ("-e", f"{k}={v}")), shell)

    def tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                                text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {result.stderr}")
        return result.stdout

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "top")

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def tmux() -> Iterator[list[Tmux]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    sessions: list[Tmux] = []
    yield sessions
    for session in sessions:
        session.kill()


def _env(q: Queue, **extra: str) -> dict[str, str]:
    return {"QUEUECTL_DB": str(q.db), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **extra}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
def test_live_top_shows_a_running_job_and_its_worker_within_2_s_and_q_quits(
        any_queue: Queue, tmux: list[Tmux], tmp_path: Path) -> None:
    q = any_queue
    q.enqueue({"id": "warmup", "command": "true"})  # the queue exists before top opens it
    q.worker("--grace", "1")  # its `sleep 30` must not hold up teardown
    q.wait_state("warmup", "completed")
    rc = tmp_path / "rc"
    term = Tmux(f"{QUEUECTL} top", _env(q), rc)
    tmux.append(term)
    wait_for(lambda: "WORKERS (1 active)" in term.screen(), 30, "top to show the worker")
    q.enqueue({"id": "report-42", "command": "sleep 30 # nightly report"})
    seen = wait_for(lambda: (s := term.screen()) and "report-42" in s and "sleep 30" in s and s,
                    30, "top to show the running job")
    seen_at = time.time()
    started = _epoch(q.job("report-42")["started_at"])
    assert seen_at - started <= 2.0, f"shown {seen_at - started:.2f} s after the job started"
    [row] = [line for line in seen.splitlines() if "report-42" in line]
    assert row.split()[0] == HOST[:12] and "sleep 30 # nightly report" in row
    lines = seen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert "default" in seen and "LATEST DEAD" in seen
    assert "\x1b[32m" in term.screen(escapes=True)  # tmux's TERM has colours: the job green
    term.tmux("send-keys", "-t", "top", "q")
    wait_for(lambda: rc.exists() and rc.read_text().strip(), 10, "top to quit on q")
    assert rc.read_text().strip() == "0"


def test_live_top_uses_no_colour_on_a_monochrome_terminal(queue: Queue, tmux: list[Tmux],
                                                         tmp_path: Path) -> None:
    queue.enqueue({"id": "x", "command": "true"})
    # in the command: tmux sets TERM for its panes itself
    term = Tmux(f"TERM=vt100 {QUEUECTL} top", _env(queue), tmp_path / "rc")
    tmux.append(term)
    wait_for(lambda: "QUEUES (1)" in term.screen(), 30, "top to draw")
    painted = term.screen(escapes=True)
    codes = {int(c) for params in re.findall(r"\x1b\[([0-9;]*)m", painted)
             for c in params.split(";") if c}
    assert not codes & {*range(30, 39), *range(40, 49), *range(90, 98)}  # 39/49: default
    assert "\x1b[7m" in painted  # the title in reverse video still sets it apart


@pytest.mark.slow
def test_top_once_prints_one_snapshot(any_queue: Queue) -> None:
    q = any_queue
    q.run("config", "set", "backoff-base", "1000")
    q.enqueue({"id": "broken", "command": "exit 3", "max_retries": 0})
    q.enqueue({"id": "flaky", "command": "exit 4", "max_retries": 2})
    q.enqueue({"id": "m1", "command": "true", "queue": "mail"})
    q.run("queue", "set", "mail", "--concurrency", "2")
    q.worker("--grace", "1")  # its `sleep 30` must not hold up teardown
    q.wait_state("broken", "dead")
    q.wait_state("flaky", "failed")
    q.wait_state("m1", "completed")
    q.enqueue({"id": "busy", "command": "sleep 30"})
    q.wait_state("busy", "processing")
    q.run("pause", "--queue", "mail")
    out = q.run("top", "--once").stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert not any("\x1b" in line for line in lines)
    [mail] = [line for line in lines if line.startswith("mail ")]
    assert mail.split()[1:8] == ["0", "0", "0", "0", "1", "1", "1"]  # done 1, 1 in the last min
    assert "paused" in mail and "max 2" in mail
    [busy] = [line for line in lines if " busy " in line]
    assert busy.split()[0] == HOST[:12] and busy.endswith("sleep 30")
    failed = lines[lines.index("LATEST FAILED (retrying)") + 1]
    assert failed.split()[:2] == ["flaky", "1/3"] and "exit status 4" in failed
    dead = lines[lines.index("LATEST DEAD") + 1]
    assert dead.split()[:2] == ["broken", "1/1"] and dead.endswith("exit 3")
    assert "PAUSED" not in out
    q.run("pause")
    assert "PAUSED by " in q.run("top", "--once").stdout


def test_top_reads_while_another_process_holds_the_write_lock(queue: Queue) -> None:
    queue.enqueue({"id": "j", "command": "true"})
    db = str(queue.db)
    with open(db + "-lock", "a+") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)  # queuectl's write gate
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # SQLite's write lock
        try:  # a command that wrote would fail after 2 s here
            result = subprocess.run([QUEUECTL, "top", "--once"], capture_output=True, text=True,
                                    env={**queue.env, "QUEUECTL_BUSY_TIMEOUT": "2"}, timeout=30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout


def test_top_without_a_terminal_says_to_use_once(queue: Queue) -> None:
    result = queue.run("top", check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--once" in result.stderr


def test_other_commands_never_load_top_or_curses(queue: Queue) -> None:
    code = ("import sys; from queuectl.main import main; import queuectl.cli; "
            "main(['enqueue', '--cmd', 'true']); main(['status']); "
            "print(sorted(m for m in sys.modules if 'curses' in m or 'topview' in m))")
    result = subprocess.run([sys.executable, "-c", code], env=queue.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
