"""Friends: each local user's view of their friendships and pending requests, and the friend
events /sync reports. Rows are kept by the friends domain from the member and friendship events
of the direct chats; the rooms stay the truth both servers share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Row
from storage.rooms import next_stream

INCOMING, OUTGOING, FRIENDS = "incoming", "outgoing", "friends"


@dataclass(frozen=True)
class FriendLink:
    """`user_id` (local) and `other_id`: a request one way (`incoming`/`outgoing`) or a friendship."""

    user_id: str
    other_id: str
    room_id: str
    state: str
    message: str | None
    since_ts: int


@dataclass(frozen=True)
class FriendEvent:
    user_id: str
    type: str
    content: dict[str, Any]
    ts: int
    stream: int = 0


def _link(row: Row) -> FriendLink:
    return FriendLink(row["user_id"], row["other_id"], row["room_id"], row["state"], row["message"],
                      int(row["since_ts"]))


class FriendStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def link(self, user_id: str, other_id: str) -> FriendLink | None:
        row = await self.db.fetchone("SELECT * FROM friend_links WHERE user_id = ? AND other_id = ?",
                                     user_id, other_id)
        return None if row is None else _link(row)

    async def links_in_room(self, room_id: str) -> list[FriendLink]:
        return [_link(r) for r in await self.db.fetchall("SELECT * FROM friend_links WHERE room_id = ?", room_id)]

    async def links(self, user_id: str, state: str) -> list[FriendLink]:
        rows = await self.db.fetchall(
            "SELECT * FROM friend_links WHERE user_id = ? AND state = ? ORDER BY since_ts, other_id", user_id, state)
        return [_link(r) for r in rows]

    async def share_a_friend(self, user_id: str, other_id: str) -> bool:
        """Whether a friend of `user_id` has `other_id` as a friend (as far as this server knows)."""
        return await self.db.fetchval(
            "SELECT 1 FROM friend_links a JOIN friend_links b ON b.user_id = a.other_id"
            " WHERE a.user_id = ? AND a.state = 'friends' AND b.other_id = ? AND b.state = 'friends'",
            user_id, other_id) is not None

    async def apply(self, put: Sequence[FriendLink], drop: Sequence[FriendLink],
                    events: Sequence[FriendEvent]) -> int | None:
        """Write links, remove links (only while they still name the same room) and record
        events, in one transaction at one stream position (returned when there are events)."""
        async with self.db.transaction() as tx:
            stream = await next_stream(tx) if events else None
            for link in put:
                await tx.execute(
                    "INSERT INTO friend_links (user_id, other_id, room_id, state, message, since_ts)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, other_id) DO UPDATE SET"
                    " room_id = excluded.room_id, state = excluded.state, message = excluded.message,"
                    " since_ts = excluded.since_ts",
                    link.user_id, link.other_id, link.room_id, link.state, link.message, link.since_ts)
            for link in drop:
                await tx.execute("DELETE FROM friend_links WHERE user_id = ? AND other_id = ? AND room_id = ?",
                                 link.user_id, link.other_id, link.room_id)
            for ev in events:
                await tx.execute(
                    "INSERT INTO friend_events (stream, user_id, type, content, ts) VALUES (?, ?, ?, ?, ?)",
                    stream, ev.user_id, ev.type, json.dumps(ev.content), ev.ts)
        return stream

    async def events_since(self, user_id: str, after: int, upto: int) -> list[FriendEvent]:
        rows = await self.db.fetchall(
            "SELECT * FROM friend_events WHERE user_id = ? AND stream > ? AND stream <= ? ORDER BY stream, id",
            user_id, after, upto)
        return [FriendEvent(r["user_id"], r["type"], json.loads(r["content"]), int(r["ts"]), int(r["stream"]))
                for r in rows]
