"""`make bench`: measure queuectl as it is, against the machine's limits and two peers.

    python bench/run.py                 # the full run (about 27 min on 2 cores): results/latest.json
    python bench/run.py --quick         # smaller sizes, 2 runs: results/quick.json
    python bench/run.py --only drain,pickup --no-peers
    python bench/run.py --smoke --out /tmp/x.json   # seconds; what tests/test_bench_smoke.py runs

Sections: drain (with the spawn limit and fairness), pickup (with idle CPU and RSS), enqueue,
scale, memory, peers; pg (queuectl on a throwaway PostgreSQL), pgpeers (Procrastinate and
PgQueuer on the same server); pgcpu (only pg's 2-worker drain, its workers curve and its
idle workers, at rest and under a trickle of enqueues: the server's CPU per job and per idle
worker, `--only pgcpu --no-peers`;
nothing more when pg runs). A benchmark
reports; it never fails: a section that breaks is recorded under "errors" and the run goes
on. Exit status 0 unless the arguments are wrong.
"""

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, PROCS, Sizes, log  # noqa: E402
from bench.curve import picture  # noqa: E402
from bench.curve import table as curve_table  # noqa: E402
from bench.enqueue import enqueue_section  # noqa: E402
from bench.latency import memory_section, pickup_section, trickle_section  # noqa: E402
from bench.peers import drains, peers_section, prepare  # noqa: E402
from bench.pg import CPU_PARTS, pg_section, pooler_section  # noqa: E402
from bench.pgpeers import pg_drains, pgpeers_section  # noqa: E402
from bench.pgserver import stop_shared  # noqa: E402
from bench.report import evaluate, machine_info, markdown  # noqa: E402
from bench.throughput import drain_section, scale_section  # noqa: E402

SECTIONS = ("drain", "pickup", "enqueue", "scale", "memory", "peers", "pg", "pgpeers",
            "pgpooler", "pgcpu")
