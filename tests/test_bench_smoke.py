"""The benchmark code runs end to end at tiny sizes and writes its JSON (no timing asserts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a whole (smoke) benchmark run

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--no-peers",
         "--out", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["errors"] == {}, res["errors"]
    assert {"machine", "sizes", "targets", "drain", "fairness", "pickup", "enqueue", "scale",
            "memory"} <= res.keys()
    assert {"nproc", "cpu_model", "kernel", "python", "sqlite"} <= res["machine"].keys()
    for k in ("1", "2"):
        assert {"jobs_per_s", "limit_jobs_per_s", "ratio_to_limit"} <= res["drain"]["workers"][k].keys()
    assert {"median", "min", "max", "runs"} <= res["drain"]["workers"]["1"]["jobs_per_s"].keys()
    # the floor ran beside the 2-worker drain (its failure is only logged, not an error)
    assert {"jobs_per_s", "ratio_to_limit", "cpu_us_per_job"} <= res["drain"]["bare_loop"].keys()
    assert res["drain"]["worker_startup_cpu_ms"]["median"] > 0
    assert {"p50_ms", "p95_ms", "p99_ms", "idle_cpu_pct", "idle_rss_mb"} <= res["pickup"].keys()
    assert {"cold_enqueue_ms", "python_baseline_ms", "batch_jobs_per_s"} <= res["enqueue"].keys()
    assert {"drain_full_vs_empty", "claim_p50_full_vs_empty", "db_mb_per_100k_finished"} \
        <= res["scale"].keys()
    assert {"first_s", "again_s", "page_cache_dropped"} <= res["scale"]["worker_start"].keys()
    assert {"idle_rss_mb", "after_rss_mb", "growth_mb"} <= res["memory"].keys()
    assert all({"target", "goal", "met"} <= row.keys() for row in res["targets"])
    assert "| target | measured | goal | met |" in proc.stdout
    # the trickles: both points measured, on SQLite (the workers' CPU) and PostgreSQL below
    trickles = [(res["pickup"]["trickle"], "workers_cpu_us_per_job")]
    # The PostgreSQL rows run too where a throwaway server can be started (tests/pgserver.py,
    # the starter the bench shares with the tests); QUEUECTL_REQUIRE_POSTGRES=1 insists.
    pg = res["pg"]
    if os.environ.get("QUEUECTL_REQUIRE_POSTGRES") == "1":
        assert not pg.get("skipped"), pg.get("skipped")
    if not pg.get("skipped"):
        assert {"drain", "pickup", "cold_enqueue", "batch_enqueue", "scale"} <= pg.keys()
        assert pg["drain"]["postgres"]["server_cpu_us_per_job"]["median"] > 0
        curve = pg["workers"]["points"]
        assert [p["workers"] for p in curve] == [1, 2, 4, 8, 16]
        assert all(p["server_cpu_us_per_job"]["median"] > 0 for p in curve)
        assert all(p["limit_jobs_per_s"]["median"] > 0 for p in curve)  # the machine's own
        assert curve[1]["limit_vs_2_spawners"]["median"] == 1.0
        assert pg["idle"]["server_cpu_ms_per_s_per_worker"]["median"] > 0
        assert pg["scale"]["fill"]["tables"][:2] == ["jobs", "attempts"]
        trickles.append((pg["trickle"], "server_cpu_us_per_job"))
    for trickle, key in trickles:
        assert [p["workers"] for p in trickle["points"]] == [2, 16], trickle
        assert all(key in p and p["pickup_p50_ms"] >= 0 for p in trickle["points"]), trickle
    assert not list(tmp_path.glob("queuectl-bench-*")), "the scratch dir was left behind"
