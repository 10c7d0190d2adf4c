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


STATUS_EVERY = 0.25  # seconds: at most one STATUS= per this long; the latest text follows


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
        self._status = ""  # the last STATUS= sent
        self._wanted = ""  # what it should say now
        self._status_next = 0.0  # monotonic: when the next STATUS= may go

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(_latin1_safe(message))

    def ready(self, status: str = "idle") -> None:
        self._send_status(status, "READY=1\n")
        self.ping_if_due()

    def status(self, text: str) -> None:
        """Each message is a datagram that PID 1 parses (and may broadcast on D-Bus); a
        stream of short jobs must not send one per job. Within STATUS_EVERY of the last one
        the text waits, and ping_if_due sends the latest when the time comes."""
        if self._notifier is not None:
            self._wanted = text
            if text != self._status and time.monotonic() >= self._status_next:
                self._send_status(text)

    def stopping(self, status: str) -> None:
        self._send_status(status, "STOPPING=1\n")

    def _send_status(self, text: str, prefix: str = "") -> None:
        self._status = self._wanted = text
        self._status_next = time.monotonic() + STATUS_EVERY
        self._send(f"{prefix}STATUS={text}")

    def ping_if_due(self) -> None:
        if self._notifier is None:
            return
        now = time.monotonic()
        if self._wanted != self._status and now >= self._status_next:
            self._send_status(self._wanted)
        if self.watchdog_interval is not None and now >= self._next_ping:
            self._send("WATCHDOG=1")
            self._next_ping = time.monotonic() + self.watchdog_interval

    def seconds_to_ping(self) -> float:
        """How long the loop may block before it must call ping_if_due again (inf without a
        watchdog or a status to send)."""
        due = self._next_ping
        if self._notifier is not None and self._wanted != self._status:
            due = min(due, self._status_next)
        return max(0.0, due - time.monotonic())
