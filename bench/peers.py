"""The same workloads on two peers: task-spooler (`tsp`, 2 slots) and Huey (SqliteHuey, a
consumer with 2 worker processes). The bench installs both itself; a peer that cannot be
installed is skipped with the reason in the results."""

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    PROCS,
    Sizes,
    clean_env,
    log,
    make_venv,
    percentile,
    run,
    sql_rows,
    summary,
    wait_until,
)
from bench.latency import latency_summary, pickup_series, warm_enqueuer, warm_up

PEERS_VENV = BENCH_DIR / ".venv-peers"
HUEY_APP_DIR = BENCH_DIR / "peer_apps"
TSP_CHUNK = 800  # tsp keeps one client process and connection per queued job (~1000 at most)


# -- task-spooler ----------------------------------------------------------------------------
def find_tsp() -> str | None:
    for name in ("tsp", "ts"):  # Debian calls it tsp; elsewhere ts (not moreutils' ts)
        path = shutil.which(name)
        if path:
            out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10,
                                 stdin=subprocess.DEVNULL)
            if "task spooler" in (out.stdout + out.stderr).lower():
                return path
    return None


def install_tsp() -> tuple[str | None, str]:
    """(path to tsp, reason if unavailable); apt-get installs it when missing."""
    path = find_tsp()
    if path:
        return path, ""
    if shutil.which("apt-get") is None:
        return None, "task-spooler is not installed and apt-get is not available"
    log("installing task-spooler with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = subprocess.run(["apt-get", "install", "-y", "-q", "task-spooler"], capture_output=True,
                         text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=env,
                       stdin=subprocess.DEVNULL)
        res = subprocess.run(["apt-get", "install", "-y", "-q", "task-spooler"],
                             capture_output=True, text=True, timeout=600, env=env,
                             stdin=subprocess.DEVNULL)
    path = find_tsp()
    if path is None:
        return None, f"apt-get install task-spooler failed: {res.stderr.strip()[-300:]}"
    return path, ""


