"""Jobs waiting for a parent (`enqueue --after`) must cost the claim and `status` nothing:
the same claims and counts timed on a queue without them, on one holding `blocked_rows`
jobs that wait for a parent that never runs, and on one holding as many delayed jobs (the
same pending rows, not blocked), back to back, on either backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench.common import Sizes, log, paired, percentile, summary
from bench.fill import claim_latencies
from bench.qctl import Queue, write_jobs_file

GATE = "bench-gate"  # the parent every blocked job waits for: delayed a year
COUNT_SAMPLES = 50


def count_latencies(locator: str, samples: int) -> list[float]:
    """ms per Store.counts() (what `status` reads), in process."""
    from queuectl.locator import open_store

    store = open_store(locator)
    out = []
    try:
        for _ in range(samples):
            t = time.perf_counter()
            store.counts()
            out.append((time.perf_counter() - t) * 1000)
    finally:
        store.close()
    return out


def blocked_part(sizes: Sizes, workdir: Path,
                 queue_for: Callable[[str, int], AbstractContextManager[Queue]],
                 label: str) -> dict[str, Any]:
    """`queue_for(kind, run)`: a fresh, created queue, cleaned up on exit. Each run
    measures kinds "none" and "blocked" in alternating order."""
    claim_file = write_jobs_file(workdir / f"{label}-blocked-claim.jsonl", sizes.claim_samples)
    blocked_file = write_jobs_file(workdir / f"{label}-blocked.jsonl", sizes.blocked_rows,
                                   after=[GATE])
    delayed_file = write_jobs_file(workdir / f"{label}-delayed.jsonl", sizes.blocked_rows,
                                   delay=31536000)
    claims: dict[str, list[list[float]]] = {"none": [], "blocked": [], "delayed": []}
    counts: dict[str, list[list[float]]] = {"none": [], "blocked": [], "delayed": []}
    fill: list[float] = []
    kinds = ("none", "blocked", "delayed")
    for r in range(sizes.runs):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            with queue_for(kind, r) as queue:
                if kind == "blocked":
                    queue.cli("enqueue", "--id", GATE, "--delay", "31536000", "--cmd", "true")
                    fill.append(queue.enqueue_file(blocked_file, timeout=1800))
                elif kind == "delayed":
                    queue.enqueue_file(delayed_file, timeout=1800)
                queue.enqueue_file(claim_file)
                counts[kind].append(count_latencies(str(queue.db), COUNT_SAMPLES))
                claims[kind].append(claim_latencies(str(queue.db), sizes.claim_samples,
                                                    for_worker=True))
        log(f"{label} blocked run {r + 1}/{sizes.runs}: claim p50 "
            f"{percentile(claims['none'][-1], 50):.3f} ms without, "
            f"{percentile(claims['blocked'][-1], 50):.3f} ms with {sizes.blocked_rows} blocked")

    def p50s(runs: list[list[float]]) -> list[float]:
        return [percentile(c, 50) for c in runs]

    return {
        "blocked_rows": sizes.blocked_rows,
        "enqueue_blocked_seconds": summary(fill, 2),
        "claim_samples": sizes.claim_samples,
        **{f"claim_{k}": {"p50_ms": summary(p50s(v), 4),
                          "p99_ms": summary((percentile(c, 99) for c in v), 4)}
           for k, v in claims.items()},
        **{f"counts_{k}_p50_ms": summary(p50s(v), 4) for k, v in counts.items()},
        "claim_p50_blocked_vs_none": paired(p50s(claims["blocked"]), p50s(claims["none"])),
        # counts() reads every pending job's index entry (maintained counters are the
        # ten-million-jobs work): blocked ones must cost no more than as many delayed ones.
        "counts_p50_blocked_vs_delayed": paired(p50s(counts["blocked"]),
                                                p50s(counts["delayed"])),
        "method": "claim_next() and counts() timed in process, on a queue without them, with "
                  "the blocked jobs, and with as many delayed (not blocked) jobs, back to back",
    }


def fresh_sqlite(workdir: Path) -> Callable[[str, int], AbstractContextManager[Queue]]:
    import shutil
    from contextlib import contextmanager

    @contextmanager
    def queue_for(kind: str, r: int) -> Iterator[Queue]:
        d = workdir / f"blocked-{kind}-run{r}"
        d.mkdir(parents=True)
        queue = Queue(d / "queue.db")
        queue.create()
        try:
            yield queue
        finally:
            shutil.rmtree(d, ignore_errors=True)

    return queue_for
