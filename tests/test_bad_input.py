"""Every bad input is refused the same way: the documented exit code, exactly one stderr line
`queuectl: error: ...` naming what was wrong, nothing on stdout, and the database untouched.

Everything runs through the real console script against a real SQLite file. Each case starts
from a copy of one seeded database (a known job, a non-default config value) and, after the
case, compares `queuectl list` + `queuectl config list` and the file's bytes with the seed.

The main table runs on PostgreSQL too (the suite's throwaway server), seeded the same way
through the CLI. There is no file to copy, so its cases share one seeded queue schema: each
case proves it changed nothing (`list` + `config list`), which is exactly the next case's
precondition; a case that did change it gets the seed rebuilt in a fresh schema, so one
failure never cascades. Bytes on disk are a SQLite-only check.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

QUEUECTL = str(Path(sys.executable).with_name("queuectl"))
STATES = ("pending", "processing", "completed", "failed", "dead")
MAX_COMMAND_BYTES = 131_071
KNOWN = {"id": "known", "command": "echo known", "max_retries": 4, "priority": 7, "timeout": 30}
IS_ROOT = os.geteuid() == 0


def j(obj: Any) -> str:
    return json.dumps(obj)


def cmd(**extra: Any) -> str:
    """A valid job plus `extra` keys, as the JSON argument."""
    return j({"command": "echo new", **extra})


def assert_one_error(result: subprocess.CompletedProcess, code: int, *says: str) -> None:
    err = result.stderr
    shown = f"exit {result.returncode}, stdout {result.stdout!r}, stderr {err!r}"
    assert result.returncode == code, shown
    assert "Traceback" not in err, shown
    assert err.count("\n") == 1 and err.endswith("\n"), shown
    assert err.startswith("queuectl: error: "), shown
    assert "internal error" not in err, shown
    assert result.stdout == "", shown
    for text in says:
        assert text in err, f"{text!r} not in {err!r}"


def cli_snapshot(db: Path, env: dict[str, str]) -> tuple[str, ...]:
    """`queuectl list` and `queuectl config list`, run side by side (both only read).

    A connection of ours stays open meanwhile, so the two never race each other to set up
    a fresh -shm (queuectl once lost that race about 1 time in 100 with "locked", when its
    first PRAGMA ran outside the busy retry). That is not what this file tests.
    """
    keeper = sqlite3.connect(db, timeout=5)
    try:
        keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()
        procs = [
            subprocess.Popen([QUEUECTL, *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for args in (("list",), ("config", "list"))
        ]
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0 and err == "", f"snapshot failed: {err!r}"
            outputs.append(out)
    finally:
        keeper.close()
    return tuple(outputs)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_files(db: Path) -> list[str]:
    """The database and any -wal / -shm / -journal next to it (not the `-lock` file of the
    write gate, sqlite_gate.py: it holds no data and is meant to stay)."""
    return sorted(p.name for p in db.parent.iterdir()
                  if p.name.startswith(db.name) and p.name != f"{db.name}-lock")


@dataclass(frozen=True)
class Seed:
    db: Path
    digest: str
    snapshot: tuple[str, ...]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """Built once through the CLI; every case gets a byte-identical copy (fast)."""
    db = tmp_path_factory.mktemp("seed") / "queue.db"
    env = {**os.environ, "QUEUECTL_DB": str(db)}
    for args in (("enqueue", j(KNOWN)), ("config", "set", "backoff-base", "3")):
        subprocess.run([QUEUECTL, *args], env=env, check=True, capture_output=True)
    assert db_files(db) == ["queue.db"], "the seed left a -wal/-shm behind; copies would differ"
    digest = sha256(db)
    snapshot = cli_snapshot(db, env)
    assert json.loads(snapshot[0])[0]["command"] == KNOWN["command"]
    assert json.loads(snapshot[1])["backoff-base"] == 3.0
    assert db_files(db) == ["queue.db"] and sha256(db) == digest, "reading changed the seed"
    return Seed(db, digest, snapshot)


@pytest.fixture
def seeded(queue: Any, seed: Seed) -> Any:
    """The conftest `queue`, its database a fresh copy of the seed."""
    shutil.copyfile(seed.db, queue.db)
    return queue


def assert_unchanged(queue: Any, seed: Seed) -> None:
    assert db_files(queue.db) == ["queue.db"], "a -wal/-shm/-journal was left behind"
    assert sha256(queue.db) == seed.digest, "the database file's bytes changed"
    assert cli_snapshot(queue.db, queue.env) == seed.snapshot


# -- the same seed on PostgreSQL ----------------------------------------------------------------
def pg_snapshot(env: dict[str, str]) -> tuple[str, ...]:
    """`queuectl list` and `queuectl config list` of a PostgreSQL queue, side by side."""
    procs = [subprocess.Popen([QUEUECTL, *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for args in (("list",), ("config", "list"))]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and err == "", f"snapshot failed: {err!r}"
        outputs.append(out)
    return tuple(outputs)


class PgSeed:
    """One seeded PostgreSQL queue shared by the table's cases; rebuilt if a case changed it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.env: dict[str, str] = {}
        self.snapshot: tuple[str, ...] = ()
        self.renew()

    def renew(self) -> None:
        self.env = {**os.environ, "QUEUECTL_DB": self.server.fresh_locator()}
        self.env.pop("JOURNAL_STREAM", None)
        for args in (("enqueue", j(KNOWN)), ("config", "set", "backoff-base", "3")):
            subprocess.run([QUEUECTL, *args], env=self.env, check=True, capture_output=True,
                           timeout=60)
        self.snapshot = pg_snapshot(self.env)
        assert json.loads(self.snapshot[0])[0]["command"] == KNOWN["command"]
        assert json.loads(self.snapshot[1])["backoff-base"] == 3.0

    def assert_unchanged(self) -> None:
        now = pg_snapshot(self.env)
        if now != self.snapshot:
            self.renew()  # the next case starts from the seed again
        assert now == self.snapshot, "the queue changed"


