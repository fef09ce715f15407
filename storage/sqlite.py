"""SQLite engine: WAL mode, one writer connection, a few reader connections.

Each connection lives on its own thread (a one-worker executor), so no query
blocks the event loop, and every statement, fetch included, is a single hand-off
to that thread: the hand-off, not SQLite, is what a query costs here. Writes and
transactions are serialised by a lock on the writer; reads outside a transaction
go round-robin to the readers, which under WAL see the last commit and run in
parallel (sqlite3 releases the GIL while it works).

Group commit: a transaction that ends while other writers wait for the lock does not commit
alone. Each transaction runs inside a savepoint of one open SQLite transaction; the writers
waiting next join it, and the last of them (or the MAX_GROUP-th) commits for all, so a burst of
concurrent writes costs one fsync instead of one each. Every caller is answered only after the
COMMIT that holds its writes, so `synchronous=FULL` keeps its promise. A transaction that fails
is rolled back to its savepoint and fails alone; a COMMIT that fails fails every member.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

from storage.database import ConstraintViolation, Row, Transaction, UnstorableValue

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
# Transactions committed together at most (a bound on how long the first of them waits).
MAX_GROUP = 64
SAVEPOINT = "whispr_member"

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
        except (sqlite3.IntegrityError, OverflowError) as e:
            raise _storage_error(e) from e

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        return await self.run(_fetchone, sql, args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return await self.run(_fetchall, sql, args)

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


def _undo_member(conn: sqlite3.Connection) -> bool:
    """Roll a member back to its savepoint; False when SQLite holds no transaction any more."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute(f"ROLLBACK TO {SAVEPOINT}").close()
        conn.execute(f"RELEASE {SAVEPOINT}").close()
    except sqlite3.OperationalError:
        pass  # its savepoint never began: nothing of it ran
    return True


@dataclass
class _Ending:
    """How a member's last hand-off went: its read, its own failure, its group's failure."""

    value: Any = None
    failure: BaseException | None = None
    group_failure: BaseException | None = None


def _end_member(conn: sqlite3.Connection, pending: list[tuple[str, Sequence[Any], bool]],
                then: Callable[..., Any] | None, args: Sequence[Any], commit: bool) -> _Ending:
    """A member's deferred statements, last read and savepoint release, then (if `commit`) the
    group's COMMIT: one hand-off. A statement that fails undoes this member only."""
    ending = _Ending()
    try:
        ending.value = _batch(conn, pending, then, *args)
        conn.execute(f"RELEASE {SAVEPOINT}").close()
    except Exception as e:  # noqa: BLE001 - handed back to the member's task
        ending.failure = e
        if not _undo_member(conn):
            ending.group_failure = e
            return ending
    if commit:
        try:
            conn.execute("COMMIT").close()
        except Exception as e:  # noqa: BLE001
            if conn.in_transaction:
                conn.execute("ROLLBACK").close()
            ending.group_failure = e
    return ending


def _commit_open(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("COMMIT").close()
    except Exception:
        if conn.in_transaction:
            conn.execute("ROLLBACK").close()
        raise


def _storage_error(e: BaseException) -> BaseException:
    """What sqlite3 raised, as the storage interface's own errors."""
    if isinstance(e, sqlite3.IntegrityError):
        return ConstraintViolation(str(e))
    if isinstance(e, OverflowError):  # an integer parameter past 64 bits
        return UnstorableValue(str(e))
    return e


class _Group:
    """Transactions sharing one SQLite transaction and its COMMIT."""

    def __init__(self) -> None:
        self.begun = False  # BEGIN IMMEDIATE reached SQLite
        self.members = 0  # transactions whose writes it holds
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(self, error: BaseException | None) -> None:
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)
            self.done.exception()  # marked retrieved: a group of one failing member has no reader


