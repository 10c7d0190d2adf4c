"""Errors that reach the user as one stderr line and a documented exit code."""

EXIT_FAILED = 1  # not found, conflict, database unavailable
EXIT_USAGE = 2  # usage and validation errors


class QueueError(Exception):
    """Base class: the message is what the user reads, `exit_code` what the shell sees."""

    exit_code = EXIT_FAILED


class ValidationError(QueueError):
    exit_code = EXIT_USAGE


class NotFound(QueueError):
    pass


class Conflict(QueueError):
    pass


class Refused(QueueError):
    """Well-formed input the queue's rules refuse (a job listing itself as its parent):
    exit 1, like a conflict, and nothing is stored."""


class DatabaseUnavailable(QueueError):
    """The database cannot be opened, read or written (missing dir, locked, not SQLite, full)."""


class DatabaseBusy(DatabaseUnavailable):
    """Another process held the lock past the busy timeout: worth waiting for, not fatal."""


class OutputError(QueueError):
    """Standard output cannot be written (a full disk, an I/O error): the command's own work
    may be done, so the message says what was done."""


class Unsupported(QueueError):
    """The backend in use cannot do this (a backup of PostgreSQL: use pg_dump)."""

    exit_code = EXIT_USAGE
