"""PostgreSQL backend: not yet available (placeholder until the backend lands)."""

from queuectl.errors import ValidationError


def open_store(locator: str, for_worker: bool = False):
    raise ValidationError("PostgreSQL databases are not supported yet: use a SQLite file path")
