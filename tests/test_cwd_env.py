"""A job's directory and environment (`enqueue --cwd DIR --env KEY=VALUE`, JSON "cwd" and
"env") as admins use them: through the console script, with real workers and real
`/bin/sh`, on both backends. The command runs in its directory with its variables laid
over the worker's environment; a directory it cannot enter fails the attempt with one
clear error, is retried like any failure, and the command never runs elsewhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import QUEUECTL, Queue

# What each job writes, relative to the directory it runs in: `pwd`, then $MODE, then
# what the worker alone set ($FROM_WORKER), then queuectl's own variable.
REPORT = 'printf "%s\\n" "$(pwd)" "$MODE" "$FROM_WORKER" "$QUEUECTL_JOB_ID" > report.txt'


def _dirs(tmp_path: Path, *names: str) -> list[Path]:
    made = [tmp_path / name for name in names]
    for path in made:
        path.mkdir()
    return made


def test_a_job_runs_in_its_directory_with_its_environment(any_queue: Queue,
                                                          tmp_path: Path) -> None:
    """Enqueued from one directory for another: the command sees --cwd and --env; the
    worker's own variables are inherited, the job's win over them, and a job without
    --cwd runs where the worker is."""
    q = any_queue
    work, caller, worker_dir = _dirs(tmp_path, "work", "caller", "worker")
    job = q.run("enqueue", "--id", "nightly", "--cwd", str(work), "--env", "MODE=nightly",
                "--cmd", REPORT, cwd=caller).stdout.strip()
    q.run("enqueue", "--id", "plain", "--cmd", REPORT, cwd=caller)
    shown = q.job(job)
    assert (shown["cwd"], shown["env"]) == (str(work), {"MODE": "nightly"})
    q.worker("--name", "w", cwd=worker_dir, env={"MODE": "daily", "FROM_WORKER": "yes"})
    q.wait_counts(completed=2)
    assert (work / "report.txt").read_text().splitlines() == [
        str(work), "nightly", "yes", "nightly"]
    assert (worker_dir / "report.txt").read_text().splitlines() == [
        str(worker_dir), "daily", "yes", "plain"]
    assert not (caller / "report.txt").exists()
    listed = {r["id"]: r for r in q.json("list")}
    assert (listed["nightly"]["cwd"], listed["nightly"]["env"]) == (str(work),
                                                                   {"MODE": "nightly"})
    assert (listed["plain"]["cwd"], listed["plain"]["env"]) == (None, None)


def test_json_cwd_and_env_reach_the_command(any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    [work] = _dirs(tmp_path, "work")
    env = {"MODE": "a b\tc", "UTF": "été"}
    q.enqueue({"id": "j", "command": REPORT + '; printf "%s" "$UTF" > utf.txt',
               "cwd": str(work), "env": env})
    q.worker("--name", "w", "--drain").wait(timeout=60)
    assert q.job("j")["state"] == "completed"
    assert (work / "report.txt").read_text().splitlines()[:2] == [str(work), "a b\tc"]
    assert (work / "utf.txt").read_text() == "été"


def test_cwd_dot_and_relative_paths_resolve_against_the_callers_directory(
        queue: Queue, tmp_path: Path) -> None:
    caller, sub = _dirs(tmp_path, "caller", "caller/sub")
    cases = ((("--cwd", "."), caller), (("--cwd", "sub"), sub),
             (("--cwd", "./sub/../sub/"), sub), (("--cwd=.",), caller), (("--cwd", str(sub)), sub))
    for n, (args, _) in enumerate(cases):
        queue.run("enqueue", "--id", f"case{n}", *args, "--cmd", "pwd", cwd=caller)
    stored = {r["id"]: r["cwd"] for r in queue.json("list")}
    assert [stored[f"case{n}"] for n in range(len(cases))] == [str(d) for _, d in cases]
    # with --file: every line, and a line's own "cwd" must agree
    jobs = caller / "jobs.jsonl"
    jobs.write_text(json.dumps({"command": "true"}) + "\n"
                    + json.dumps({"command": "true", "cwd": str(caller)}) + "\n")
    ids = queue.run("enqueue", "--file", "jobs.jsonl", "--cwd", ".", "--env", "A=1",
                    cwd=caller).stdout.split()
    listed = {r["id"]: (r["cwd"], r["env"]) for r in queue.json("list")}
    assert [listed[i] for i in ids] == [(str(caller), {"A": "1"})] * 2


def test_nothing_is_taken_from_the_callers_environment(queue: Queue, tmp_path: Path) -> None:
    [work] = _dirs(tmp_path, "work")
    env = {**queue.env, "MODE": "from-caller", "FROM_WORKER": "from-caller"}
    out = subprocess.run([QUEUECTL, "enqueue", "--cwd", str(work), "--cmd", REPORT],
                         env=env, capture_output=True, text=True, timeout=30, check=True)
    job = out.stdout.strip()
    assert queue.job(job)["env"] is None
    queue.worker("--name", "w", "--drain").wait(timeout=60)
    assert (work / "report.txt").read_text().splitlines()[1:3] == ["", ""]


def test_a_missing_directory_fails_each_attempt_and_is_retried(any_queue: Queue,
                                                                tmp_path: Path) -> None:
    """Exactly `cannot enter directory DIR: REASON` (no exit code: nothing ran), a failure
    like any other, retried per max_retries; the command never runs anywhere else."""
    q = any_queue
    [worker_dir] = _dirs(tmp_path, "worker")
    missing = tmp_path / "gone" / "app"
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory\n")
    q.run("config", "set", "backoff-max", "0")  # retries due at once
    q.run("enqueue", "--id", "missing", "--cwd", str(missing), "--max-retries", "2",
          "--cmd", "touch ran-here")
    q.run("enqueue", "--id", "file", "--cwd", str(a_file), "--max-retries", "0",
          "--cmd", "touch ran-here")
    q.worker("--name", "w", "--drain", cwd=worker_dir).wait(timeout=60)
    error = f"cannot enter directory {missing}: No such file or directory"
    job = q.job("missing")
    assert (job["state"], job["attempts"], job["last_error"], job["exit_code"]) == (
        "dead", 3, error, None)
    assert [(h["attempt"], h["outcome"], h["error"], h["exit_code"])
            for h in job["history"]] == [(n, "failed", error, None) for n in (1, 2, 3)]
    job = q.job("file")
    assert (job["state"], job["last_error"]) == (
        "dead", f"cannot enter directory {a_file}: Not a directory")
    assert list(worker_dir.iterdir()) == []  # never ran in the worker's directory
    # once the directory exists, a retry runs there
    missing.mkdir(parents=True)
    q.run("dlq", "retry", "missing")
    q.worker("--name", "w", "--drain", cwd=worker_dir).wait(timeout=60)
    assert q.job("missing")["state"] == "completed"
    assert (missing / "ran-here").exists() and list(worker_dir.iterdir()) == []


def test_the_click_command_and_the_fast_path_agree(queue: Queue, tmp_path: Path) -> None:
    """`enqueue` past the first five arguments is parsed by click instead of the fast path
    (main.py): the same options give the same job, the same refusal the same line."""
    [caller] = _dirs(tmp_path, "caller")
    db = str(queue.db)
    fast = ("--db", db, "enqueue")
    slow = ("--db", db, "--db", db, "--log-format", "json", "enqueue")
    options = ("--cwd", ".", "--env", "MODE=nightly", "--env=B=2", "--cmd", "true")
    jobs = [queue.json("show", queue.run(*prefix, *options, cwd=caller).stdout.strip())
            for prefix in (fast, slow)]
    assert [(j["cwd"], j["env"]) for j in jobs] == [(str(caller), {"MODE": "nightly",
                                                                   "B": "2"})] * 2
    for bad in (("--env", "QUEUECTL_JOB_ID=x"), ("--env", "NOEQUALS"), ("--cwd", ""),
                ("--env", "A=1", "--env", "A=2")):
        results = [queue.run(*prefix, *bad, "--cmd", "true", check=False, cwd=caller)
                   for prefix in (fast, slow)]
        assert [(r.returncode, r.stdout) for r in results] == [(2, "")] * 2, bad
        assert results[0].stderr == results[1].stderr and results[0].stderr.count("\n") == 1
    assert len(queue.json("list")) == 2
