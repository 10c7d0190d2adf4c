"""Where the database lives: --db > QUEUECTL_DB > /var/lib/queuectl > XDG data home."""

import os
from pathlib import Path

from queuectl.errors import DatabaseUnavailable

SYSTEM_DIR = Path("/var/lib/queuectl")
DB_NAME = "queue.db"


def resolve_db_path(cli_value: str | None = None) -> tuple[Path, bool]:
    """Return the database path and whether it is the per-user default (whose dirs we may create)."""
    for value in (cli_value, os.environ.get("QUEUECTL_DB")):
        if value:
            if "://" in value:
                raise DatabaseUnavailable(
                    f"unsupported database URL {value}: only SQLite database files for now")
            return Path(value), False
    if SYSTEM_DIR.is_dir():
        return SYSTEM_DIR / DB_NAME, False
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "queuectl" / DB_NAME, True
