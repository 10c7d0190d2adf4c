"""Drain throughput against the machine's spawn limit, fairness, and the same with a
million finished jobs in the table (plus claim latency and database size; the fill and
the claim timing are bench/fill.py's)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.blocked import blocked_part, fresh_sqlite
from bench.common import (
    BENCH_DIR,
    PROCS,
    Sizes,
    file_size,
    log,
    paired,
    percentile,
    stat_cpu,
    summary,
    wait_until,
)
from bench.curve import curve, finished_point, reads
from bench.fill import SqliteFill, claim_latencies, drop_page_cache, fill_finished
from bench.qctl import Queue, write_jobs_file


# -- the physical limit ----------------------------------------------------------------------
def start_together(argvs: list[list[Any]], env: dict[str, str] | None = None
                   ) -> list[subprocess.Popen]:
    """Start processes that speak the protocol of bench/spawner.py and bench/bareloop.py
    (print `ready`, wait for a line on stdin, then work and print one JSON line) and
    release them at once; they are running when this returns."""
    procs = [PROCS.spawn(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for argv in argvs]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{Path(argvs[0][1]).name} did not start")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
    except BaseException:
        for p in procs:
            PROCS.stop(p, timeout=1)
        raise
    return procs


def span(marks: list[dict[str, Any]]) -> float:
    """Seconds from the first start to the last end."""
    return max(m["end"] for m in marks) - min(m["start"] for m in marks)


def spawn_limit(total: int, spawners: int, timeout: float) -> float:
    """Processes per second that `spawners` parallel processes can spawn and reap."""
    shares = [total // spawners + (1 if i < total % spawners else 0) for i in range(spawners)]
    procs = start_together([[sys.executable, BENCH_DIR / "spawner.py", str(n)] for n in shares])
    try:
        marks = [json.loads(p.communicate(timeout=timeout)[0]) for p in procs]
    finally:
        for p in procs:
            PROCS.stop(p, timeout=1)
    return total / span(marks)


# -- draining --------------------------------------------------------------------------------
def drain(queue: Queue, jobs: int, workers: int, logdir: Path, timeout: float,
          slots: int = 1) -> dict[str, Any]:
    """Start `workers` `worker run --drain` (with `slots` job slots each) on an already
    filled queue; time until the last job finished (its own finished_at) and until the last
    worker exited."""
    processes = [f"w{i + 1}" for i in range(workers)]
    names = processes if slots == 1 else [f"{p}.{s}" for p in processes
                                          for s in range(1, slots + 1)]
    t0 = time.time()
    procs = [queue.start_worker(n, logdir / f"{n}.log", drain=True, slots=slots)
             for n in processes]
    deadline = time.monotonic() + timeout
    cpu = [exit_cpu(p, deadline) for p in procs]
    t_exit = time.time()
    counts = queue.per_worker(names)
    per_worker = {n: counts.get(n, 0) for n in names}
    done = sum(per_worker.values())
    if done != jobs:
        raise RuntimeError(f"drain with {workers} workers completed {done} of {jobs} jobs "
                           f"(see {logdir})")
    times = queue.job_times(names)
    first = min(s for seq in times.values() for s, _ in seq)
    last = max(f for seq in times.values() for _, f in seq)
    run_ms: list[float] = []
    gap_ms: list[float] = []
    for seq in times.values():
        run_ms += [(f - s) * 1000 for s, f in seq]
        gap_ms += [(s2 - f1) * 1000 for (_, f1), (s2, _) in zip(seq, seq[1:], strict=False)]
    return {
        # Like the spawners of the physical limit, which time themselves once started:
        # from the first job's start to the last job's end.
        "jobs_per_s": jobs / (last - first),
        "from_launch_jobs_per_s": jobs / (last - t0),
        "wall_jobs_per_s": jobs / (t_exit - t0),
        "per_worker": per_worker,
        "claim_to_finish_p50_ms": percentile(run_ms, 50),
        "claim_to_finish_p95_ms": percentile(run_ms, 95),
        "finish_to_next_claim_p50_ms": percentile(gap_ms, 50),
        "finish_to_next_claim_p95_ms": percentile(gap_ms, 95),
        "cycle_mean_ms": 1000 * len(names) * (last - t0) / jobs,
        # The workers' own CPU (utime + stime) per job, and with the commands they reaped.
        "worker_cpu_us_per_job": 1e6 * sum(c[0] for c in cpu) / jobs,
        "worker_cpu_with_children_us_per_job": 1e6 * sum(c[0] + c[1] for c in cpu) / jobs,
    }


def exit_cpu(proc: subprocess.Popen, deadline: float) -> tuple[float, float]:
    """Wait for proc to exit (killing its group at the deadline) and return its CPU seconds
    (own, reaped children's) from /proc/PID/stat, read while it is a zombie: the last
    reading before it is reaped, so the whole life of the process is in it."""
    def exited() -> bool:
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    try:
        wait_until(exited, deadline - time.monotonic(), f"pid {proc.pid} to exit", 0.005)
    except RuntimeError:
        pass  # late: its group is killed below
    own = kids = 0.0
    try:
        own, kids = stat_cpu(proc.pid)
    except (OSError, ValueError, IndexError):
        pass
    PROCS.wait(proc, 1.0)
    return own, kids


def bare_drain(queue: Queue, jobs: int, loops: int, timeout: float) -> dict[str, float]:
    """`loops` × bench/bareloop.py on an already filled queue, started together: jobs/s
    from the first start to the last end, and their own CPU per job (start-up included,
    as for the workers)."""
    procs = start_together([[sys.executable, BENCH_DIR / "bareloop.py", str(queue.db),
                             f"bare{i}"] for i in range(loops)], env=queue.env)
    try:
        deadline = time.monotonic() + timeout
        cpu = [exit_cpu(p, deadline)[0] for p in procs]
        marks = [json.loads(p.communicate()[0]) for p in procs]  # the mark waited in the pipe
    finally:
        for p in procs:
            PROCS.stop(p, timeout=1)
    done = sum(m["jobs"] for m in marks)
    if done != jobs:
        raise RuntimeError(f"the bare loop completed {done} of {jobs} jobs")
    return {"jobs_per_s": jobs / span(marks), "cpu_us_per_job": 1e6 * sum(cpu) / jobs}


def startup_cpu_ms(queue: Queue, d: Path, timeout: float) -> float:
    """Own CPU of one `worker run --drain` on an empty queue: start-up and exit, which the
    per-job figures of a drain include."""
    proc = queue.start_worker("empty", d / "empty.log", drain=True)
    return 1e3 * exit_cpu(proc, time.monotonic() + timeout)[0]


def worker_start_seconds(template: Path, workdir: Path, timeout: float) -> dict[str, Any]:
    """Wall time of `worker run --drain` (start, nothing to run, exit) on a copy of the
    filled file, the page cache dropped first where permitted: the first start on a file
    runs the integrity check (reads it all), a second one in the same boot skips it
    (README "Where the database is")."""
    queue, d = fresh_queue(workdir, "scale-start")
    shutil.copyfile(template, queue.db)
    out: dict[str, Any] = {"page_cache_dropped": True}
    for key in ("first_s", "again_s"):
        out["page_cache_dropped"] &= drop_page_cache()
        t = time.monotonic()
        proc = queue.start_worker("start", d / "start.log", drain=True)
        if proc.wait(timeout) != 0:
            raise RuntimeError(f"worker start on the filled file failed: see {d}/start.log")
        out[key] = round(time.monotonic() - t, 3)
    shutil.rmtree(d, ignore_errors=True)
    return out


def ready_of_four(template: Path, workdir: Path, timeout: float) -> dict[str, Any]:
    """Four `worker run` started at once on a copy of the filled file with no record of a
    check (as after a reboot) and the page cache dropped where permitted, as four systemd
    instances are: seconds until all four sent READY=1 to a notify socket (systemd's start
    job) and until all four logged worker_ready (the check done, claiming)."""
    queue, d = fresh_queue(workdir, "scale-ready")
    shutil.copyfile(template, queue.db)
    sock_path = d / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    queue.env = {**queue.env, "NOTIFY_SOCKET": str(sock_path)}
    dropped = drop_page_cache()
    t = time.monotonic()
    workers = [queue.start_worker(f"ready{n}", d / f"ready{n}.log") for n in range(4)]
    readies = 0
    try:
        while readies < 4:
            left = t + timeout - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"four workers not READY within {timeout} s: see {d}")
            sock.settimeout(left)
            readies += sock.recv(4096).split(b"\n").count(b"READY=1")
        ready_s = time.monotonic() - t
        wait_until(lambda: sum(_logged(d / f"ready{n}.log", "worker_ready") for n in range(4))
                   == 4, timeout, f"four workers' worker_ready in {d}")
        claiming_s = time.monotonic() - t
    finally:
        queue.stop_workers(workers)
        sock.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"ready_s": round(ready_s, 3), "claiming_s": round(claiming_s, 3),
            "page_cache_dropped": dropped}


def _logged(log: Path, event: str) -> int:
    try:
        return log.read_text().count(f'"event": "{event}"')
    except FileNotFoundError:
        return 0


JOB_STEPS = ("claim_to_finish_p50_ms", "claim_to_finish_p95_ms", "finish_to_next_claim_p50_ms",
             "finish_to_next_claim_p95_ms", "cycle_mean_ms", "worker_cpu_us_per_job",
             "worker_cpu_with_children_us_per_job")


def fresh_queue(workdir: Path, name: str) -> tuple[Queue, Path]:
    d = workdir / name
    d.mkdir(parents=True)
    return Queue(d / "queue.db"), d


PeerDrain = Callable[[Path, int, float], tuple[float, float]]  # (dir, jobs, timeout) -> rates


def drain_section(sizes: Sizes, workdir: Path, peers: dict[str, PeerDrain | str]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Drain throughput by 1, 2, 4 workers, each right after the spawn limit with as many
    spawners; then each peer on the same jobs. Per run, so ratios pair neighbours. Also
    fairness. `peers`: a peer's drain function, or the reason it is skipped."""
    jobs_file = write_jobs_file(workdir / f"jobs-{sizes.drain_jobs}.jsonl", sizes.drain_jobs)
    timeout = (60 + sizes.drain_jobs / 20) * sizes.timeout_scale
    per: dict[int, list[dict[str, Any]]] = {k: [] for k in sizes.worker_counts}
    limits: dict[int, list[float]] = {k: [] for k in sizes.worker_counts}
    peer_rates: dict[str, list[tuple[float, float]]] = {n: [] for n, f in peers.items()
                                                        if callable(f)}
    db_per_100k: list[float] = []
    bare: list[dict[str, float]] = []
    startup: list[float] = []
    for r in range(sizes.runs):
        for k in sizes.worker_counts:
            limits[k].append(spawn_limit(sizes.drain_jobs, k, timeout))
            queue, d = fresh_queue(workdir, f"drain-{k}w-run{r}")
            queue.create()
            empty = file_size(queue.db)
            queue.enqueue_file(jobs_file)
            result = drain(queue, sizes.drain_jobs, k, d, timeout)
            per[k].append(result)
            if k == 1:
                db_per_100k.append((file_size(queue.db) - empty) / sizes.drain_jobs * 100_000)
                startup.append(startup_cpu_ms(queue, d, timeout))
            log(f"drain run {r + 1}/{sizes.runs}, {k} worker(s): "
                f"{result['jobs_per_s']:.0f} jobs/s (limit {limits[k][-1]:.0f}/s)")
            shutil.rmtree(d, ignore_errors=True)
            if k == 2:  # the floor, right after the same drain by queuectl
                queue, d = fresh_queue(workdir, f"drain-bare-run{r}")
                queue.create()
                queue.enqueue_file(jobs_file)
                try:
                    floor = bare_drain(queue, sizes.drain_jobs, 2, timeout)
                except (RuntimeError, OSError, ValueError) as exc:
                    log(f"drain run {r + 1}/{sizes.runs}, bare loop: failed: {exc}")
                else:
                    bare.append({**floor, "limit": limits[2][-1],
                                 "queuectl": per[2][-1]["jobs_per_s"]})
                    log(f"drain run {r + 1}/{sizes.runs}, bare loop ×2: "
                        f"{floor['jobs_per_s']:.0f} jobs/s")
                shutil.rmtree(d, ignore_errors=True)
        for name in peer_rates:
            fn = peers[name]
            assert callable(fn)
            d = workdir / f"drain-{name}-run{r}"
            peer_rates[name].append(fn(d, sizes.drain_jobs, timeout))
            log(f"drain run {r + 1}/{sizes.runs}, {name}: {peer_rates[name][-1][0]:.0f} jobs/s")
            shutil.rmtree(d, ignore_errors=True)
    drain_out: dict[str, Any] = {
        "jobs": sizes.drain_jobs, "command": "true", "workers": {},
        "ratio_method": "median of per-run ratios; each drain follows its comparison directly",
    }
    for k in sizes.worker_counts:
        rates = [x["jobs_per_s"] for x in per[k]]
        drain_out["workers"][str(k)] = {
            "jobs_per_s": summary(rates),
            "from_launch_jobs_per_s": summary(x["from_launch_jobs_per_s"] for x in per[k]),
            "wall_jobs_per_s": summary(x["wall_jobs_per_s"] for x in per[k]),
            "limit_jobs_per_s": summary(limits[k]),
            "ratio_to_limit": paired(rates, limits[k]),
            **{key: summary(x[key] for x in per[k]) for key in JOB_STEPS},
        }
    drain_out["db_mb_per_100k_jobs"] = summary(b / 1e6 for b in db_per_100k)
    if startup:
        drain_out["worker_startup_cpu_ms"] = summary(startup)
    if bare:
        rates = [b["jobs_per_s"] for b in bare]
        drain_out["bare_loop"] = {
            "loops": 2,
            "jobs_per_s": summary(rates),
            "ratio_to_limit": paired(rates, [b["limit"] for b in bare]),
            "queuectl_2_workers_ratio": paired([b["queuectl"] for b in bare], rates),
            "cpu_us_per_job": summary(b["cpu_us_per_job"] for b in bare),
        }
    drain_out["peers"] = {}
    for name, fn in peers.items():
        if not callable(fn):
            drain_out["peers"][name] = {"skipped": fn}
            continue
        # Compared on the same footing: Huey is timed from starting its consumer, so is
        # queuectl from starting its workers; tsp's server is already up, as are the spawners.
        basis = "from_launch_jobs_per_s" if name == "huey" else "jobs_per_s"
        q2 = [x[basis] for x in per.get(2, [])]
        rates = [p[0] for p in peer_rates[name]]
        drain_out["peers"][name] = {
            "jobs_per_s": summary(rates),
            "queuectl_basis": basis,
            "queuectl_jobs_per_s": summary(q2) if q2 else None,
            "queuectl_2_workers_ratio": paired(q2, rates) if q2 else None,
            "enqueue_jobs_per_s": summary(p[1] for p in peer_rates[name]),
        }
    fairness: dict[str, Any] = {}
    for k in sizes.worker_counts:
        if k < 2:
            continue
        counts = [sorted(x["per_worker"].values(), reverse=True) for x in per[k]]
        fairness[str(k)] = {
            "jobs_per_worker": counts,
            "max_min_ratio": summary(c[0] / c[-1] if len(c) == k and c[-1] else float("inf")
                                     for c in counts),
            "max_share_pct": summary(100 * c[0] / sum(c) for c in counts),
            "ideal_share_pct": round(100 / k, 1),
        }
    return drain_out, fairness


# -- a million finished jobs -----------------------------------------------------------------
def scale_section(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    template = workdir / "scale-template" / "queue.db"
    template.parent.mkdir()
    base = Queue(template)
    base.create()
    empty_size = file_size(template)
    fill_s = fill_finished(SqliteFill(template), sizes.scale_rows)["fill_seconds"]
    full_size = file_size(template)
    log(f"scale: {sizes.scale_rows} finished jobs inserted in {fill_s:.1f} s, "
        f"{full_size / 1e6:.0f} MB")
    jobs_file = write_jobs_file(workdir / f"jobs-{sizes.scale_drain_jobs}.jsonl",
                                sizes.scale_drain_jobs)
    claim_file = write_jobs_file(workdir / f"jobs-claim-{sizes.claim_samples}.jsonl",
                                 sizes.claim_samples)
    timeout = (60 + sizes.scale_drain_jobs / 20) * sizes.timeout_scale
    start = worker_start_seconds(template, workdir, timeout)
    log(f"scale: worker start, cold cache{'' if start['page_cache_dropped'] else ' (NOT dropped)'}"
        f": {start['first_s']:.2f} s checking the file, {start['again_s']:.2f} s after")
    start["ready_four"] = ready_of_four(template, workdir, timeout)
    empty = workdir / "scale-empty" / "queue.db"
    empty.parent.mkdir()
    Queue(empty).create()
    start["ready_four_empty"] = ready_of_four(empty, workdir, timeout)
    log(f"scale: four workers READY=1 in {start['ready_four']['ready_s']:.2f} s, claiming in "
        f"{start['ready_four']['claiming_s']:.2f} s (empty: "
        f"{start['ready_four_empty']['ready_s']:.2f} / {start['ready_four_empty']['claiming_s']:.2f})")
    rates: dict[str, list[float]] = {"empty": [], "full": []}
    claims: dict[str, list[list[float]]] = {"empty": [], "full": []}
    for r in range(sizes.runs):
        for kind in ("empty", "full"):
            for what, jobs in (("drain", jobs_file), ("claim", claim_file)):
                queue, d = fresh_queue(workdir, f"scale-{kind}-{what}-run{r}")
                if kind == "full":
                    shutil.copyfile(template, queue.db)
                else:
                    queue.create()
                queue.enqueue_file(jobs)
                if what == "drain":
                    res = drain(queue, sizes.scale_drain_jobs, 2, d, timeout)
                    rates[kind].append(res["jobs_per_s"])
                else:
                    claims[kind].append(claim_latencies(str(queue.db), sizes.claim_samples,
                                                            for_worker=False))
                shutil.rmtree(d, ignore_errors=True)
            log(f"scale run {r + 1}/{sizes.runs}, {kind}: drain {rates[kind][-1]:.0f} jobs/s, "
                f"claim p50 {percentile(claims[kind][-1], 50):.2f} ms")
    shutil.rmtree(template.parent, ignore_errors=True)
    shutil.rmtree(empty.parent, ignore_errors=True)
    drain_e, drain_f = summary(rates["empty"]), summary(rates["full"])
    claim_out: dict[str, Any] = {}
    for kind in ("empty", "full"):
        claim_out[kind] = {
            "p50_ms": summary((percentile(c, 50) for c in claims[kind]), 4),
            "p99_ms": summary((percentile(c, 99) for c in claims[kind]), 4),
        }
    out = {
        "finished_rows": sizes.scale_rows,
        "fill_seconds": round(fill_s, 2),
        "worker_start": start,
        "db_mb_per_100k_finished": round((full_size - empty_size) / sizes.scale_rows * 100_000
                                         / 1e6, 2),
        "workers": 2,
        "drain_jobs": sizes.scale_drain_jobs,
        "drain_empty_jobs_per_s": drain_e,
        "drain_full_jobs_per_s": drain_f,
        "drain_full_vs_empty": paired(rates["full"], rates["empty"]),
        "claim_samples": sizes.claim_samples,
        "claim_method": "SQLiteStore.claim_next() timed in process (one write transaction each)",
        "claim_empty": claim_out["empty"],
        "claim_full": claim_out["full"],
        "claim_p50_full_vs_empty": paired([percentile(c, 50) for c in claims["full"]],
                                          [percentile(c, 50) for c in claims["empty"]]),
        "ratio_method": "median of per-run ratios; empty and full measured back to back",
        "blocked": blocked_part(sizes, workdir, fresh_sqlite(workdir), "sqlite"),
    }
    out["curve"] = curve(sizes, workdir, out, reads, lambda rows: finished_point(
        sizes, workdir, rows, drain, worker_start_seconds, ready_of_four))
    return out
