"""The floor under a SQLite worker: what one job costs when nothing but the job is done.

Run as `python bench/bareloop.py DB NAME` on a queuectl database filled by `enqueue`: prints
`ready`, waits for a line on stdin (so that parallel loops start together), then drains it
and prints {"start", "end", "jobs"} (epoch seconds). Per job it does what no worker can
leave out, the way queuectl does it: in line on the `<db>-lock` gate, one write transaction
that records the last job's result (the job row, its history row, the metrics counter) and
claims the next (the same partial index, the same pause and limit check), then
`posix_spawn` of `/bin/sh -c COMMAND` in its own session with stdout and stderr on a pipe,
reading that pipe and a pidfd until the command exits. Nothing else: no log events, no
heartbeats or lease renewal, no cancel checks, no live output, no signal handling.

The gap between this and `worker run` is everything the worker adds; the gap between this
and the spawn limit is what one transaction and output capture cost per job.
"""

import fcntl
import json
import os
import select
import signal
import sqlite3
import sys
import time

SHELL = "/bin/sh"
LEASE = 30.0
CLAIM = """UPDATE jobs SET state = 'processing', attempts = attempts + 1, worker = ?,
        lease_expires_at = ?, started_at = ?, finished_at = NULL, updated_at = ?
    WHERE rowid = (SELECT rowid FROM jobs INDEXED BY jobs_due
                   WHERE state IN ('pending', 'failed') AND waiting_on = 0 AND run_at <= ?
                   AND NOT EXISTS (SELECT 1 FROM flags WHERE name = 'paused')
                   AND NOT EXISTS (SELECT 1 FROM queues
                                   WHERE concurrency > 0 OR paused_since IS NOT NULL)
                   ORDER BY priority DESC, run_at LIMIT 1)
    RETURNING rowid, id, attempts, queue, command, started_at"""
COMPLETE = """UPDATE jobs SET state = 'completed', finished_at = ?, updated_at = ?, exit_code = ?,
        last_error = NULL, lease_expires_at = NULL
    WHERE rowid = ? AND id = ? AND state = 'processing' AND worker = ? AND attempts = ?"""
HISTORY = """INSERT INTO attempts (job_id, attempt, worker, started_at, finished_at, outcome,
        exit_code, output, output_total) VALUES (?, ?, ?, ?, ?, 'completed', ?, ?, ?)"""
COUNT = """INSERT INTO counters (queue, event, le, n, seconds) VALUES (?, 'completed', ?, 1, ?)
    ON CONFLICT (queue, event, le) DO UPDATE SET n = n + 1, seconds = seconds + excluded.seconds"""


def transaction(conn: sqlite3.Connection, gate: int, name: str, done: tuple | None,
                result: tuple[int, bytes, int]) -> tuple | None:
    """Record `done` (if any) and claim the next job, in one transaction."""
    fcntl.flock(gate, fcntl.LOCK_EX)
    try:
        conn.execute("BEGIN IMMEDIATE")
        t = time.time()
        if done is not None:
            rowid, job_id, attempt, queue, _command, started = done
            code, output, total = result
            conn.execute(COMPLETE, (t, t, code, rowid, job_id, name, attempt))
            conn.execute(HISTORY, (job_id, attempt, name, started, t, code, output, total))
            conn.execute(COUNT, (queue, 0.01, t - started))
        row = conn.execute(CLAIM, (name, t + LEASE, t, t, t)).fetchone()
        conn.execute("COMMIT")
        return row
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)


def run(command: str, env: dict[str, str], job_id: str, attempt: int) -> tuple[int, bytes, int]:
    """The command with its output on a pipe; (exit code, output, bytes printed)."""
    job_env = dict(env)
    job_env["QUEUECTL_JOB_ID"] = job_id
    job_env["QUEUECTL_ATTEMPT"] = str(attempt)
    out_r, out_w = os.pipe()
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, out_w, 2)]
    try:
        pid = os.posix_spawn(SHELL, [SHELL, "-c", command], job_env, file_actions=actions,
                             setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        os.close(out_w)
    pidfd = os.pidfd_open(pid)
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    poll.register(out_r, select.POLLIN)
    output = bytearray()
    exited = False
    while not exited:
        for fd, _ in poll.poll():
            if fd == out_r:
                chunk = os.read(out_r, 65_536)
                if chunk:
                    output += chunk
                else:
                    poll.unregister(out_r)
            elif fd == pidfd:
                exited = True
    try:
        os.killpg(pid, signal.SIGKILL)  # what the command left behind in its group
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    os.close(out_r)
    return os.waitstatus_to_exitcode(status), bytes(output[-4096:]), len(output)


def main() -> int:
    db, name = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=NORMAL")  # as queuectl's workers commit
    conn.execute("PRAGMA wal_autocheckpoint=4000")
    gate = os.open(f"{db}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    env = dict(os.environ)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    jobs = 0
    job = transaction(conn, gate, name, None, (0, b"", 0))
    while job is not None:
        result = run(job[4], env, job[1], job[2])
        job = transaction(conn, gate, name, job, result)
        jobs += 1
    print(json.dumps({"start": start, "end": time.time(), "jobs": jobs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
