"""Minimal sender for journald's native protocol (stdlib only).

Structured fields (JOB_ID=..., PRIORITY=...) survive intact this way, which they would not
through stdout/stderr, where journald only sees lines of text.
"""

from __future__ import annotations

import errno  # this and collections.abc are already loaded by `import socket`
import os
import socket
import struct
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
_NAME_MAX = 64  # journald drops fields with longer names
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def stream_is_journal(stream_fd: int) -> bool:
    """True if `stream_fd` is the stream systemd connected to journald for this service.

    systemd sets JOURNAL_STREAM=<device>:<inode> for that stream; comparing it with fstat()
    tells apart "stderr goes to the journal" from "stderr was redirected elsewhere".
    """
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream_fd)
        return bool(sep) and st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


def _field_name(name: object) -> str:
    """Map `name` onto journald's rules: [A-Z0-9_], no leading '_' or digit, <= 64 chars.

    A leading '_' marks trusted fields (journald would drop it); a leading digit is also invalid.
    """
    upper = str(name).upper()
    cleaned = "".join(c if c in _ALLOWED else "_" for c in upper)
    return cleaned.lstrip("_0123456789")[:_NAME_MAX]


_NAMES: dict[object, bytes] = {}  # key -> its field name, encoded: the same few keys recur


def _encode(fields: Mapping[str, object]) -> bytes:
    """Serialize fields; values with a newline use the length-prefixed binary form."""
    parts: list[bytes] = []
    for key, value in fields.items():
        name = _NAMES.get(key)
        if name is None:
            name = _field_name(key).encode("ascii")
            if len(_NAMES) < 1024:
                _NAMES[key] = name
        if not name:
            continue
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        else:
            data = str(value).encode("utf-8", "backslashreplace")
        if b"\n" in data:
            parts += [name, b"\n", struct.pack("<Q", len(data)), data, b"\n"]
        else:
            parts += [name, b"=", data, b"\n"]
    return b"".join(parts)


class JournalSender:
    """Send structured entries to journald over its native datagram socket.

    `send()` raises OSError when journald cannot take the entry (socket missing or refused
    because journald is gone, or it did not accept within `timeout` seconds), so the caller's
    logging layer can fall back to stderr. Too-large entries are sent via a sealed memfd
    instead of failing. Safe to share between threads (one datagram per entry).
    """

    def __init__(self, socket_path: str = JOURNAL_SOCKET, timeout: float = 5.0) -> None:
        """`timeout`: seconds a send may block on a full journald queue (0: no limit)."""
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Kernel-side send timeout (not settimeout(), which busy-polls on a full peer queue):
        # a wedged journald must not block the caller forever.
        sec = int(timeout)
        tv = struct.pack("@ll", sec, int((timeout - sec) * 1_000_000))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    def send(self, fields: Mapping[str, object]) -> None:
        """Send one entry. Raises OSError if it cannot be delivered (see class docstring)."""
        payload = _encode(fields)
        if not payload:
            return
        try:
            self._sock.sendto(payload, self.socket_path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> None:
        """Pass the entry as a sealed memfd (SCM_RIGHTS), journald's route for big entries."""
        import fcntl  # only needed on this rare path

        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            try:  # journald maps a fully sealed memfd directly instead of copying it
                seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_SEAL)
            except OSError:
                pass
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            self._sock.sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the socket."""
        self._sock.close()

    def __enter__(self) -> JournalSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
