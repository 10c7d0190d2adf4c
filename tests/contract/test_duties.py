"""Contract: duties (`take_duty`), the leases that let one worker at a time do a queue-wide
chore such as retention, through the Store interface only, once per backend."""

import time


# -- duties -------------------------------------------------------------------------------------
def test_a_duty_has_one_holder_until_it_expires(store, open_another) -> None:
    other = open_another(for_worker=True)
    assert store.take_duty("retention", "w1", 1.0)
    assert not other.take_duty("retention", "w2", 1.0)
    assert store.take_duty("retention", "w1", 1.0)  # renewed by its holder
    assert other.take_duty("other-duty", "w2", 1.0)  # names are independent
    deadline = time.monotonic() + 10
    while not other.take_duty("retention", "w2", 30.0):
        assert time.monotonic() < deadline, "the expired duty was never taken over"
        time.sleep(0.1)
    assert not store.take_duty("retention", "w1", 1.0)
