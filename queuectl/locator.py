"""Where the queue lives, and the one factory that opens it.

A locator is a string: a file path (SQLite) or a `postgresql://` / `postgres://` URL
(PostgreSQL). `--db` > `QUEUECTL_DB` > `/var/lib/queuectl/queue.db` when that directory exists >
`$XDG_DATA_HOME/queuectl/queue.db`. Only this module imports a backend, and only the one the
locator names, so `enqueue` on SQLite never pays for a PostgreSQL driver. Plain strings, no
pathlib or urllib: this runs on every `enqueue`.
"""

from __future__ import annotations

import os

from queuectl.errors import DatabaseUnavailable, ValidationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from queuectl.store import Store

SYSTEM_DIR = "/var/lib/queuectl"
DB_NAME = "queue.db"
ENV_VAR = "QUEUECTL_DB"
URL_SCHEMES = ("postgresql://", "postgres://")


def user_default() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "queuectl", DB_NAME)


def resolve(cli_value: str | None = None) -> str:
    """The locator in force."""
    for value in (cli_value, os.environ.get(ENV_VAR)):
        if value:
            return value
    if os.path.isdir(SYSTEM_DIR):
        return os.path.join(SYSTEM_DIR, DB_NAME)
    return user_default()


def is_url(locator: str) -> bool:
    return locator.startswith(URL_SCHEMES)


def open_store(locator: str, for_worker: bool = False) -> Store:
    """Open (creating and migrating if needed) the store the locator names.

    for_worker: the caller is a worker, whose commits may skip an fsync each (a power loss
    can undo its last few state changes and those jobs run again, as at-least-once allows),
    while a CLI's enqueue must be on disk before it prints an id."""
    if is_url(locator):
        from queuectl.backends import postgres

        return postgres.open_store(locator, for_worker)
    if "://" in locator:
        scheme = locator.split("://", 1)[0]
        raise ValidationError(
            f"unsupported database URL scheme {scheme!r}: use a file path (SQLite) or a "
            "postgresql:// URL")
    if not locator.strip():
        raise DatabaseUnavailable("the database locator is empty")
    from queuectl.backends import sqlite

    return sqlite.open_store(locator, create_dirs=locator == user_default(),
                             durable=not for_worker)
