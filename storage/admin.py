"""SQL of the server admin's tools: the admin flag, account listings, room summaries, blocked rooms,
room purges, a user's media."""

from __future__ import annotations

from typing import Any

from storage.database import Database, Row

# Sort keys of the user listing (Synapse's order_by values) -> SQL; unknown values are refused
# by the domain before they get here. Kinds we do not have (guests, shadow bans) sort as equal.
USER_ORDER = {
    "name": "u.user_id", "admin": "u.admin", "user_type": "u.user_type", "deactivated": "u.deactivated",
    "displayname": "p.displayname", "avatar_url": "p.avatar_url", "creation_ts": "u.created_ts",
    "last_seen_ts": "last_seen_ts", "is_guest": "0", "shadow_banned": "0", "locked": "0",
}
MEDIA_ORDER = {
    "media_id": "media_id", "upload_name": "upload_name", "created_ts": "created_ts",
    "last_access_ts": "created_ts", "media_length": "size", "media_type": "content_type",
    "quarantined_by": "quarantined", "safe_from_quarantine": "0",
}
# State of the room itself (empty state key) that a room summary shows.
SUMMARY_STATE_TYPES = ("m.room.create", "m.room.name", "m.room.topic", "m.room.avatar", "m.room.canonical_alias",
                       "m.room.encryption", "m.room.join_rules", "m.room.guest_access",
                       "m.room.history_visibility", "m.room.tombstone")


