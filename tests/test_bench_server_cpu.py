"""The bench's server CPU figure (bench/pgserver.py, PgCluster.cpu_seconds) counts a server
process that exits just as it is read: issue 25's target is read off it, and a backend that
the postmaster reaps between the reading of its own CPU and its children's would be counted
nowhere (a worker's whole backend, at the end of a drain)."""

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_seconds  # noqa: E402
from bench.pgserver import PgCluster  # noqa: E402

pytestmark = pytest.mark.slow  # a few hundred short-lived backends


def test_a_backend_that_exits_as_the_server_is_read_is_counted(pg_server: Any) -> None:
    cluster = PgCluster()
    cluster.server = pg_server
    missed = []
    # Each backend works for about a tenth of a second: a reaped process is known only in
    # clock ticks (utime and stime each rounded down), so a backend of two or three ticks
    # could look half lost to rounding alone, where a backend counted nowhere loses it all.
    for _ in range(40):
        conn = cluster.connect("postgres")
        cur = conn.cursor()
        cur.execute("SELECT pg_backend_pid(), count(*) FROM generate_series(1, 2000000)")
        pid = cur.fetchone()[0]
        used = cpu_seconds(pid)  # the backend's CPU so far: it does nothing more but exit
        before = cluster.cpu_seconds()
        conn.close()  # the backend exits now, while the next line reads the server
        counted = cluster.cpu_seconds() - before
        # What the closing backend had used by `before` is in `before` (a live child);
        # afterwards it must still be there, in the postmaster's reaped children or as a
        # live child: the difference never goes below zero by a whole backend.
        if counted < -0.5 * used:
            missed.append((used, counted))
    assert not missed, f"a closing backend's CPU went uncounted (used, counted): {missed}"
