"""SQLite engine: WAL mode, one writer connection, a few reader connections.

Each connection lives on its own thread (a one-worker executor), so no query
blocks the event loop, and every statement, fetch included, is a single hand-off
to that thread: the hand-off, not SQLite, is what a query costs here. Writes and
transactions are serialised by a lock on the writer; reads outside a transaction
go round-robin to the readers, which under WAL see the last commit and run in
parallel (sqlite3 releases the GIL while it works).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

from storage.database import ConstraintViolation, Row, Transaction, UnstorableValue

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
# FULL syncs the WAL at every commit, so an acknowledged write survives power loss; NORMAL syncs
# only at checkpoints (faster; a crash of the machine may lose the last commits, never corrupts).
SYNCHRONOUS_MODES = ("FULL", "NORMAL")


def _fetchone(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Row | None:
    cur = conn.execute(sql, args)
    try:
        row: Row | None = cur.fetchone()
        return row
    finally:
        cur.close()


def _fetchall(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
    cur = conn.execute(sql, args)
    try:
        return list(cur.fetchall())
    finally:
        cur.close()


def _fetchone_then_commit(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Row | None:
    row = _fetchone(conn, sql, args)
    conn.execute("COMMIT").close()
    return row


def _execute(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> None:
    conn.execute(sql, args).close()


def _executemany(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    conn.executemany(sql, rows).close()


class _ThreadConn:
    """A sqlite3 connection confined to one thread."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor
        self._closed = False

    @classmethod
    async def open(cls, path: str, synchronous: str) -> "_ThreadConn":
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whispr-sqlite")

        def connect() -> sqlite3.Connection:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            for pragma in (*_PRAGMAS, f"PRAGMA synchronous={synchronous}"):
                conn.execute(pragma).close()
            return conn

        conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        return cls(conn, executor)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn, *args)
        except sqlite3.IntegrityError as e:
            raise ConstraintViolation(str(e)) from e
        except OverflowError as e:  # an integer parameter past 64 bits
            raise UnstorableValue(str(e)) from e

    async def execute(self, sql: str, *args: Any) -> None:
        await self.run(_execute, sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.run(_executemany, sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        return await self.run(_fetchone, sql, args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return await self.run(_fetchall, sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else row[0]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.run(lambda conn: conn.close())
        self._executor.shutdown(wait=True)


def _batch(conn: sqlite3.Connection, pending: list[tuple[str, Sequence[Any], bool]],
           then: Callable[..., T] | None, *args: Any) -> T | None:
    """Run queued statements in order, then one more call, all on the connection's thread."""
    for sql, params, many in pending:
        (conn.executemany if many else conn.execute)(sql, params).close()
    return then(conn, *args) if then is not None else None


class _Transaction:
    """A transaction on the writer that defers statements whose result nobody reads.

    They are sent with the next read, or with COMMIT, so a transaction costs one
    hand-off per read instead of one per statement. Order is kept; an error in a
    deferred statement surfaces at that next read or at commit, still inside the
    transaction, which then rolls back.
    """

    def __init__(self, conn: _ThreadConn) -> None:
        self._conn = conn
        self._pending: list[tuple[str, Sequence[Any], bool]] = [("BEGIN IMMEDIATE", (), False)]
        self._committed = False

    async def _flush_with(self, fn: Callable[..., T] | None, *args: Any) -> T | None:
        pending, self._pending = self._pending, []
        return await self._conn.run(_batch, pending, fn, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        self._pending.append((sql, args, False))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._pending.append((sql, list(rows), True))

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        return await self._flush_with(_fetchone, sql, args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return await self._flush_with(_fetchall, sql, args) or []

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else row[0]

    async def fetchval_and_commit(self, sql: str, *args: Any) -> Any:
        row = await self._flush_with(_fetchone_then_commit, sql, args)
        self._committed = True
        return None if row is None else row[0]

    async def commit(self) -> None:
        if self._committed:
            return
        self._pending.append(("COMMIT", (), False))
        await self._flush_with(None)

    async def rollback(self) -> None:
        begun = not (self._pending and self._pending[0][0] == "BEGIN IMMEDIATE")
        self._pending = []
        if begun:
            await self._conn.run(lambda conn: conn.execute("ROLLBACK").close() if conn.in_transaction else None)


class SqliteDatabase:
    engine = "sqlite"

    def __init__(self, writer: _ThreadConn, readers: list[_ThreadConn]) -> None:
        self._w = writer
        self._readers = readers
        self._write_lock = asyncio.Lock()
        self._next_reader = itertools.cycle(readers)

    @property
    def _r(self) -> _ThreadConn:
        return next(self._next_reader)

    @classmethod
    async def open(cls, path: str, readers: int = 3, synchronous: str = "FULL") -> "SqliteDatabase":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = await _ThreadConn.open(path, synchronous)  # first: it switches the file to WAL
        return cls(writer, [await _ThreadConn.open(path, synchronous) for _ in range(readers)])

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            tx = _Transaction(self._w)
            try:
                yield tx
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._write_lock:
            await self._w.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        if _writes(sql):
            async with self._write_lock:
                return await self._w.fetchone(sql, *args)
        return await self._r.fetchone(sql, *args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        if _writes(sql):
            async with self._write_lock:
                return await self._w.fetchall(sql, *args)
        return await self._r.fetchall(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else row[0]

    async def close(self) -> None:
        for reader in self._readers:
            await reader.close()
        await self._w.close()


def _writes(sql: str) -> bool:
    """A statement that returns rows may still write (INSERT ... RETURNING)."""
    head = sql.lstrip()[:6].upper()
    return head != "SELECT" and not head.startswith("WITH")