PEER_SECTIONS = ("peers", "pgpeers")
# Parts of the pg section that run alone (`--only pgpooler`, `pgcpu`); a full or quick run
# also runs the pooler part (about 5 minutes: its polling pickup waits on a timer), a smoke
# run does not.
ALONE_SECTIONS = ("pgpooler", "pgcpu")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Benchmark queuectl (see bench/README.md).")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, 2 runs")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, 1 run, no peers")
    ap.add_argument("--only", metavar="LIST", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--no-peers", action="store_true",
                    help="skip the peers (task-spooler, Huey, Procrastinate, PgQueuer)")
    ap.add_argument("--runs", type=int, metavar="N", help="repetitions of each measurement")
    ap.add_argument("--out", type=Path, metavar="PATH", help="where the JSON goes")
    ap.add_argument("--workdir", type=Path, metavar="DIR", help="parent of the scratch dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random enqueue gaps")
    ap.add_argument("--scale-max", type=int, metavar="ROWS", default=0,
                    help="add a point with this many rows to the scale curve (e.g. 10000000)")
    args = ap.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(SECTIONS)
        if unknown:
            ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    if args.runs is not None and args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_sections(selected: list[str], sizes: Sizes, workdir: Path, rng: random.Random,
                 res: dict[str, Any], errors: dict[str, str]) -> None:
    """Each section in turn; the peers' drains run inside the drain section when peers are
    selected, so that every comparison is made on neighbouring measurements."""
    for name in selected:
        log(f"section {name}")
        try:
            if name == "drain":
                peers = drains(prepare()) if "peers" in selected else {}
                res["drain"], res["fairness"] = drain_section(sizes, workdir, peers)
            elif name == "pickup":
                res["pickup"] = pickup_section(sizes, workdir, rng)
                res["pickup"]["trickle"] = trickle_section(sizes, workdir)
            elif name == "enqueue":
                res["enqueue"] = enqueue_section(sizes, workdir)
            elif name == "scale":
                res["scale"] = scale_section(sizes, workdir)
            elif name == "memory":
                res["memory"] = memory_section(sizes, workdir)
            elif name == "peers":
                res["peers"] = peers_section(sizes, workdir, rng)
            elif name == "pg":
                pg_peers = pg_drains() if "pgpeers" in selected else {}
                res["pg"] = pg_section(sizes, workdir, rng, pg_peers)
                for part, msg in (res["pg"].get("errors") or {}).items():
                    errors[f"pg.{part}"] = msg
            elif name == "pgpooler":
                res["pgpooler"] = pooler_section(sizes, workdir, rng)
            elif name == "pgcpu":
                if "pg" not in selected:
                    pg_peers = pg_drains() if "pgpeers" in selected else {}
                    res["pg"] = pg_section(sizes, workdir, rng, pg_peers, CPU_PARTS)
                    for part, msg in (res["pg"].get("errors") or {}).items():
                        errors[f"pg.{part}"] = msg
            elif name == "pgpeers":
                # The peers' drains ran next to queuectl's in the pg section, if it drained.
                res["pgpeers"] = pgpeers_section(sizes, workdir, rng,
                                                 with_drain="drain" not in res.get("pg", {}))
        except Exception as exc:  # noqa: BLE001 - a benchmark records its failures
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"section {name} failed: {errors[name]}")
        finally:
            PROCS.kill_all()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes.quick() if args.quick else Sizes.full()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.runs:
        sizes.runs = args.runs
    sizes.scale_max = args.scale_max
    if args.no_peers:
        sizes.peers = False
    if args.only:  # naming peers here runs them even in --smoke
        selected = [s for s in SECTIONS if s in args.only.split(",")]
    else:
        selected = [s for s in SECTIONS
                    if (s not in ALONE_SECTIONS or (s == "pgpooler" and not args.smoke))
                    and (s not in PEER_SECTIONS or sizes.peers)]
    if args.no_peers:
        selected = [s for s in selected if s not in PEER_SECTIONS]
    default_name = "latest.json" if mode == "full" and not args.only else f"{mode}.json"
    out: Path = args.out or BENCH_DIR / "results" / default_name

    atexit.register(PROCS.kill_all)
    signal.signal(signal.SIGTERM, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="queuectl-bench-", dir=args.workdir))
    started = time.monotonic()
    res: dict[str, Any] = {
        "schema": 1,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "sections": selected,
        "sizes": asdict(sizes),
    }
    errors: dict[str, str] = {}
    try:
        res["machine"] = machine_info(workdir)
        log(f"scratch dir {workdir}; sections {', '.join(selected)}")
        run_sections(selected, sizes, workdir, random.Random(args.seed), res, errors)
    except KeyboardInterrupt:
        errors["interrupted"] = "the run was interrupted; figures are partial"
    finally:
        PROCS.kill_all()
        stop_shared()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    res["machine"]["loadavg_at_end"] = list(os.getloadavg())
    res["duration_s"] = round(time.monotonic() - started, 1)
    res["errors"] = errors
    try:
        res["targets"] = evaluate(res)
        table = markdown(res)
    except Exception as exc:  # noqa: BLE001 - the figures are still worth writing
        errors["report"] = f"{type(exc).__name__}: {exc}"
        res.setdefault("targets", [])
        table = f"(no table: {errors['report']})"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)
    scale_curve = (res.get("scale") or {}).get("curve")
    if scale_curve:
        svg = out.with_suffix(".svg")
        m = res.get("machine") or {}
        svg.write_text(picture(scale_curve, f"queuectl {m.get('queuectl_version')} "
                               f"({m.get('queuectl_commit')}), {res['mode']} bench run of "
                               f"{res['generated_at']}, {m.get('nproc')} CPUs: bench/run.py "
                               f"--scale-max {sizes.scale_max or sizes.scale_rows}"))
        table += f"\n\nScale curve (picture: {svg}):\n\n{curve_table(scale_curve)}"
    print(table)
    print(f"\nResults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
