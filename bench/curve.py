"""The scale curve: every figure that could grow with the table, at 0, 1M and 10M rows.

`scale_section` measures at 0 and `scale_rows` (1,000,000) finished jobs as it always did;
this adds the points past it that `--scale-max N` asks for (10,000,000 is the one README
shows: a minute of fill and a few of measuring, so the full bench only runs it when asked),
and for every point the read verbs as a user runs them, on both backends, on a queue of
mixed states (bench/scale.py). It returns the points as a table and writes the picture.
"""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Sizes, log, percentile
from bench.fill import SqliteFill, claim_latencies, fill_finished
from bench.plot import Panel, chart
from bench.qctl import Queue, write_jobs_file

# (backend, rows, workdir) -> seconds per read verb, or None where the backend is not there.
Reads = Callable[[str, int, Path], dict[str, float] | None]


def reads(backend: str, rows: int, workdir: Path) -> dict[str, float] | None:
    """Seconds per read verb on a queue of `rows` in mixed states (bench/scale.py), None
    where the backend cannot run here (no PostgreSQL server)."""
    from bench.pgserver import shared_cluster
    from bench.scale import read_verbs_at

    cluster = None
    if backend == "postgresql":
        cluster, why = shared_cluster(None)
        if cluster is None:
            log(f"curve: no PostgreSQL reads: {why}")
            return None
        workdir.chmod(0o755)  # the server's user reads nothing here, but enters the path
    point = read_verbs_at("sqlite" if backend == "sqlite" else "postgres", rows, workdir,
                          cluster=cluster)
    out = dict(point["seconds"])
    if "retention_batch_seconds" in point:
        out["retention batch"] = point["retention_batch_seconds"]
    return out


def points(sizes: Sizes) -> list[int]:
    """0, scale_rows, then scale_max if it is larger."""
    out = [0, sizes.scale_rows]
    if sizes.scale_max > sizes.scale_rows:
        out.append(sizes.scale_max)
    return out


def finished_point(sizes: Sizes, workdir: Path, rows: int, drain: Callable[..., Any],
                   worker_start: Callable[..., Any], ready: Callable[..., Any]) -> dict[str, Any]:
    """One run of the SQLite figures at a point beyond scale_rows: a template of `rows`
    finished jobs, the worker start (first and again), READY of four, a 2-worker drain and
    the claim latency."""
    template = workdir / f"curve-{rows}" / "queue.db"
    template.parent.mkdir()
    Queue(template).create()
    fill_s = fill_finished(SqliteFill(template), rows)["fill_seconds"]
    log(f"curve: {rows:,} finished jobs inserted in {fill_s:.1f} s")
    timeout = (120 + rows / 50_000 + sizes.scale_drain_jobs / 20) * sizes.timeout_scale
    out: dict[str, Any] = {"fill_seconds": fill_s,
                           "worker_start": worker_start(template, workdir, timeout),
                           "ready_four": ready(template, workdir, timeout)}
    jobs = write_jobs_file(workdir / f"curve-jobs-{rows}.jsonl", sizes.scale_drain_jobs)
    claims = write_jobs_file(workdir / f"curve-claims-{rows}.jsonl", sizes.claim_samples)
    for what, file in (("drain", jobs), ("claim", claims)):
        d = workdir / f"curve-{rows}-{what}"
        d.mkdir()
        queue = Queue(d / "queue.db")
        shutil.copyfile(template, queue.db)
        queue.enqueue_file(file)
        if what == "drain":
            out["drain_jobs_per_s"] = drain(queue, sizes.scale_drain_jobs, 2, d,
                                            timeout)["jobs_per_s"]
        else:
            lat = claim_latencies(str(queue.db), sizes.claim_samples, for_worker=False)
            out["claim_p50_ms"] = round(percentile(lat, 50), 4)
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(template.parent, ignore_errors=True)
    return out


