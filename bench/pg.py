"""queuectl on PostgreSQL, measured in the same run and on the same server as its peers:
drain by 2 workers against the spawn limit and against SQLite's drain, idle pickup, cold and
batch enqueue against SQLite's, claim latency with a million finished jobs against an empty
queue, the workers' (and the server's) CPU per job, and drain and pickup through PgBouncer
against a direct connection (`pooler`: in a full or quick run, or alone with `run.py --only
pgpooler`).

Every measurement gets a fresh database on the run's one throwaway cluster
(`bench/pgserver.py`). queuectl is driven through its console script with a `postgresql://`
locator and read back through its public store API; only the million-row fill writes the
backend's tables directly (INSERT ... SELECT generate_series, shaped by the columns the
backend created; bench/fill.py), because a million enqueues and drains would take an hour.
"""

import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.blocked import blocked_part
from bench.common import Sizes, log, paired, percentile, run, summary
from bench.enqueue import alternating, import_profile
from bench.fill import PgFill, claim_latencies, fill_finished
from bench.latency import pickup_section, start_idle_workers, trickle, trickle_points
from bench.pgserver import PgCluster, pg_env, shared_cluster, starter
from bench.qctl import Queue, StoreQueue, write_jobs_file
from bench.throughput import drain, fresh_queue, spawn_limit

SCHEMA = "queuectl"  # the backend's default schema, used as it comes
# A peer's drain: (cluster, dir, jobs, timeout) -> {"jobs_per_s": ..., ...}
PgPeerDrain = Callable[[PgCluster, Path, int, float], dict[str, Any]]


def backend_unusable(cluster: PgCluster) -> str | None:
    """Why queuectl cannot run the bench on PostgreSQL here (driver, backend), or None: one
    job through `enqueue`, `worker run --drain` and the store API, as the bench uses them."""
    db = cluster.database("probe")
    queue = StoreQueue(cluster.locator(db), env=pg_env())
    try:
        for args in (("list", "--limit", "1"), ("enqueue", "--cmd", "true"),
                     ("worker", "run", "--drain", "--name", "probe")):
            res = run(queue.argv(*args), env=queue.env, check=False, timeout=60)
            if res.returncode != 0:
                lines = (res.stderr.strip() or res.stdout.strip()).splitlines() or ["no output"]
                return (f"queuectl's PostgreSQL backend is not usable: `{args[0]}` exited "
                        f"{res.returncode}: {lines[-1][:300]}")
        if queue.per_worker(["probe"]) != {"probe": 1}:
            return "queuectl's PostgreSQL backend is not usable: a probe job did not complete"
        return None
    except Exception as exc:  # noqa: BLE001 - the reason to skip
        return f"queuectl's PostgreSQL backend is not usable: {type(exc).__name__}: {exc}"
    finally:
        cluster.drop(db)


def pg_queue(cluster: PgCluster, prefix: str) -> tuple[StoreQueue, str]:
    """A fresh database and a queue in it (schema created by queuectl itself)."""
    db = cluster.database(prefix)
    queue = StoreQueue(cluster.locator(db), env=pg_env())
    queue.create()
    return queue, db


def versions(cluster: PgCluster) -> dict[str, str]:
    out = {"server": cluster.version}
    try:
        import psycopg2

        out["psycopg2"] = psycopg2.__version__.split()[0]
    except ImportError:
        out["psycopg2"] = "not installed"
    return out


# -- drain -----------------------------------------------------------------------------------
def pg_drain(cluster: PgCluster, jobs_file: Path, jobs: int, d: Path,
             timeout: float) -> dict[str, Any]:
    """2 × `worker run --drain` on a PostgreSQL queue filled by `enqueue --file`; also the
    server's CPU per job over the drain."""
    queue, db = pg_queue(cluster, "drain")
    try:
        return server_drain(cluster, queue, jobs_file, jobs, 2, d, timeout)
    finally:
        cluster.drop(db)


def server_drain(cluster: PgCluster, queue: Queue, jobs_file: Path, jobs: int, workers: int,
                 d: Path, timeout: float, slots: int = 1) -> dict[str, Any]:
    """`enqueue --file`, then `workers` × `worker run --drain` (`slots` job slots each);
    with the server's CPU per job over the drain."""
    queue.enqueue_file(jobs_file)
    before = cluster.cpu_seconds()
    res = drain(queue, jobs, workers, d, timeout, slots)
    res["server_cpu_us_per_job"] = 1e6 * (cluster.cpu_seconds() - before) / jobs
    return res


