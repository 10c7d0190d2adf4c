"""The PostgreSQL peers, Procrastinate 3.x and PgQueuer 1.x, on the same workloads and the same
throwaway server as queuectl's PostgreSQL rows: drain of the same jobs with 2 worker processes,
idle pickup, cold enqueue. Each peer lives in a venv of its own under bench/ (their
dependencies never meet queuectl's or each other's), installed by the bench on first use; a
peer that cannot be installed or run is skipped with the reason recorded.
"""

import json
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    PROCS,
    Sizes,
    log,
    make_venv,
    percentile,
    run,
    summary,
    wait_until,
)
from bench.latency import latency_summary, pickup_series, warm_enqueuer, warm_up
from bench.pgserver import SUPERUSER, PgCluster, pg_env, shared_cluster
from bench.throughput import exit_cpu

APPS = BENCH_DIR / "peer_apps"


@dataclass(frozen=True)
class PgPeer:
    """How to install, start and watch one peer (or one configuration of it)."""

    name: str  # as reported
    package: str  # its venv is bench/.venv-PACKAGE
    requirements: tuple[str, ...]  # pip requirement specifiers (package names only)
    module: str  # in bench/peer_apps
    setup: str  # worker setup, as recorded in the results
    remaining_sql: str  # jobs not finished yet
    processes: int = 2
    env: tuple[tuple[str, str], ...] = ()
    drain_only: bool = False  # a second configuration, measured on the drain only

    @property
    def venv(self) -> Path:
        return BENCH_DIR / f".venv-{self.package}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def worker_argv(self, drain: bool) -> list[str]:
        if self.package == "procrastinate":
            return [str(self.venv / "bin" / "procrastinate"), f"--app={self.module}.app",
                    "worker", "--concurrency", "1", "--queues", "bench",
                    *(["--one-shot"] if drain else [])]
        return [str(self.python), "-c", f"import {self.module} as a; a.work({drain})"]


PROCRASTINATE_REQS = ("procrastinate>=3,<4", "psycopg[binary]")
PGQUEUER_REQS = ("pgqueuer>=1,<2", "asyncpg")
PGQUEUER_LEFT = "SELECT count(*) FROM pgqueuer"
PEERS = (
    PgPeer("procrastinate", "procrastinate", PROCRASTINATE_REQS, "procrastinate_app",
           "2 × `procrastinate worker --concurrency 1` (defaults otherwise: LISTEN/NOTIFY, "
           "5 s polling); a sync task running subprocess.run(cmd, shell=True)",
           "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"),
    # Concurrency 2 in PgQueuer's own terms: one worker process capped at 2 running jobs
    # (max_concurrent_tasks must be at least twice the batch size, hence batch size 1). A
    # per-entrypoint concurrency_limit=2 across 2 processes ran at ~20 jobs/s here, and 2
    # processes capped at 2 each run up to 4 commands at once.
    PgPeer("pgqueuer", "pgqueuer", PGQUEUER_REQS, "pgqueuer_app",
           "1 × pgqueuer.run(factory) process, as `pgq run`, with max_concurrent_tasks=2 "
           "and batch_size=1 (defaults otherwise: LISTEN/NOTIFY); the entrypoint runs "
           "subprocess.run(cmd, shell=True) in a thread", PGQUEUER_LEFT, processes=1,
           env=(("BENCH_PGQ_MAX", "2"), ("BENCH_PGQ_BATCH", "1"))),
    PgPeer("pgqueuer-defaults", "pgqueuer", PGQUEUER_REQS, "pgqueuer_app",
           "2 × pgqueuer.run(factory) processes with PgQueuer's defaults (batch size 10, no "
           "cap: up to 20 commands at once)", PGQUEUER_LEFT, drain_only=True),
)


def install(peer: PgPeer) -> tuple[str | None, str]:
    """(version, reason if unavailable): the peer's own venv, created on first use."""
    check = [str(peer.python), "-c",
             f"import importlib.metadata as m; print(m.version({peer.package!r}))"]

    def version() -> str | None:
        if not peer.python.exists():
            return None
        res = subprocess.run(check, capture_output=True, text=True, timeout=60)
        return res.stdout.strip() if res.returncode == 0 else None

    found = version()
    if found:
        return found, ""
    reason = make_venv(peer.venv, peer.requirements, 900)
    found = version()
    if reason or not found:
        return None, reason or f"{peer.package} is not importable after pip install"
    return found, ""


