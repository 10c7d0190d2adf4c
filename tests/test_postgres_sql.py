"""The PostgreSQL store's named statements (queuectl/backends/postgres_sql.py): printable by
name, built once per schema, and every one of them accepted by a real server against the
migrated schema, so a typo in a statement no other test reaches still fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from queuectl.backends import postgres_sql
from queuectl.backends.postgres_sql import TEMPLATES, VERBS, statements
from queuectl.locator import open_store

PRINT = [sys.executable, "-m", "queuectl.backends.postgres_sql"]


def test_every_statement_belongs_to_a_verb() -> None:
    listed = {name for names in VERBS.values() for name in names}
    assert listed == set(TEMPLATES)


def test_the_listing_names_every_verb_and_statement() -> None:
    out = subprocess.run(PRINT, capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert list(lines) == list(VERBS)
    assert {n for names in lines.values() for n in names.split(", ")} == set(TEMPLATES)


def test_a_verb_prints_its_statements_in_full() -> None:
    out = subprocess.run([*PRINT, "claim"], capture_output=True, text=True, check=True).stdout
    names = re.findall(r"^-- (\w+) --$", out, re.M)
    assert {"claim_any", "claim_listed", "claim_limited_any", "held_by"} <= set(names)
    assert len(names) == len(set(names))
    assert 'FROM "queuectl".jobs' in out and "FOR UPDATE SKIP LOCKED" in out
    assert "{" not in out  # every field filled in
    one = subprocess.run([*PRINT, "claim_listed"], capture_output=True, text=True,
                         check=True).stdout
    assert re.findall(r"^-- (\w+) --$", one, re.M) == ["claim_listed"]
    assert one.strip().endswith("LEFT JOIN claimed ON true;")


def test_an_unknown_name_is_an_error() -> None:
    done = subprocess.run([*PRINT, "no_such_verb"], capture_output=True, text=True)
    assert done.returncode == 2 and "no_such_verb" in done.stderr


def test_statements_are_built_once_per_schema() -> None:
    assert statements("a") is statements("a")
    assert statements("a") is not statements("b")
    assert statements("a").claim_any.count('"a".jobs') >= 1
    assert statements("a", True).claim_any.startswith(postgres_sql.WORKER_COMMIT)
    assert not statements("a", False).claim_any.startswith(postgres_sql.WORKER_COMMIT)


# -- every statement on a real server -----------------------------------------------------------
PLANNABLE = re.compile(r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE)\b", re.I)
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")


def _numbered(part: str) -> tuple[str, int]:
    """psycopg2's placeholders as $1, $2...: one number per name, one per bare %s."""
    numbers: dict[str, int] = {}
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        name = match.group(1)
        if name is None or name not in numbers:
            count += 1
            if name is not None:
                numbers[name] = count
            return f"${count}"
        return f"${numbers[name]}"

    return PLACEHOLDER.sub(number, part), count


def _check(cur: Any, part: str) -> None:
    """Parse and plan one statement: PREPARE it, then EXPLAIN (no ANALYZE: nothing runs) an
    EXECUTE with every parameter NULL. Utility statements (transaction control, SET LOCAL,
    NOTIFY, LISTEN, CREATE SCHEMA) run for real inside a transaction rolled back."""
    if PLANNABLE.match(part):
        text, count = _numbered(part)
        cur.execute(f"PREPARE checked AS {text}")
        nulls = f"({', '.join(['NULL'] * count)})" if count else ""
        try:
            cur.execute(f"EXPLAIN EXECUTE checked{nulls}")
            assert cur.fetchall()
        finally:
            cur.execute("DEALLOCATE checked")
        return
    assert "%" not in part, part
    if re.match(r"\s*(BEGIN|COMMIT|ROLLBACK)\s*($|ISOLATION)", part, re.I):
        cur.execute(part)  # on an autocommit connection: opens or ends nothing of ours
        cur.execute("ROLLBACK")
        return
    cur.execute("BEGIN")
    try:
        cur.execute("SAVEPOINT lane")
        if part.strip().upper().startswith("CREATE SCHEMA"):
            import psycopg2.errors

            with pytest.raises(psycopg2.errors.DuplicateSchema):  # parsed, and it exists
                cur.execute(part)
        else:
            cur.execute(part)
    finally:
        cur.execute("ROLLBACK")


@pytest.mark.parametrize("for_worker", [False, True], ids=["cli", "worker"])
def test_every_statement_parses_and_plans(pg_locator: str, for_worker: bool) -> None:
    store: Any = open_store(pg_locator, for_worker=for_worker)  # creates the schema
    try:
        sql = statements(store.target.schema, for_worker)
        assert store.sql is sql
        conn = store.target.connect()
        failures = []
        try:
            with conn.cursor() as cur:
                for name in TEMPLATES:
                    for part in filter(str.strip, getattr(sql, name).split(";")):
                        try:
                            _check(cur, part)
                        except Exception as exc:  # collect them all, fail once
                            if conn.get_transaction_status():
                                cur.execute("ROLLBACK")
                            failures.append(f"{name}: {part.strip()[:60]}...: {exc}")
        finally:
            conn.close()
        assert failures == []
    finally:
        store.close()
