"""verify, info and close."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from contract_helpers import add, claim

from queuectl.locator import is_url, open_store
from queuectl.redaction import redact


def test_verify_of_a_healthy_store_passes(store) -> None:
    add(store)
    claim(store)
    took = store.verify()  # seconds of an integrity check, None if none ran
    assert took is None or took >= 0
    assert store.verify() is None  # SQLite: once per file and boot; PostgreSQL: none


def test_info_has_the_neutral_keys_and_a_section_named_after_the_backend(store) -> None:
    info = store.info()
    assert {"database", "backend", "schema_version", "config"} <= set(info)
    assert isinstance(info["backend"], str) and info["backend"]
    assert isinstance(info[info["backend"]], dict)
    assert isinstance(info["schema_version"], int) and info["schema_version"] >= 1


def test_info_database_is_the_locator_it_was_opened_with(store, backend_locator) -> None:
    """A locator without a password is shown as given (a SQLite path, a PostgreSQL URL)."""
    assert redact(backend_locator) == backend_locator
    assert store.info()["database"] == backend_locator


PASSWORD = "pa:ss@w/rd-7f3k"  # URL metacharacters: percent-encoded in the locator


def test_info_masks_the_password_of_a_locator(backend_locator) -> None:
    """The password in a URL locator never reaches info(), as written or percent-decoded.
    PostgreSQL only: a SQLite locator is a file path and cannot carry a password. The
    suite's server trusts its Unix socket, so the password is accepted and ignored."""
    if not is_url(backend_locator):
        pytest.skip("a SQLite locator is a file path: it carries no password to mask")
    scheme, rest = backend_locator.split("://", 1)
    user, rest = rest.split("@", 1)
    locator = f"{scheme}://{user}:{quote(PASSWORD, safe='')}@{rest}"
    assert redact(locator) != locator  # the password sits where a locator carries one
    store = open_store(locator)
    try:
        add(store)  # the store works: it really was opened with this locator
        shown = json.dumps(store.info(), default=str)
    finally:
        store.close()
    for spelling in (PASSWORD, quote(PASSWORD, safe=""), "7f3k"):
        assert spelling not in shown
    assert json.loads(shown)["database"] == f"{scheme}://{user}:***@{rest}"


def test_info_config_is_every_setting_in_force(store) -> None:
    store.set_config("max-retries", 5)
    assert store.info()["config"] == store.config_items()


def test_info_is_the_same_from_every_store_of_one_queue(store, open_another) -> None:
    info, other = store.info(), open_another().info()
    assert {k: info[k] for k in ("database", "backend", "schema_version", "config")} == {
        k: other[k] for k in ("database", "backend", "schema_version", "config")}


def test_what_was_committed_survives_close(store, open_another) -> None:
    first = open_another()
    job_id = add(first, "echo kept")
    first.set_config("max-retries", 4)
    first.close()
    assert store.get(job_id).command == "echo kept"
    assert open_another().config_items()["max-retries"] == 4


def test_closing_one_store_leaves_the_others_working(store, open_another) -> None:
    other = open_another(for_worker=True)
    other.close()
    add(store, id="j")
    assert claim(store).id == "j"