class PeerDb:
    """One fresh database on the shared cluster with the peer's schema installed."""

    def __init__(self, peer: PgPeer, cluster: PgCluster, d: Path) -> None:
        self.peer, self.cluster, self.dir = peer, cluster, d
        d.mkdir(parents=True, exist_ok=True)
        self.db = cluster.database(peer.package)
        assert cluster.dir is not None
        self.env = pg_env([
            ("BENCH_PG_DSN", cluster.dsn(self.db)), ("BENCH_PG_HOST", str(cluster.dir)),
            ("BENCH_PG_PORT", str(cluster.port)), ("BENCH_PG_USER", SUPERUSER),
            ("BENCH_PG_DB", self.db), ("PYTHONPATH", str(APPS)), *peer.env,
        ])
        self.workers: list[subprocess.Popen] = []
        self.py("setup()")
        self.conn = cluster.connect(self.db)

    def py(self, call: str, *args: str, timeout: float = 600) -> str:
        code = f"import sys, {self.peer.module} as app; app.{call}"
        return run([self.peer.python, "-c", code, *args], env=self.env, timeout=timeout,
                   cwd=self.dir).stdout

    def remaining(self) -> int:
        if self.conn is None:
            return int(self.cluster.sql(self.db, self.peer.remaining_sql).strip())
        with self.conn.cursor() as cur:
            cur.execute(self.peer.remaining_sql)
            return int(cur.fetchone()[0])

    def all_exited(self) -> bool:
        return all(w.poll() is not None for w in self.workers)

    def log_tail(self) -> str:
        try:
            return (self.dir / "worker1.log").read_text()[-300:]
        except OSError:
            return ""

    def start_workers(self, count: int, drain: bool) -> None:
        for i in range(count):
            with open(self.dir / f"worker{i + 1}.log", "ab") as out:
                self.workers.append(PROCS.spawn(self.peer.worker_argv(drain), env=self.env,
                                                cwd=self.dir, stdout=out, stderr=out))

    def close(self) -> None:
        for w in self.workers:
            PROCS.stop(w, timeout=10)
        self.workers = []
        if self.conn is not None:
            self.conn.close()
        self.cluster.drop(self.db)


def peer_drain(peer: PgPeer, cluster: PgCluster, d: Path, jobs: int,
               timeout: float) -> dict[str, Any]:
    """All jobs enqueued first (one process, in batches), then the workers started;
    timed from starting them to no job left (polled every 10 ms). Also their CPU per job
    (from /proc/PID/stat when they exit, or are stopped) and the server's."""
    pdb = PeerDb(peer, cluster, d)
    try:
        enqueue_s = json.loads(pdb.py("enqueue_many(int(sys.argv[1]), 'true')",
                                      str(jobs)))["seconds"]
        before = cluster.cpu_seconds()
        t0 = time.perf_counter()
        pdb.start_workers(peer.processes, drain=True)
        every = 0.01 if pdb.conn is not None else 0.05
        wait_until(lambda: pdb.remaining() == 0 or pdb.all_exited(), timeout,
                   f"{peer.name} to drain", every)
        if pdb.remaining():
            raise RuntimeError(f"{peer.name}'s workers exited with {pdb.remaining()} jobs left "
                               f"(see {d}/worker*.log): {pdb.log_tail()}")
        busy = time.perf_counter() - t0
        server = cluster.cpu_seconds() - before
        cpu = [exit_cpu(w, time.monotonic() + 15) for w in pdb.workers]
        pdb.workers = []
        return {
            "from_launch_jobs_per_s": jobs / busy,
            "enqueue_jobs_per_s": jobs / enqueue_s,
            "worker_cpu_us_per_job": 1e6 * sum(c[0] for c in cpu) / jobs,
            "worker_cpu_with_children_us_per_job": 1e6 * sum(c[0] + c[1] for c in cpu) / jobs,
            "server_cpu_us_per_job": 1e6 * server / jobs,
        }
    finally:
        pdb.close()


