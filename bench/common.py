"""Shared pieces: sizes, statistics, process bookkeeping, /proc readings, small waits.

Every process the benchmark starts goes through `Procs`, which runs it in its own session so
that whatever it leaves behind can be killed by process group, and kills all of them at exit.
"""

import importlib.util
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from queuectl.procinfo import stat_fields

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent  # the venv the Makefile built: `$(BIN)/python bench/run.py`
QUEUECTL = VENV_BIN / "queuectl"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sizes:
    """How much work each measurement does; `full` is what `make bench` runs."""

    runs: int = 3
    drain_jobs: int = 5_000
    worker_counts: tuple[int, ...] = (1, 2, 4)
    pickup_jobs: int = 200
    pickup_gap: tuple[float, float] = (0.05, 0.2)
    idle_cpu_seconds: float = 10.0
    trickle_jobs: int = 200  # single enqueues, 20 a second, to idle workers (both backends)
    cold_calls: int = 20
    burst_calls: int = 300  # concurrent cold enqueues (issue: cron at the top of the minute)
    batch_jobs: int = 50_000
    scale_rows: int = 1_000_000
    scale_max: int = 0  # --scale-max: a further point of the scale curve (10,000,000 in README)
    scale_drain_jobs: int = 5_000
    claim_samples: int = 2_000
    blocked_rows: int = 100_000  # jobs waiting for a parent, for the claim's cost of them
    memory_jobs: int = 10_000
    memory_runs: int = 1
    pg_batch_jobs: int = 50_000  # the issue asks for at least 20,000
    peers: bool = True
    settle_seconds: float = 1.0  # pause after workers register, before measuring them
    timeout_scale: float = 1.0  # multiplies every safety deadline

    @classmethod
    def full(cls) -> "Sizes":
        return cls()

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(runs=2, drain_jobs=1_000, pickup_jobs=40, idle_cpu_seconds=3.0, cold_calls=8,
                   trickle_jobs=100,
                   batch_jobs=10_000, scale_rows=100_000, scale_drain_jobs=1_000,
                   claim_samples=500, memory_jobs=2_000, pg_batch_jobs=20_000,
                   blocked_rows=100_000)

    @classmethod
    def smoke(cls) -> "Sizes":
        return cls(runs=1, drain_jobs=20, worker_counts=(1, 2), pickup_jobs=4,
                   pickup_gap=(0.01, 0.03), idle_cpu_seconds=0.5, cold_calls=2, batch_jobs=200,
                   trickle_jobs=10,
                   burst_calls=10, scale_rows=2_000, scale_drain_jobs=20, claim_samples=20, memory_jobs=20,
                   blocked_rows=200,
                   pg_batch_jobs=200, peers=False, settle_seconds=0.2)


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Iterable[float], digits: int = 3) -> dict[str, Any]:
    """{median, min, max, runs}: how every figure is reported."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(percentile(vals, 50), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "runs": [round(v, digits) for v in vals],
    }


def paired(a: Sequence[float], b: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """summary() of a[i] / b[i]: measurements taken back to back in the same run, so that a
    machine whose load drifts (other work on it) disturbs the comparison less."""
    return summary((x / y for x, y in zip(a, b, strict=True) if y), digits)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


# -- processes -------------------------------------------------------------------------------
@dataclass
class Procs:
    """Every child the benchmark starts; each in its own session, all killed at exit."""

    alive: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, argv: Sequence[str | Path], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kwargs)
        self.alive.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM,
             timeout: float = 15.0) -> int | None:
        """Signal proc, wait up to timeout, then SIGKILL its whole process group."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        return self.wait(proc, timeout)

    def wait(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """Wait for proc to exit on its own; kill its group if it is late. Its exit status."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group(proc)
        if proc in self.alive:
            self.alive.remove(proc)
        return proc.returncode

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def kill_all(self) -> None:
        for proc in list(self.alive):
            self._kill_group(proc)
        self.alive.clear()


PROCS = Procs()


def run(argv: Sequence[str | Path], timeout: float = 120, check: bool = True,
        **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command to completion (bounded), capturing its output."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        cmd = " ".join(str(a) for a in argv)
        raise RuntimeError(f"{cmd} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result


def load_test_module(name: str) -> ModuleType:
    """tests/NAME.py, imported by its path (tests/ is no package), once: what the tests and
    the bench share (the PostgreSQL starter, the poll loop) lives there."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Poll predicate until truthy; at the deadline a RuntimeError (tests/waiting.TimedOut) naming
# what was awaited.
wait_until: Callable[..., Any] = load_test_module("waiting").wait_for


# Not passed on to what is measured: a journald stream or a database of the caller's, and
# PYTHONDONTWRITEBYTECODE, which some shells set and no cron job or systemd unit has (without
# cached bytecode every cold start compiles queuectl's sources again).
DROPPED_ENV = ("JOURNAL_STREAM", "NOTIFY_SOCKET", "QUEUECTL_DB", "PYTHONPATH",
               "PYTHONDONTWRITEBYTECODE")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for queuectl and the peers."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(extra)
    return env


def make_venv(venv: Path, requirements: Sequence[str], pip_timeout: float) -> str:
    """Create `venv` afresh (a peer's own) and pip install `requirements` into it: "" or
    why that failed."""
    log(f"creating {venv} and installing {', '.join(requirements)}")
    res = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        return f"cannot create {venv}: {res.stderr.strip()[-300:]}"
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                          "--disable-pip-version-check", *requirements],
                         capture_output=True, text=True, timeout=pip_timeout,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        return f"pip install {' '.join(requirements)} failed: {res.stderr.strip()[-300:]}"
    return ""


# -- /proc -----------------------------------------------------------------------------------
def stat_cpu(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of pid in seconds, from /proc/PID/stat: its own CPU,
    and that of the children it has reaped (the commands a worker ran)."""
    return cpu_of(stat_fields(pid))


def cpu_of(fields: list[str]) -> tuple[float, float]:
    """stat_cpu() of fields read with queuectl.procinfo.stat_fields."""
    return ((int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK)


def run_seconds(pid: int) -> float:
    """The time pid has been on a CPU, in seconds, to the nanosecond (/proc/PID/schedstat):
    the sum utime + stime are scaled to, without their clock-tick steps, which swallow
    whole what an idle backend spends in a second. OSError if pid is gone."""
    with open(f"/proc/{pid}/schedstat", "rb") as fh:
        return int(fh.read().split()[0]) / 1e9


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid, in seconds."""
    return stat_cpu(pid)[0]


def rss_mb(pid: int) -> float:
    """Resident set size of pid in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


# -- SQLite reads ----------------------------------------------------------------------------
def sql_rows(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """One short read of a database that workers may be writing (WAL: never blocks them)."""
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
