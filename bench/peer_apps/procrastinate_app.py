"""The Procrastinate side of the PostgreSQL peer comparison (runs in its own venv).

The task runs a shell command the way the other systems do: `subprocess.run(cmd, shell=True)`,
i.e. `/bin/sh -c COMMAND`. Procrastinate runs a sync task in a thread of its worker.
"""

import json
import os
import subprocess
import sys
import time

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_PG_DSN"]))


@app.task(name="run_command", queue="bench")
def run_command(command: str) -> int:
    return subprocess.run(command, shell=True).returncode


def setup() -> None:
    """Create Procrastinate's schema in the (fresh) database."""
    with app.open():
        app.schema_manager.apply_schema()


def enqueue_many(count: int, command: str) -> None:
    """Defer `count` jobs with batch_defer in chunks; print the seconds it took."""
    with app.open():
        t = time.perf_counter()
        left = count
        while left:
            n = min(left, 1000)
            run_command.batch_defer(*({"command": command} for _ in range(n)))
            left -= n
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


def defer_one(command: str) -> None:
    """What a cron line would run: open, defer one job, exit."""
    with app.open():
        run_command.defer(command=command)


def serve() -> None:
    """Read one command per line, defer it, answer with time.time() when defer returned."""
    with app.open():
        for line in sys.stdin:
            run_command.defer(command=line.rstrip("\n"))
            print(repr(time.time()), flush=True)
