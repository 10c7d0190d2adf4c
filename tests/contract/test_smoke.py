"""Placeholder so the layout is importable; the contract tests replace it."""

from queuectl.job import JobSpec


def test_enqueue_then_claim_returns_the_job(store) -> None:
    store.enqueue([JobSpec("true", id="a")])
    job = store.claim_next("w")
    assert job is not None and job.id == "a" and job.state == "processing"
