"""Shared fixtures: a real database file, the real console script, real worker processes."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from queuectl.clock import parse_iso
from queuectl.procinfo import stat_fields

QUEUECTL = str(Path(sys.executable).with_name("queuectl"))


def pytest_configure() -> None:
    """`make test` starts parts of the suite in the background of a shell without job control
    (scripts/side-by-side.sh), which starts them with SIGINT ignored: Ctrl-C would stop one
    part and leave the others running, their servers with them. Such a session takes Ctrl-C
    again, and tears down."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# -- tiers -----------------------------------------------------------------------------------
# The markers (pyproject.toml) say what a test needs or costs: `make test-fast` leaves out every
# test that has one, except the contract suite, which runs whole on every backend; `make test`
# runs everything. A test gets its requirement marks from what it uses: the fixtures below (and
# any fixture built on them), and its PostgreSQL run if a parameter names the backend. A mark no
# fixture can tell (`slow`; a root check inside a test) is written on the test or, for a whole
# file, as its `pytestmark`.
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "pg_server": ("postgres",),  # the throwaway server: every PostgreSQL fixture starts here
    "as_other_user": ("root",),  # runuser
    "app": ("systemd", "root"),  # test_systemd.py's private systemd (`host` and kin use it)
    "sd": ("systemd", "root"),  # test_systemd_ns.py's private systemd
    "lane_app": ("systemd", "root"),  # test_systemd_lanes.py's (`lane_host` uses it)
    "deb": ("deb",),  # test_deb.py: `make deb`
    "admin": ("deb", "systemd", "root"),  # test_deb.py: the package installed in a Debian root
    "pg_hosts": ("deb", "systemd", "root"),  # test_deb_postgres.py: two such roots
    "small_fs": ("root",),  # test_db_faults.py: mounts a tmpfs
    "queue_group": ("root",),  # test_permissions.py: groupadd
    "tcp_queue": ("root",),  # test_postgres_hosts.py: unshare --uts
}


# Parameters naming the backend a test runs on (`backend_locator` below; test_bad_input's own).
BACKEND_PARAMS = ("backend_locator", "backend")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marks = {mark for name in getattr(item, "fixturenames", ())
                 for mark in FIXTURE_MARKS.get(name, ())}
        callspec = getattr(item, "callspec", None)
        if callspec is not None and any(callspec.params.get(name) == "postgres"
                                        for name in BACKEND_PARAMS):
            marks.add("postgres")
        for mark in sorted(marks - {m.name for m in item.iter_markers()}):
            item.add_marker(mark)


_ALL_QUEUES: list["Queue"] = []


@pytest.fixture(scope="session", autouse=True)
def _no_stray_workers() -> Iterator[None]:
    """Whatever a test forgot to stop is stopped when the session ends."""
    yield
    for q in _ALL_QUEUES:
        q.stop_all()


def process_alive(pid: int) -> bool:
    """A process that exists and has not exited (a zombie awaiting its parent counts as gone)."""
    try:
        return stat_fields(pid)[0] not in "ZX"
    except FileNotFoundError:
        return False


def pickup_delay(job: dict[str, Any]) -> float:
    """How long a job waited to start: started_at - run_at (the store's clock, to the ms)."""
    return parse_iso(job["started_at"]) - parse_iso(job["run_at"])


