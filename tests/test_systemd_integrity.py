"""After a reboot, four worker instances start at once on a large queue: one checks the file.

Under the private systemd of test_systemd.py: a database with ROWS finished jobs (bench/fill.py's
fast SQL fill, a few seconds), no record of a check (as after a reboot: the boot id differs),
the page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`; where that is not permitted the
step is skipped and the test says so in its output, the rest still runs), then
`systemctl start` of four instances. Every instance reaches READY=1 (active) without waiting
for the check: the instance that checks became active before it logged `integrity_checked`
(systemd's and journald's monotonic timestamps), and exactly one of them checks: the others
waited for its record (after READY) and skipped the check. No speed is asserted (that
belongs in `make bench`, which times READY of four instances at 10 million jobs); the
measured start and check times are printed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_systemd import Host, _start, app, host  # noqa: F401 (fixtures)

from queuectl.backends.sqlite_checked import SUFFIX

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
ROWS = 1_000_000  # finished jobs (about 280 MB): the fill takes a few seconds
START_DEADLINE = 60.0  # seconds: a starting worker waits up to 60 s for the database


def _bench_fill() -> Any:
    """bench/fill.py: bench/ is not installed, and its fill is the one `make bench` measures."""
    sys.path.insert(0, str(REPO))
    try:
        import bench.fill
    finally:
        sys.path.remove(str(REPO))
    return bench.fill


def _fill(db: Path, rows: int) -> dict[str, Any]:
    fill = _bench_fill()
    return fill.fill_finished(fill.SqliteFill(db), rows)


def test_four_instances_on_a_large_queue_check_it_once_and_all_become_ready(
        host: Host) -> None:  # noqa: F811 (the fixture imported above)
    _start(host, 1)  # creates the state directory and the database as user queuectl
    host.systemctl("stop", "queuectl-worker@1.service")
    db = host.state / "queue.db"
    filled = _fill(db, ROWS)
    Path(f"{db}{SUFFIX}").unlink()  # @1 checked the empty file: now as after a reboot
    dropped = _bench_fill().drop_page_cache()
    print(f"\nfilled {ROWS} rows in {filled['fill_seconds']} s "
          f"({db.stat().st_size // 2**20} MiB); page cache "
          f"{'dropped' if dropped else 'NOT dropped (not permitted here)'}")
    checks_before = len(host.events("integrity_checked"))
    ready_before = len(host.events("worker_ready"))

    started = time.monotonic()
    _start(host, 1, 2, 3, 4)  # returns once every instance sent READY=1
    took = time.monotonic() - started
    units = [f"queuectl-worker@{n}.service" for n in (1, 2, 3, 4)]
    assert all(host.active(u) for u in units)
    assert took < START_DEADLINE, took

    # Each worker logs integrity_checked (if it checked) before worker_ready, on one stream.
    host.sd.wait_for(lambda: len(host.events("worker_ready")) == ready_before + 4, 120,
                     "worker_ready of the four instances in the journal")
    checks = host.events("integrity_checked")[checks_before:]
    assert len(checks) == 1, [c.get("WORKER") for c in checks]
    checker = checks[0]["_SYSTEMD_UNIT"]
    active_at = int(host.prop(checker, "ActiveEnterTimestampMonotonic"))
    assert active_at < int(checks[0]["__MONOTONIC_TIMESTAMP"]), (active_at, checks[0])
    print(f"four instances active in {took:.2f} s; {checks[0]['WORKER']} checked the file "
          f"in {checks[0]['SECONDS']} s after its READY=1, the other three skipped the check")
    assert (Path(f"{db}{SUFFIX}").stat().st_mode & 0o777) == 0o660  # made by queuectl, umask 007
