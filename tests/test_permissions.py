"""Who may do what: the group that owns the queue directory decides who can enqueue."""

import grp
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Queue


@pytest.fixture
def queue_group() -> Iterator[str]:
    """A throwaway system group standing in for `queuectl`, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a group needs root")
    name = f"qctl-test-{os.getpid()}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def state_dir(shared_tmp: Path, queue_group: str) -> Path:
    """A queue directory made as tmpfiles.d/queuectl.conf makes /var/lib/queuectl."""
    state = shared_tmp / "state"
    state.mkdir()
    os.chown(state, 0, grp.getgrnam(queue_group).gr_gid)
    state.chmod(0o2770)
    return state


def test_user_outside_the_group_is_refused_with_a_hint(
    state_dir: Path, queue_group: str, as_other_user
) -> None:
    db = state_dir / "queue.db"
    Queue(db).enqueue({"id": "secret", "command": "echo token=hunter2"})
    assert db.stat().st_mode & 0o777 == 0o660
    result = as_other_user("--db", str(db), "enqueue", "--cmd", "true")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "permission denied" in result.stderr
    assert f"add the user to group {queue_group}" in result.stderr
    listing = as_other_user("--db", str(db), "list")  # job commands may hold secrets
    assert listing.returncode == 1 and "hunter2" not in listing.stdout + listing.stderr
    assert [j["id"] for j in Queue(db).json("list")] == ["secret"]


def test_group_member_can_enqueue_into_a_root_created_queue(
    state_dir: Path, queue_group: str, as_other_user
) -> None:
    db = state_dir / "queue.db"
    Queue(db).run("status")  # root creates it; setgid gives it the group, umask 007 g+w
    assert db.stat().st_gid == grp.getgrnam(queue_group).gr_gid
    subprocess.run(["gpasswd", "-a", "nobody", queue_group], check=True, capture_output=True)
    result = as_other_user("--db", str(db), "enqueue", "--cmd", "true", "--id", "mine")
    assert result.returncode == 0, result.stderr
    assert Queue(db).job("mine")["state"] == "pending"
    for sidecar in state_dir.glob("queue.db-*"):  # -wal/-shm stay usable by the whole group
        assert sidecar.stat().st_mode & 0o060 == 0o060
