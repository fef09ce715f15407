"""SQLite engine: WAL mode, one writer connection, a few reader connections.

aiosqlite runs each connection on its own thread, so no query blocks the event
loop. Writes (and transactions) are serialised by a lock on the writer; reads
outside a transaction go round-robin to the readers, which under WAL see the
last commit and run in parallel (sqlite3 releases the GIL while it works).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiosqlite

from storage.database import Connection, Row

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class _SqliteConn:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        async with self._conn.execute(sql, args) as cur:
            return await cur.fetchone()

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else row[0]


class SqliteDatabase:
    engine = "sqlite"

    def __init__(self, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]) -> None:
        self._writer = writer
        self._readers = readers
        self._write_lock = asyncio.Lock()
        self._w = _SqliteConn(writer)
        self._next_reader = itertools.cycle([_SqliteConn(r) for r in readers])

    @property
    def _r(self) -> _SqliteConn:
        return next(self._next_reader)

    @classmethod
    async def open(cls, path: str, readers: int = 3) -> "SqliteDatabase":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        writer = await aiosqlite.connect(path, isolation_level=None)
        reader_conns = [await aiosqlite.connect(path, isolation_level=None) for _ in range(readers)]
        for conn in (writer, *reader_conns):
            conn.row_factory = sqlite3.Row
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
        return cls(writer, reader_conns)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._w
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

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
        await self._writer.close()


def _writes(sql: str) -> bool:
    """A statement that returns rows may still write (INSERT ... RETURNING)."""
    head = sql.lstrip()[:6].upper()
    return head != "SELECT" and not head.startswith("WITH")
