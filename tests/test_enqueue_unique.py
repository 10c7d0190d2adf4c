"""`enqueue --unique KEY` as cron and admins use it: never two live jobs of one key, on
both backends, through the console script."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import QUEUECTL, Queue
from waiting import wait_for

LIVE = ("pending", "processing", "failed")


def _jobs(q: Queue, key: str) -> list[dict]:
    return q.json("list", "--unique", key)


def test_a_second_enqueue_of_a_live_key_prints_the_same_id_says_so_and_exits_0(
        any_queue: Queue) -> None:
    q = any_queue
    first = q.run("enqueue", "--unique", "sync-mirror", "--cmd", "sleep 60")
    assert first.stderr == ""
    job_id = first.stdout.strip()
    again = q.run("enqueue", "--unique", "sync-mirror", "--cmd", "sleep 60")
    assert again.returncode == 0 and again.stdout.strip() == job_id
    assert again.stderr.count("\n") == 1
    assert "already queued" in again.stderr and job_id in again.stderr
    assert "sync-mirror" in again.stderr
    json_form = q.run("enqueue", json.dumps({"command": "x", "unique": "sync-mirror"}))
    assert json_form.stdout.strip() == job_id
    assert [j["id"] for j in _jobs(q, "sync-mirror")] == [job_id]
    assert q.job(job_id)["unique"] == "sync-mirror"
    assert q.status()["pending"] == 1


@pytest.mark.parametrize("args, says", [
    (["--unique", "", "--cmd", "true"], '"unique" must be a non-empty string'),
    (["--unique", "a\nb", "--cmd", "true"], "control characters"),
    (["--unique", "k", '{"command": "true", "unique": "other"}'], "--unique k but the job says"),
    (["--unique", "k", "--file", "JOBS"], "--unique gives one job a key, not 2"),
    (['{"command": "true", "unique": 5}'], '"unique" must be a non-empty string'),
])
def test_bad_unique_keys_are_one_line_exit_2_and_store_nothing(queue: Queue, tmp_path: Path,
                                                               args: list[str], says: str) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"command": "true"}\n{"command": "true"}\n')
    args = [str(jobs) if a == "JOBS" else a for a in args]
    queue.run("status")
    result = queue.run("enqueue", *args, check=False)
    assert result.returncode == 2, result
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert queue.status()["pending"] == 0


def test_dlq_retry_of_a_job_whose_key_is_held_is_refused_naming_the_holder(
        any_queue: Queue) -> None:
    q = any_queue
    q.run("config", "set", "backoff-max", "0")
    old = q.run("enqueue", "--unique", "k", "--cmd", "exit 3", "--max-retries", "0").stdout.strip()
    q.worker("--drain")
    q.wait_state(old, "dead")
    newer = q.run("enqueue", "--unique", "k", "--cmd", "sleep 60", "--delay", "3600").stdout.strip()
    assert newer != old
    refused = q.run("dlq", "retry", old, check=False)
    assert refused.returncode == 1 and newer in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert q.job(old)["state"] == "dead"


@pytest.mark.slow
def test_300_concurrent_enqueues_of_one_key_store_one_job_and_all_print_its_id(
        any_queue: Queue, tmp_path: Path) -> None:
    q = any_queue
    q.run("status")  # the queue exists before the burst, as on a real host
    out = tmp_path / "out"
    out.mkdir()
    script = ('for i in $(seq 1 300); do ( "$Q" enqueue --unique k --cmd "sleep 600" '
              f'>{out}/$i.id 2>{out}/$i.err; echo $? >{out}/$i.rc ) & done; wait')
    subprocess.run(["/bin/sh", "-c", script], env={**q.env, "Q": QUEUECTL}, check=True,
                   timeout=600)
    codes = {p.read_text().strip() for p in out.glob("*.rc")}
    printed = {p.read_text().strip() for p in out.glob("*.id")}
    said = [p.read_text() for p in out.glob("*.err")]
    assert codes == {"0"}, [t for t in said if t][:3]
    [job] = _jobs(q, "k")
    assert printed == {job["id"]}
    assert sum("already queued" in t for t in said) == 299
    assert q.status()["pending"] == 1


@pytest.mark.slow
def test_cron_every_half_second_never_overlaps_and_runs_again_after_each_end(
        any_queue: Queue, tmp_path: Path) -> None:
    """A shell loop playing cron: `enqueue --unique nightly --cmd 'sleep 3'` every 0.5 s for
    12 s, two workers. Never two nightly jobs live at once, and a new one after each ends."""
    q = any_queue
    q.run("status")
    q.worker()
    q.worker()
    loop = subprocess.Popen(
        ["/bin/sh", "-c", 'end=$(($(date +%s) + 12)); while [ "$(date +%s)" -lt "$end" ]; do '
         '"$Q" enqueue --unique nightly --cmd "sleep 3" >/dev/null 2>&1 || echo fail; '
         'sleep 0.5; done'], env={**q.env, "Q": QUEUECTL}, stdout=subprocess.PIPE, text=True)
    samples = 0
    while loop.poll() is None:  # what an admin would see at any moment
        live = [j for j in _jobs(q, "nightly") if j["state"] in LIVE]
        assert len(live) <= 1, live
        samples += 1
        time.sleep(0.2)
    assert loop.stdout is not None and "fail" not in loop.stdout.read()
    assert samples >= 10
    wait_for(lambda: all(j["state"] == "completed" for j in _jobs(q, "nightly")), 30,
             "the last nightly job to finish")
    jobs = _jobs(q, "nightly")
    assert len(jobs) >= 3, jobs  # 12 s of cron, 3 s a run: it ran again after each end
    spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"two nightly jobs ran at once: {spans}"
