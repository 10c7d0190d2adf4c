"""The shipped Prometheus alert rules (prometheus/queuectl.rules.yml): valid for Prometheus'
own `promtool`, each alert fired and held back by its unit tests (tests/alert_rules_test.yml),
and written against metrics `queuectl metrics` really exports, so rules and exporter cannot
drift apart.

Without promtool (Debian: apt-get install prometheus) these skip, saying so, except under
QUEUECTL_REQUIRE_PROMTOOL=1 (set in CI), where they fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Queue

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "queuectl.rules.yml"
UNIT_TESTS = ROOT / "tests" / "alert_rules_test.yml"



def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                          if os.path.exists("/usr/bin/promtool") else None)
    if found is None:
        message = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("QUEUECTL_REQUIRE_PROMTOOL") == "1":
            pytest.fail(message + ", and QUEUECTL_REQUIRE_PROMTOOL=1 requires it")
        pytest.skip(message)
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def alerts() -> dict[str, str]:
    """Each alert's name and its block of the rules file (no YAML parser in the venv: the
    file keeps one `- alert:` item per rule, and promtool checks the rest)."""
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.M)[1:]
    return {block.split("\n", 1)[0].strip(): block for block in blocks}


def without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_each_alert_fires_on_its_series_and_not_on_look_alikes() -> None:
    """promtool's unit tests: the firing alerts with their exact labels and annotations,
    and none where nothing is wrong."""
    result = run_promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_and_names_what_it_is_about() -> None:
    found = alerts()
    assert set(found) == {"QueuectlJobsDying", "QueuectlJobsWaitingTooLong",
                          "QueuectlNoWorkerForWaitingJobs", "QueuectlNoticesPiling",
                          "QueuectlWorkerRestartLoop"}
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == set(found), f"alerts without unit tests: {set(found) - tested}"
    for name, block in found.items():
        subject = "{{ $labels.worker }}" if "worker_start_time" in block else \
            "{{ $labels.queue }}"
        summary = re.search(r"summary: (.*)", block)
        description = re.search(r"description: >-\n((?:\s{12}.*\n?)+)", block)
        assert summary and subject in summary.group(1), f"{name}: summary names no {subject}"
        assert description and subject in description.group(1), \
            f"{name}: description names no {subject}"
        assert re.search(r"severity: (warning|critical)", block), f"{name}: no severity"


def test_the_rules_use_only_metrics_that_queuectl_exports(queue: Queue) -> None:
    exported: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", queue.run("metrics").stdout, re.M):
        exported.add(name)
        if kind == "histogram":
            exported.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    used = set(re.findall(r"\bqueuectl_[a-z_]+\b", without_comments(RULES.read_text())))
    assert used, "no metric names found in the rules"
    unknown = used - exported
    assert not unknown, f"the rules use metrics queuectl metrics does not export: {unknown}"
