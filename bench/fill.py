"""A queue with a million finished jobs, on either backend: one fill, one claim timing.

fill_finished() inserts `rows` completed jobs, and one finished attempt each, with one
INSERT ... SELECT over a counter per table in one transaction, from the values of
FINISHED_JOB; with `mixed`, in the proportions of issue 26's ten million (MIXED: 1%
pending, each with the interrupted attempt of a worker that stopped, 0.01% dead, the rest
completed). Inserted directly, the jobs are then counted into queuectl's per-state
counters (job_counts) as its migration does, when the schema has them. What differs by
backend is a FillTarget: how the schema is read, which tables hold the attempt history,
the job id, the counter, the transaction. A NOT NULL column
without a default that the bench does not know stops the SQLite fill (teach FINISHED_JOB);
on PostgreSQL it gets a neutral value and is listed under guessed_not_null_columns.
"""

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIME_COLUMNS = ("run_at", "created_at", "updated_at", "started_at", "finished_at",
                "heartbeat_at")


# Job number x's state with `mixed`: 9.9M completed, 100k pending, 1k dead in 10M.
MIXED = ("CASE WHEN x % 100 = 1 THEN 'pending' WHEN x % 10000 = 2 THEN 'dead'"
         " ELSE 'completed' END")


def finished_job(t0: float, job_id: str, empty_blob: str,
                 mixed: bool = False) -> dict[str, str]:
    """SQL for each known column of finished job number x (1..rows) and of its attempt."""
    at = f"{t0} + x * 0.001"
    if mixed:
        state = MIXED
        return {**finished_job(t0, job_id, empty_blob), "state": state,
                "outcome": f"CASE {state} WHEN 'pending' THEN 'interrupted'"
                           f" WHEN 'dead' THEN 'failed' ELSE 'completed' END",
                "attempts": f"CASE {state} WHEN 'pending' THEN 0 ELSE 1 END",
                "exit_code": f"CASE {state} WHEN 'dead' THEN 1 ELSE 0 END"}
    return {
        "id": job_id, "job_id": job_id, "command": "'true'", "state": "'completed'",
        "outcome": "'completed'", "attempts": "1", "attempt": "1", "max_retries": "3",
        "priority": "0", "exit_code": "0", "worker": "'bench-host:' || (100000 + x % 4)",
        "host": "'bench-host'", "hostname": "'bench-host'", "output": empty_blob,
        "run_at": at, "created_at": at, "heartbeat_at": at, "started_at": f"{at} + 0.001",
        "updated_at": f"{at} + 0.004", "finished_at": f"{at} + 0.004",
    }


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    notnull: bool
    has_default: bool  # a default, an identity, a generated column or the rowid


class FillTarget:
    """What fill_finished needs of a backend."""

    empty_blob = "X''"

    def columns(self) -> dict[str, list[Column]]:
        raise NotImplementedError

    def tables(self, cols: dict[str, list[Column]]) -> list[str]:
        """The jobs table first, then those of the attempt history."""
        raise NotImplementedError

    def job_id(self, cols: dict[str, list[Column]]) -> str:
        raise NotImplementedError

    def unknown(self, table: str, col: Column) -> str:
        """A value for a NOT NULL column without a default that FINISHED_JOB lacks."""
        raise RuntimeError(f"{table}.{col.name} is new and NOT NULL: teach bench/fill.py how "
                           "to fill it")

    def value(self, col: Column, expr: str) -> str:
        return expr

    def insert(self, table: str, names: list[str], exprs: list[str], rows: int) -> str:
        raise NotImplementedError

    def run(self, statements: list[str]) -> None:
        """The statements in one transaction (this is what fill_seconds times)."""
        raise NotImplementedError

    def recount(self) -> list[str]:
        """After the rows: queuectl's per-state counters built from the jobs, as its
        migration builds them (none where the schema has no such table)."""
        return []