@pytest.fixture(scope="module")
def pg_seed(pg_server: Any) -> PgSeed:
    return PgSeed(pg_server)


# -- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    stdin: str | None = None
    files: tuple[tuple[str, bytes], ...] = ()  # written to tmp_path; `{tmp}` in args is replaced
    env: tuple[tuple[str, str], ...] = ()  # on top of the seeded database's environment


def bad(case_id: str, *args: str, code: int = 2, says: tuple[str, ...] | str = (),
        stdin: str | None = None, files: dict[str, bytes] | None = None,
        env: dict[str, str] | None = None) -> Any:
    says = (says,) if isinstance(says, str) else says
    case = Bad(args, code, says, stdin, tuple((files or {}).items()), tuple((env or {}).items()))
    return pytest.param(case, id=case_id)


def lines(*objs: Any) -> bytes:
    return "".join((o if isinstance(o, str) else j(o)) + "\n" for o in objs).encode()


GOOD_1 = {"id": "good-1", "command": "echo one"}
GOOD_2 = {"id": "good-2", "command": "echo two"}
TOO_LONG = "x" * (MAX_COMMAND_BYTES + 1)
TOO_LONG_UTF8 = "é" * ((MAX_COMMAND_BYTES + 1) // 2)  # 65,536 characters, 131,072 bytes


ENQUEUE_JSON = [
    bad("json-malformed", "enqueue", '{"command": "echo hi"', says="invalid JSON"),
    bad("json-empty-argument", "enqueue", "", says="invalid JSON"),
    bad("json-array", "enqueue", '["echo hi"]', says="got an array"),
    bad("json-string", "enqueue", '"echo hi"', says="got a string"),
    bad("json-number", "enqueue", "42", says="JSON object"),
    bad("json-null", "enqueue", "null", says="JSON object"),
    bad("json-nan-constant", "enqueue", '{"command": "x", "timeout": NaN}', says="NaN"),
    bad("json-nested-too-deeply", "enqueue", "[" * 100_000, says="nested too deeply"),
    bad("command-missing", "enqueue", "{}", says='"command"'),
    bad("command-empty", "enqueue", j({"command": ""}), says='"command"'),
    bad("command-whitespace-only", "enqueue", j({"command": " \t\n "}), says='"command"'),
    bad("command-number", "enqueue", j({"command": 42}), says='"command"'),
    bad("command-list", "enqueue", j({"command": ["echo", "hi"]}), says='"command"'),
    bad("command-null", "enqueue", j({"command": None}), says='"command"'),
    bad("command-nul-byte", "enqueue", j({"command": "echo a\u0000b"}), says=('"command"', "NUL")),
    bad("command-lone-surrogate", "enqueue", '{"command": "\\ud800"}', says=('"command"', "UTF-8")),
    bad("max_retries-negative", "enqueue", cmd(max_retries=-1), says='"max_retries"'),
    bad("max_retries-float", "enqueue", cmd(max_retries=1.5), says='"max_retries"'),
    bad("max_retries-string", "enqueue", cmd(max_retries="3"), says='"max_retries"'),
    bad("max_retries-boolean", "enqueue", cmd(max_retries=True), says='"max_retries"'),
    bad("max_retries-above-1000", "enqueue", cmd(max_retries=1001), says='"max_retries"'),
    bad("max_retries-overflows-to-inf", "enqueue", '{"command": "x", "max_retries": 1e400}',
        says='"max_retries"'),
    bad("max_retries-given-twice", "enqueue", cmd(**{"max-retries": 1, "max_retries": 2}),
        says=('"max_retries"', "twice")),
    bad("unknown-key-max_retry", "enqueue", cmd(max_retry=3), says='"max_retry"'),
    bad("unknown-key-Command", "enqueue", j({"Command": "echo hi"}), says='"Command"'),
    *(bad(f"managed-key-{key}", "enqueue", cmd(**{key: value}), says=(f'"{key}"', "managed"))
      for key, value in (("state", "completed"), ("attempts", 0),
                         ("created_at", "2025-01-01T00:00:00Z"), ("updated_at", "2025-01-01"),
                         ("created-at", "2025-01-01"), ("exit_code", 0))),
    bad("id-empty", "enqueue", cmd(id=""), says='"id"'),
    bad("id-newline", "enqueue", cmd(id="a\nb"), says='"id"'),
    bad("id-too-long", "enqueue", cmd(id="i" * 201), says='"id"'),
    bad("timeout-zero", "enqueue", cmd(timeout=0), says='"timeout"'),
    bad("timeout-negative", "enqueue", cmd(timeout=-5), says='"timeout"'),
    bad("timeout-string", "enqueue", cmd(timeout="10"), says='"timeout"'),
    bad("timeout-over-a-year", "enqueue", cmd(timeout=1e308), says='"timeout"'),
    bad("priority-float", "enqueue", cmd(priority=1.5), says='"priority"'),
    bad("delay-negative", "enqueue", cmd(delay=-1), says='"delay"'),
    bad("run_at-not-a-date", "enqueue", cmd(run_at="tomorrow"), says=('"run_at"', "tomorrow")),
    bad("run_at-number", "enqueue", cmd(run_at=1700000000), says='"run_at"'),
    bad("run_at-and-delay", "enqueue", cmd(run_at="2030-01-01T00:00:00Z", delay=5),
        says=('"run_at"', '"delay"')),
    # Valid on input, but not showable in UTC: `list` would fail for the whole queue.
    bad("run_at-past-year-9999-utc", "enqueue", cmd(run_at="9999-12-31T23:59:59-01:00"),
        says='"run_at"'),
    bad("duplicate-json-key", "enqueue", '{"command": "echo a", "command": "echo b"}',
        says=('"command"', "twice")),
    bad("duplicate-id", "enqueue", cmd(id="known"), code=1, says=("'known'", "already exists")),
]

ENQUEUE_FLAGS = [
    bad("no-arguments", "enqueue", says="exactly one"),
    bad("json-and-cmd", "enqueue", cmd(), "--cmd", "echo x", says="exactly one"),
    bad("json-and-file", "enqueue", cmd(), "--file", "{tmp}/jobs.jsonl", says="exactly one",
        files={"jobs.jsonl": lines(GOOD_1)}),
    bad("max-retries-alone", "enqueue", "--max-retries", "3", says="exactly one"),
    bad("max-retries-with-json", "enqueue", cmd(), "--max-retries", "3", says="--max-retries"),
    bad("unknown-option", "enqueue", "--bogus", says=("--bogus", "see 'queuectl enqueue --help'")),
    bad("cmd-without-its-command", "enqueue", "--cmd",
        says=("'--cmd' requires an argument", "see 'queuectl enqueue --help'")),
    bad("cmd-empty", "enqueue", "--cmd", "", says='"command"'),
    bad("cmd-timeout-zero", "enqueue", "--cmd", "echo x", "--timeout", "0", says='"timeout"'),
    bad("cmd-timeout-negative", "enqueue", "--cmd", "echo x", "--timeout", "-1",
        says='"timeout"'),
    bad("cmd-max-retries-negative", "enqueue", "--cmd", "echo x", "--max-retries", "-1",
        says='"max_retries"'),
    bad("cmd-max-retries-float", "enqueue", "--cmd", "echo x", "--max-retries", "1.5",
        says="--max-retries"),
    bad("cmd-run-at-not-a-date", "enqueue", "--cmd", "echo x", "--run-at", "soon",
        says=('"run_at"', "soon")),
    bad("cmd-id-empty", "enqueue", "--cmd", "echo x", "--id", "", says='"id"'),
    bad("cmd-duplicate-id", "enqueue", "--cmd", "echo x", "--id", "known", code=1,
        says="'known'"),
]

ENQUEUE_FILE = [
    bad("file-nonexistent", "enqueue", "--file", "{tmp}/nope.jsonl", says="nope.jsonl"),
    bad("file-is-a-directory", "enqueue", "--file", "{tmp}", says="cannot read"),
    bad("file-empty", "enqueue", "--file", "{tmp}/jobs.jsonl", says="no jobs",
        files={"jobs.jsonl": b"\n  \n"}),
    bad("file-malformed-line-2", "enqueue", "--file", "{tmp}/jobs.jsonl",
        says=("line 2", "invalid JSON"),
        files={"jobs.jsonl": lines(GOOD_1, '{"command": ', GOOD_2)}),
    bad("file-unknown-key-line-3", "enqueue", "--file", "{tmp}/jobs.jsonl",
        says=("line 3", '"max_retry"'),
        files={"jobs.jsonl": lines(GOOD_1, GOOD_2, {"command": "x", "max_retry": 1})}),
    bad("file-invalid-utf8-line-2", "enqueue", "--file", "{tmp}/jobs.jsonl",
        says=("line 2", "UTF-8"),
        files={"jobs.jsonl": lines(GOOD_1) + b'{"command": "echo \xff"}\n' + lines(GOOD_2)}),
    bad("file-duplicate-id-in-db", "enqueue", "--file", "{tmp}/jobs.jsonl", code=1,
        says="'known'",
        files={"jobs.jsonl": lines(GOOD_1, {"id": "known", "command": "echo x"}, GOOD_2)}),
    bad("file-duplicate-id-within-file", "enqueue", "--file", "{tmp}/jobs.jsonl",
        says=("line 3", "'good-1'", "line 1"), files={"jobs.jsonl": lines(GOOD_1, GOOD_2, GOOD_1)}),
    bad("stdin-bad-line", "enqueue", "--file", "-", says="line 2",
        stdin=lines(GOOD_1, [1, 2], GOOD_2).decode()),
    # Too long for one argv string, hence through stdin.
    bad("command-over-131071-bytes", "enqueue", "--file", "-",
        says=('"command"', f"{MAX_COMMAND_BYTES + 1} bytes", str(MAX_COMMAND_BYTES)),
        stdin=lines({"command": TOO_LONG}).decode()),
    bad("command-over-131071-bytes-multibyte", "enqueue", "--file", "-",
        says=('"command"', f"{MAX_COMMAND_BYTES + 1} bytes"),
        stdin=lines({"command": TOO_LONG_UTF8}).decode()),
]

# Directory and environment: every refusal names the key; nothing of the call is stored.
BIG_ENV = {"A": "x" * 40_000, "B": "y" * 25_535}  # 65,537 bytes with the names
ENQUEUE_CWD_ENV = [
    bad("cwd-relative", "enqueue", cmd(cwd="srv/app"), says=('"cwd"', "absolute", "srv/app")),
    bad("cwd-empty", "enqueue", cmd(cwd=""), says='"cwd"'),
    bad("cwd-nul-byte", "enqueue", cmd(cwd="/srv/a\u0000b"), says=('"cwd"', "NUL")),
    bad("cwd-number", "enqueue", cmd(cwd=5), says='"cwd"'),
    bad("cwd-too-long", "enqueue", cmd(cwd="/" + "d" * 4095), says=('"cwd"', "4095")),
    bad("env-list", "enqueue", cmd(env=["MODE=nightly"]), says='"env"'),
    bad("env-name-digit-first", "enqueue", cmd(env={"1MODE": "x"}), says=('"env"', "'1MODE'")),
    bad("env-name-dash", "enqueue", cmd(env={"MY-VAR": "x"}), says=('"env"', "'MY-VAR'")),
    bad("env-name-empty", "enqueue", cmd(env={"": "x"}), says='"env"'),
    bad("env-value-nul-byte", "enqueue", cmd(env={"OK": "1", "MODE": "a\u0000b"}),
        says=('"env"', "MODE", "NUL")),
    bad("env-value-number", "enqueue", cmd(env={"MODE": 1}), says=('"env"', "MODE")),
    bad("env-value-lone-surrogate", "enqueue",
        '{"command": "x", "env": {"MODE": "\\ud800"}}', says=("MODE", "UTF-8")),
    *(bad(f"env-reserved-{name}", "enqueue", cmd(env={"OK": "1", name: "1"}),
          says=('"env"', name, "set by queuectl"))
      for name in ("QUEUECTL_JOB_ID", "QUEUECTL_DB", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                   "LISTEN_FDS")),
    bad("env-over-64-kib", "enqueue", "--file", "-", says=('"env"', "65536", "at B"),
        stdin=lines({"command": "x", "env": BIG_ENV}).decode()),
    bad("env-key-given-twice", "enqueue", '{"command": "x", "env": {"A": "1", "A": "2"}}',
        says=('"A"', "twice")),
    bad("flag-env-without-equals", "enqueue", "--cmd", "x", "--env", "MODE",
        says=("--env MODE", "KEY=VALUE")),
    bad("flag-env-bad-name", "enqueue", "--cmd", "x", "--env", "MY-VAR=1",
        says=("--env", "'MY-VAR'")),
    bad("flag-env-reserved", "enqueue", "--cmd", "x", "--env", "QUEUECTL_ATTEMPT=9",
        says=("--env", "QUEUECTL_ATTEMPT", "set by queuectl")),
    bad("flag-env-reserved-equals-form", "enqueue", "--cmd", "x", "--env=NOTIFY_SOCKET=/x",
        says=("--env", "NOTIFY_SOCKET")),
    bad("flag-env-given-twice", "enqueue", "--cmd", "x", "--env", "A=1", "--env", "A=2",
        says=("--env A", "twice")),
    bad("flag-env-over-64-kib", "enqueue", "--cmd", "x", "--env", "A=" + "x" * 40_000,
        "--env", "B=" + "y" * 25_535, says=("--env", "65536", "at B")),
    bad("flag-env-against-json", "enqueue", cmd(env={"MODE": "a"}), "--env", "MODE=b",
        says=("--env MODE=b", '"MODE": "a"')),
    bad("flag-env-without-value-after", "enqueue", "--cmd", "x", "--env",
        says=("'--env' requires an argument",)),
    bad("flag-cwd-empty", "enqueue", "--cmd", "x", "--cwd", "", says="--cwd"),
    bad("flag-cwd-against-json", "enqueue", cmd(cwd="/srv/a"), "--cwd", "/srv/b",
        says=("--cwd /srv/b", '"cwd": "/srv/a"')),
    bad("file-env-reserved-line-2", "enqueue", "--file", "{tmp}/jobs.jsonl",
        says=("line 2", "QUEUECTL_JOB_ID"),
        files={"jobs.jsonl": lines(GOOD_1, {"command": "x", "env": {"QUEUECTL_JOB_ID": "a"}},
                                   GOOD_2)}),
    bad("file-cwd-relative-line-3", "enqueue", "--file", "{tmp}/jobs.jsonl",
        says=("line 3", '"cwd"'),
        files={"jobs.jsonl": lines(GOOD_1, GOOD_2, {"command": "x", "cwd": "rel"})}),
    bad("file-with-flag-env-reserved", "enqueue", "--file", "{tmp}/jobs.jsonl",
        "--env", "LISTEN_FDS=3", says=("--env", "LISTEN_FDS"),
        files={"jobs.jsonl": lines(GOOD_1, GOOD_2)}),
]

OTHER_COMMANDS = [
    bad("list-state-bogus", "list", "--state", "bogus", says=("'bogus'", *STATES)),
    bad("list-state-empty", "list", "--state", "", says=STATES),
    bad("list-limit-zero", "list", "--limit", "0", says="--limit"),
    bad("dlq-list-limit-zero", "dlq", "list", "--limit", "0", says="--limit"),
    bad("show-missing-id", "show", "nope", code=1, says="'nope'"),
    bad("show-no-id", "show", says="ID"),
    bad("dlq-retry-missing-id", "dlq", "retry", "nope", code=1, says="'nope'"),
    bad("dlq-retry-pending-job", "dlq", "retry", "known", code=1,
        says=("'known'", "pending", "not dead")),
    bad("config-set-unknown-key", "config", "set", "nope", "1", says=("'nope'", "max-retries")),
    bad("config-set-max-retries-negative", "config", "set", "max-retries", "-1",
        says=("'-1'", "max-retries")),
    bad("config-set-max-retries-negative-after-dashes", "config", "set", "--", "max-retries",
        "-1", says=("'-1'", "max-retries")),
    bad("config-set-max-retries-abc", "config", "set", "max-retries", "abc",
        says=("'abc'", "max-retries")),
    bad("config-set-max-retries-float", "config", "set", "max_retries", "1.5",
        says=("'1.5'", "max-retries")),
    bad("config-set-max-retries-empty", "config", "set", "max-retries", "", says="max-retries"),
    bad("config-set-backoff-base-zero", "config", "set", "backoff-base", "0",
        says=("'0'", "backoff-base")),
    bad("config-set-backoff-base-nan", "config", "set", "backoff-base", "nan",
        says=("'nan'", "backoff-base")),
    bad("config-set-backoff-max-negative", "config", "set", "backoff-max", "-5", says="-5"),
    bad("config-set-backoff-max-negative-after-dashes", "config", "set", "--", "backoff-max",
        "-5", says=("'-5'", "backoff-max")),
    bad("config-set-lease-seconds-1", "config", "set", "lease-seconds", "1",
        says=("'1'", "lease-seconds")),
    bad("config-set-missing-value", "config", "set", "max-retries", says="VALUE"),
    bad("config-get-unknown-key", "config", "get", "nope", says=("'nope'", "max-retries")),
    bad("unknown-command", "frobnicate", says="frobnicate"),
    bad("log-format-bogus", "--log-format", "bogus", "status", says="bogus"),
    bad("db-url-unknown-scheme", "--db", "mysql://localhost/queue", "status",
        says=("unsupported database URL scheme", "'mysql'")),
    bad("db-url-in-env", "status", says=("unsupported database URL scheme", "'sqlite'"),
        env={"QUEUECTL_DB": "sqlite://q"}),
]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("case", [*ENQUEUE_JSON, *ENQUEUE_FLAGS, *ENQUEUE_FILE, *ENQUEUE_CWD_ENV,
                                  *OTHER_COMMANDS])
def test_bad_input_is_refused_and_changes_nothing(
    case: Bad, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        seeded, seed = request.getfixturevalue("seeded"), request.getfixturevalue("seed")
        env = seeded.env
    else:
        pg_seed = request.getfixturevalue("pg_seed")
        env = pg_seed.env
    for name, content in case.files:
        (tmp_path / name).write_bytes(content)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    result = subprocess.run([QUEUECTL, *args], env={**env, **dict(case.env)},
                            input=case.stdin, capture_output=True, text=True, timeout=30)
    assert_one_error(result, case.code, *case.says)
    if backend == "sqlite":
        assert_unchanged(seeded, seed)
    else:
        pg_seed.assert_unchanged()


# -- the positive counterparts ----------------------------------------------------------------
@pytest.mark.parametrize("args", [
    pytest.param(("enqueue", "--if-absent", j({"id": "known", "command": "echo other"})),
                 id="json"),
    pytest.param(("enqueue", "--if-absent", "--cmd", "echo other", "--id", "known"), id="cmd"),
])
def test_if_absent_with_an_existing_id_prints_it_and_leaves_it(
    args: tuple[str, ...], seeded: Any, seed: Seed
) -> None:
    result = seeded.run(*args, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "known\n", "")
    assert_unchanged(seeded, seed)


def test_config_key_accepts_both_spellings(seeded: Any) -> None:
    assert seeded.run("config", "set", "max_retries", "5").stdout == "max-retries = 5\n"
    for spelling in ("max-retries", "max_retries"):
        assert seeded.run("config", "get", spelling).stdout == "5\n"


def test_command_of_exactly_the_limit_is_accepted(seeded: Any) -> None:
    command = "x" * MAX_COMMAND_BYTES
    result = seeded.run("enqueue", "--file", "-", input=lines({"id": "big", "command": command})
                        .decode())
    assert result.stdout == "big\n"
    assert seeded.job("big")["command"] == command


# -- unusable database files ------------------------------------------------------------------
def _missing_dir(area: Path) -> Path:
    return area / "missing" / "queue.db"


def _parent_is_a_file(area: Path) -> Path:
    (area / "notadir").write_bytes(b"just a file\n")
    return area / "notadir" / "queue.db"


def _db_is_a_directory(area: Path) -> Path:
    (area / "queue.db").mkdir()
    return area / "queue.db"


def _unwritable_dir(area: Path) -> Path:
    (area / "ro").mkdir()
    (area / "ro").chmod(0o555)
    return area / "ro" / "queue.db"


def _not_sqlite(area: Path) -> Path:
    (area / "queue.db").write_bytes(b"hello world, not a database" * 100)
    return area / "queue.db"


def _corrupt_sqlite(area: Path) -> Path:
    (area / "queue.db").write_bytes(b"SQLite format 3\x00" + b"\xab" * 4000)
    return area / "queue.db"


def _other_application(area: Path) -> Path:
    path = area / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foo (x)")
    conn.execute("INSERT INTO foo VALUES (1)")
    conn.commit()
    conn.close()
    return path


def _newer_schema(area: Path, seed_db: Path) -> Path:
    path = area / "queue.db"
    shutil.copyfile(seed_db, path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    return path


UNUSABLE: list[Any] = [
    pytest.param(_missing_dir, "does not exist", id="directory-missing"),
    pytest.param(_parent_is_a_file, "notadir", id="parent-is-a-regular-file"),
    pytest.param(_db_is_a_directory, "is a directory", id="db-path-is-a-directory"),
    pytest.param(_unwritable_dir, "permission denied", id="directory-not-writable"),
    pytest.param(_not_sqlite, "not a SQLite database", id="not-sqlite"),
    pytest.param(_corrupt_sqlite, "not a usable SQLite database", id="sqlite-header-garbage"),
    pytest.param(_other_application, "another application", id="other-applications-sqlite"),
    pytest.param(_newer_schema, "upgrade queuectl", id="newer-schema-version"),
]
NO_DAC_OVERRIDE = ("--bounding-set", "-dac_override,-dac_read_search", "--")


def as_file_owner(read_only_dir: Path) -> list[str]:
    """A command prefix under which file permissions hold. Root ignores a 0o555 directory,
    so as root run queuectl without CAP_DAC_OVERRIDE (setpriv); skip if that is impossible."""
    if not IS_ROOT:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot drop CAP_DAC_OVERRIDE")
    probe = subprocess.run([setpriv, *NO_DAC_OVERRIDE, "test", "-w", str(read_only_dir)],
                           capture_output=True)
    if probe.returncode != 1:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.decode().strip()}")
    return [setpriv, *NO_DAC_OVERRIDE]


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: type, mode, mtime and (files) bytes. Catches a -wal or -shm
    that came and went too, through the directory's mtime."""
    entries = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        entries[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777,
                                               st.st_mtime_ns, content)
    return entries


@pytest.mark.parametrize("args", [
    pytest.param(("enqueue", "--cmd", "echo x"), id="enqueue"),
    pytest.param(("status",), id="status"),
])
@pytest.mark.parametrize(("make", "says"), UNUSABLE)
def test_unusable_database_fails_and_is_left_alone(
    make: Callable[..., Path], says: str, args: tuple[str, ...], queue: Any, seed: Seed,
    tmp_path: Path
) -> None:
    area = tmp_path / "area"
    area.mkdir()
    db = make(area, seed.db) if make is _newer_schema else make(area)
    prefix = as_file_owner(db.parent) if make is _unwritable_dir else []
    before = tree(area)
    time.sleep(0.01)  # so that a rewrite would show in mtime_ns even on coarse clocks
    result = subprocess.run([*prefix, QUEUECTL, "--db", str(db), *args], env=queue.env,
                            capture_output=True, text=True, timeout=30)
    assert_one_error(result, 1, says)
    after = tree(area)
    if make is _newer_schema:
        # A WAL database: any reader, sqlite3 itself included, creates and removes -wal and
        # -shm, which moves the directory's mtime. The file itself must still be untouched.
        before.pop("."), after.pop(".")
    assert after == before
    assert not queue.db.exists(), "fell back to $QUEUECTL_DB instead of --db"


def test_read_only_database_file_refuses_writes_and_keeps_its_data(
    seeded: Any, seed: Seed
) -> None:
    seeded.db.chmod(0o444)
    prefix = as_file_owner(seeded.db)  # `test -w` on the file: not writable without the cap
    for args in (("enqueue", j({"id": "new", "command": "echo new"})),
                 ("config", "set", "max-retries", "9")):
        result = subprocess.run([*prefix, QUEUECTL, *args], env=seeded.env,
                                capture_output=True, text=True, timeout=30)
        assert_one_error(result, 1, "read-only")
    assert sha256(seeded.db) == seed.digest
    # A read-only connection cannot remove its -wal/-shm on close (SQLite), so no file check.
    assert cli_snapshot(seeded.db, seeded.env) == seed.snapshot


# -- a lock held longer than the busy timeout -------------------------------------------------
@pytest.mark.slow
def test_database_locked_longer_than_busy_timeout(seeded: Any, seed: Seed) -> None:
    env = {**seeded.env, "QUEUECTL_BUSY_TIMEOUT": "0.5"}
    holder = sqlite3.connect(seeded.db, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        for args in (("enqueue", j({"id": "late", "command": "echo late"})),
                     ("config", "set", "max-retries", "9")):
            started = time.monotonic()
            result = subprocess.run([QUEUECTL, *args], env=env, capture_output=True, text=True,
                                    timeout=30)
            waited = time.monotonic() - started
            assert_one_error(result, 1, "locked")
            assert 0.4 < waited < 4, f"waited {waited:.2f} s, not QUEUECTL_BUSY_TIMEOUT=0.5"
        # WAL: readers are not blocked by a writer.
        assert cli_snapshot(seeded.db, seeded.env) == seed.snapshot
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_unchanged(seeded, seed)
    assert seeded.run("enqueue", j({"id": "late", "command": "echo late"})).stdout == "late\n"
    assert seeded.job("late")["state"] == "pending"


# -- output that cannot be written ------------------------------------------------------------
def _to_full_disk(queue: Any, *args: str) -> subprocess.CompletedProcess:
    """Run queuectl with stdout on /dev/full: every write fails with ENOSPC, as on a full
    file system."""
    with open("/dev/full", "w") as full:
        return subprocess.run([QUEUECTL, *args], env=queue.env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=30)


@pytest.mark.parametrize("args", [
    pytest.param(("--cmd", "echo stored"), id="cmd"),
    pytest.param((j({"command": "echo stored"}),), id="json"),
    pytest.param(("--cmd", "echo stored", "--priority", "3", "--max-retries=1"), id="click-path"),
])
def test_enqueue_to_a_full_stdout_says_the_job_was_stored(args: tuple[str, ...],
                                                          queue: Any) -> None:
    result = _to_full_disk(queue, "enqueue", *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    stored = [job["id"] for job in queue.json("list")]
    assert len(stored) == 1
    assert result.stderr == (f"queuectl: error: job {stored[0]} was enqueued, but cannot write"
                             " to standard output: No space left on device\n")


def test_a_full_stdout_is_one_clear_line(queue: Any) -> None:
    queue.enqueue({"command": "true"})
    for args in (("status",), ("list",), ("config", "list")):
        result = _to_full_disk(queue, *args)
        assert (result.returncode, result.stderr) == (
            1, "queuectl: error: cannot write to standard output: No space left on device\n"), args