def sqlite_drain(workdir: Path, jobs_file: Path, jobs: int, r: int,
                 timeout: float) -> dict[str, Any]:
    queue, d = fresh_queue(workdir, f"pg-cmp-sqlite-drain-run{r}")
    try:
        queue.create()
        queue.enqueue_file(jobs_file)
        return drain(queue, jobs, 2, d, timeout)
    finally:
        shutil.rmtree(d, ignore_errors=True)


DRAIN_KEYS = ("jobs_per_s", "from_launch_jobs_per_s", "wall_jobs_per_s",
              "claim_to_finish_p50_ms", "finish_to_next_claim_p50_ms", "cycle_mean_ms",
              "worker_cpu_us_per_job", "worker_cpu_with_children_us_per_job")


def drain_part(cluster: PgCluster, sizes: Sizes, workdir: Path,
               peers: dict[str, PgPeerDrain | str]) -> dict[str, Any]:
    """Per run, back to back: the spawn limit (2 spawners), PostgreSQL, SQLite, each peer."""
    jobs = sizes.drain_jobs
    jobs_file = write_jobs_file(workdir / f"pg-jobs-{jobs}.jsonl", jobs)
    timeout = (60 + jobs / 20) * sizes.timeout_scale
    limits: list[float] = []
    pg: list[dict[str, Any]] = []
    lite: list[dict[str, Any]] = []
    peer_runs: dict[str, list[dict[str, Any]]] = {n: [] for n, f in peers.items() if callable(f)}
    failed: dict[str, str] = {}
    for r in range(sizes.runs):
        limits.append(spawn_limit(jobs, 2, timeout))
        d = workdir / f"pg-drain-run{r}"
        d.mkdir()
        pg.append(pg_drain(cluster, jobs_file, jobs, d, timeout))
        shutil.rmtree(d, ignore_errors=True)
        lite.append(sqlite_drain(workdir, jobs_file, jobs, r, timeout))
        log(f"pg drain run {r + 1}/{sizes.runs}: PostgreSQL {pg[-1]['jobs_per_s']:.0f} jobs/s "
            f"({pg[-1]['worker_cpu_us_per_job']:.0f} µs worker CPU/job), SQLite "
            f"{lite[-1]['jobs_per_s']:.0f} jobs/s, limit {limits[-1]:.0f}/s")
        for name in [n for n in peer_runs if n not in failed]:
            fn = peers[name]
            assert callable(fn)
            pd = workdir / f"pg-drain-{name}-run{r}"
            pd.mkdir()
            try:
                peer_runs[name].append(fn(cluster, pd, jobs, timeout))
            except (Exception, subprocess.TimeoutExpired) as exc:  # noqa: BLE001 - recorded
                failed[name] = f"could not run: {type(exc).__name__}: {exc}"
                log(f"pg drain, {name} failed: {failed[name]}")
                continue
            finally:
                shutil.rmtree(pd, ignore_errors=True)
            log(f"pg drain run {r + 1}/{sizes.runs}, {name}: "
                f"{peer_runs[name][-1]['from_launch_jobs_per_s']:.0f} jobs/s from launch")
    rates = [x["jobs_per_s"] for x in pg]
    launch = [x["from_launch_jobs_per_s"] for x in pg]
    out: dict[str, Any] = {
        "jobs": jobs, "workers": 2, "command": "true",
        "how": "2 × `queuectl worker run --drain` against a queue filled by `enqueue --file`",
        "limit_jobs_per_s": summary(limits),
        "postgres": {k: summary(x[k] for x in pg) for k in DRAIN_KEYS}
        | {"server_cpu_us_per_job": summary(x["server_cpu_us_per_job"] for x in pg),
           "per_worker": [x["per_worker"] for x in pg]},
        "sqlite": {k: summary(x[k] for x in lite) for k in DRAIN_KEYS},
        "ratio_to_limit": paired(rates, limits),
        "vs_sqlite": paired(rates, [x["jobs_per_s"] for x in lite]),
        "ratio_method": "median of per-run ratios; the limit, both drains and the peers "
                        "run back to back in each run",
        "peers": {},
    }
    for name, fn in peers.items():
        if not callable(fn) or name in failed or not peer_runs[name]:
            out["peers"][name] = {"skipped": fn if not callable(fn) else failed.get(name, "")}
            continue
        runs = peer_runs[name]
        prates = [x["from_launch_jobs_per_s"] for x in runs]
        out["peers"][name] = {
            **{k: summary(x[k] for x in runs if x.get(k) is not None)
               for k in runs[0] if isinstance(runs[0][k], (int, float))},
            # Peers are timed from starting their workers to the last job done, so queuectl
            # is compared on the same basis.
            "queuectl_basis": "from_launch_jobs_per_s",
            "queuectl_jobs_per_s": summary(launch),
            "queuectl_ratio": paired(launch, prates),
        }
    return out


