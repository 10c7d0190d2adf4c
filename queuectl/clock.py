"""Time helpers: the store keeps epoch seconds (exact comparisons), users see ISO 8601 UTC."""

import time


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """`2025-11-04T10:30:00Z`: the contract's form for created_at/updated_at."""
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(ts: float | None) -> str | None:
    """Millisecond form, for run and attempt times where backoff precision matters."""
    if ts is None:
        return None
    from datetime import UTC, datetime

    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Accepts ISO 8601 with `Z` or an offset; a naive time is taken as UTC."""
    from datetime import UTC, datetime

    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
