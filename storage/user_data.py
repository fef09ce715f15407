"""Per-user data that sync reports: receipts, account data, filters, unread counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from storage.database import Database
from storage.rooms import next_stream


@dataclass(frozen=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_id: str
    ts: int
    stream: int


@dataclass(frozen=True)
class AccountData:
    room_id: str  # "" for global
    type: str
    content: dict[str, Any]
    stream: int


class UserDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put_receipt(self, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str,
                          ts: int) -> int:
        async with self.db.transaction() as tx:
            stream = await next_stream(tx)
            await tx.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, receipt_type, user_id, thread_id)"
                " DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream = excluded.stream",
                room_id, receipt_type, user_id, thread_id, event_id, ts, stream)
            await tx.execute("UPDATE rooms SET last_stream = ? WHERE room_id = ?", stream, room_id)
        return stream

    async def receipts(self, room_ids: Sequence[str], after: int, upto: int) -> list[Receipt]:
        """Receipts in the given rooms that changed in (after, upto]; all of them when after is 0."""
        if not room_ids:
            return []
        found: list[Receipt] = []
        for start in range(0, len(room_ids), 500):
            chunk = list(room_ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                f"SELECT * FROM receipts WHERE room_id IN ({marks}) AND stream > ? AND stream <= ?",
                *chunk, after, upto)
            found += [Receipt(r["room_id"], r["receipt_type"], r["user_id"], r["thread_id"], r["event_id"],
                              r["ts"], r["stream"]) for r in rows]
        return found

    async def put_account_data(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        async with self.db.transaction() as tx:
            stream = await next_stream(tx)
            await tx.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
                " stream = excluded.stream", user_id, room_id, data_type, json.dumps(content), stream)
        return stream

    async def update_account_data(self, user_id: str, room_id: str, data_type: str,
                                  change: Callable[[dict[str, Any] | None], dict[str, Any]]) -> int:
        """Replace the content with `change(current)`, read and written in one transaction.

        The stream position is taken first: its row lock (PostgreSQL) or the write lock (SQLite)
        orders concurrent updates, so each reads what the one before wrote and none is lost.
        """
        async with self.db.transaction() as tx:
            stream = await next_stream(tx)
            raw = await tx.fetchval("SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
                                    user_id, room_id, data_type)
            content = change(None if raw is None else json.loads(raw))
            await tx.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
                " stream = excluded.stream", user_id, room_id, data_type, json.dumps(content), stream)
        return stream

    async def global_account_data_of_type(self, data_type: str) -> list[tuple[str, dict[str, Any]]]:
        """Every user's global account data of one type: (user ID, content)."""
        rows = await self.db.fetchall(
            "SELECT user_id, content FROM account_data WHERE room_id = '' AND type = ?", data_type)
        return [(r["user_id"], json.loads(r["content"])) for r in rows]

    async def get_account_data(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
            user_id, room_id, data_type)
        return None if raw is None else json.loads(raw)

    async def room_account_data(self, user_id: str, room_id: str) -> list[AccountData]:
        rows = await self.db.fetchall(
            "SELECT room_id, type, content, stream FROM account_data WHERE user_id = ? AND room_id = ?"
            " ORDER BY stream", user_id, room_id)
        return [AccountData(r["room_id"], r["type"], json.loads(r["content"]), r["stream"]) for r in rows]

    async def account_data_since(self, user_id: str, after: int, upto: int) -> list[AccountData]:
        rows = await self.db.fetchall(
            "SELECT room_id, type, content, stream FROM account_data WHERE user_id = ? AND stream > ?"
            " AND stream <= ? ORDER BY stream", user_id, after, upto)
        return [AccountData(r["room_id"], r["type"], json.loads(r["content"]), r["stream"]) for r in rows]

    async def add_filter(self, user_id: str, definition: dict[str, Any]) -> int:
        async with self.db.transaction() as tx:
            next_id = int(await tx.fetchval(
                "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?", user_id))
            await tx.execute("INSERT INTO filters (user_id, filter_id, json) VALUES (?, ?, ?)",
                             user_id, next_id, json.dumps(definition))
        return next_id

    async def get_filter(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        raw = await self.db.fetchval("SELECT json FROM filters WHERE user_id = ? AND filter_id = ?",
                                     user_id, filter_id)
        return None if raw is None else json.loads(raw)
