"""verify, info and close."""

from __future__ import annotations

from contract_helpers import add, claim

from queuectl.redaction import redact


def test_verify_of_a_healthy_store_passes(store) -> None:
    add(store)
    claim(store)
    assert store.verify() is None


def test_info_has_the_neutral_keys_and_a_section_named_after_the_backend(store) -> None:
    info = store.info()
    assert {"database", "backend", "schema_version", "config"} <= set(info)
    assert isinstance(info["backend"], str) and info["backend"]
    assert isinstance(info[info["backend"]], dict)
    assert isinstance(info["schema_version"], int) and info["schema_version"] >= 1


def test_info_database_is_the_locator_without_secrets(store, backend_locator) -> None:
    assert store.info()["database"] == redact(backend_locator)


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
