"""The worker's side of the systemd service protocol: readiness, status, watchdog, stopping.

Everything is a no-op outside systemd (no NOTIFY_SOCKET), so the worker calls it
unconditionally. The watchdog is pinged from the worker's own loop, never from a thread:
a worker whose loop is stuck must stop pinging so that systemd restarts it.
"""

import os
import time


def _latin1_safe(text: str) -> str:
    """sdnotify encodes as latin-1 and silently drops what it cannot encode; systemd expects
    UTF-8. Pre-encoding as UTF-8 and viewing the bytes as latin-1 sends them unchanged."""
    return text.encode("utf-8", "replace").decode("latin-1")


class Notifier:
    def __init__(self) -> None:
        self._notifier = None
        self.watchdog_interval: float | None = None
        self._next_ping = float("inf")
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        import sdnotify

        self._notifier = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000  # half the timeout, in seconds
            self._next_ping = time.monotonic()
        self._status = ""

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(_latin1_safe(message))

    def ready(self, status: str = "idle") -> None:
        self._send(f"READY=1\nSTATUS={status}")
        self._status = status
        self.ping_if_due()

    def status(self, text: str) -> None:
        if self._notifier is not None and text != self._status:
            self._status = text
            self._send(f"STATUS={text}")

    def stopping(self, status: str) -> None:
        self._status = status
        self._send(f"STOPPING=1\nSTATUS={status}")

    def ping_if_due(self) -> None:
        if self.watchdog_interval is not None and time.monotonic() >= self._next_ping:
            self._send("WATCHDOG=1")
            self._next_ping = time.monotonic() + self.watchdog_interval

    def seconds_to_ping(self) -> float:
        """How long the loop may block before it must ping again (inf without a watchdog)."""
        return max(0.0, self._next_ping - time.monotonic())