def curve(sizes: Sizes, workdir: Path, scale: dict[str, Any], reads: Reads,
          beyond: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """The points: SQLite's drain, claim and start-up figures (0 and scale_rows from the
    scale section's runs, further points from `beyond`), and each backend's read verbs."""
    out: list[dict[str, Any]] = []
    start = scale.get("worker_start") or {}
    for rows in points(sizes):
        p: dict[str, Any] = {"rows": rows}
        if rows == 0:
            p["drain_jobs_per_s"] = (scale.get("drain_empty_jobs_per_s") or {}).get("median")
            p["claim_p50_ms"] = ((scale.get("claim_empty") or {}).get("p50_ms") or {}).get("median")
            p["ready_four"] = start.get("ready_four_empty")
        elif rows == sizes.scale_rows:
            p["drain_jobs_per_s"] = (scale.get("drain_full_jobs_per_s") or {}).get("median")
            p["claim_p50_ms"] = ((scale.get("claim_full") or {}).get("p50_ms") or {}).get("median")
            p["ready_four"] = start.get("ready_four")
            p["worker_start"] = {k: start.get(k) for k in ("first_s", "again_s")}
        else:
            p.update(beyond(rows))
        for backend in ("sqlite", "postgresql"):
            p[f"{backend}_reads_s"] = reads(backend, rows, workdir)
        log(f"curve: {rows:,} rows: {p}")
        out.append(p)
    return {"points": out,
            "reads_method": "each read verb through the CLI, as a user runs it, on a queue of "
                            "mixed states (99% completed, 1% pending, 0.01% dead); median of "
                            "its runs, seconds",
            "ready_method": "four `worker run` at once on a copy of the finished-jobs file, no "
                            "record of a check (as after a reboot), page cache dropped where "
                            "permitted: until all four sent READY=1, and until all four logged "
                            "worker_ready (checked and claiming)"}


def _get(p: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(p, dict):
            return None
        p = p.get(key)  # type: ignore[assignment]
    return p


def panels(c: dict[str, Any]) -> list[Panel]:
    pts = c.get("points") or []
    verbs: list[str] = []
    for p in pts:
        for backend in ("sqlite", "postgresql"):
            verbs += [v for v in (p.get(f"{backend}_reads_s") or {}) if v not in verbs]
    out = []
    for backend, title in (("sqlite", "SQLite: read verbs"), ("postgresql", "PostgreSQL: read verbs")):
        out.append(Panel(title, "seconds", True,
                         {v: [_get(p, f"{backend}_reads_s", v) for p in pts] for v in verbs}))
    out.append(Panel("SQLite: four workers start (cold cache)", "seconds", True, {
        "READY=1": [_get(p, "ready_four", "ready_s") for p in pts],
        "claiming": [_get(p, "ready_four", "claiming_s") for p in pts]}))
    out.append(Panel("SQLite: 2-worker drain", "jobs/s", False,
                     {"drain": [p.get("drain_jobs_per_s") for p in pts]}))
    return out


def picture(c: dict[str, Any], caption: str) -> str:
    return chart(panels(c), [p["rows"] for p in c.get("points") or []], caption)


def table(c: dict[str, Any]) -> str:
    """Markdown: one row per figure, one column per point."""
    pts = c.get("points") or []
    if not pts:
        return ""
    head = ("| figure | " + " | ".join(f"{p['rows']:,} rows" for p in pts)
            + f" | {pts[-1]['rows']:,} ÷ 0 |")
    lines = [head, "|---" * (len(pts) + 2) + "|"]

    def row(name: str, values: list[Any], unit: str) -> None:
        shown = [("n/a" if v is None else f"{v:,.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}")
                 for v in values]
        first, last = values[0], values[-1]
        ratio = f"×{last / first:.2f}" if first and last is not None else ""
        lines.append(f"| {name} | " + " | ".join(shown) + f" | {ratio} |")

    for backend, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        verbs: list[str] = []
        for p in pts:
            verbs += [v for v in (p.get(f"{backend}_reads_s") or {}) if v not in verbs]
        for v in verbs:
            row(f"{label}: `{v}`", [_get(p, f"{backend}_reads_s", v) for p in pts], "s")
    row("SQLite: four workers, all READY=1", [_get(p, "ready_four", "ready_s") for p in pts], "s")
    row("SQLite: four workers, all claiming", [_get(p, "ready_four", "claiming_s") for p in pts],
        "s")
    row("SQLite: 2-worker drain", [p.get("drain_jobs_per_s") for p in pts], "jobs/s")
    row("SQLite: claim p50", [p.get("claim_p50_ms") for p in pts], "ms")
    return "\n".join(lines)


