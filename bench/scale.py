"""The read verbs at scale (issue 26): each as a user runs it, the console script, on a queue
of `rows` jobs in the issue's proportions (bench/fill.py's mixed fill: 99% completed, 1%
pending, 0.01% dead), against the same verbs on an empty queue.

    read_verbs_at(backend, rows, workdir) -> {"rows": N, "fill_seconds": s,
                                              "seconds": {verb: s, ...}}

times every verb of READ_VERBS (the best of `repeat` calls: start-up included, noise out),
and one retention batch (`retention_batch_seconds`: the best of `repeat` purges of
policy.BATCH_SIZE completed jobs finished a day ago, each its own transaction, as
queuectl/retention.py runs them; `retention_jobs_per_s` what that rate deletes).
`python -m bench.scale [--rows 0 1000000] [--backend sqlite postgres]` prints the figures
as JSON, with each verb's ratio to its empty-queue time when 0 is among the sizes.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import run
from bench.fill import PgFill, SqliteFill, fill_finished

# The verb -> its arguments; `ID` is a completed job's id (with history) once filled.
READ_VERBS: dict[str, tuple[str, ...]] = {
    "status": ("status",),
    "queue list": ("queue", "list"),
    "metrics": ("metrics",),
    "top --once": ("top", "--once"),
    "info": ("info",),
    "dlq list --limit 10": ("dlq", "list", "--limit", "10"),
    "list --state pending --limit 100": ("list", "--state", "pending", "--limit", "100"),
    "logs ID": ("logs", "ID"),
}


def _time_verbs(queue: Any, job_id: str, repeat: int) -> dict[str, float]:
    """Seconds per verb: the fastest of `repeat` runs of the console script."""
    out = {}
    for verb, args in READ_VERBS.items():
        argv = queue.argv(*(job_id if a == "ID" else a for a in args))
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            run(argv, env=queue.env, timeout=600)
            best = min(best, time.perf_counter() - t)
        out[verb] = round(best, 4)
    return out


def _retention_batch(locator: str, repeat: int) -> float:
    """Seconds of the fastest of `repeat` retention batches (completed jobs kept 1 h)."""
    from queuectl.locator import open_store
    from queuectl.policy import BATCH_SIZE

    store = open_store(locator, for_worker=True)
    best = float("inf")
    try:
        for _ in range(repeat):
            t = time.perf_counter()
            n = store.purge("completed", 3600, BATCH_SIZE)
            best = min(best, time.perf_counter() - t)
            if n < BATCH_SIZE:
                break
    finally:
        store.close()
    return best


def _last_completed(queue: Any) -> str:
    """A completed job's id, with its history row (the fill gives each one)."""
    listed = json.loads(run(queue.argv("list", "--state", "completed", "--limit", "1"),
                            env=queue.env).stdout)
    return str(listed[0]["id"]) if listed else "none"


def read_verbs_at(backend: str, rows: int, workdir: Path, repeat: int = 5,
                  cluster: Any = None) -> dict[str, Any]:
    """Fill a fresh queue with `rows` mixed jobs (none: an empty queue, one job ran) and time
    every read verb. PostgreSQL needs `cluster` (bench.pgserver.PgCluster, started)."""
    from bench.qctl import Queue, StoreQueue

    fill_s = 0.0
    db_name = None
    if backend == "sqlite":
        path = workdir / f"scale-{rows}.db"
        path.unlink(missing_ok=True)
        queue: Any = Queue(path)
        queue.create()
        if rows:
            fill_s = fill_finished(SqliteFill(path), rows, mixed=True)["fill_seconds"]
    else:
        from bench.pg import SCHEMA
        from bench.pgserver import pg_env

        db_name = cluster.database(f"scale{rows}")
        queue = StoreQueue(cluster.locator(db_name), env=pg_env())
        queue.create()
        if rows:
            fill_s = fill_finished(PgFill(cluster, db_name, SCHEMA), rows, mixed=True)[
                "fill_seconds"]
            # as autovacuum would soon, and not while the verbs are timed
            cluster.sql(db_name, "VACUUM ANALYZE", timeout=3600)
    try:
        # Some real traffic: one job run now, in a queue of its own, so that the fill's
        # pending jobs stay pending (a drain of every queue would run them all).
        queue.cli("enqueue", "--queue", "scale", "--cmd", "true")
        queue.cli("worker", "run", "--drain", "--queue", "scale", "--name", "scale")
        job_id = _last_completed(queue)
        seconds = _time_verbs(queue, job_id, repeat)
        point: dict[str, Any] = {"rows": rows, "fill_seconds": fill_s, "seconds": seconds}
        if rows:
            from queuectl.policy import BATCH_SIZE

            batch = _retention_batch(str(queue.db), repeat)
            point["retention_batch_seconds"] = round(batch, 4)
            point["retention_jobs_per_s"] = round(BATCH_SIZE / batch)
    finally:
        if db_name is not None:
            cluster.drop(db_name)
    return point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[0, 1_000_000])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="queuectl-scale-", dir=args.workdir) as d:
        cluster = None
        if "postgres" in args.backend:
            from bench.pgserver import PgCluster

            cluster = PgCluster(args.workdir)  # its own directory, which postgres can enter
            cluster.start()
        try:
            for backend in args.backend:
                points = [read_verbs_at(backend, n, Path(d), args.repeat, cluster)
                          for n in args.rows]
                entry: dict[str, Any] = {"points": points}
                empty = next((p["seconds"] for p in points if p["rows"] == 0), None)
                if empty:
                    entry["ratio_to_empty"] = {
                        str(p["rows"]): {v: round(s / empty[v], 2) for v, s in p["seconds"].items()}
                        for p in points if p["rows"]}
                results[backend] = entry
        finally:
            if cluster is not None:
                cluster.stop()
    print(json.dumps({"sqlite_version": sqlite3.sqlite_version, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
