"""The machine a run was on, the issue's targets judged met or missed, and the Markdown table."""

import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import DROPPED_ENV, REPO, ratio


# -- the machine -----------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _filesystem(path: Path) -> str:
    best, fs = "", "unknown"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                _dev, mnt, kind = line.split()[:3]
                if str(path).startswith(mnt) and len(mnt) > len(best):
                    best, fs = mnt, f"{kind} on {mnt}"
    except OSError:
        pass
    return fs


def fsync_ms(directory: Path, count: int = 100) -> dict[str, float]:
    """Median ms of a 4 KiB write + fdatasync where the databases live: overwriting a block
    in place, and appending (the file grows, as a WAL does until it is reset)."""
    out: dict[str, float] = {}
    for kind in ("overwrite", "append"):
        path = directory / f"fsync-probe-{kind}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            times = []
            for i in range(count):
                offset = (i % 16) * 4096 if kind == "overwrite" else i * 4096
                os.pwrite(fd, b"x" * 4096, offset)
                t = time.perf_counter()
                os.fdatasync(fd)
                times.append((time.perf_counter() - t) * 1000)
        finally:
            os.close(fd)
            path.unlink()
        out[kind] = round(statistics.median(times), 3)
    return out


def _git(*args: str) -> str:
    try:
        res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return res.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(workdir: Path) -> dict[str, Any]:
    import queuectl

    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "queuectl")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "os": _os_name(),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "sqlite": sqlite3.sqlite_version,
        "queuectl_version": queuectl.__version__,
        "queuectl_commit": _git("rev-parse", "--short", "HEAD") + (" (modified)" if dirty else ""),
        "workdir_filesystem": _filesystem(workdir),
        "fdatasync_ms": fsync_ms(workdir),
        "loadavg_at_start": list(os.getloadavg()),
        "env_dropped_for_measured_processes": [k for k in DROPPED_ENV if k in os.environ],
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


# -- targets ---------------------------------------------------------------------------------
def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _med(data: dict[str, Any], *path: str) -> float | None:
    return _get(data, *path, "median")


def _check(value: float | None, ok: bool) -> bool | None:
    return None if value is None else ok


