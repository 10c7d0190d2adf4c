"""queuectl-metrics.timer under the suite's private systemd.

The project's service and timer, installed beside the worker unit as an admin would, write
node_exporter's textfile into a private /var/lib/prometheus/node-exporter owned by queuectl:
it appears, it parses, it follows the queue, and every version of it is whole (each write
is a new inode renamed into place, never a file written where the collector reads).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_systemd import APP_INSIDE, Host, app, host  # noqa: F401 (fixtures)
from test_systemd_postgres import _uid_gid
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
UNITS = ("queuectl-metrics.service", "queuectl-metrics.timer")


@pytest.fixture
def metrics_host(host: Host, app: Path) -> Iterator[tuple[Host, Path]]:  # noqa: F811
    base = host.state.parent.parent  # tmp/host, with varlib and etc-systemd
    etc_systemd = base / "etc-systemd"
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        (etc_systemd / name).write_text(text.replace("/usr/bin/queuectl",
                                                     f"{APP_INSIDE}/bin/queuectl"))
    # Test speed only: every second instead of every 15 s (an empty value resets them all).
    dropin = etc_systemd / "queuectl-metrics.timer.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text(
        "[Timer]\nOnActiveSec=\nOnActiveSec=1s\nOnUnitActiveSec=1s\nAccuracySec=100ms\n")
    # A timer sped up to every second starts the service more often than systemd's default
    # start limit (5 in 10 s) allows; the real timer (15 s) never comes near it.
    service_dropin = etc_systemd / "queuectl-metrics.service.d"
    service_dropin.mkdir()
    (service_dropin / "test.conf").write_text("[Unit]\nStartLimitIntervalSec=0\n")
    textdir = base / "varlib" / "prometheus" / "node-exporter"
    textdir.mkdir(parents=True)
    os.chown(textdir, *_uid_gid(app / "root" / "etc", "queuectl"))
    host.systemctl("daemon-reload")
    yield host, textdir / "queuectl.prom"


def _parse(text: str) -> dict[str, float]:
    return {s.name + str(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.mark.slow
def test_the_timer_writes_a_whole_textfile_that_follows_the_queue(
        metrics_host: tuple[Host, Path]) -> None:
    sd_host, prom = metrics_host
    sd_host.systemctl("start", "queuectl-metrics.timer")
    try:
        wait_for(prom.exists, 30, "the timer to write the textfile")
    except AssertionError:
        raise AssertionError(sd_host.sd.journalctl("-u", "queuectl-metrics.*").stdout) from None
    assert sd_host.prop("queuectl-metrics.service", "User") == "queuectl"
    assert prom.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user

    sd_host.queue.enqueue({"id": "m1", "command": "true"})
    key = "queuectl_jobs_enqueued_total[('queue', 'default')]"
    wait_for(lambda: _parse(prom.read_text()).get(key) == 1, 30,
             "the textfile to count the enqueued job")

    # Every read, while the timer keeps replacing it, is a whole file; each write a new inode.
    inodes = set()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        with open(prom) as fh:
            inodes.add(os.fstat(fh.fileno()).st_ino)
            text = fh.read()
        assert text.endswith("\n")
        assert "queuectl_attempt_duration_seconds_count" in text
        _parse(text)
        time.sleep(0.05)
    assert len(inodes) >= 2, "the timer did not rewrite the file within 4 s"
    leftovers = [p.name for p in prom.parent.iterdir() if p.name != prom.name]
    assert not [n for n in leftovers if n.endswith(".prom")], leftovers
    result = sd_host.prop("queuectl-metrics.service", "Result")
    assert result == "success", sd_host.sd.journalctl("-u", "queuectl-metrics.service").stdout
