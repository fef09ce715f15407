"""Presence: each user's last known state, so a restart keeps states and status messages, and the
queries presence needs about who shares rooms with whom."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database


@dataclass(frozen=True)
class PresenceRow:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int


def _like_suffix(server_name: str) -> str:
    """A LIKE pattern for user IDs of this server (`%:server`), its wildcards escaped."""
    escaped = server_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%:" + escaped


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put_many(self, rows: list[PresenceRow], now: int) -> None:
        """Write these states in one transaction (a user at most once)."""
        latest = {r.user_id: r for r in rows}
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO presence (user_id, state, status_msg, last_active_ts, updated_ts) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,"
                " last_active_ts = excluded.last_active_ts, updated_ts = excluded.updated_ts",
                [(r.user_id, r.state, r.status_msg, r.last_active_ts, now) for r in latest.values()])

    async def all(self) -> list[PresenceRow]:
        rows = await self.db.fetchall("SELECT user_id, state, status_msg, last_active_ts FROM presence")
        return [PresenceRow(r["user_id"], r["state"], r["status_msg"], int(r["last_active_ts"])) for r in rows]

    async def users_sharing_rooms(self, user_id: str) -> set[str]:
        """Users joined to a room the user is joined to (the user included)."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT o.state_key FROM current_state m JOIN current_state o ON o.room_id = m.room_id"
            " WHERE m.type = 'm.room.member' AND m.state_key = ? AND m.membership = 'join'"
            " AND o.type = 'm.room.member' AND o.membership = 'join'", user_id)
        return {r["state_key"] for r in rows}

    async def shares_room_with_server(self, user_id: str, server_name: str) -> bool:
        """Whether the user is joined to a room a user of `server_name` is joined to."""
        row = await self.db.fetchone(
            "SELECT 1 FROM current_state m JOIN current_state o ON o.room_id = m.room_id"
            " WHERE m.type = 'm.room.member' AND m.state_key = ? AND m.membership = 'join'"
            " AND o.type = 'm.room.member' AND o.membership = 'join' AND o.state_key LIKE ? ESCAPE '\\'"
            " LIMIT 1", user_id, _like_suffix(server_name))
        return row is not None

    async def joined_rooms_of(self, user_ids: list[str]) -> list[str]:
        """The rooms any of these users is joined to."""
        found: set[str] = set()
        for start in range(0, len(user_ids), 500):  # bounded statements
            chunk = user_ids[start:start + 500]
            rows = await self.db.fetchall(
                "SELECT DISTINCT room_id FROM current_state WHERE type = 'm.room.member' AND membership = 'join'"
                f" AND state_key IN ({', '.join('?' * len(chunk))})", *chunk)
            found.update(r["room_id"] for r in rows)
        return sorted(found)
