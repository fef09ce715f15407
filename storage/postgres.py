"""PostgreSQL engine through an asyncpg pool."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from typing import Any, AsyncIterator, Iterator, Sequence

import asyncpg

from storage.database import ConstraintViolation, Row, Transaction, UnstorableValue


@lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """Turn ``?`` placeholders into ``$1, $2, ...``."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


@contextmanager
def _constraints() -> Iterator[None]:
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as e:
        raise ConstraintViolation(str(e)) from e
    except asyncpg.DataError as e:  # SQLSTATE class 22: NUL in text, out-of-range integers...
        raise UnstorableValue(str(e)) from e


class _PgConn:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        with _constraints():
            await self._conn.execute(_pg(sql), *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _constraints():
            await self._conn.executemany(_pg(sql), rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        with _constraints():
            return await self._conn.fetchrow(_pg(sql), *args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        with _constraints():
            return list(await self._conn.fetch(_pg(sql), *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        with _constraints():
            return await self._conn.fetchval(_pg(sql), *args)


class _PgTransaction(_PgConn):
    async def fetchval_and_commit(self, sql: str, *args: Any) -> Any:
        return await self.fetchval(sql, *args)  # COMMIT follows when the transaction block ends


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool: no statement here changes session
    state (SET, LISTEN, session advisory locks, cursors), so asyncpg's default reset, a round trip
    of RESET ALL, UNLISTEN * and more on every release, is skipped (a third of the CPU of a
    /keys/claim). asyncpg still rolls back a transaction left open before calling this."""


class PostgresDatabase(_PgConn):
    """Outside a transaction each statement takes a pooled connection and autocommits."""

    engine = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, pool_min: int = 2, pool_max: int = 10) -> "PostgresDatabase":
        pool = await asyncpg.create_pool(url, min_size=pool_min, max_size=pool_max, reset=_keep_session)
        return cls(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                yield _PgTransaction(conn)

    async def close(self) -> None:
        await self._pool.close()
