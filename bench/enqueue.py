"""What enqueueing costs: one call from a cold process (what cron pays) against a bare
interpreter start, a batch through `--file`, and where the cold call's imports go."""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Sizes, clean_env, log, paired, percentile, run, summary
from bench.qctl import Queue, write_jobs_file

BASELINE = [sys.executable, "-c", "import sqlite3, json"]


def timed_call(argv: list[str], env: dict[str, str]) -> float:
    """Wall milliseconds from spawning argv to reaping it."""
    t = time.perf_counter()
    run(argv, env=env, timeout=60)
    return (time.perf_counter() - t) * 1000


def alternating(a: list[str], a_env: dict[str, str], b: list[str], b_env: dict[str, str],
                calls: int) -> tuple[list[float], list[float]]:
    """ms of `calls` runs each of a and b, alternating, after one of each not counted (the
    first touch of a new database)."""
    timed_call(a, a_env)
    timed_call(b, b_env)
    a_ms, b_ms = [], []
    for _ in range(calls):
        a_ms.append(timed_call(a, a_env))
        b_ms.append(timed_call(b, b_env))
    return a_ms, b_ms


def cold_calls(queue: Queue, calls: int) -> tuple[list[float], list[float]]:
    """Alternate one cold enqueue and one bare interpreter start; ms each."""
    env = clean_env()
    return alternating(queue.argv("enqueue", "--cmd", "true"), env, BASELINE, env, calls)


def import_profile(queue: Queue, repeats: int = 3) -> dict[str, Any]:
    """`-X importtime` of one cold enqueue (median of `repeats`), in milliseconds: the
    cumulative time of each import made at top level (by the interpreter's `site`, by
    queuectl's entry point and its lazy imports), and the self time summed per package."""
    tops: dict[str, list[float]] = {}
    selfs: dict[str, list[float]] = {}
    for _ in range(repeats):
        env = clean_env(PYTHONPROFILEIMPORTTIME="1")
        err = run(queue.argv("enqueue", "--cmd", "true"), env=env, timeout=60).stderr
        top: dict[str, float] = {}
        per: dict[str, float] = {}
        for line in err.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cum_us, raw = line[12:].split("|", 2)
            name = raw.strip()
            if raw[1:2] != " ":  # not indented: imported at top level
                top[name] = top.get(name, 0.0) + int(cum_us) / 1000
            package = name.split(".")[0]
            per[package] = per.get(package, 0.0) + int(self_us) / 1000
        for k, v in top.items():
            tops.setdefault(k, []).append(v)
        for k, v in per.items():
            selfs.setdefault(k, []).append(v)

    def ranked(d: dict[str, list[float]], n: int) -> dict[str, float]:
        med = {k: statistics.median(v) for k, v in d.items()}
        return {k: round(v, 1) for k, v in sorted(med.items(), key=lambda kv: -kv[1])[:n]}

    return {
        "total_import_ms": round(sum(statistics.median(v) for v in selfs.values()), 1),
        "top_level_cumulative_ms": ranked(tops, 10),
        "self_ms_by_package": ranked(selfs, 12),
    }


def transaction_ms(db: Path, count: int) -> dict[str, Any]:
    """ms per single-job `SQLiteStore.enqueue()` in process: the transaction alone, without
    a process start; what a cold enqueue could cost at best."""
    try:
        from queuectl.backends.sqlite import SQLiteStore
        from queuectl.job import JobSpec

        store = SQLiteStore(db)
        try:
            times = []
            for _ in range(count):
                t = time.perf_counter()
                store.enqueue([JobSpec(command="true")])
                times.append((time.perf_counter() - t) * 1000)
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - an internal API may change; report, go on
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"p50_ms": round(percentile(times, 50), 3), "p99_ms": round(percentile(times, 99), 3)}


def burst(queue: Queue, workdir: Path, count: int, hog: bool) -> dict[str, Any]:
    """`count` cold `enqueue` processes started at once while 2 idle workers wait (cron at
    the top of the minute), optionally beside a CPU hog on every core: each call's latency
    from its spawn to its exit, and how many failed."""
    workers = [queue.start_worker(f"burst-{i}", workdir / f"burst-w{i}.log") for i in range(2)]
    hogs = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"], start_new_session=True)
            for _ in range(os.cpu_count() or 2 if hog else 0)]
    try:
        started: dict[int, float] = {}
        procs = []
        for _ in range(count):
            proc = subprocess.Popen(queue.argv("enqueue", "--cmd", "true"), env=queue.env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started[proc.pid] = time.perf_counter()
            procs.append(proc)
        latency, failed = [], 0
        for proc in procs:
            failed += proc.wait(timeout=600) != 0
            latency.append((time.perf_counter() - started[proc.pid]) * 1000)
    finally:
        for h in hogs:
            os.killpg(h.pid, 9)
            h.wait()
        queue.stop_workers(workers)
    return {"calls": count, "failed": failed, "p50_ms": round(percentile(latency, 50), 1),
            "p99_ms": round(percentile(latency, 99), 1), "cpu_hog": hog}


def enqueue_section(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    jobs_file = write_jobs_file(workdir / f"jobs-batch-{sizes.batch_jobs}.jsonl",
                                sizes.batch_jobs)
    cold, bare, batch = [], [], []
    txn: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    for r in range(sizes.runs):
        d = workdir / f"enqueue-run{r}"
        d.mkdir()
        queue = Queue(d / "queue.db")
        queue.create()
        ours, base = cold_calls(queue, sizes.cold_calls)
        cold.append(percentile(ours, 50))
        bare.append(percentile(base, 50))
        if r == 0:
            profile = import_profile(queue)
        txn.append(transaction_ms(queue.db, 10 * sizes.cold_calls))
        bq = Queue(d / "batch.db")
        bq.create()
        batch.append(sizes.batch_jobs / bq.enqueue_file(jobs_file))
        log(f"enqueue run {r + 1}/{sizes.runs}: cold {cold[-1]:.1f} ms (bare python "
            f"{bare[-1]:.1f} ms), batch {batch[-1]:.0f} jobs/s")
    bursts = []
    for hog in (False, True):
        bq = Queue(workdir / f"burst-{'hog' if hog else 'quiet'}.db")
        bq.create()
        bursts.append(burst(bq, workdir, sizes.burst_calls, hog))
        log(f"enqueue burst of {sizes.burst_calls}{' beside a CPU hog' if hog else ''}: "
            f"p50 {bursts[-1]['p50_ms']} ms, p99 {bursts[-1]['p99_ms']} ms, "
            f"{bursts[-1]['failed']} failed")
    cold_s, bare_s = summary(cold, 2), summary(bare, 2)
    return {
        "cold_calls_per_run": sizes.cold_calls,
        "cold_enqueue_ms": cold_s,
        "python_baseline_ms": bare_s,
        "baseline": " ".join(BASELINE[1:]) + f" (interpreter {sys.executable})",
        "cold_vs_baseline": paired(cold, bare),
        "import_profile": profile,
        "transaction_in_process_ms": {
            q: summary((t[q] for t in txn if q in t), 3) for q in ("p50_ms", "p99_ms")
        } | ({"error": txn[0]["error"]} if txn and "error" in txn[0] else {}),
        "batch_jobs": sizes.batch_jobs,
        "batch_jobs_per_s": summary(batch, 0),
        "batch_method": "one `queuectl enqueue --file` call, wall time including start-up",
        "burst": bursts,
    }