class Tsp:
    """One private task-spooler server (its own socket and TMPDIR) with 2 slots."""

    def __init__(self, binary: str, d: Path) -> None:
        self.bin = binary
        self.dir = d
        self.socket = str(d / "tsp.socket")
        self.env = clean_env(TS_SOCKET=self.socket, TMPDIR=str(d), TS_MAXFINISHED="100000",
                             TS_SLOTS="2")

    def __enter__(self) -> "Tsp":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tsp("-S", "2")  # starts the server
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run([self.bin, "-K"], env=self.env, capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
        self._kill_leftovers()

    def tsp(self, *args: str, timeout: float = 30) -> str:
        return run([self.bin, *args], env=self.env, timeout=timeout).stdout.strip()

    def add(self, command: str, *opts: str) -> None:
        """Queue /bin/sh -c COMMAND (tsp execs argv directly, no shell)."""
        self.tsp("-n", *opts, "/bin/sh", "-c", command)

    def enqueue(self, command: str) -> float:
        self.add(command)
        return time.time()

    def block(self) -> Path:
        """Occupy both slots until the returned fifo is opened for writing and closed."""
        fifo = self.dir / f"gate-{time.monotonic_ns()}"
        os.mkfifo(fifo)
        self.add(f": < {fifo}", "-N", "2")
        return fifo

    @staticmethod
    def release(fifo: Path, timeout: float) -> None:
        def opened() -> int | None:
            try:
                return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return None  # the blocker has not opened it yet
        fd = wait_until(lambda: (x := opened()) is not None and x + 1, timeout,
                        "the tsp blocker to start", 0.002) - 1
        os.close(fd)

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.tsp("-l").splitlines()[1:]:
            parts = line.split()
            if len(parts) > 1:
                out[parts[1]] = out.get(parts[1], 0) + 1
        return out

    def _kill_leftovers(self) -> None:
        """Clients still waiting on our socket (only ours: matched by TS_SOCKET), by pid."""
        needle = f"TS_SOCKET={self.socket}\0".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def tsp_drain(binary: str, d: Path, jobs: int, timeout: float) -> tuple[float, float]:
    """(jobs/s while draining, enqueue calls/s). Jobs are queued behind a blocker in chunks
    that tsp can hold, then released; only the draining is timed."""
    busy = 0.0
    enqueue_s = 0.0
    with Tsp(binary, d) as ts:
        left = jobs
        while left > 0:
            n = min(TSP_CHUNK, left)
            gate = ts.block()
            t = time.perf_counter()
            for _ in range(n):
                ts.add("true")
            enqueue_s += time.perf_counter() - t
            t = time.perf_counter()
            ts.release(gate, timeout)
            # -w without an id waits for the last job added (`tsp -n` prints no id)
            subprocess.run([ts.bin, "-w"], env=ts.env, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
            busy += time.perf_counter() - t  # the last job ended; the other slot's is a `true`
            wait_until(lambda: set(ts.states()) <= {"finished"}, timeout, "tsp to drain", 0.01)
            if ts.states().get("finished", 0) != n + 1:
                raise RuntimeError(f"tsp finished {ts.states()} of {n} + 1 jobs")
            ts.tsp("-C")
            left -= n
    return jobs / busy, jobs / enqueue_s


def tsp_cold(binary: str, d: Path, calls: int) -> list[float]:
    """ms per `tsp -n /bin/sh -c true` with the server up and its slots busy."""
    out = []
    with Tsp(binary, d) as ts:
        gate = ts.block()
        ts.add("true")  # not counted
        for _ in range(calls):
            t = time.perf_counter()
            ts.add("true")
            out.append((time.perf_counter() - t) * 1000)
        ts.release(gate, 30)
    return out


def tsp_pickup(binary: str, d: Path, sizes: Sizes, rng: random.Random) -> list[float]:
    marks = d / "marks"
    marks.mkdir(parents=True)
    timeout = 60 * sizes.timeout_scale
    with Tsp(binary, d) as ts:
        warm_up(ts.enqueue, marks, timeout)
        return pickup_series(ts.enqueue, marks, sizes.pickup_jobs, sizes.pickup_gap, rng,
                             timeout)


def tsp_section(binary: str, sizes: Sizes, workdir: Path, rng: random.Random) -> dict[str, Any]:
    """Cold enqueue and pickup latency (its drain runs in the drain section)."""
    cold, pickups = [], []
    for r in range(sizes.runs):
        cold.append(percentile(tsp_cold(binary, workdir / f"tsp-cold-{r}", sizes.cold_calls), 50))
        pickups.append(tsp_pickup(binary, workdir / f"tsp-pickup-{r}", sizes, rng))
        log(f"tsp run {r + 1}/{sizes.runs}: cold enqueue {cold[-1]:.1f} ms, "
            f"pickup p50 {percentile(pickups[-1], 50):.1f} ms")
    return {
        "version": run([binary, "-V"], check=False).stdout.splitlines()[0],
        "setup": f"{binary} -S 2, private TS_SOCKET and TMPDIR, jobs `tsp -n /bin/sh -c CMD`",
        "drain_method": f"queued behind a 2-slot blocker in chunks of {TSP_CHUNK} (tsp holds "
                        "one waiting client process per queued job, ~1000 at most), "
                        "timed from release to the last job finished",
        "cold_enqueue_ms": summary(cold, 2),
        "pickup": latency_summary(pickups),
    }


# -- Huey ------------------------------------------------------------------------------------
def install_huey() -> tuple[Path | None, str]:
    """The peers' venv with huey in it (created on first use); (python, reason)."""
    python = PEERS_VENV / "bin" / "python"
    check = [str(python), "-c", "import huey"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=60).returncode == 0:
        return python, ""
    reason = make_venv(PEERS_VENV, ["huey"], 600)
    if reason or subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
        return None, reason or "huey is not importable after pip install"
    return python, ""


class Huey:
    """One SqliteHuey database and, while started, its consumer (2 worker processes)."""

    def __init__(self, python: Path, d: Path) -> None:
        self.python = python
        self.dir = d
        self.db = d / "huey.db"
        d.mkdir(parents=True, exist_ok=True)
        self.env = clean_env(BENCH_HUEY_DB=str(self.db), PYTHONPATH=str(HUEY_APP_DIR))
        self.consumer: subprocess.Popen | None = None

    def py(self, code: str, *args: str, timeout: float = 300) -> str:
        return run([self.python, "-c", code, *args], env=self.env, timeout=timeout,
                   cwd=self.dir).stdout

    def enqueue_many(self, count: int) -> float:
        out = self.py("import sys, huey_app; huey_app.enqueue_many(int(sys.argv[1]), 'true')",
                      str(count))
        return json.loads(out)["seconds"]

    def cold_enqueue_ms(self) -> float:
        t = time.perf_counter()
        self.py("import sys, huey_app; huey_app.run_command(sys.argv[1])", "true", timeout=60)
        return (time.perf_counter() - t) * 1000

    def start(self) -> None:
        consumer = self.python.parent / "huey_consumer"
        with open(self.dir / "consumer.log", "ab") as out:
            self.consumer = PROCS.spawn(
                [consumer, "huey_app.huey", "--workers", "2", "--worker-type", "process"],
                env=self.env, cwd=self.dir, stdout=out, stderr=out)

    def stop(self) -> None:
        if self.consumer is not None:
            PROCS.stop(self.consumer, signal.SIGINT, timeout=15)  # its graceful signal
            self.consumer = None

    def done(self) -> int:
        try:
            return sql_rows(self.db, "SELECT count(*) FROM kv WHERE queue = 'bench'")[0][0]
        except Exception:  # noqa: BLE001 - the table appears with the first result
            return 0


def huey_drain(python: Path, d: Path, jobs: int, timeout: float) -> tuple[float, float]:
    """(jobs/s from starting the consumer to the last result, in-process enqueue jobs/s)."""
    h = Huey(python, d)
    enqueue_s = h.enqueue_many(jobs)
    t = time.perf_counter()
    h.start()
    try:
        wait_until(lambda: h.done() >= jobs, timeout, "huey to drain", 0.01)
        busy = time.perf_counter() - t
    finally:
        h.stop()
    return jobs / busy, jobs / enqueue_s


def huey_pickup(python: Path, d: Path, sizes: Sizes, rng: random.Random) -> list[float]:
    h = Huey(python, d)
    marks = d / "marks"
    marks.mkdir()
    timeout = 60 * sizes.timeout_scale
    server, enqueue = warm_enqueuer([python, "-c", "import huey_app; huey_app.serve()"],
                                    h.env, d, "huey")
    try:
        h.start()
        warm_up(enqueue, marks, timeout)
        return pickup_series(enqueue, marks, sizes.pickup_jobs, sizes.pickup_gap, rng, timeout)
    finally:
        h.stop()
        PROCS.stop(server, timeout=5)


def huey_section(python: Path, sizes: Sizes, workdir: Path,
                 rng: random.Random) -> dict[str, Any]:
    """Cold enqueue and pickup latency (its drain runs in the drain section)."""
    cold, pickups = [], []
    for r in range(sizes.runs):
        h = Huey(python, workdir / f"huey-cold-{r}")
        h.cold_enqueue_ms()  # not counted: creates the database
        cold.append(percentile([h.cold_enqueue_ms() for _ in range(sizes.cold_calls)], 50))
        pickups.append(huey_pickup(python, workdir / f"huey-pickup-{r}", sizes, rng))
        log(f"huey run {r + 1}/{sizes.runs}: cold enqueue {cold[-1]:.1f} ms, "
            f"pickup p50 {percentile(pickups[-1], 50):.1f} ms")
    version = run([python, "-c", "import huey; print(huey.__version__)"]).stdout.strip()
    return {
        "version": version,
        "setup": "SqliteHuey(fsync=True, WAL), huey_consumer --workers 2 --worker-type process "
                 "(default polling: 0.1 s growing x1.15 to 10 s when idle); task runs "
                 "subprocess.run(cmd, shell=True)",
        "drain_method": "all tasks enqueued first (one process); timed from starting the "
                        "consumer to the last result stored (polled every 10 ms)",
        "cold_enqueue_ms": summary(cold, 2),
        "cold_enqueue_method": "python -c 'import huey_app; huey_app.run_command(...)'",
        "pickup": latency_summary(pickups),
        "pickup_enqueue": "from one warm process (enqueue cost does not enter the latency)",
    }


@dataclass
class PeerSetup:
    """What `prepare` found or installed: a peer's entry point, or why it is skipped."""

    tsp: str | None = None
    huey: Path | None = None
    reasons: dict[str, str] = field(default_factory=dict)


_SETUP: PeerSetup | None = None


def prepare() -> PeerSetup:
    """Install the peers once per run (apt-get for tsp, the peers' venv for Huey)."""
    global _SETUP
    if _SETUP is None:
        tsp, tsp_reason = install_tsp()
        huey, huey_reason = install_huey()
        _SETUP = PeerSetup(tsp, huey)
        for name, reason in (("tsp", tsp_reason), ("huey", huey_reason)):
            if reason:
                _SETUP.reasons[name] = reason
                log(f"skipping {name}: {reason}")
    return _SETUP


def drains(setup: PeerSetup) -> dict[str, Callable[[Path, int, float], tuple[float, float]] | str]:
    """Each peer's drain function (dir, jobs, timeout) -> (jobs/s, enqueue jobs/s), or the
    reason it is skipped."""
    out: dict[str, Callable[[Path, int, float], tuple[float, float]] | str] = {}
    tsp, huey = setup.tsp, setup.huey
    out["tsp"] = (lambda d, n, t: tsp_drain(tsp, d, n, t)) if tsp else setup.reasons["tsp"]
    out["huey"] = (lambda d, n, t: huey_drain(huey, d, n, t)) if huey else setup.reasons["huey"]
    return out


def peers_section(sizes: Sizes, workdir: Path, rng: random.Random) -> dict[str, Any]:
    setup = prepare()
    return {
        "tsp": tsp_section(setup.tsp, sizes, workdir, rng) if setup.tsp
        else {"skipped": setup.reasons["tsp"]},
        "huey": huey_section(setup.huey, sizes, workdir, rng) if setup.huey
        else {"skipped": setup.reasons["huey"]},
    }
