"""Operators' actions in the journal: what `retry` or `cancel` did, and who did it.

A worker logs its events (queuectl.log); a command an admin types logs nothing on its terminal
beyond its answer, but leaves the same structured event in the journal where there is one,
so `journalctl SYSLOG_IDENTIFIER=queuectl` tells the whole story of a job.
"""

from __future__ import annotations

import os

from queuectl.journal import JOURNAL_SOCKET

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def tell(event: str, level: str = "info", **fields: Any) -> None:
    """Send one event to journald if it runs here; never fails the command that did it."""
    if not os.path.exists(JOURNAL_SOCKET):
        return
    from queuectl.journal import JournalSender
    from queuectl.log import PRIORITIES, message_for, message_id

    entry: dict[str, Any] = {
        "MESSAGE": message_for(event, fields), "PRIORITY": PRIORITIES.get(level, 6),
        "SYSLOG_IDENTIFIER": "queuectl", "EVENT": event,
    }
    catalog_id = message_id(event, fields)
    if catalog_id is not None:
        entry["MESSAGE_ID"] = catalog_id
    entry.update({key.upper(): value for key, value in fields.items() if value is not None})
    try:
        with JournalSender(timeout=1.0) as sender:
            sender.send(entry)
    except OSError:
        pass  # the action is done and said on the terminal; the journal is a copy
