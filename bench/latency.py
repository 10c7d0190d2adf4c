"""Pickup latency on an idle queue, an idle worker's CPU and memory, and memory after many jobs.

A job's start is measured by the job itself: its command is `date +%s.%N > MARK`; the
enqueuer notes time.time() when its enqueue returned. The same clock on both sides.
"""

import random
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    PROCS,
    Sizes,
    cpu_seconds,
    log,
    paired,
    percentile,
    rss_mb,
    run_seconds,
    summary,
    wait_until,
)
from bench.qctl import Queue, RecordingEnqueue, write_jobs_file

Enqueue = Callable[[str], float]  # enqueue this command; return time.time() when it returned


def mark_command(mark: Path) -> str:
    return f"date +%s.%N > {shlex.quote(str(mark))}"


def read_mark(mark: Path) -> float | None:
    try:
        text = mark.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text.endswith("\n") else None  # complete once the newline is there


def warm_up(enqueue: Enqueue, marks: Path, timeout: float) -> None:
    """One job through the system first, so that start-up costs are not in the figures."""
    mark = marks / "warm-up"
    enqueue(mark_command(mark))
    wait_until(lambda: read_mark(mark) is not None, timeout, "the warm-up job to run", 0.01)


def warm_enqueuer(argv: list[str | Path], env: dict[str, str], cwd: Path,
                  name: str) -> tuple[subprocess.Popen, Enqueue]:
    """A peer's warm process that enqueues each command it reads (a line on stdin) and
    answers with time.time() when its enqueue returned (`serve()` of bench/peer_apps): the
    process, and its Enqueue."""
    server = PROCS.spawn(argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)

    def enqueue(command: str) -> float:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(command + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} enqueuer exited")
        return float(line)

    return server, enqueue


def pickup_series(enqueue: Enqueue, marks: Path, count: int, gap: tuple[float, float],
                  rng: random.Random, timeout: float) -> list[float]:
    """Enqueue `count` jobs one at a time with random pauses; ms from each enqueue returning
    to its command starting."""
    returned, started = pickup_times(enqueue, marks, count, gap, rng, timeout)
    return [(s - r) * 1000 for s, r in zip(started, returned, strict=True)]


def pickup_times(enqueue: Enqueue, marks: Path, count: int, gap: tuple[float, float],
                 rng: random.Random, timeout: float) -> tuple[list[float], list[float]]:
    """(when each enqueue returned, when its command started), epoch seconds."""
    returned: list[float] = []
    for i in range(count):
        returned.append(enqueue(mark_command(marks / str(i))))
        time.sleep(rng.uniform(*gap))

    def all_started() -> bool:
        return all(read_mark(marks / str(i)) is not None for i in range(count))

    wait_until(all_started, timeout, f"{count} jobs to start", 0.05)
    return returned, [read_mark(marks / str(i)) or 0.0 for i in range(count)]


def latency_summary(runs: list[list[float]]) -> dict[str, Any]:
    """Percentiles per run, then median/min/max of each across runs."""
    return {
        "p50_ms": summary((percentile(r, 50) for r in runs), 2),
        "p95_ms": summary((percentile(r, 95) for r in runs), 2),
        "p99_ms": summary((percentile(r, 99) for r in runs), 2),
        "max_ms": summary((max(r) for r in runs), 2),
        "min_ms": summary((min(r) for r in runs), 2),
    }


def spawn_floor(marks: Path, count: int) -> list[float]:
    """The same measurement without a queue: Popen the mark command directly (ms)."""
    out = []
    for i in range(count):
        mark = marks / f"floor-{i}"
        t = time.time()
        subprocess.run(["/bin/sh", "-c", mark_command(mark)], stdin=subprocess.DEVNULL,
                       start_new_session=True, timeout=10, check=True)
        out.append(((read_mark(mark) or t) - t) * 1000)
    return out


def idle_cpu_pct(pids: list[int], seconds: float) -> list[float]:
    """Share of one core each pid used over `seconds` (utime + stime from /proc)."""
    before = [cpu_seconds(p) for p in pids]
    t = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t
    return [100 * (cpu_seconds(p) - b) / elapsed for p, b in zip(pids, before, strict=True)]


def start_idle_workers(queue: Queue, d: Path, count: int, prefix: str, timeout: float,
                       settle: float) -> list[subprocess.Popen]:
    queue.create()
    workers = [queue.start_worker(f"{prefix}{i + 1}", d / f"{prefix}{i + 1}.log")
               for i in range(count)]
    wait_until(lambda: queue.registered_workers() == count, timeout, "workers to register")
    time.sleep(settle)  # past start-up: first heartbeat, config read
    for w in workers:
        if w.poll() is not None:
            raise RuntimeError(f"worker exited with {w.returncode} (see {d})")
    return workers