def like_pattern(term: str) -> str:
    """A LIKE pattern matching `term` anywhere, its own % and _ taken literally (ESCAPE '\\')."""
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class AdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- accounts --

    async def set_admin(self, user_id: str, admin: bool) -> bool:
        row = await self.db.fetchone("UPDATE users SET admin = ? WHERE user_id = ? RETURNING user_id",
                                     int(admin), user_id)
        return row is not None

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        await self.db.execute("UPDATE users SET user_type = ? WHERE user_id = ?", user_type, user_id)

    async def reactivate(self, user_id: str) -> None:
        await self.db.execute("UPDATE users SET deactivated = 0, erased = 0 WHERE user_id = ?", user_id)

    async def list_users(self, *, name: str | None, user_id: str | None, deactivated: bool, admins: bool | None,
                         order_by: str, backwards: bool, offset: int, limit: int) -> tuple[list[Row], int]:
        """A page of accounts with their profile and last-seen time, and how many match in all."""
        where = ["1 = 1"]
        args: list[Any] = []
        if name:
            where.append("(LOWER(u.localpart) LIKE LOWER(?) ESCAPE '\\' OR LOWER(p.displayname) LIKE LOWER(?)"
                         " ESCAPE '\\')")
            args += [like_pattern(name)] * 2
        elif user_id:
            where.append("LOWER(u.user_id) LIKE LOWER(?) ESCAPE '\\'")
            args.append(like_pattern(user_id))
        if not deactivated:
            where.append("u.deactivated = 0")
        if admins is not None:
            where.append("u.admin = ?")
            args.append(int(admins))
        sql_from = " FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE " + " AND ".join(where)
        total = int(await self.db.fetchval("SELECT COUNT(*)" + sql_from, *args) or 0)
        key = USER_ORDER[order_by]
        direction = "DESC" if backwards else "ASC"
        rows = await self.db.fetchall(
            "SELECT u.user_id, u.admin, u.user_type, u.deactivated, u.erased, u.locked, u.suspended, u.created_ts,"
            " p.displayname,"
            " p.avatar_url, (SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id) AS last_seen_ts"
            + sql_from + f" ORDER BY ({key}) IS NULL, {key} {direction}, u.user_id {direction} LIMIT ? OFFSET ?",
            *args, limit, offset)
        return rows, total

    # -- media --

    async def user_media(self, user_id: str, *, order_by: str, backwards: bool, offset: int,
                         limit: int) -> tuple[list[Row], int]:
        """A page of a user's uploads (pending ones too), each with whether it is quarantined."""
        total = int(await self.db.fetchval("SELECT COUNT(*) FROM local_media WHERE user_id = ?", user_id) or 0)
        key = MEDIA_ORDER[order_by]
        direction = "DESC" if backwards else "ASC"
        rows = await self.db.fetchall(
            "SELECT m.media_id, m.content_type, m.upload_name, m.size, m.created_ts,"
            " (m.quarantined = 1 OR EXISTS (SELECT 1 FROM quarantined_media_hashes q WHERE q.sha256 = m.sha256))"
            " AS is_quarantined FROM local_media m WHERE m.user_id = ?"
            f" ORDER BY ({key}) IS NULL, {key} {direction}, m.media_id {direction} LIMIT ? OFFSET ?",
            user_id, limit, offset)
        return rows, total

    # -- rooms --

    async def rooms(self, room_id: str | None = None) -> list[Row]:
        """Every room this server holds state of (or the one asked for)."""
        sql = "SELECT room_id, room_version, creator, is_public FROM rooms WHERE current_group IS NOT NULL"
        if room_id is None:
            return await self.db.fetchall(sql)
        return await self.db.fetchall(sql + " AND room_id = ?", room_id)

    async def summary_state(self, room_id: str | None = None) -> list[Row]:
        """(room_id, type, event_id) of the SUMMARY_STATE_TYPES state of every room (or one)."""
        marks = ", ".join("?" * len(SUMMARY_STATE_TYPES))
        sql = f"SELECT room_id, type, event_id FROM current_state WHERE state_key = '' AND type IN ({marks})"
        if room_id is None:
            return await self.db.fetchall(sql, *SUMMARY_STATE_TYPES)
        return await self.db.fetchall(sql + " AND room_id = ?", *SUMMARY_STATE_TYPES, room_id)

    async def state_counts(self, room_id: str | None = None) -> dict[str, int]:
        """room_id -> how many state events its current state holds."""
        if room_id is None:
            rows = await self.db.fetchall("SELECT room_id, COUNT(*) AS n FROM current_state GROUP BY room_id")
        else:
            rows = await self.db.fetchall(
                "SELECT room_id, COUNT(*) AS n FROM current_state WHERE room_id = ? GROUP BY room_id", room_id)
        return {r["room_id"]: int(r["n"]) for r in rows}

    async def joined_members(self, room_id: str | None = None) -> list[Row]:
        """(room_id, user_id) of every joined member of every room (or one)."""
        sql = "SELECT room_id, state_key AS user_id FROM current_state WHERE type = 'm.room.member'" \
              " AND membership = 'join'"
        if room_id is None:
            return await self.db.fetchall(sql)
        return await self.db.fetchall(sql + " AND room_id = ? ORDER BY state_key", room_id)

    async def device_count(self, user_ids: list[str]) -> int:
        """How many devices these users have in all."""
        if not user_ids:
            return 0
        marks = ", ".join("?" * len(user_ids))
        return int(await self.db.fetchval(f"SELECT COUNT(*) FROM devices WHERE user_id IN ({marks})",
                                          *user_ids) or 0)

    async def forgotten_by_all(self, room_id: str, local_members: list[str]) -> bool:
        """Whether every local user with a membership in the room has forgotten it."""
        if not local_members:
            return False
        marks = ", ".join("?" * len(local_members))
        n = await self.db.fetchval(
            f"SELECT COUNT(*) FROM forgotten_rooms WHERE room_id = ? AND user_id IN ({marks})",
            room_id, *local_members)
        return int(n or 0) == len(local_members)

    async def block_room(self, room_id: str, user_id: str, ts: int) -> None:
        await self.db.execute(
            "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            room_id, user_id, ts)

    async def unblock_room(self, room_id: str) -> None:
        await self.db.execute("DELETE FROM blocked_rooms WHERE room_id = ?", room_id)

    async def room_blocked_by(self, room_id: str) -> str | None:
        """The admin who blocked the room, or None if it is not blocked."""
        value = await self.db.fetchval("SELECT user_id FROM blocked_rooms WHERE room_id = ?", room_id)
        return None if value is None else str(value)

    async def purge_room(self, room_id: str) -> None:
        """Delete every trace of a room: events, state, receipts, room account data, aliases."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM state_group_entries WHERE group_id IN"
                             " (SELECT id FROM state_groups WHERE room_id = ?)", room_id)
            for table in ("state_groups", "events", "current_state", "forward_extremities", "room_aliases",
                          "receipts", "account_data", "forgotten_rooms", "held_redactions", "event_relations",
                          "rooms"):
                await tx.execute(f"DELETE FROM {table} WHERE room_id = ?", room_id)
