"""Prove tests/systemd_ns.py and queuectl/journal.py against a real (private) systemd."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Works whether or not queuectl is installed and whatever pytest's import mode is.
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from systemd_ns import PrivateSystemd, require_systemd_or_skip  # noqa: E402

from queuectl.journal import JournalSender, stream_is_journal  # noqa: E402


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSystemd]:
    require_systemd_or_skip()
    with PrivateSystemd(tmp_path_factory.mktemp("units")) as instance:
        yield instance
    assert not instance.cgroup.exists(), "cgroup left behind"


def test_notify_unit_active_only_after_ready(sd: PrivateSystemd, tmp_path: Path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    script = tmp_path / "notify.sh"
    script.write_text(
        "#!/bin/sh\n"
        'touch "$1"\n'
        'while [ ! -e "$2" ]; do sleep 0.02; done\n'
        'systemd-notify --ready --status="ready now"\n'
        "exec sleep infinity\n"
    )
    sd.write_unit(
        "qtest-notify.service",
        f"[Service]\nType=notify\nNotifyAccess=all\nExecStart=/bin/sh {script} {started} {go}\n",
        reload=True,
    )
    sd.systemctl("start", "--no-block", "qtest-notify.service", check=True)
    sd.wait_for(started.exists, 10, "the notify script to run")
    # The process runs but has not sent READY=1: systemd must still consider it starting.
    assert sd.show("qtest-notify.service", "ActiveState") == "activating"
    go.touch()
    sd.wait_for(lambda: sd.show("qtest-notify.service", "ActiveState") == "active", 10, "READY=1")
    assert sd.show("qtest-notify.service", "StatusText") == "ready now"
    sd.systemctl("stop", "qtest-notify.service", check=True)


SENDER_SCRIPT = """\
import sys
from queuectl.journal import JournalSender, stream_is_journal

token, big_size = sys.argv[1], int(sys.argv[2])
print(f"stream check {token}: stdout={stream_is_journal(1)} stderr={stream_is_journal(2)}",
      file=sys.stderr, flush=True)
with JournalSender() as journal:
    journal.send({
        "MESSAGE": "hello 作业",
        "PRIORITY": 5,
        "JOB_ID": "job-✓",
        "job.step": "two\\nlines\\n\\n  and more",
        "_hidden": b"raw bytes",
        "QTEST_TOKEN": token,
    })
    journal.send({"MESSAGE": "big", "BIG": "x" * big_size, "QTEST_TOKEN": token + "-big"})
"""


def _too_big_for_a_datagram() -> int:
    """A size that makes sendto() fail with EMSGSIZE (limit: the socket's send buffer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        return 2 * probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def _value(entry: dict[str, object], name: str) -> str:
    """journalctl -o json renders some values as byte arrays; normalise to str."""
    value = entry[name]
    if isinstance(value, list):
        return bytes(value).decode("utf-8")
    assert isinstance(value, str)
    return value


def _entries(sd: PrivateSystemd, *match: str) -> list[dict[str, object]]:
    out = sd.journalctl("-o", "json", "--all", *match, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_journal_sender_in_namespace(sd: PrivateSystemd, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    script = tmp_path / "sender.py"
    script.write_text(SENDER_SCRIPT)
    sd.write_unit(
        "qtest-journal.service",
        "[Service]\nType=oneshot\nStandardOutput=null\nStandardError=journal\n"
        f"Environment=PYTHONPATH={REPO_ROOT}\n"
        f"ExecStart={sys.executable} {script} {token} {_too_big_for_a_datagram()}\n",
        reload=True,
    )
    result = sd.systemctl("start", "qtest-journal.service")  # oneshot: returns when done
    assert result.returncode == 0, result.stderr + sd.journalctl("-u", "qtest-journal").stdout

    [entry] = sd.wait_for(lambda: _entries(sd, f"QTEST_TOKEN={token}"), 10, "native entry")
    assert _value(entry, "MESSAGE") == "hello 作业"
    assert _value(entry, "PRIORITY") == "5"
    assert _value(entry, "JOB_ID") == "job-✓"
    assert _value(entry, "JOB_STEP") == "two\nlines\n\n  and more"
    assert _value(entry, "HIDDEN") == "raw bytes"
    assert _value(entry, "_TRANSPORT") == "journal"
    assert _value(entry, "_SYSTEMD_UNIT") == "qtest-journal.service"

    [big] = sd.wait_for(lambda: _entries(sd, f"QTEST_TOKEN={token}-big"), 10, "memfd entry")
    assert _value(big, "BIG") == "x" * _too_big_for_a_datagram()

    [line] = sd.wait_for(
        lambda: _entries(sd, "-u", "qtest-journal.service", "_TRANSPORT=stdout"),
        10,
        "stderr line",
    )
    assert _value(line, "MESSAGE") == f"stream check {token}: stdout=False stderr=True"


# Wire-format checks without systemd: a local datagram socket stands in for journald.


@pytest.fixture
def fake_journald(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        yield server, path


def test_wire_format(fake_journald: tuple[socket.socket, str]) -> None:
    server, path = fake_journald
    with JournalSender(path) as journal:
        journal.send({"message": "hi ✓", "a-b": 1, "__": "dropped", "M": "x\ny"})
    data = server.recv(65536)
    multi = b"M\n" + struct.pack("<Q", 3) + b"x\ny\n"
    assert data == "MESSAGE=hi ✓\nA_B=1\n".encode() + multi


def test_memfd_fallback(fake_journald: tuple[socket.socket, str]) -> None:
    server, path = fake_journald
    value = "y" * _too_big_for_a_datagram()
    with JournalSender(path) as journal:
        journal.send({"MESSAGE": value})
    data, ancdata, _, _ = server.recvmsg(16, socket.CMSG_SPACE(4))
    assert data == b""
    [(level, kind, fd_bytes)] = ancdata
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = struct.unpack("i", fd_bytes)[0]
    try:
        assert os.pread(fd, len(value) + 100, 0) == f"MESSAGE={value}\n".encode()
    finally:
        os.close(fd)


def test_send_raises_when_journald_is_gone(tmp_path: Path) -> None:
    with JournalSender(str(tmp_path / "missing")) as journal, pytest.raises(OSError):
        journal.send({"MESSAGE": "nobody listens"})


def test_send_times_out_when_journald_is_wedged(fake_journald: tuple[socket.socket, str]) -> None:
    _, path = fake_journald  # never reads, so its queue fills up
    with JournalSender(path, timeout=0.1) as journal, pytest.raises(OSError):
        for _ in range(10_000):
            journal.send({"MESSAGE": "x"})


def test_stream_is_journal_matches_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stream_is_journal(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stream_is_journal(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not stream_is_journal(f.fileno())
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stream_is_journal(f.fileno())
