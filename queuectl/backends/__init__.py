"""The storage backends: one module (with its schema and statements) per database kind."""

import os

# How long a verb waits for a locked database (SQLite) or a busy server (PostgreSQL) before
# it gives up with DatabaseBusy.
BUSY_TIMEOUT = float(os.environ.get("QUEUECTL_BUSY_TIMEOUT", "5"))
