"""Contract: a running attempt's live output (`append_output`, `read_output`) and how the
history's tail continues it, through the Store interface only, once per backend."""

import pytest
from contract_helpers import ok

from queuectl import policy
from queuectl.errors import NotFound
from queuectl.job import JobSpec
from queuectl.store import Outcome


# -- live output --------------------------------------------------------------------------------
def test_live_output_is_read_in_order_and_stays_bounded(store, open_another) -> None:
    reader = open_another()
    store.enqueue([JobSpec("chatty", id="a")])
    job = store.claim_next("w")
    assert reader.read_output("a", None, 0).data == b""
    assert store.append_output(job, 0, b"hello ")
    assert store.append_output(job, 6, b"world\n")
    part = reader.read_output("a", None, 0)
    assert (part.attempt, part.offset, part.data, part.running) == (1, 0, b"hello world\n", True)
    assert reader.read_output("a", None, 6).data == b"world\n"
    big = b"x" * 40_000
    offset = 12
    for _ in range(10):  # 400 kB: only about the last OUTPUT_LIMIT stays
        assert store.append_output(job, offset, big)
        offset += len(big)
    part = reader.read_output("a", None, 12)
    assert part.offset > 12 and part.offset + len(part.data) == offset
    assert len(part.data) <= policy.OUTPUT_LIMIT + len(big)
    # The attempt ends: the history tail continues the same byte offsets.
    store.record_success(job, ok((b"hello world\n" + big * 10)[-policy.OUTPUT_LIMIT:]))
    # record_success was given output but no total: the worker's Outcome carries the total
    done = reader.read_output("a", None, 0)
    assert not done.running and done.attempt == 1


def test_the_history_tail_continues_the_live_offsets(store, open_another) -> None:
    reader = open_another()
    store.enqueue([JobSpec("chatty", id="a")])
    job = store.claim_next("w")
    store.append_output(job, 0, b"0123456789")
    seen = reader.read_output("a", None, 0)
    position = seen.offset + len(seen.data)
    everything = b"0123456789abcdef"
    store.record_success(job, Outcome(0, None, everything, 0.5, len(everything), True))
    rest = reader.read_output("a", seen.attempt, position)
    assert (rest.offset, rest.data, rest.running) == (10, b"abcdef", False)


def test_append_output_is_fenced_and_reading_a_job_that_never_ran_says_so(store) -> None:
    store.enqueue([JobSpec("true", id="a"), JobSpec("true", id="b")])
    job = store.claim_next("w")
    store.release(job, "worker shutdown")
    assert not store.append_output(job, 0, b"late")
    assert store.read_output("b", None, 0) is None
    with pytest.raises(NotFound):
        store.read_output("nope", None, 0)
