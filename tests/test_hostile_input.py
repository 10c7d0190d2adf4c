"""Hostile and odd input: arbitrary JSON, huge and broken strings, exact round trips."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuectl.main import main

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["command", "id", "max_retries", "timeout", "priority", "run_at",
                        "delay", "state", "attempts", "max_retry", "max-retries", ""])
JOB_LIKE = st.dictionaries(KEYS, JSON_VALUES | st.text(min_size=1), max_size=5)


def _snapshot(db: Path) -> bytes:
    import sqlite3

    if not db.exists():
        return b""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        return repr(rows).encode()
    finally:
        conn.close()


@pytest.mark.slow
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON_VALUES | JOB_LIKE, ascii_only=st.booleans())
def test_any_json_either_stores_a_valid_job_or_exits_2_with_one_line(
    value: object, ascii_only: bool, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "hyp.db"
    monkeypatch.setenv("QUEUECTL_DB", str(db))
    monkeypatch.setenv("QUEUECTL_CALLER_UMASK", "0022")
    umask = os.umask(0o022)  # main() sets the process umask: restore it afterwards
    try:
        _enqueue_any(value, ascii_only, db, capsys)
    finally:
        os.umask(umask)


def _enqueue_any(value: object, ascii_only: bool, db: Path, capsys: pytest.CaptureFixture) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    before = _snapshot(db)
    capsys.readouterr()
    code = main(["enqueue", text])
    out, err = capsys.readouterr()
    if code == 0:
        job_id = out.removesuffix("\n")  # an id may start or end with a space
        assert main(["show", job_id]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert isinstance(value, dict) and shown["command"] == value["command"]
        assert shown["state"] == "pending"
    else:
        assert code in (1, 2), (code, err)  # 1 only for an id that already exists
        assert err.count("\n") == 1 and err.startswith("queuectl: error: "), err
        assert "Traceback" not in err and "internal error" not in err, err
        assert _snapshot(db) == before


def _cli(q: Queue, *args: str | bytes, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([QUEUECTL, *args], env=q.env, input=stdin, capture_output=True,
                          timeout=30)


def _refused(result: subprocess.CompletedProcess, needle: str) -> None:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err


def test_invalid_utf8_on_the_command_line_is_refused(queue: Queue) -> None:
    _refused(_cli(queue, "enqueue", b'{"command": "echo \xff\xfe"}'), "not valid UTF-8")
    _refused(_cli(queue, "enqueue", "--cmd", b"echo \xc3\x28"), "not valid UTF-8")
    _refused(_cli(queue, "enqueue", "--file", "-", stdin=b'{"command": "echo \xff"}\n'),
             "not valid UTF-8")
    assert queue.json("list") == []


def test_nul_bytes_deep_nesting_and_huge_input_are_refused(queue: Queue) -> None:
    _refused(_cli(queue, "enqueue", '{"command": "echo a\\u0000b"}'), "NUL")
    deep = "[" * 100_000 + "]" * 100_000
    _refused(_cli(queue, "enqueue", "--file", "-", stdin=deep.encode()), "")
    nested = '{"command": ' + "[" * 50_000 + "]" * 50_000 + "}"
    _refused(_cli(queue, "enqueue", "--file", "-", stdin=nested.encode()), "")
    huge = json.dumps({"command": "echo " + "x" * 5_000_000}).encode()
    _refused(_cli(queue, "enqueue", "--file", "-", stdin=huge), "limit is 131071")
    assert queue.json("list") == []


PAYLOADS = {
    "quotes": "echo \"double\" 'single' `back` \\'escaped\\'",
    "newlines": "echo one\necho two\n\n\techo three\r\n",
    "unicode": "echo 作业 ✓ emoji 🎉 zero-width\u200b RTL \u202e",
    "substitution": "echo $(id -u) $HOME ${PATH%%:*} $((1+2)) && false || true; # $(rm -rf /)",
    "unbalanced": "echo \"unbalanced ' $( ` }}}} fi done esac",
    "100k": "echo start\n" + "".join(f"# line {i} {'y' * 90}\n" for i in range(1000)),
}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_commands_round_trip_byte_for_byte(queue: Queue, tmp_path: Path, name: str) -> None:
    out = tmp_path / "cmdline"
    # The shell writes the command line it received, then stops before the payload, which
    # it therefore never parses or runs.
    command = f"cat /proc/$$/cmdline > {out}; exit 0\n{PAYLOADS[name]}"
    assert len(command.encode()) > 100_000 or name != "100k"
    queue.run("enqueue", "--file", "-", input=json.dumps({"id": name, "command": command}))
    assert queue.job(name)["command"] == command  # show prints exactly what was enqueued
    queue.worker()
    queue.wait_state(name, "completed")
    assert out.read_bytes() == b"/bin/sh\0-c\0" + command.encode() + b"\0"


IDS = ["'; DROP TABLE jobs; --", "a/b/../c", "with space", "  padded  ", "作业-✓", "🎉",
       "%_*?[]", '"quoted"', "\\back\\slash", "-dash-first", "x" * 200]


@pytest.mark.slow
def test_odd_ids_are_stored_and_found_exactly(queue: Queue) -> None:
    for job_id in IDS:
        assert queue.run("enqueue", json.dumps({"id": job_id, "command": "true"})).stdout \
            == job_id + "\n"
    assert sorted(j["id"] for j in queue.json("list")) == sorted(IDS)
    for job_id in IDS:
        assert queue.json("show", "--", job_id)["id"] == job_id
    too_long = queue.run("enqueue", json.dumps({"id": "y" * 201, "command": "true"}),
                         check=False)
    assert too_long.returncode == 2 and "longer than 200" in too_long.stderr
    with_tab = queue.run("enqueue", json.dumps({"id": "a\tb", "command": "true"}), check=False)
    assert with_tab.returncode == 2 and "control characters" in with_tab.stderr


@pytest.mark.slow
def test_a_job_printing_a_gigabyte_stays_bounded(queue: Queue) -> None:
    queue.enqueue({"id": "flood", "command": "dd if=/dev/zero bs=1M count=1024 status=none; "
                                             "echo THE-END"})
    w = queue.worker()
    job = queue.wait_state("flood", "completed", timeout=120)
    output = job["history"][0]["output"]
    assert len(output.encode()) <= 65_536 and output.endswith("THE-END\n")
    with open(f"/proc/{w.pid}/status") as fh:
        peak_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    assert peak_kb < 100_000  # the worker never held the output in memory
    size = sum(p.stat().st_size for p in queue.db.parent.glob("queue.db*"))
    assert size < 2_000_000
    assert os.path.exists(queue.db)
