"""The PgQueuer side of the PostgreSQL peer comparison (runs in its own venv).

`work()` starts a worker the way `pgq run pgqueuer_app:main` does, through PgQueuer's own
supervisor (`pgqueuer.run`, defaults kept); the `pgq run` command of 1.6.0 fails at start-up
on its `--log-level` option (a string where an enum is expected). The entrypoint runs the job's payload as a
shell command through `subprocess.run(cmd, shell=True)` in a thread (PgQueuer 1.x takes
async entrypoints only). The bench sets the worker's knobs through BENCH_PGQ_BATCH
(batch_size), BENCH_PGQ_MAX (max_concurrent_tasks) and BENCH_PGQ_LIMIT (the entrypoint's
concurrency_limit); unset, PgQueuer's defaults apply.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job

ENTRYPOINT = "run_command"


async def connect() -> asyncpg.Connection:
    return await asyncpg.connect(host=os.environ["BENCH_PG_HOST"],
                                 port=int(os.environ["BENCH_PG_PORT"]),
                                 user=os.environ["BENCH_PG_USER"],
                                 database=os.environ["BENCH_PG_DB"])


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` calls."""
    conn = await connect()
    pgq = PgQueuer(AsyncpgDriver(conn))

    limit = int(os.environ.get("BENCH_PGQ_LIMIT", "0"))

    @pgq.entrypoint(ENTRYPOINT, concurrency_limit=limit)
    async def run_command(job: Job) -> None:
        command = (job.payload or b"true").decode()
        await asyncio.to_thread(subprocess.run, command, shell=True)

    try:
        yield pgq
    finally:
        await conn.close()


async def _queries() -> tuple[asyncpg.Connection, Queries]:
    conn = await connect()
    return conn, Queries(AsyncpgDriver(conn))


def work(drain: bool) -> None:
    """A worker: `mode=drain` exits once the queue is empty."""
    from pgqueuer import run
    from pgqueuer.types import QueueExecutionMode

    mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
    asyncio.run(run(main, mode=mode, batch_size=int(os.environ.get("BENCH_PGQ_BATCH", "10")),
                    max_concurrent_tasks=int(os.environ.get("BENCH_PGQ_MAX", "0")) or None))


def setup() -> None:
    """Install PgQueuer's tables in the (fresh) database."""
    async def go() -> None:
        conn, q = await _queries()
        await q.install()
        await conn.close()
    asyncio.run(go())


def enqueue_many(count: int, command: str) -> None:
    """Enqueue `count` jobs in batches of 1000; print the seconds it took."""
    async def go() -> float:
        conn, q = await _queries()
        t = time.perf_counter()
        left = count
        while left:
            n = min(left, 1000)
            await q.enqueue([ENTRYPOINT] * n, [command.encode()] * n, [0] * n)
            left -= n
        seconds = time.perf_counter() - t
        await conn.close()
        return seconds
    print(json.dumps({"seconds": asyncio.run(go())}), flush=True)


def defer_one(command: str) -> None:
    """What a cron line would run: connect, enqueue one job, exit."""
    async def go() -> None:
        conn, q = await _queries()
        await q.enqueue(ENTRYPOINT, command.encode())
        await conn.close()
    asyncio.run(go())


def serve() -> None:
    """Read one command per line, enqueue it, answer with time.time() when it returned."""
    async def go() -> None:
        conn, q = await _queries()
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            await q.enqueue(ENTRYPOINT, line.rstrip("\n").encode())
            print(repr(time.time()), flush=True)
        await conn.close()
    asyncio.run(go())
