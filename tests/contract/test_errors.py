"""Errors: NotFound and Conflict only where named, one line each, no secrets, and a store
that raised stays usable."""

from __future__ import annotations

import re

import pytest
from contract_helpers import add, claim, failed, no_backoff

from queuectl.errors import Conflict, NotFound, QueueError
from queuectl.job import JobSpec


def _secret(locator: str) -> str | None:
    """The password of a URL locator, if it has one."""
    found = re.search(r"://[^/@:?#]*:([^/@?#]+)@", locator) or re.search(
        r"(?i)password=([^&\s]+)", locator)
    return found.group(1) if found else None


def _check_message(exc: QueueError, locator: str) -> None:
    text = str(exc)
    assert text.strip() and "\n" not in text, repr(text)
    secret = _secret(locator)
    assert secret is None or secret not in text


def test_not_found_from_get_is_one_line(store, backend_locator) -> None:
    with pytest.raises(NotFound) as caught:
        store.get("no-such-job")
    _check_message(caught.value, backend_locator)


def test_not_found_from_retry_dead_is_one_line(store, backend_locator) -> None:
    with pytest.raises(NotFound) as caught:
        store.retry_dead("no-such-job")
    _check_message(caught.value, backend_locator)


def test_conflict_from_enqueue_is_one_line(store, backend_locator) -> None:
    add(store, id="taken")
    with pytest.raises(Conflict) as caught:
        add(store, id="taken")
    _check_message(caught.value, backend_locator)


def test_conflict_from_retry_dead_is_one_line(store, backend_locator) -> None:
    add(store, id="alive")
    with pytest.raises(Conflict) as caught:
        store.retry_dead("alive")
    _check_message(caught.value, backend_locator)


def test_a_store_stays_usable_after_a_conflict(store) -> None:
    """The failed transaction is rolled back whole; the next one starts clean."""
    add(store, id="taken")
    with pytest.raises(Conflict):
        store.enqueue([JobSpec("x", id="new"), JobSpec("y", id="taken")])
    assert add(store, id="new") == "new"
    assert claim(store).id == "taken"
    assert store.counts()["processing"] == 1 and store.counts()["pending"] == 1


def test_a_store_stays_usable_after_not_found(store) -> None:
    with pytest.raises(NotFound):
        store.retry_dead("missing")
    with pytest.raises(NotFound):
        store.get("missing", history=True)
    no_backoff(store)
    add(store, id="j", max_retries=0)
    store.record_failure(claim(store), failed())
    assert store.retry_dead("j").state == "pending"


def test_methods_that_name_no_error_do_not_raise_for_missing_things(store) -> None:
    """Only get and retry_dead promise NotFound; the rest answer for absent jobs or workers."""
    assert store.reclaim_worker("nobody") == []
    assert store.seconds_since_heartbeat("nobody") is None
    store.unregister_worker("nobody")
    assert list(store.iter_jobs(state="dead")) == []