def peer_pickup(peer: PgPeer, cluster: PgCluster, d: Path, sizes: Sizes,
                rng: random.Random) -> list[float]:
    """Idle workers; jobs enqueued one at a time from one warm process."""
    pdb = PeerDb(peer, cluster, d)
    marks = d / "marks"
    marks.mkdir()
    timeout = 60 * sizes.timeout_scale
    server, enqueue = warm_enqueuer([peer.python, "-c", f"import {peer.module} as a; a.serve()"],
                                    pdb.env, d, peer.name)
    try:
        pdb.start_workers(peer.processes, drain=False)
        warm_up(enqueue, marks, timeout)
        return pickup_series(enqueue, marks, sizes.pickup_jobs, sizes.pickup_gap, rng, timeout)
    finally:
        PROCS.stop(server, timeout=5)
        pdb.close()


def peer_cold(peer: PgPeer, cluster: PgCluster, d: Path, calls: int) -> list[float]:
    """ms per cold `python -c 'import app; app.defer_one("true")'` in the peer's venv."""
    pdb = PeerDb(peer, cluster, d)
    try:
        pdb.py("defer_one('true')")  # not counted
        out = []
        for _ in range(calls):
            t = time.perf_counter()
            pdb.py("defer_one('true')", timeout=60)
            out.append((time.perf_counter() - t) * 1000)
        return out
    finally:
        pdb.close()


_INSTALLED: dict[str, tuple[str | None, str]] = {}


def prepare() -> dict[str, tuple[str | None, str]]:
    """Install each peer once per run: {name: (version, reason if skipped)}."""
    for peer in PEERS:
        if peer.package not in _INSTALLED:
            _INSTALLED[peer.package] = install(peer)
            if _INSTALLED[peer.package][1]:
                log(f"skipping {peer.package}: {_INSTALLED[peer.package][1]}")
    return _INSTALLED


def pg_drains() -> dict[str, Any]:
    """Each peer's drain function (cluster, dir, jobs, timeout) -> figures, or why not."""
    out: dict[str, Any] = {}
    for peer in PEERS:
        version, reason = prepare()[peer.package]
        out[peer.name] = (lambda c, d, n, t, p=peer: peer_drain(p, c, d, n, t)) if version \
            else reason
    return out


def pgpeers_section(sizes: Sizes, workdir: Path, rng: random.Random,
                    with_drain: bool) -> dict[str, Any]:
    """Pickup and cold enqueue of each peer (and its drain when the pg section does not run
    it next to queuectl's)."""
    cluster, reason = shared_cluster(None)
    if cluster is None:
        return {p.name: {"skipped": reason} for p in PEERS}
    out: dict[str, Any] = {}
    timeout = (60 + sizes.drain_jobs / 20) * sizes.timeout_scale
    for peer in PEERS:
        if peer.drain_only and not with_drain:
            continue
        version, reason = prepare()[peer.package]
        if not version:
            out[peer.name] = {"skipped": reason}
            continue
        cold: list[float] = []
        pickups: list[list[float]] = []
        drains: list[dict[str, Any]] = []
        try:
            for r in range(sizes.runs):
                base = workdir / f"{peer.name}-run{r}"
                if with_drain:
                    drains.append(peer_drain(peer, cluster, base / "drain", sizes.drain_jobs,
                                             timeout))
                if not peer.drain_only:
                    cold.append(percentile(peer_cold(peer, cluster, base / "cold",
                                                     sizes.cold_calls), 50))
                    pickups.append(peer_pickup(peer, cluster, base / "pickup", sizes, rng))
                    log(f"{peer.name} run {r + 1}/{sizes.runs}: cold enqueue {cold[-1]:.1f} "
                        f"ms, pickup p50 {percentile(pickups[-1], 50):.1f} ms")
                shutil.rmtree(base, ignore_errors=True)
        except (Exception, subprocess.TimeoutExpired) as exc:  # noqa: BLE001 - recorded
            out[peer.name] = {"skipped": f"could not run: {type(exc).__name__}: {exc}",
                              "version": version}
            log(f"{peer.name} failed: {out[peer.name]['skipped']}")
            continue
        out[peer.name] = {"version": version, "setup": peer.setup, "server": cluster.version}
        if not peer.drain_only:
            out[peer.name] |= {
                "cold_enqueue_ms": summary(cold, 2),
                "cold_enqueue_method": f"python -c 'import {peer.module}; "
                                       "defer_one(\"true\")' in the peer's venv (connect, "
                                       "enqueue one job, exit)",
                "pickup": latency_summary(pickups),
                "pickup_enqueue": "from one warm process (enqueue cost does not enter the "
                                  "latency)",
            }
        if drains:
            out[peer.name]["drain"] = {k: summary(x[k] for x in drains) for k in drains[0]}
    return out