def evaluate(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of the issue; `met` is None when the figure is missing."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, shown: str, goal: str, met: bool | None) -> None:
        rows.append({"target": name, "value": value, "shown": shown, "goal": goal, "met": met})

    w2 = _get(res, "drain", "workers", "2") or {}
    lim = _med(w2, "ratio_to_limit")
    add("Drain, 2 workers, vs physical limit", lim,
        f"{fmt(w2.get('jobs_per_s'))} jobs/s vs limit {fmt(w2.get('limit_jobs_per_s'))}/s: "
        f"{pcts(w2.get('ratio_to_limit'))}", ">= 60% of limit",
        _check(lim, lim is not None and lim >= 0.6))
    for peer in ("tsp", "huey"):
        pd = _get(res, "drain", "peers", peer) or {}
        r = _med(pd, "queuectl_2_workers_ratio")
        shown = (f"skipped: {pd['skipped']}" if pd.get("skipped") else
                 f"{fmt(pd.get('queuectl_jobs_per_s'))} vs {fmt(pd.get('jobs_per_s'))} jobs/s: "
                 f"{timess(pd.get('queuectl_2_workers_ratio'))}" if pd else "not run")
        add(f"Drain, 2 workers, ahead of {peer} (queuectl ÷ {peer})", r, shown, "> 1",
            _check(r, r is not None and r > 1))
    p = res.get("pickup") or {}
    for q, goal in (("p50", 10), ("p99", 50)):
        # Judged as the issue defines it: from `enqueue` returning (below zero when the job
        # starts before the enqueue process has exited). Also shown: from the job's
        # created_at, taken inside enqueue's transaction, so it includes that commit.
        value = _med(p, f"{q}_ms")
        add(f"Idle pickup {q}", value,
            f"{fmt(p.get(f'{q}_ms'))} ms after `enqueue` returned "
            f"({fmt(_get(p, 'since_created_at', f'{q}_ms'))} ms after its created_at)",
            f"<= {goal} ms", _check(value, value is not None and value <= goal))
    cpu = _med(p, "idle_cpu_pct")
    add(f"Idle worker CPU (over {p.get('idle_cpu_seconds', '?')} s)", cpu,
        f"{fmt(p.get('idle_cpu_pct'))} % of a core", "<= 1%",
        _check(cpu, cpu is not None and cpu <= 1))
    e = res.get("enqueue") or {}
    cr = _med(e, "cold_vs_baseline")
    add("Cold enqueue vs bare `python -c 'import sqlite3, json'`", cr,
        f"{fmt(e.get('cold_enqueue_ms'))} ms vs {fmt(e.get('python_baseline_ms'))} ms: "
        f"{timess(e.get('cold_vs_baseline'))}", "<= 2×", _check(cr, cr is not None and cr <= 2))
    b = _med(e, "batch_jobs_per_s")
    add(f"Batch enqueue (--file, {e.get('batch_jobs', 0):,} jobs)", b,
        f"{fmt(e.get('batch_jobs_per_s'))} jobs/s", ">= 50,000 jobs/s",
        _check(b, b is not None and b >= 50_000))
    s = res.get("scale") or {}
    rows_txt = f"{s['finished_rows']:,}" if s else "?"
    dr = _med(s, "drain_full_vs_empty")
    add(f"Drain (2 workers) with {rows_txt} finished jobs vs empty", dr,
        f"{fmt(s.get('drain_full_jobs_per_s'))} vs {fmt(s.get('drain_empty_jobs_per_s'))} "
        f"jobs/s: {pcts(s.get('drain_full_vs_empty'))}", ">= 90% of empty",
        _check(dr, dr is not None and dr >= 0.9))
    cl = _med(s, "claim_p50_full_vs_empty")
    add(f"Claim latency p50 with {rows_txt} finished jobs vs empty", cl,
        f"{fmt(_get(s, 'claim_full', 'p50_ms'))} vs {fmt(_get(s, 'claim_empty', 'p50_ms'))} ms:"
        f" {timess(s.get('claim_p50_full_vs_empty'))}", "<= 1.1×",
        _check(cl, cl is not None and cl <= 1.1))
    m = res.get("memory") or {}
    idle = _med(p, "idle_rss_mb") or _med(m, "idle_rss_mb")
    add("Idle worker RSS", idle, f"{fmt(p.get('idle_rss_mb') or m.get('idle_rss_mb'))} MiB",
        "<= 30 MB", _check(idle, idle is not None and idle <= 30))
    g = _med(m, "growth_mb")
    add(f"RSS growth after {m.get('jobs', 0):,} jobs", g,
        f"{fmt(m.get('idle_rss_mb'))} → {fmt(m.get('after_rss_mb'))} MiB, "
        f"+{fmt(m.get('growth_mb'))} (over the last quarter of the jobs: "
        f"+{fmt(m.get('growth_last_quarter_mb'))})",
        "no growth (<= 1 MiB)", _check(g, g is not None and g <= 1.0))
    return rows


def fmt(s: Any) -> str:
    """`median (min–max)` of a summary, or a plain number."""
    if isinstance(s, dict):
        if s.get("median") is None:
            return "n/a"
        if s.get("min") == s.get("max"):
            return _num(s["median"])
        return f"{_num(s['median'])} ({_num(s['min'])}–{_num(s['max'])})"
    return "n/a" if s is None else _num(s)


def _num(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def times(r: float | None) -> str:
    return "n/a" if r is None else f"×{r:.2f}"


def timess(s: dict[str, Any] | None) -> str:
    """A summary of ratios as `×median (×min–×max)`."""
    if not s or s.get("median") is None:
        return "n/a"
    if s["min"] == s["max"]:
        return times(s["median"])
    return f"{times(s['median'])} ({times(s['min'])}–{times(s['max'])})"


def pcts(s: dict[str, Any] | None) -> str:
    """A summary of ratios as percentages."""
    if not s or s.get("median") is None:
        return "n/a"
    if s["min"] == s["max"]:
        return f"{100 * s['median']:.0f}%"
    return f"{100 * s['median']:.0f}% ({100 * s['min']:.0f}–{100 * s['max']:.0f}%)"


# -- the Markdown ----------------------------------------------------------------------------
def markdown(res: dict[str, Any]) -> str:
    mach = res.get("machine", {})
    lines = [
        f"## queuectl benchmark ({res.get('mode')}, {res.get('generated_at')}, "
        f"{res.get('duration_s')} s)",
        "",
        f"Machine: {mach.get('nproc')} CPUs ({mach.get('cpu_model')}), {mach.get('os')}, "
        f"kernel {mach.get('kernel')}, Python {mach.get('python')}, SQLite {mach.get('sqlite')}, "
        f"{mach.get('workdir_filesystem')} (fdatasync ms: {mach.get('fdatasync_ms')}), "
        f"load {mach.get('loadavg_at_start')} at start. Figures: median (min–max) of "
        f"{_get(res, 'sizes', 'runs')} runs.",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for row in res.get("targets", []):
        met = {True: "met", False: "**missed**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['target']} | {row['shown']} | {row['goal']} | {met} |")
    lines += ["", "| other figures | measured |", "|---|---|"]
    for name, value in other_figures(res):
        lines.append(f"| {name} | {value} |")
    if res.get("errors"):
        lines += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())]
    return "\n".join(lines)


def other_figures(res: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, w in (_get(res, "drain", "workers") or {}).items():
        out.append((f"Drain, {k} worker(s) (limit: {k} spawners)",
                    f"{fmt(w['jobs_per_s'])} jobs/s, limit {fmt(w['limit_jobs_per_s'])}: "
                    f"{pcts(w['ratio_to_limit'])}. Per job p50/p95: claim→finish "
                    f"{fmt(w['claim_to_finish_p50_ms'])} / {fmt(w['claim_to_finish_p95_ms'])} ms,"
                    f" finish→next claim {fmt(w['finish_to_next_claim_p50_ms'])} / "
                    f"{fmt(w['finish_to_next_claim_p95_ms'])} ms; mean cycle "
                    f"{fmt(w['cycle_mean_ms'])} ms"))
    for k, f in (res.get("fairness") or {}).items():
        out.append((f"Fairness, {k} workers: jobs per worker (each run)",
                    f"{f['jobs_per_worker']}; max/min {fmt(f['max_min_ratio'])}, busiest "
                    f"{fmt(f['max_share_pct'])}% (ideal {f['ideal_share_pct']}%)"))
    p = res.get("pickup") or {}
    if p:
        out.append(("Idle pickup p95 / max; spawn floor (same probe, no queue)",
                    f"{fmt(p.get('p95_ms'))} / {fmt(p.get('max_ms'))} ms; floor "
                    f"{fmt(p.get('spawn_floor_ms'))} ms"))
    e = res.get("enqueue") or {}
    prof = _get(e, "import_profile", "top_level_cumulative_ms")
    if prof:
        top = ", ".join(f"{k} {v}" for k, v in list(prof.items())[:4])
        out.append(("Cold enqueue imports (ms; cumulative per top-level import)",
                    f"all imports {e['import_profile']['total_import_ms']}: {top}"))
    t = e.get("transaction_in_process_ms") or {}
    if t:
        out.append(("Enqueue transaction alone (in process, one job) p50 / p99",
                    f"{fmt(t.get('p50_ms'))} / {fmt(t.get('p99_ms'))} ms"))
    d = res.get("drain") or {}
    if d.get("db_mb_per_100k_jobs"):
        out.append(("Database MB per 100k finished jobs (real drain / synthetic fill)",
                    f"{fmt(d['db_mb_per_100k_jobs'])} / "
                    f"{_get(res, 'scale', 'db_mb_per_100k_finished') or 'n/a'}"))
    s = res.get("scale") or {}
    if s:
        out.append(("Claim p99 empty / full (ms)",
                    f"{fmt(_get(s, 'claim_empty', 'p99_ms'))} / "
                    f"{fmt(_get(s, 'claim_full', 'p99_ms'))}"))
    p50 = _med(p, "p50_ms")
    ce = _med(e, "cold_enqueue_ms")
    for peer in ("tsp", "huey"):
        pr = _get(res, "peers", peer) or {}
        if not pr or pr.get("skipped"):
            out.append((f"{peer}", f"skipped: {pr.get('skipped', 'not run')}"))
            continue
        peer50 = _med(pr, "pickup", "p50_ms")
        both = p50 is not None and peer50 is not None and p50 > 0 and peer50 > 0
        out.append((f"{peer} pickup p50 / p99 after enqueue returned (queuectl ÷ {peer} at p50)",
                    f"{fmt(_get(pr, 'pickup', 'p50_ms'))} / {fmt(_get(pr, 'pickup', 'p99_ms'))}"
                    f" ms; queuectl {fmt(p.get('p50_ms'))} / {fmt(p.get('p99_ms'))} ms ("
                    + (times(ratio(p50, peer50)) if both else "no ratio: not both above 0")
                    + ")"))
        out.append((f"{peer} cold enqueue (queuectl ÷ {peer})",
                    f"{fmt(pr.get('cold_enqueue_ms'))} ms "
                    f"({times(ratio(ce, _med(pr, 'cold_enqueue_ms')))})"))
    return out