def pickup_section(sizes: Sizes, workdir: Path, rng: random.Random,
                   make_queue: Callable[[Path, int], Queue] | None = None,
                   label: str = "pickup") -> dict[str, Any]:
    """2 idle workers: their CPU and RSS at rest, then pickup latency of single enqueues,
    both from each `enqueue` returning and from its job's `created_at` (taken by enqueue
    just before its commit: the queue's own latency, never below zero). `make_queue(dir,
    run)` gives a fresh queue per run (default: a SQLite file in dir)."""
    timeout = 60 * sizes.timeout_scale
    runs: list[list[float]] = []
    since_commit: list[list[float]] = []
    cpu: list[float] = []
    rss: list[float] = []
    floor: list[float] = []
    for r in range(sizes.runs):
        d = workdir / f"{label}-run{r}"
        marks = d / "marks"
        marks.mkdir(parents=True)
        queue = make_queue(d, r) if make_queue else Queue(d / "queue.db")
        workers = start_idle_workers(queue, d, 2, "p", timeout, sizes.settle_seconds)
        enqueue = RecordingEnqueue(queue)
        try:
            pids = [w.pid for w in workers]
            cpu += idle_cpu_pct(pids, sizes.idle_cpu_seconds)
            rss += [rss_mb(p) for p in pids]
            warm_up(enqueue, marks, timeout)
            returned, started = pickup_times(enqueue, marks, sizes.pickup_jobs,
                                             sizes.pickup_gap, rng, timeout)
        finally:
            queue.stop_workers(workers)
        created = queue.created_at(enqueue.ids[1:])  # [0] is the warm-up job
        runs.append([(s - t) * 1000 for s, t in zip(started, returned, strict=True)])
        since_commit.append([(s - t) * 1000 for s, t in zip(started, created, strict=True)])
        floor.append(percentile(spawn_floor(marks, 20), 50))
        log(f"{label} run {r + 1}/{sizes.runs}: p50 {percentile(runs[-1], 50):.1f} ms, "
            f"p99 {percentile(runs[-1], 99):.1f} ms from enqueue returning; "
            f"p50 {percentile(since_commit[-1], 50):.1f} ms, "
            f"p99 {percentile(since_commit[-1], 99):.1f} ms from created_at; "
            f"idle CPU {max(cpu[-2:]):.2f}%")
        shutil.rmtree(d, ignore_errors=True)
    return {
        "jobs": sizes.pickup_jobs,
        "workers": 2,
        "gap_s": list(sizes.pickup_gap),
        "worker_options": "defaults of `worker run`",
        "enqueue": "cold `queuectl enqueue --cmd` per job",
        **latency_summary(runs),
        "since_created_at": latency_summary(since_commit),
        "spawn_floor_ms": summary(floor, 2),
        "idle_cpu_seconds": sizes.idle_cpu_seconds,
        "idle_cpu_pct": summary(cpu, 3),
        "idle_rss_mb": summary(rss, 1),
    }


def rss_while_running(queue: Queue, pid: int, jobs: int,
                      timeout: float) -> list[tuple[int, float]]:
    """(jobs completed, RSS of pid in MiB) every 0.5 s until `jobs` are completed."""
    samples: list[tuple[int, float]] = []

    def all_done() -> bool:
        done = queue.count("completed")
        samples.append((done, round(rss_mb(pid), 2)))
        return done >= jobs

    wait_until(all_done, timeout, f"the memory run's {jobs} jobs", 0.5)
    return samples