class Queue:
    """Drives one database through the console script, as a user would."""

    def __init__(self, db: "Path | str") -> None:
        self.db = db
        self.env = {**os.environ, "QUEUECTL_DB": str(db)}
        self.env.pop("JOURNAL_STREAM", None)
        self.procs: list[subprocess.Popen] = []
        _ALL_QUEUES.append(self)

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 30, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """`queuectl <args>`, from directory cwd (default: the test's own)."""
        result = subprocess.run([QUEUECTL, *args], env=self.env, input=input,
                                capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(
                f"queuectl {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def enqueue(self, job: dict[str, Any]) -> str:
        return self.run("enqueue", json.dumps(job)).stdout.strip()

    def status(self) -> dict[str, int]:
        return self.json("status")

    def job(self, job_id: str) -> dict[str, Any]:
        return self.json("show", job_id)

    def start(self, *args: str, log: Path | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start `queuectl <args>` (a worker, a supervisor) in the background."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen([QUEUECTL, "--log-format", "json", *args],
                                env={**self.env, **(env or {})}, stdout=out, stderr=out,
                                cwd=cwd)
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, log: Path | None = None, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen:
        return self.start("worker", "run", "--poll-interval", "0.05", *args, log=log, env=env,
                          cwd=cwd)

    def registered_workers(self) -> dict[str, int]:
        """Worker name -> pid in the registry, read through the storage contract (any
        backend), live or not."""
        from queuectl.locator import open_store

        store = open_store(str(self.db))
        try:
            return {w.name: w.pid for w in store.workers()}
        finally:
            store.close()

    def wait_state(self, job_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (j := self.job(job_id))["state"] == state and j,
                        timeout, f"job {job_id} to be {state}")

    def wait_counts(self, timeout: float = 60, **expected: int) -> dict[str, int]:
        def match() -> Any:
            s = self.status()
            return all(s[k] == v for k, v in expected.items()) and s
        return wait_for(match, timeout, f"status {expected}", every=0.1)

    def pickup_delays(self, prefix: str, count: int, **idle: int) -> list[float]:
        """Enqueue `count` quick jobs one at a time, each once the workers are idle (`idle`:
        the counts to wait for besides processing=0); how long each waited to start."""
        delays = []
        for i in range(count):
            self.wait_counts(processing=0, timeout=30, **idle)
            job = self.wait_state(self.enqueue({"id": f"{prefix}{i}", "command": "true"}),
                                  "completed", timeout=30)
            delays.append(pickup_delay(job))
        return delays

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    q = Queue(tmp_path / "queue.db")
    yield q
    q.stop_all()


@pytest.fixture(scope="session")
def as_other_user() -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """Run queuectl as user `nobody` (root only): `as_other_user(*args, env=...)`."""
    import shutil
    import tempfile

    from appcopy import SYSTEM_PYTHON, install_app

    if os.geteuid() != 0 or not shutil.which("runuser") or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("running as another user needs root, runuser and /usr/bin/python3")
    base = Path(tempfile.mkdtemp(prefix="queuectl-app-"))
    wrapper = install_app(base)
    runuser = shutil.which("runuser")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([runuser, "-u", "nobody", "--", str(wrapper), *args],
                              env={"PATH": "/usr/bin:/bin", **(env or {})},
                              capture_output=True, text=True, timeout=30)

    yield run
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory other users can reach (pytest's own tmp dirs are private to root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="queuectl-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- backends ------------------------------------------------------------------------------
# Every test that takes `backend_locator` runs once per backend. PostgreSQL comes from a
# throwaway server the suite starts itself (tests/pgserver.py); without one the PostgreSQL
# runs skip, and with QUEUECTL_REQUIRE_POSTGRES=1 (CI) they fail instead.
BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the whole session."""
    from pgserver import start_or_skip

    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture
def pg_locator(pg_server: Any) -> str:
    """A postgresql:// locator naming a fresh, empty queue schema on the session's server."""
    return pg_server.fresh_locator()


@pytest.fixture(params=BACKENDS)
def backend_locator(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty queue on each backend in turn."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.db")
    return request.getfixturevalue("pg_locator")


@pytest.fixture
def any_queue(backend_locator: str) -> Iterator[Queue]:
    """`queue`, once per backend: the console script against SQLite, then PostgreSQL."""
    q = Queue(backend_locator)
    yield q
    q.stop_all()


# -- the contract suite (tests/contract/): stores opened through the factory only -----------
@pytest.fixture
def open_another(backend_locator: str) -> Iterator[Callable[..., Any]]:
    """Open more stores on the same queue, as other processes would; all closed after."""
    from queuectl.locator import open_store

    opened: list[Any] = []

    def opener(for_worker: bool = False) -> Any:
        store = open_store(backend_locator, for_worker=for_worker)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_another: Callable[..., Any]) -> Any:
    """A store on a fresh, empty queue (a CLI's store: durable commits)."""
    return open_another()


@pytest.fixture(params=["cli", "worker"])
def either_store(request: pytest.FixtureRequest, open_another: Callable[..., Any]) -> Any:
    """Another store on `store`'s queue, a CLI's and then a worker's (whose calls
    PostgreSQL prepares on a direct connection)."""
    return open_another(for_worker=request.param == "worker")