# -- the workers curve ---------------------------------------------------------------------
CURVE_WORKERS = (1, 2, 4, 8, 16)
# The curve's 16 jobs at once as 2 worker processes of 8 job slots (README "Job slots").
SLOTS_POINT = (2, 8)


def workers_part(cluster: PgCluster, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """The drain by 1, 2, 4, 8 and 16 workers on PostgreSQL, each on a fresh database filled
    by `enqueue --file`: jobs/s and the server's CPU per job. Per run, the counts in
    alternating order (up, then down), so a drift of the machine's load spreads evenly.
    Right before each drain, the spawn limit with as many spawners: the machine's own curve,
    how much k processes on its cores lose against 2 with no queue at all."""
    jobs = sizes.drain_jobs
    jobs_file = write_jobs_file(workdir / f"pg-curve-jobs-{jobs}.jsonl", jobs)
    timeout = (60 + jobs / 20) * sizes.timeout_scale
    per: dict[int, list[dict[str, Any]]] = {k: [] for k in CURVE_WORKERS}
    limits: dict[int, list[float]] = {k: [] for k in CURVE_WORKERS}
    with_slots: list[dict[str, Any]] = []
    processes, slots = SLOTS_POINT
    order: list[int] = [*CURVE_WORKERS, 0]  # 0: the slots point, beside 16 workers
    for r in range(sizes.runs):
        for k in order if r % 2 == 0 else order[::-1]:
            if k:
                limits[k].append(spawn_limit(jobs, k, timeout))
            queue, db = pg_queue(cluster, f"curve{k}")
            d = workdir / f"pg-curve-{k}w-run{r}"
            d.mkdir()
            try:
                res = server_drain(cluster, queue, jobs_file, jobs, k or processes, d,
                                   timeout, 1 if k else slots)
                (per[k] if k else with_slots).append(res)
            finally:
                cluster.drop(db)
                shutil.rmtree(d, ignore_errors=True)
            what = (f"{k} workers" if k else f"{processes} workers × {slots} slots")
            limit = f" (limit with {k} spawners {limits[k][-1]:.0f}/s)" if k else ""
            log(f"pg workers curve run {r + 1}/{sizes.runs}, {what}: "
                f"{res['jobs_per_s']:.0f} jobs/s, server {res['server_cpu_us_per_job']:.0f} "
                f"µs/job{limit}")
    two = [x["jobs_per_s"] for x in per[2]]
    return {
        "jobs": jobs, "command": "true",
        "how": "k × `queuectl worker run --drain` against a queue filled by `enqueue --file`; "
               "jobs/s from the first job's start to the last job's end (start-up of the "
               "workers outside it), the server's CPU over the whole drain",
        "points": [{"workers": k,
                    "jobs_per_s": summary(x["jobs_per_s"] for x in per[k]),
                    "from_launch_jobs_per_s": summary(x["from_launch_jobs_per_s"]
                                                      for x in per[k]),
                    "server_cpu_us_per_job": summary(x["server_cpu_us_per_job"]
                                                     for x in per[k]),
                    "worker_cpu_us_per_job": summary(x["worker_cpu_us_per_job"]
                                                     for x in per[k]),
                    "vs_2_workers": paired([x["jobs_per_s"] for x in per[k]], two),
                    "limit_jobs_per_s": summary(limits[k]),
                    "limit_vs_2_spawners": paired(limits[k], limits[2])}
                   for k in CURVE_WORKERS],
        "slots": {"workers": processes, "slots": slots,
                  "how": f"{processes} × `queuectl worker run --drain --slots {slots}`, "
                         "measured as the curve's points, in the same runs",
                  "jobs_per_s": summary(x["jobs_per_s"] for x in with_slots),
                  "server_cpu_us_per_job": summary(x["server_cpu_us_per_job"]
                                                   for x in with_slots),
                  "worker_cpu_us_per_job": summary(x["worker_cpu_us_per_job"]
                                                   for x in with_slots),
                  "vs_2_workers": paired([x["jobs_per_s"] for x in with_slots], two),
                  "vs_16_workers": paired([x["jobs_per_s"] for x in with_slots],
                                          [x["jobs_per_s"] for x in per[16]])},
    }


IDLE_WORKERS = 16


@contextmanager
def idle_workers(cluster: PgCluster, sizes: Sizes, d: Path, count: int,
                 prefix: str) -> Iterator[StoreQueue]:
    """A fresh database with `count` idle `worker run` past their start-up, in dir `d`
    (made here); the workers stopped, the database dropped and `d` removed after."""
    queue, db = pg_queue(cluster, prefix)
    d.mkdir()
    workers: list[subprocess.Popen] = []
    try:
        workers = start_idle_workers(queue, d, count, prefix[0], 60 * sizes.timeout_scale,
                                     max(sizes.settle_seconds, 2.0))
        yield queue
    finally:
        queue.stop_workers(workers)
        cluster.drop(db)
        shutil.rmtree(d, ignore_errors=True)


def idle_part(cluster: PgCluster, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """What idle workers cost the server: 16 `worker run` on an empty queue, past their
    start-up, and the server's CPU over twice `idle_cpu_seconds`, per worker and second. A
    fleet's idle workers all poll one server (once a second, besides LISTEN)."""
    per: list[float] = []
    seconds = 2 * sizes.idle_cpu_seconds
    for r in range(sizes.runs):
        with idle_workers(cluster, sizes, workdir / f"pg-idle-run{r}", IDLE_WORKERS, "idle"):
            before, t0 = cluster.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            cpu, elapsed = cluster.cpu_seconds() - before, time.monotonic() - t0
            per.append(1000 * cpu / elapsed / IDLE_WORKERS)
        log(f"pg idle run {r + 1}/{sizes.runs}: {IDLE_WORKERS} idle workers, server "
            f"{per[-1]:.2f} ms of CPU a second each")
    return {"workers": IDLE_WORKERS, "seconds": seconds,
            "how": "k idle `queuectl worker run` on an empty queue (LISTEN, and the poll "
                   "once a second), past start-up; the server's CPU over the interval",
            "server_cpu_ms_per_s_per_worker": summary(per)}


def trickle_part(cluster: PgCluster, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """What a job costs the server when jobs come one at a time to idle workers (cron and
    admins, not a backlog): `trickle` to 2 and to 16 idle `worker run`, measuring the
    server's CPU. Each idle worker that woke for a job and looked for nothing added to it
    (before schema version 14)."""
    def one(k: int, r: int) -> tuple[float, list[float]]:
        with idle_workers(cluster, sizes, workdir / f"pg-trickle-{k}w-run{r}", k,
                          f"trickle{k}") as queue:
            return trickle(str(queue.db), sizes, cluster.cpu_seconds)

    return trickle_points(sizes, one, "pg trickle", "server_cpu_us_per_job",
                          "k idle `queuectl worker run`; single enqueues at the rate until the "
                          "last completed; the server's CPU over that, less its CPU at rest, "
                          "per job")


# -- enqueue ---------------------------------------------------------------------------------
def cold_part(cluster: PgCluster, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Cold `enqueue --cmd true` on PostgreSQL and on SQLite, alternating, per run; plus the
    import profile of a PostgreSQL enqueue."""
    pg_ms: list[float] = []
    lite_ms: list[float] = []
    profile: dict[str, Any] = {}
    for r in range(sizes.runs):
        queue, db = pg_queue(cluster, "cold")
        lite, d = fresh_queue(workdir, f"pg-cmp-sqlite-cold-run{r}")
        try:
            lite.create()
            ours, theirs = alternating(queue.argv("enqueue", "--cmd", "true"), queue.env,
                                       lite.argv("enqueue", "--cmd", "true"), lite.env,
                                       sizes.cold_calls)
            pg_ms.append(percentile(ours, 50))
            lite_ms.append(percentile(theirs, 50))
            if r == 0:
                profile = import_profile(queue)
        finally:
            cluster.drop(db)
            shutil.rmtree(d, ignore_errors=True)
        log(f"pg cold enqueue run {r + 1}/{sizes.runs}: {pg_ms[-1]:.1f} ms "
            f"(SQLite {lite_ms[-1]:.1f} ms)")
    return {
        "calls_per_run": sizes.cold_calls,
        "postgres_ms": summary(pg_ms, 2),
        "sqlite_ms": summary(lite_ms, 2),
        "vs_sqlite": paired(pg_ms, lite_ms),
        "how": "wall time of `queuectl --db URL enqueue --cmd true` from spawn to reap, over "
               "the Unix socket; alternating with the same call on a SQLite file",
        "import_profile": profile,
    }


def batch_part(cluster: PgCluster, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """One `enqueue --file` of `pg_batch_jobs` jobs, on PostgreSQL and on SQLite."""
    jobs = sizes.pg_batch_jobs
    jobs_file = write_jobs_file(workdir / f"pg-batch-{jobs}.jsonl", jobs)
    pg: list[float] = []
    lite: list[float] = []
    for r in range(sizes.runs):
        queue, db = pg_queue(cluster, "batch")
        try:
            pg.append(jobs / queue.enqueue_file(jobs_file))
        finally:
            cluster.drop(db)
        lq, d = fresh_queue(workdir, f"pg-cmp-sqlite-batch-run{r}")
        lq.create()
        lite.append(jobs / lq.enqueue_file(jobs_file))
        shutil.rmtree(d, ignore_errors=True)
        log(f"pg batch enqueue run {r + 1}/{sizes.runs}: {pg[-1]:.0f} jobs/s "
            f"(SQLite {lite[-1]:.0f})")
    return {
        "jobs": jobs,
        "postgres_jobs_per_s": summary(pg, 0),
        "sqlite_jobs_per_s": summary(lite, 0),
        "how": "one `queuectl enqueue --file` call, wall time including start-up",
    }


# -- a million finished jobs -----------------------------------------------------------------
def claim_part(cluster: PgCluster, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Claim latency with `scale_rows` finished jobs vs none: each run copies a filled
    template database (CREATE DATABASE ... TEMPLATE) and makes an empty one (in alternating
    order), enqueues `claim_samples` jobs into each with `enqueue --file`, then claims them
    all."""
    template, tdb = pg_queue(cluster, "scale_template")
    empty_bytes = int(cluster.sql(tdb, f"SELECT pg_database_size('{tdb}')").strip())
    fill = fill_finished(PgFill(cluster, tdb, SCHEMA), sizes.scale_rows)
    # As autovacuum would have done long before a real queue got there.
    cluster.sql(tdb, "VACUUM (ANALYZE)", timeout=3600)
    fill["db_bytes"] = int(cluster.sql(tdb, f"SELECT pg_database_size('{tdb}')"))
    log(f"pg scale: {sizes.scale_rows} finished jobs inserted in {fill['fill_seconds']:.1f} s "
        f"({fill['db_bytes'] / 1e6:.0f} MB)")
    claim_file = write_jobs_file(workdir / f"pg-claim-{sizes.claim_samples}.jsonl",
                                 sizes.claim_samples)
    claims: dict[str, list[list[float]]] = {"empty": [], "full": []}
    try:
        for r in range(sizes.runs):
            for kind in ("empty", "full") if r % 2 == 0 else ("full", "empty"):
                db = cluster.database(f"claim_{kind}", template=tdb if kind == "full" else None)
                try:
                    queue = StoreQueue(cluster.locator(db), env=pg_env())
                    queue.create()
                    queue.enqueue_file(claim_file)
                    claims[kind].append(claim_latencies(str(queue.db), sizes.claim_samples,
                                                        for_worker=True))
                finally:
                    cluster.drop(db)
            log(f"pg scale run {r + 1}/{sizes.runs}: claim p50 "
                f"{percentile(claims['empty'][-1], 50):.2f} ms empty, "
                f"{percentile(claims['full'][-1], 50):.2f} ms full")
    finally:
        cluster.drop(tdb)
        del template
    return {
        "finished_rows": sizes.scale_rows,
        "fill": fill,
        "db_mb_per_100k_finished": round((fill["db_bytes"] - empty_bytes) / sizes.scale_rows
                                         * 100_000 / 1e6, 2),
        "claim_samples": sizes.claim_samples,
        "claim_method": "open_store(locator, for_worker=True).claim_next() timed in process",
        **{f"claim_{k}": {"p50_ms": summary((percentile(c, 50) for c in v), 4),
                          "p99_ms": summary((percentile(c, 99) for c in v), 4)}
           for k, v in claims.items()},
        "claim_p50_full_vs_empty": paired([percentile(c, 50) for c in claims["full"]],
                                          [percentile(c, 50) for c in claims["empty"]]),
    }


def fresh_pg(cluster: PgCluster) -> Callable[[str, int], AbstractContextManager[Queue]]:
    """A fresh database per kind and run, dropped after (for bench.blocked)."""
    @contextmanager
    def queue_for(kind: str, r: int) -> Iterator[Queue]:
        db = cluster.database(f"blocked_{kind}_{r}")
        try:
            queue = StoreQueue(cluster.locator(db), env=pg_env())
            queue.create()
            yield queue
        finally:
            cluster.drop(db)

    return queue_for


# -- behind PgBouncer --------------------------------------------------------------------------
POOL = 10  # PgBouncer's default_pool_size, as in tests/test_pgbouncer.py
POOLER_WORKERS = 2


def _listen_direct(cluster: PgCluster, db: str) -> str:
    """`&listen=` naming the server itself, percent-encoded as a locator parameter."""
    from urllib.parse import quote

    return "&listen=" + quote(cluster.locator(db), safe="/:@")


def pooler_part(cluster: PgCluster, sizes: Sizes, workdir: Path,
                rng: random.Random) -> dict[str, Any]:
    """The same queue reached directly and through a PgBouncer in transaction pooling mode
    (pool of 10, its Unix socket) in front of the run's server: per run, back to back, a
    2-worker drain of `drain_jobs` jobs each way (order alternating); then idle pickup
    (as the pickup part, `pickup_jobs` capped at 100) directly (LISTEN), through the pooler
    with listen= naming the server (LISTEN straight to it), and through the pooler by
    default (a pooler detected: polling every 0.5 s)."""
    try:
        bouncer = starter.start_pgbouncer(cluster.server, POOL, parent=cluster.parent)
    except starter.Unavailable as exc:
        return {"skipped": str(exc)}
    try:
        def url(db: str, way: str) -> str:
            if way == "direct":
                return cluster.locator(db)
            return bouncer.locator(dbname=db) + (_listen_direct(cluster, db)
                                                 if way == "pooler_listen" else "")

        jobs = sizes.drain_jobs
        jobs_file = write_jobs_file(workdir / f"pooler-jobs-{jobs}.jsonl", jobs)
        timeout = (60 + jobs / 20) * sizes.timeout_scale
        drains: dict[str, list[dict[str, Any]]] = {"direct": [], "pooler": []}
        for r in range(sizes.runs):
            for way in ("direct", "pooler") if r % 2 == 0 else ("pooler", "direct"):
                db = cluster.database(f"pooler_drain_{way}")
                d = workdir / f"pooler-drain-{way}-run{r}"
                d.mkdir()
                try:
                    queue = StoreQueue(url(db, way), env=pg_env())
                    queue.create()
                    drains[way].append(server_drain(cluster, queue, jobs_file, jobs,
                                                    POOLER_WORKERS, d, timeout))
                finally:
                    cluster.drop(db)
                    shutil.rmtree(d, ignore_errors=True)
            log(f"pooler drain run {r + 1}/{sizes.runs}: direct "
                f"{drains['direct'][-1]['jobs_per_s']:.0f} jobs/s, through PgBouncer "
                f"{drains['pooler'][-1]['jobs_per_s']:.0f} jobs/s")
        pickup_sizes = replace(sizes, pickup_jobs=min(100, sizes.pickup_jobs))
        pickups: dict[str, dict[str, Any]] = {}
        for way in ("direct", "pooler_listen", "pooler_poll"):
            def make(d: Path, r: int, way: str = way) -> Queue:
                return StoreQueue(url(cluster.database(f"pooler_pickup_{r}"), way),
                                  env=pg_env())
            pickups[way] = pickup_section(pickup_sizes, workdir, rng, make, f"pooler-{way}")
        keys = ("jobs_per_s", "worker_cpu_us_per_job", "server_cpu_us_per_job")
        return {
            "pool_size": POOL,
            "pool_mode": "transaction",
            "workers": POOLER_WORKERS,
            "jobs": jobs,
            "how": "PgBouncer (Debian's, pool_mode = transaction, default_pool_size = 10, Unix "
                   "socket) in front of the run's server; per run a 2-worker drain directly and "
                   "through it, back to back; then idle pickup three ways",
            "drain": {way: {k: summary(x[k] for x in runs) for k in keys}
                      for way, runs in drains.items()},
            "drain_pooler_vs_direct": paired([x["jobs_per_s"] for x in drains["pooler"]],
                                             [x["jobs_per_s"] for x in drains["direct"]]),
            "pickup": {way: {k: v for k, v in p.items()
                             if k in ("jobs", "p50_ms", "p99_ms", "idle_cpu_pct")}
                       for way, p in pickups.items()},
            "pickup_ways": {"direct": "LISTEN on the server",
                            "pooler_listen": "through PgBouncer, listen=URL of the server",
                            "pooler_poll": "through PgBouncer, default: polling every 0.5 s"},
        }
    finally:
        bouncer.stop()


def pooler_section(sizes: Sizes, workdir: Path, rng: random.Random) -> dict[str, Any]:
    """The pooler part alone (`--only pgpooler`), or {"skipped": reason}."""
    cluster, reason = shared_cluster(None)
    if cluster is None:
        return {"skipped": reason}
    reason = backend_unusable(cluster)
    if reason:
        return {"skipped": reason}
    return pooler_part(cluster, sizes, workdir, rng)


# -- the section -----------------------------------------------------------------------------
PARTS = ("drain", "workers", "idle", "trickle", "pickup", "cold_enqueue", "batch_enqueue",
         "scale", "blocked")
# The server's CPU: the 2-worker drain (with the spawn limit and SQLite), the curve, and
# idle workers (at rest, and under a trickle of enqueues).
CPU_PARTS = ("drain", "workers", "idle", "trickle")


def pg_section(sizes: Sizes, workdir: Path, rng: random.Random,
               peers: dict[str, PgPeerDrain | str],
               parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """The PostgreSQL rows of `parts` (all by default), or {"skipped": reason}. A part that
    fails is recorded under "errors" (lifted into the run's errors) and the others still
    run."""
    cluster, reason = shared_cluster(None)
    if cluster is None:
        log(f"skipping pg: {reason}")
        return {"skipped": reason}
    reason = backend_unusable(cluster)
    if reason:
        log(f"skipping pg: {reason}")
        return {"skipped": reason, "versions": versions(cluster)}
    out: dict[str, Any] = {"versions": versions(cluster), "locator_kind": "Unix socket, trust",
                           "errors": {}}

    def pickup() -> dict[str, Any]:
        def make(d: Path, r: int) -> Queue:
            return StoreQueue(cluster.locator(cluster.database(f"pickup{r}")), env=pg_env())
        return pickup_section(sizes, workdir, rng, make, "pg-pickup")

    every: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("drain", lambda: drain_part(cluster, sizes, workdir, peers)),
        ("workers", lambda: workers_part(cluster, sizes, workdir)),
        ("idle", lambda: idle_part(cluster, sizes, workdir)),
        ("trickle", lambda: trickle_part(cluster, sizes, workdir)),
        ("pickup", pickup),
        ("cold_enqueue", lambda: cold_part(cluster, sizes, workdir)),
        ("batch_enqueue", lambda: batch_part(cluster, sizes, workdir)),
        ("scale", lambda: claim_part(cluster, sizes, workdir)),
        ("blocked", lambda: blocked_part(sizes, workdir, fresh_pg(cluster), "pg")),
        ("pooler", lambda: pooler_part(cluster, sizes, workdir, rng)),
    ]
    for name, fn in every:
        if name not in parts:
            continue
        try:
            out[name] = fn()
        except (Exception, subprocess.TimeoutExpired) as exc:  # noqa: BLE001 - recorded
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"pg {name} failed: {out['errors'][name]}")
    return out
