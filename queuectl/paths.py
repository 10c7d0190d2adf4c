"""Where the database lives: --db > QUEUECTL_DB > /var/lib/queuectl > XDG data home."""

import os

from queuectl.errors import DatabaseUnavailable

SYSTEM_DIR = "/var/lib/queuectl"
DB_NAME = "queue.db"


def resolve_db_path(cli_value: str | None = None) -> tuple[str, bool]:
    """The database path, and whether it is the per-user default (whose dirs we may create).

    Plain strings, not pathlib: this runs on every `enqueue`, where imports are the cost."""
    for value in (cli_value, os.environ.get("QUEUECTL_DB")):
        if value:
            if "://" in value:
                raise DatabaseUnavailable(
                    f"unsupported database URL {value}: only SQLite database files for now")
            return value, False
    if os.path.isdir(SYSTEM_DIR):
        return os.path.join(SYSTEM_DIR, DB_NAME), False
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "queuectl", DB_NAME), True