def memory_section(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """RSS of one worker idle, then after it ran `memory_jobs` jobs (sampled on the way)."""
    timeout = (60 + sizes.memory_jobs / 20) * sizes.timeout_scale
    jobs_file = write_jobs_file(workdir / f"jobs-mem-{sizes.memory_jobs}.jsonl",
                                sizes.memory_jobs)
    idle: list[float] = []
    after: list[float] = []
    series: list[list[tuple[int, float]]] = []
    for r in range(sizes.memory_runs):
        d = workdir / f"memory-run{r}"
        d.mkdir()
        queue = Queue(d / "queue.db")
        workers = start_idle_workers(queue, d, 1, "m", timeout, sizes.settle_seconds)
        pid = workers[0].pid
        try:
            idle.append(rss_mb(pid))
            queue.enqueue_file(jobs_file)
            samples = rss_while_running(queue, pid, sizes.memory_jobs, timeout)
            time.sleep(sizes.settle_seconds)
            after.append(rss_mb(pid))
            series.append(samples)
        finally:
            queue.stop_workers(workers)
        log(f"memory run {r + 1}/{sizes.memory_runs}: idle {idle[-1]:.1f} MB, after "
            f"{sizes.memory_jobs} jobs {after[-1]:.1f} MB")
        shutil.rmtree(d, ignore_errors=True)
    step = max(1, len(series[0]) // 12) if series else 1
    late = [min(s, key=lambda x: abs(x[0] - sizes.memory_jobs * 0.75))[1] for s in series]
    return {
        "jobs": sizes.memory_jobs,
        "idle_rss_mb": summary(idle, 2),
        "after_rss_mb": summary(after, 2),
        "growth_mb": summary((a - i for a, i in zip(after, idle, strict=True)), 2),
        "growth_last_quarter_mb": summary((a - h for a, h in zip(after, late, strict=True)), 2),
        "samples_done_rss_mb": [s[::step] + ([s[-1]] if (len(s) - 1) % step else [])
                                for s in series],
    }



TRICKLE_WORKERS = (2, 16)
TRICKLE_RATE = 20.0  # enqueues a second


def trickle(db: str, sizes: Sizes, cpu: Callable[[], float]) -> tuple[float, list[float]]:
    """One trickle to idle workers past their start-up on the queue `db`: `cpu()` (whose
    CPU is the caller's choice) at rest over `idle_cpu_seconds`, then `trickle_jobs` single
    enqueues through the store API on one connection, TRICKLE_RATE a second, until the
    last completed. The CPU beyond the rest's, per job (µs), and each job's wait to start,
    `started_at - run_at` (ms): a wake gone astray shows there, not in the CPU."""
    from contextlib import closing

    from queuectl.job import JobSpec
    from queuectl.locator import open_store

    jobs = sizes.trickle_jobs
    before, t0 = cpu(), time.monotonic()
    time.sleep(sizes.idle_cpu_seconds)
    rest = (cpu() - before) / (time.monotonic() - t0)
    with closing(open_store(db)) as store:
        before, t0 = cpu(), time.monotonic()
        for i in range(jobs):
            store.enqueue([JobSpec("true")])
            time.sleep(max(0.0, t0 + (i + 1) / TRICKLE_RATE - time.monotonic()))
        wait_until(lambda: store.counts()["completed"] >= jobs, 60 * sizes.timeout_scale,
                   "the trickle's jobs")
        elapsed = time.monotonic() - t0
        used = cpu() - before
        waits = [1000 * (job.started_at - job.run_at)
                 for job in store.iter_jobs(state="completed")]
    return 1e6 * (used - rest * elapsed) / jobs, waits


def trickle_points(sizes: Sizes, one: Callable[[int, int], tuple[float, list[float]]],
                   label: str, cpu_key: str, how: str) -> dict[str, Any]:
    """`one(k, r)` (a `trickle` to k idle workers in run r: its CPU a job and waits) for
    each of TRICKLE_WORKERS in each run, the order alternating per run; per point its CPU a
    job (`cpu_key`) and pickup p50/p99, and 16 ÷ 2."""
    per: dict[int, list[float]] = {k: [] for k in TRICKLE_WORKERS}
    waits: dict[int, list[float]] = {k: [] for k in TRICKLE_WORKERS}  # ms, every run's jobs
    for r in range(sizes.runs):
        for k in TRICKLE_WORKERS if r % 2 == 0 else TRICKLE_WORKERS[::-1]:
            cost, waited = one(k, r)
            per[k].append(cost)
            waits[k] += waited
            log(f"{label} run {r + 1}/{sizes.runs}, {k} idle workers: {cost:.0f} µs of CPU "
                "a job beyond the rest")
    return {"jobs": sizes.trickle_jobs, "rate_per_s": TRICKLE_RATE, "how": how,
            "points": [{"workers": k, cpu_key: summary(per[k]),
                        "pickup_p50_ms": round(percentile(waits[k], 50), 1),
                        "pickup_p99_ms": round(percentile(waits[k], 99), 1)}
                       for k in TRICKLE_WORKERS],
            "16_vs_2": paired(per[16], per[2])}


def trickle_section(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """What a job costs idle SQLite workers when jobs come one at a time (cron and admins,
    not a backlog): `trickle` to 2 and to 16 idle `worker run` on a fresh file, measuring
    the workers' own CPU. Every commit to the file wakes every idle worker (inotify), so it
    grows with them."""
    def one(k: int, r: int) -> tuple[float, list[float]]:
        d = workdir / f"trickle-{k}w-run{r}"
        d.mkdir()
        queue = Queue(d / "queue.db")
        workers = start_idle_workers(queue, d, k, "t", 60 * sizes.timeout_scale,
                                     max(sizes.settle_seconds, 2.0))
        try:
            return trickle(str(queue.db), sizes,
                           lambda: sum(run_seconds(w.pid) for w in workers))
        finally:
            queue.stop_workers(workers)
            shutil.rmtree(d, ignore_errors=True)

    return trickle_points(sizes, one, "trickle", "workers_cpu_us_per_job",
                          "k idle `queuectl worker run` on a SQLite file; single enqueues at "
                          "the rate until the last completed; the workers' own CPU over that, "
                          "less their CPU at rest, per job")
