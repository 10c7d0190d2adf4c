"""PostgreSQL over TLS, and the driver imported without Python's `ssl` module.

psycopg2 imports `ssl` at its own import only to set OpenSSL's locking callbacks before
libpq (OpenSSL before 1.1); queuectl answers that import with a stand-in, which saves a
third of the driver's import on every PostgreSQL command (postgres_connection
._import_driver). What a user sees: commands start sooner, and a server that takes TLS
connections only works as before, for `enqueue`, for a draining worker and for an idle
worker's LISTEN connection.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Queue
from waiting import wait_for

ROLE, PASSWORD = "tls_user", "tls-secret"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[Any]:
    """A server of its own whose TCP connections must use TLS (self-signed certificate);
    plain TCP connections are rejected, the Unix socket stays open for the test's psql."""
    from pgserver import _unavailable, start_or_skip

    if shutil.which("openssl") is None:
        _unavailable("openssl is not installed (Debian: apt install openssl)")
    server = start_or_skip()
    try:
        cert, key = server.base / "server.crt", server.base / "server.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        key.chmod(0o600)
        if server.run_as:
            shutil.chown(cert, server.run_as)
            shutil.chown(key, server.run_as)
        (server.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 127.0.0.1/32 reject\n")
        server.psql(f"ALTER SYSTEM SET ssl_cert_file = '{cert}'")
        server.psql(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
        server.psql("ALTER SYSTEM SET ssl = on")
        server.psql("SELECT pg_reload_conf()")
        wait_for(lambda: server.psql("SHOW ssl") == "on", 30, "the server to turn TLS on")
        server.create_role(ROLE, PASSWORD)
        server.psql(f"ALTER ROLE {ROLE} SUPERUSER")
        yield server
    finally:
        server.stop()


def _queue(server: Any, sslmode: str) -> Queue:
    return Queue(server.tcp_locator(ROLE, PASSWORD, schema="tls", sslmode=sslmode))


@pytest.mark.slow
@pytest.mark.postgres
def test_commands_and_workers_reach_a_server_that_takes_tls_only(tls_server: Any) -> None:
    queue = _queue(tls_server, "require")
    first = queue.enqueue({"command": "echo over tls"})
    drained = queue.run("worker", "run", "--drain", "--name", "drainer", timeout=60)
    assert drained.returncode == 0, drained.stderr
    job = queue.job(first)
    assert (job["state"], job["worker"]) == ("completed", "drainer"), job

    # An idle worker hears a new job on its LISTEN connection, TLS too: with a poll of a
    # minute, only the wake starts it within seconds.
    queue.worker("--name", "idle", "--poll-interval", "60")
    queue.wait_counts(active_workers=1, timeout=30)
    second = queue.enqueue({"command": "true"})
    job = queue.wait_state(second, "completed", timeout=20)
    assert job["worker"] == "idle", job
    queue.stop_all()

    # Without TLS the server refuses, so every success above went over TLS.
    plain = _queue(tls_server, "disable")
    refused = plain.run("enqueue", "--cmd", "true", check=False)
    assert refused.returncode == 1, refused
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "no encryption" in lines[0], refused.stderr
    assert tls_server.psql("SELECT count(*) FROM tls.jobs") == "2"


PROBE = ("import sys; from queuectl.main import main; rc = main(sys.argv[1:]); "
         "print('ssl' in sys.modules, 'psycopg2' in sys.modules); sys.exit(rc)")


@pytest.mark.slow
def test_a_postgresql_command_does_not_load_pythons_ssl(pg_locator: str,
                                                        tmp_path: Path) -> None:
    for args in (["enqueue", "--cmd", "true"], ["status"],
                 ["worker", "run", "--drain", "--name", "probe"]):
        result = subprocess.run([sys.executable, "-c", PROBE, "--db", pg_locator, *args],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "False True", (args, result.stdout)
    # and the job went through
    assert Queue(pg_locator).json("status")["completed"] == 1


# A driver that wants more of `ssl` at its import than the stand-in has: imported again
# with the real module, so the command works as it would without the stand-in.
FUSSY_DRIVER = """import ssl
CONTEXT = ssl.create_default_context  # what the stand-in lacks
"""
FUSSY_PROBE = ("import sys; from queuectl.backends import postgres_connection as c; "
               "print(c.psycopg2.__file__, c.psycopg2.extensions.DONE, "
               "type(sys.modules['ssl'].SSLContext).__name__)")


def test_a_driver_that_needs_ssl_at_import_is_imported_with_it(tmp_path: Path) -> None:
    fake = tmp_path / "psycopg2"
    fake.mkdir()
    (fake / "__init__.py").write_text(FUSSY_DRIVER)
    (fake / "extensions.py").write_text("DONE = 'extensions'\n")
    result = subprocess.run([sys.executable, "-c", FUSSY_PROBE], capture_output=True, text=True,
                            timeout=60, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(fake / "__init__.py"), "extensions", "type"], \
        result.stdout
