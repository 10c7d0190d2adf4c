"""config_items and set_config: defaults, stored values, and every store seeing a change."""

from __future__ import annotations

from contract_helpers import add, claim
from waiting import wait_for

from queuectl import settings

# A change must reach another store within settings.CACHE_TTL; allow far more on a busy host.
SEEN_WITHIN = settings.CACHE_TTL + 15


def test_config_items_of_a_fresh_queue_are_the_defaults(store) -> None:
    assert store.config_items() == {k: s.default for k, s in settings.SETTINGS.items()}


def test_set_config_is_read_back_by_config_items(store) -> None:
    store.set_config("max-retries", 9)
    store.set_config("backoff-base", 1.5)
    items = store.config_items()
    assert (items["max-retries"], items["backoff-base"]) == (9, 1.5)
    assert set(items) == set(settings.SETTINGS)
    defaults = {k: s.default for k, s in settings.SETTINGS.items()}
    assert {k: v for k, v in items.items() if k not in ("max-retries", "backoff-base")} == {
        k: v for k, v in defaults.items() if k not in ("max-retries", "backoff-base")}


def test_set_config_again_replaces_the_value(store) -> None:
    store.set_config("lease-seconds", 10)
    store.set_config("lease-seconds", 20)
    assert store.config_items()["lease-seconds"] == 20


def test_set_config_is_kept_across_stores(store, open_another) -> None:
    store.set_config("backoff-max", 60)
    assert open_another().config_items()["backoff-max"] == 60


def test_another_store_sees_a_change_in_config_items_within_the_cache_ttl(store, open_another) -> None:
    other = open_another(for_worker=True)
    assert other.config_items()["max-retries"] == settings.SETTINGS["max-retries"].default
    store.set_config("max-retries", 8)
    wait_for(lambda: other.config_items()["max-retries"] == 8, SEEN_WITHIN,
             "another store's config_items to show max-retries 8")


def test_another_store_applies_a_changed_default_within_the_cache_ttl(store, open_another) -> None:
    """A store that already used the old settings (its cache is warm) picks up the new ones."""
    other = open_another(for_worker=True)
    assert other.get(add(other)).max_retries == settings.SETTINGS["max-retries"].default
    store.set_config("max-retries", 8)
    wait_for(lambda: other.get(add(other)).max_retries == 8, SEEN_WITHIN,
             "another store's enqueue to use max-retries 8")


def test_another_store_applies_a_changed_lease_within_the_cache_ttl(store, open_another) -> None:
    other = open_another(for_worker=True)
    add(store)
    first = claim(other)
    assert first.lease_expires_at - first.started_at < 1000
    store.set_config("lease-seconds", 5000)

    def lease_is_new() -> bool:
        add(store)
        job = claim(other)
        return job.lease_expires_at - job.started_at > 4000

    wait_for(lease_is_new, SEEN_WITHIN, "another store's claim to use lease-seconds 5000")


def test_the_store_that_sets_a_value_uses_it_at_once(store) -> None:
    add(store)
    claim(store)  # the settings are now cached by this store
    store.set_config("lease-seconds", 5000)
    add(store)
    job = claim(store)
    assert job.lease_expires_at - job.started_at > 4000
