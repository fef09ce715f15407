"""The engine-neutral database interface.

SQL is written once with ``?`` placeholders and a portable subset (TEXT, BIGINT,
INTEGER, ON CONFLICT, RETURNING); each engine adapts placeholders itself.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, Sequence


class Row(Protocol):
    """A result row, as both engines give it (sqlite3.Row, asyncpg.Record): by column name or position."""

    def __getitem__(self, key: str | int, /) -> Any: ...


class Connection(Protocol):
    """What a transaction, or the database outside one, offers."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class Transaction(Connection, Protocol):
    async def fetchval_and_commit(self, sql: str, *args: Any) -> Any:
        """A last read, then COMMIT (in one round trip where the engine can); nothing may follow."""
        ...


class Database(Connection, Protocol):
    """An open database: autocommitting statements plus explicit transactions."""

    engine: str

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def close(self) -> None: ...


class DatabaseError(Exception):
    """The database cannot be used as it is (e.g. its schema is newer than this code)."""


class ConstraintViolation(Exception):
    """A write broke a uniqueness or other integrity constraint; nothing of it was kept."""


class UnstorableValue(Exception):
    """A parameter the engine cannot hold (a NUL character in PostgreSQL text, an integer past
    64 bits): the statement did nothing. It came from the request, so the request is at fault."""


async def open_database(engine: str, *, path: str = "", url: str = "", pool_min: int = 2, pool_max: int = 10,
                        migrate: bool = True, sqlite_synchronous: str = "FULL") -> Database:
    """Open an engine and bring its schema up to date."""
    db: Database
    if engine == "sqlite":
        from storage.sqlite import SqliteDatabase
        db = await SqliteDatabase.open(path, synchronous=sqlite_synchronous)
    elif engine == "postgres":
        from storage.postgres import PostgresDatabase
        db = await PostgresDatabase.open(url, pool_min=pool_min, pool_max=pool_max)
    else:
        raise DatabaseError(f"unknown database engine {engine!r}")
    if migrate:
        from storage.migrations import run_migrations
        try:
            await run_migrations(db)
        except BaseException:
            await db.close()
            raise
    return db


def conditions(*pairs: tuple[str, object]) -> tuple[list[str], list[Any]]:
    """Optional filters of a query: the clauses (each with one `?`) whose value is not None, with
    their values in the same order."""
    kept = [(clause, value) for clause, value in pairs if value is not None]
    return [c for c, _ in kept], [v for _, v in kept]