class _Transaction:
    """One member of a group: its statements, deferred when nobody reads their result.

    They are sent with the next read, or with the member's end, so a transaction costs one
    hand-off per read instead of one per statement. Order is kept; an error in a deferred
    statement surfaces at that next read or at the end, and undoes this member only.
    """

    def __init__(self, conn: _ThreadConn, group: _Group, db: SqliteDatabase) -> None:
        self._conn = conn
        self._group = group
        self._db = db
        self._pending: list[tuple[str, Sequence[Any], bool]] = [] if group.begun else [("BEGIN IMMEDIATE", (), False)]
        self._pending.append((f"SAVEPOINT {SAVEPOINT}", (), False))
        self.ended: _Ending | None = None  # set once the member released its savepoint

    async def _flush_with(self, fn: Callable[..., T] | None, *args: Any) -> T | None:
        pending, self._pending = self._pending, []
        if pending and pending[0][0] == "BEGIN IMMEDIATE":
            self._group.begun = True  # from here on SQLite may hold the transaction, whatever happens
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
        """The last read, in the member's last hand-off (with the group's COMMIT when it is due)."""
        ending = await self.end(_fetchone, (sql, args))
        if ending.failure is not None:
            raise _storage_error(ending.failure)
        row = ending.value
        return None if row is None else row[0]

    async def end(self, then: Callable[..., Any] | None = None, args: Sequence[Any] = ()) -> _Ending:
        """The member's last hand-off. It is shielded and booked when it is done, whatever happens
        to this task meanwhile: other members wait on the COMMIT it may carry."""
        if self.ended is None:
            pending, self._pending = self._pending, []
            if pending and pending[0][0] == "BEGIN IMMEDIATE":
                self._group.begun = True
            group, commit = self._group, self._db.should_commit(self._group)
            if commit:
                self._db.detach(group)  # who comes next starts a new group, after this COMMIT
            handoff = asyncio.ensure_future(self._conn.run(_end_member, pending, then, args, commit))

            def book(done: asyncio.Future[_Ending]) -> None:
                failed = done.cancelled() or done.exception() is not None
                self._db.ended(group, _Ending(group_failure=ConnectionAbortedError("hand-off failed"))
                               if failed else done.result(), commit)

            handoff.add_done_callback(book)
            self.ended = await asyncio.shield(handoff)
        return self.ended

    async def undo(self) -> bool:
        """Roll back what this member sent (its body raised); False if SQLite lost the whole group."""
        unsent, self._pending = self._pending, []
        if unsent and unsent[0][0] == "BEGIN IMMEDIATE":
            return True  # nothing of it (nor of the group) reached SQLite
        return bool(await self._conn.run(_undo_member))


class SqliteDatabase:
    engine = "sqlite"

    def __init__(self, writer: _ThreadConn, readers: list[_ThreadConn]) -> None:
        self._w = writer
        self._readers = readers
        self._write_lock = asyncio.Lock()
        self._next_reader = itertools.cycle(readers)
        self._group: _Group | None = None  # the open group, its COMMIT still to come
        self._queued = 0  # transactions waiting for the write lock
        self.commits = 0  # COMMITs run, each an fsync with synchronous=FULL (tests and metrics read it)

    @property
    def _r(self) -> _ThreadConn:
        return next(self._next_reader)

    @classmethod
    async def open(cls, path: str, readers: int = 3, synchronous: str = "FULL") -> "SqliteDatabase":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = await _ThreadConn.open(path, synchronous)  # first: it switches the file to WAL
        return cls(writer, [await _ThreadConn.open(path, synchronous) for _ in range(readers)])

    def should_commit(self, group: _Group) -> bool:
        """Whether the member ending now commits its group: nobody waits to join, or it is full."""
        return self._queued == 0 or group.members + 1 >= MAX_GROUP

    def detach(self, group: _Group) -> None:
        if self._group is group:
            self._group = None

    def ended(self, group: _Group, ending: _Ending, commit: bool) -> None:
        """Book a member's end: the group grows, commits, or is lost."""
        if ending.group_failure is not None:
            self.detach(group)
            group.finish(ConnectionAbortedError(f"the transaction was lost: {ending.group_failure}"))
            return
        if ending.failure is None:
            group.members += 1
        if commit:
            self.detach(group)
            self.commits += 1
            group.finish(None)

    async def _acquire(self) -> None:
        self._queued += 1
        try:
            await self._write_lock.acquire()
        except BaseException:
            # A waiter that gives up may have been the one an open group was left to.
            if self._queued == 1 and self._group is not None and not self._write_lock.locked():
                asyncio.get_running_loop().create_task(self._commit_left_group(self._group))
            raise
        finally:
            self._queued -= 1

    async def _commit_left_group(self, group: _Group) -> None:
        await self._acquire()
        try:
            if self._group is group:
                await self._close(group)
        finally:
            self._write_lock.release()

    async def _close(self, group: _Group) -> None:
        """COMMIT an open group now (under the write lock), shielded: its members wait on the outcome."""
        self.detach(group)
        if not group.begun:
            group.finish(None)
            return
        task = asyncio.ensure_future(self._w.run(_commit_open))

        def settle(t: asyncio.Future[None]) -> None:
            committed = not t.cancelled() and t.exception() is None
            self.commits += committed
            group.finish(None if committed else ConnectionAbortedError("the transaction was lost"))

        task.add_done_callback(settle)
        try:
            await asyncio.shield(task)
        except Exception:  # noqa: BLE001 - the members hear of it through the group
            pass

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        await self._acquire()
        try:
            if self._group is None:
                self._group = _Group()
            group = self._group
            tx = _Transaction(self._w, group, self)
            try:
                yield tx
            except BaseException:
                if tx.ended is None:
                    if not await tx.undo():
                        self.detach(group)
                        group.finish(ConnectionAbortedError("the transaction was lost"))
                    elif self._group is group and self.should_commit(group):
                        await self._close(group)
                raise
            ending = await tx.end()
            if ending.failure is not None:
                raise _storage_error(ending.failure)
        finally:
            self._write_lock.release()
        await group.done

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.transaction() as tx:
            await tx.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        if _writes(sql):
            async with self.transaction() as tx:
                return await tx.fetchone(sql, *args)
        return await self._r.fetchone(sql, *args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        if _writes(sql):
            async with self.transaction() as tx:
                return await tx.fetchall(sql, *args)
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
