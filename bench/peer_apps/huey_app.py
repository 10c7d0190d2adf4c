"""The Huey side of the peer comparison (runs in the peers' own venv, never in queuectl's).

The task runs a shell command the way the other systems do: `/bin/sh -c COMMAND`. The
database is SQLite in WAL mode with fsync on commit, like queuectl's `synchronous=FULL`.
"""

import json
import os
import subprocess
import sys
import time

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"], fsync=True)


@huey.task(name="run_command")
def run_command(command: str) -> int:
    return subprocess.run(command, shell=True).returncode


def enqueue_many(count: int, command: str) -> None:
    """Enqueue `count` tasks from this one process; print the seconds it took."""
    t = time.perf_counter()
    for _ in range(count):
        run_command(command)
    print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


def serve() -> None:
    """Read one command per line, enqueue it, answer with time.time() when enqueue returned."""
    for line in sys.stdin:
        run_command(line.rstrip("\n"))
        print(repr(time.time()), flush=True)