def drop_page_cache() -> bool:
    """Drop the page cache (root only; False where not permitted): a start after a reboot."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


# Tables with job_id and attempt columns that are not per-attempt history.
NOT_HISTORY = {"jobs", "notices"}


def fill_finished(target: FillTarget, rows: int, mixed: bool = False) -> dict[str, Any]:
    """Insert `rows` completed jobs (with `mixed`, in MIXED's states) and their attempt rows
    in one transaction: {tables, guessed_not_null_columns, fill_seconds}."""
    t0 = time.time() - rows * 0.001 - 86_400
    cols = target.columns()
    tables = target.tables(cols)
    values = finished_job(t0, target.job_id(cols), target.empty_blob, mixed)
    guessed: dict[str, list[str]] = {}
    statements = []
    for table in tables:
        names, exprs = [], []
        for col in cols[table]:
            expr = values.get(col.name)
            if expr is None:
                if not col.notnull or col.has_default:
                    continue  # left to its default
                expr = target.unknown(table, col)
                guessed.setdefault(table, []).append(col.name)
            names.append(col.name)
            exprs.append(target.value(col, expr))
        statements.append(target.insert(table, names, exprs, rows))
    statements += target.recount()
    t = time.perf_counter()
    target.run(statements)
    return {"tables": tables, "guessed_not_null_columns": guessed,
            "fill_seconds": round(time.perf_counter() - t, 2)}


class SqliteFill(FillTarget):
    """A SQLite file queuectl created: a recursive counter, BEGIN IMMEDIATE, then a
    checkpoint so that the rows are in the database file."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def columns(self) -> dict[str, list[Column]]:
        conn = sqlite3.connect(str(self.db))
        try:
            return {table: [Column(name, typ, bool(notnull), default is not None or bool(pk))
                            for _cid, name, typ, notnull, default, pk
                            in conn.execute(f"PRAGMA table_info({table})")]
                    for table in ("jobs", "attempts")}
        finally:
            conn.close()

    def tables(self, cols: dict[str, list[Column]]) -> list[str]:
        return ["jobs", "attempts"]

    def job_id(self, cols: dict[str, list[Column]]) -> str:
        return "printf('%012x', x)"

    def recount(self) -> list[str]:
        from queuectl.backends.sqlite_schema import JOB_COUNTS_FROM_JOBS

        conn = sqlite3.connect(str(self.db))
        try:
            has = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_counts'").fetchone()
        finally:
            conn.close()
        return ["DELETE FROM job_counts", JOB_COUNTS_FROM_JOBS] if has else []

    def insert(self, table: str, names: list[str], exprs: list[str], rows: int) -> str:
        return (f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < "
                f"{rows}) INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(exprs)} "
                "FROM c")

    def run(self, statements: list[str]) -> None:
        conn = sqlite3.connect(str(self.db), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in statements:
                conn.execute(statement)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


class PgFill(FillTarget):
    """A PostgreSQL database queuectl created (schema `schema`): the columns from
    pg_attribute, generate_series, and the backend's triggers off for the fill (as for a
    restore): a row trigger over a million rows in one transaction would update one
    counter row a million times. `cluster` is a bench.pgserver.PgCluster."""

    empty_blob = "''::bytea"

    def __init__(self, cluster: Any, db: str, schema: str) -> None:
        self.cluster, self.db, self.schema = cluster, db, schema

    def columns(self) -> dict[str, list[Column]]:
        out: dict[str, list[Column]] = {}
        rows = self.cluster.sql(self.db, f"""
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = '{self.schema}' AND c.relkind IN ('r', 'p') AND a.attnum > 0
              AND NOT a.attisdropped
            ORDER BY c.relname, a.attnum""")
        for line in rows.splitlines():
            table, col, typ, notnull, hasdef = line.split("|")
            out.setdefault(table, []).append(Column(col, typ, notnull == "t", hasdef == "t"))
        return out

    def tables(self, cols: dict[str, list[Column]]) -> list[str]:
        """jobs, and every table with job_id and attempt columns (history), but queuectl's
        on-dead notices: they name an attempt too, yet a completed job never has one."""
        if "jobs" not in cols:
            raise RuntimeError(f"no {self.schema}.jobs table (tables: "
                               f"{', '.join(cols) or 'none'}): teach bench/fill.py the "
                               "backend's schema")
        return ["jobs"] + sorted(t for t, cs in cols.items() if t not in NOT_HISTORY and {
            "job_id", "attempt"} <= {c.name for c in cs})

    def job_id(self, cols: dict[str, list[Column]]) -> str:
        id_type = next((c.type for c in cols["jobs"] if c.name == "id"), "text")
        return "x" if id_type.startswith(("integer", "bigint")) else "lpad(to_hex(x), 12, '0')"

    def unknown(self, table: str, col: Column) -> str:
        """A neutral value of the column's type."""
        typ = col.type
        if "timestamp" in typ:
            return "now()"
        if typ == "bytea":
            return "''::bytea"
        if typ == "boolean":
            return "false"
        if typ.startswith("json"):
            return "'{}'"
        if typ.startswith(("integer", "bigint", "smallint", "double", "real", "numeric")):
            return "0"
        return "''"

    def value(self, col: Column, expr: str) -> str:
        if col.name in TIME_COLUMNS and "timestamp" in col.type:
            expr = f"to_timestamp({expr})"
        return f"CAST(({expr}) AS {col.type})"

    def recount(self) -> list[str]:
        from queuectl.backends.postgres_schema import JOB_COUNTS_FROM_JOBS_12

        if "job_counts" not in self.columns():
            return []
        return [f"DELETE FROM {self.schema}.job_counts;",
                JOB_COUNTS_FROM_JOBS_12.format(s=self.schema) + ";"]

    def insert(self, table: str, names: list[str], exprs: list[str], rows: int) -> str:
        return (f"INSERT INTO {self.schema}.{table} ({', '.join(names)}) "
                f"SELECT {', '.join(exprs)} FROM generate_series(1, {rows}) AS x;")

    def run(self, statements: list[str]) -> None:
        self.cluster.sql(self.db, "BEGIN; SET LOCAL session_replication_role = replica; "
                         + " ".join(statements) + " COMMIT;", timeout=3600)


def claim_latencies(locator: str, samples: int, for_worker: bool) -> list[float]:
    """ms per claim_next() through the public store API, in process, with `samples`
    waiting jobs to take. for_worker: open the store as a worker does (SQLite: no fsync
    per commit)."""
    from queuectl.locator import open_store

    store = open_store(locator, for_worker=for_worker)
    out = []
    try:
        for _ in range(samples):
            t = time.perf_counter()
            job = store.claim_next("bench-claimer")
            out.append((time.perf_counter() - t) * 1000)
            if job is None:
                raise RuntimeError("claim_next found no job")
    finally:
        store.close()
    return out
