"""Group commit on SQLite: concurrent transactions share one COMMIT (one fsync), yet each caller
is answered only once its writes are committed, and a failing one fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from storage import open_database
from storage.database import ConstraintViolation
from storage.sqlite import MAX_GROUP, SqliteDatabase


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Any]:
    database = await open_database("sqlite", path=str(tmp_path / "g.db"), migrate=False)
    assert isinstance(database, SqliteDatabase)
    await database.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    database.path = tmp_path / "g.db"  # type: ignore[attr-defined]
    yield database
    await database.close()


def committed_keys(path: Path) -> set[int]:
    """What another connection (another process, after a crash) finds on disk."""
    conn = sqlite3.connect(path)
    try:
        return {k for (k,) in conn.execute("SELECT k FROM t")}
    finally:
        conn.close()


async def test_concurrent_transactions_share_commits_and_return_only_once_committed(db: Any) -> None:
    seen_on_return: list[bool] = []

    async def write(k: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", k, "x")
            await tx.execute("UPDATE t SET v = ? WHERE k = ?", f"v{k}", k)
        seen_on_return.append(k in await asyncio.to_thread(committed_keys, db.path))

    before = db.commits
    await asyncio.gather(*(write(k) for k in range(200)))
    assert all(seen_on_return) and len(seen_on_return) == 200
    assert await asyncio.to_thread(committed_keys, db.path) == set(range(200))
    grouped = db.commits - before
    assert 200 / MAX_GROUP <= grouped < 100, grouped  # far fewer COMMITs than transactions
    before = db.commits
    for k in range(200, 205):  # one at a time: each commits alone, at once
        await write(k)
    assert db.commits - before == 5


async def test_a_failing_transaction_fails_alone(db: Any) -> None:
    await db.execute("INSERT INTO t (k, v) VALUES (1, 'one')")

    async def write(k: int) -> str:
        try:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", k + 100, "side effect")
                await tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", k, "x")  # k=1 breaks the key
            return "ok"
        except ConstraintViolation:
            return "violation"

    async def raises(k: int) -> str:
        try:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", k, "x")
                await tx.fetchval("SELECT COUNT(*) FROM t")  # sent: the rollback has something to undo
                raise RuntimeError("the caller gave up")
        except RuntimeError:
            return "raised"

    results = await asyncio.gather(*(write(k) for k in range(2, 20)), write(1), raises(50),
                                   *(write(k) for k in range(20, 30)))
    assert results.count("violation") == 1 and results.count("raised") == 1 and results.count("ok") == 28
    keys = await asyncio.to_thread(committed_keys, db.path)
    assert keys == {1, *range(2, 30), *range(102, 130)}  # neither 101 nor 50
    assert await db.fetchval("SELECT v FROM t WHERE k = 1") == "one"


async def test_the_last_read_may_carry_the_commit(db: Any) -> None:
    async def counted(k: int) -> int:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (k, v) VALUES (?, 'x')", k)
            return int(await tx.fetchval_and_commit("SELECT COUNT(*) FROM t WHERE k <= ?", k))

    counts = await asyncio.gather(*(counted(k) for k in range(1, 41)))
    assert sorted(counts) == list(range(1, 41))  # each saw the members before it, and itself
    assert await asyncio.to_thread(committed_keys, db.path) == set(range(1, 41))


async def test_cancelled_members_never_strand_the_others(db: Any) -> None:
    gate = asyncio.Event()

    async def slow_first() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (k, v) VALUES (0, 'x')")
            await gate.wait()

    async def write(k: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (k, v) VALUES (?, 'x')", k)

    first = asyncio.create_task(slow_first())
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(write(k)) for k in range(1, 6)]
    await asyncio.sleep(0.05)
    for task in queued[2:]:
        task.cancel()  # waiting for the lock: they leave
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *queued[:2]), 5)
    # the first ended while others still waited, so the group stayed open for them
    assert await asyncio.to_thread(committed_keys, db.path) == {0, 1, 2}
    # and a member cancelled while it holds the lock is undone; the rest still commit
    holder = asyncio.create_task(slow_first_again(db))
    await asyncio.sleep(0.05)
    after = [asyncio.create_task(write(k)) for k in range(10, 13)]
    await asyncio.sleep(0.05)
    holder.cancel()
    await asyncio.wait_for(asyncio.gather(*after), 5)
    assert await asyncio.to_thread(committed_keys, db.path) == {0, 1, 2, 10, 11, 12}


async def slow_first_again(db: Any) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO t (k, v) VALUES (99, 'x')")
        await tx.fetchval("SELECT 1")
        await asyncio.sleep(10)
