"""Push: users' rule edits, the notifications the rules gave (written with their event), pushers
and the positions their deliveries reached, and the per-user email setting."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.database import Connection, Database

ACTION_COLUMNS = "room_id, stream, grp, event_id, thread_id, highlight, actions, ts, users"
# The read receipt a room's counts start after: the user's latest m.read / m.read.private.
_RECEIPT_STREAM = ("SELECT MAX(e.stream) FROM receipts r JOIN events e ON e.event_id = r.event_id"
                   " WHERE r.room_id = {room} AND r.user_id = {user}"
                   " AND r.receipt_type IN ('m.read', 'm.read.private')")
_NOT_REDACTED = "NOT EXISTS (SELECT 1 FROM events x WHERE x.event_id = a.event_id AND x.redacted_by IS NOT NULL)"


@dataclass(frozen=True)
class PushGroup:
    """The users an event notified with the same actions."""

    actions: str  # the actions, as JSON
    highlight: bool
    user_ids: tuple[str, ...]


@dataclass(frozen=True)
class EventPush:
    """What the rules gave for one event, stored in the event's own transaction: one row per
    group of users with the same actions (a message in a room of 500 is one row, not 500, so the
    write stays a few pages at the end of the table)."""

    event_id: str
    room_id: str
    thread_id: str  # "main", or the thread root's event ID
    ts: int
    groups: tuple[PushGroup, ...]


@dataclass(frozen=True)
class Notification:
    user_id: str
    room_id: str
    event_id: str
    stream: int
    thread_id: str
    highlight: bool
    actions: list[Any]
    ts: int


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str
    lang: str
    data: dict[str, Any]
    created_ts: int
    last_stream: int  # notifications up to here were delivered (or given up on)


def _users_text(user_ids: tuple[str, ...]) -> str:
    """Users as stored: each between newlines, so that one is found with a newline either side."""
    return "\n" + "\n".join(user_ids) + "\n"


def _needle(user_id: str) -> str:
    return f"\n{user_id}\n"


def _like(user_id: str) -> str:
    """A LIKE pattern finding the user in the stored text (a superset where LIKE ignores case;
    `_has` makes it exact)."""
    escaped = _needle(user_id).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_LIKE = "a.users LIKE ? ESCAPE '\\'"
# Only rooms the user has a membership in (any: a room left keeps its notifications) are looked at.
_IN_USERS_ROOMS = ("a.room_id IN (SELECT m.room_id FROM current_state m WHERE m.type = 'm.room.member'"
                   " AND m.state_key = ?)")


def _has(row: Any, user_id: str) -> bool:
    return _needle(user_id) in row["users"]


def action_rows(push: EventPush, stream: int) -> list[tuple[Any, ...]]:
    return [(push.room_id, stream, i, push.event_id, push.thread_id, int(g.highlight), g.actions, push.ts,
             _users_text(g.user_ids)) for i, g in enumerate(push.groups)]


async def insert_actions(tx: Connection, push: EventPush | None, stream: int) -> None:
    if push is not None and push.groups:
        await tx.executemany(f"INSERT INTO event_push_actions ({ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             action_rows(push, stream))


async def insert_actions_at_position(tx: Connection, push: EventPush | None) -> None:
    """insert_actions for a transaction that reads its position last (storage/rooms.py)."""
    if push is not None and push.groups:
        await tx.executemany(
            f"INSERT INTO event_push_actions ({ACTION_COLUMNS}) VALUES (?,"
            f" (SELECT pos FROM stream_counter WHERE name = 'stream'), ?, ?, ?, ?, ?, ?, ?)",
            [(push.room_id, i, push.event_id, push.thread_id, int(g.highlight), g.actions, push.ts,
              _users_text(g.user_ids)) for i, g in enumerate(push.groups)])


def pg_actions_cte(push: EventPush | None) -> tuple[str, list[Any]]:
    """The same rows as one data-modifying CTE of the PostgreSQL message statement (`s` holds the position)."""
    if push is None or not push.groups:
        return "", []
    return (" , p AS (INSERT INTO event_push_actions (" + ACTION_COLUMNS + ")"
            " SELECT ?, (SELECT pos FROM s), t.g, ?, ?, t.h, t.a, ?, t.u"
            " FROM unnest(?::int[], ?::int[], ?::text[], ?::text[]) AS t(g, h, a, u))",
            [push.room_id, push.event_id, push.thread_id, push.ts, list(range(len(push.groups))),
             [int(g.highlight) for g in push.groups], [g.actions for g in push.groups],
             [_users_text(g.user_ids) for g in push.groups]])


def _pusher(r: Any) -> Pusher:
    return Pusher(r["user_id"], r["app_id"], r["pushkey"], r["kind"], r["app_display_name"],
                  r["device_display_name"], r["profile_tag"], r["lang"], json.loads(r["data"]), r["created_ts"],
                  r["last_stream"])


def _notification(r: Any, user_id: str) -> Notification:
    return Notification(user_id, r["room_id"], r["event_id"], int(r["stream"]), r["thread_id"], bool(r["highlight"]),
                        json.loads(r["actions"]), r["ts"])


class PushStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- rules ---------------------------------------------------------------------

    async def rule_edits(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        ids = list(user_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = await self.db.fetchall(
                f"SELECT user_id, content FROM push_rule_edits WHERE user_id IN ({','.join('?' * len(chunk))})",
                *chunk)
            found.update({r["user_id"]: json.loads(r["content"]) for r in rows})
        return found

    async def update_rules(self, user_id: str,
                           change: Callable[[dict[str, Any] | None], tuple[dict[str, Any], dict[str, Any]]]) -> int:
        """Apply `change(edits) -> (new edits, rendered rules)` in one transaction, and record the
        rendered rules as the user's m.push_rules account data (what /sync reports). The stream
        position is taken first, which orders concurrent changes (see update_account_data)."""
        from storage.rooms import next_stream  # storage.rooms imports this module

        async with self.db.transaction() as tx:
            stream = await next_stream(tx)
            raw = await tx.fetchval("SELECT content FROM push_rule_edits WHERE user_id = ?", user_id)
            edits, rendered = change(None if raw is None else json.loads(raw))
            await tx.execute("INSERT INTO push_rule_edits (user_id, content) VALUES (?, ?)"
                             " ON CONFLICT (user_id) DO UPDATE SET content = excluded.content",
                             user_id, json.dumps(edits))
            await tx.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream)"
                " VALUES (?, '', 'm.push_rules', ?, ?)"
                " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
                " stream = excluded.stream", user_id, json.dumps(rendered), stream)
        return stream

    # --- notifications ---------------------------------------------------------------

    async def counts(self, user_id: str, room_id: str, fallback: int, upto: int) -> tuple[int, int, int]:
        """(notifications, highlights, the position counted from) for a user in a room: their
        notifications at most at `upto` after their latest read receipt (else after `fallback`),
        leaving out redacted events."""
        rows = await self._rows_after_receipt(user_id, room_id, fallback, upto)
        mine = [r for r in rows if r["users"] is not None and _has(r, user_id)]
        return len(mine), sum(int(r["highlight"]) for r in mine), int(rows[0]["threshold"])

    async def _rows_after_receipt(self, user_id: str, room_id: str, fallback: int, upto: int) -> list[Any]:
        receipt = _RECEIPT_STREAM.format(room="?", user="?")
        return await self.db.fetchall(
            f"WITH t AS (SELECT COALESCE(({receipt}), ?) AS threshold)"
            f" SELECT t.threshold, a.highlight, a.users FROM t LEFT JOIN event_push_actions a"
            f" ON a.room_id = ? AND a.stream > t.threshold AND a.stream <= ? AND {_LIKE} AND {_NOT_REDACTED}",
            room_id, user_id, fallback, room_id, upto, _like(user_id))

    async def thread_rows(self, user_id: str, room_id: str, after: int, upto: int) -> list[tuple[str, int, bool]]:
        """(thread_id, stream, highlight) of the user's notifications in a room in (after, upto]."""
        rows = await self.db.fetchall(
            f"SELECT a.thread_id, a.stream, a.highlight, a.users FROM event_push_actions a WHERE a.room_id = ?"
            f" AND a.stream > ? AND a.stream <= ? AND {_LIKE} AND {_NOT_REDACTED}",
            room_id, after, upto, _like(user_id))
        return [(r["thread_id"], int(r["stream"]), bool(r["highlight"])) for r in rows if _has(r, user_id)]

    async def receipt_streams(self, user_id: str, room_id: str | None = None) -> list[tuple[str, str, int]]:
        """(room_id, thread_id, stream of the event) of the user's read receipts (in one room, or all)."""
        where = " AND r.room_id = ?" if room_id is not None else ""
        rows = await self.db.fetchall(
            "SELECT r.room_id, r.thread_id, MAX(e.stream) AS stream FROM receipts r JOIN events e"
            " ON e.event_id = r.event_id WHERE r.user_id = ? AND r.receipt_type IN ('m.read', 'm.read.private')"
            f"{where} GROUP BY r.room_id, r.thread_id", user_id, *([room_id] if room_id is not None else []))
        return [(r["room_id"], r["thread_id"], int(r["stream"])) for r in rows]

    async def notifications(self, user_id: str, before: int | None, limit: int, only_highlight: bool
                            ) -> list[Notification]:
        """The user's notifications newest first, below `before`."""
        rows = await self.db.fetchall(
            f"SELECT {ACTION_COLUMNS} FROM event_push_actions a WHERE a.stream < ? AND {_IN_USERS_ROOMS}"
            f" AND {_LIKE}{' AND a.highlight = 1' if only_highlight else ''} AND {_NOT_REDACTED}"
            f" ORDER BY a.stream DESC LIMIT ?",
            before if before is not None else 2**62, user_id, _like(user_id), limit)
        return [_notification(r, user_id) for r in rows if _has(r, user_id)]

    async def notifications_after(self, user_id: str, after: int, limit: int) -> list[Notification]:
        """The user's notifications above `after`, oldest first (what a pusher or a mail sends next)."""
        rows = await self.db.fetchall(
            f"SELECT {ACTION_COLUMNS} FROM event_push_actions a WHERE a.stream > ? AND {_IN_USERS_ROOMS}"
            f" AND {_LIKE} ORDER BY a.stream LIMIT ?", after, user_id, _like(user_id), limit)
        return [_notification(r, user_id) for r in rows if _has(r, user_id)]

    async def unread_totals(self, user_id: str) -> tuple[int, int]:
        """(notifications, of which m.call.invite) the user has not read, over the rooms they are in
        (after their read receipt there, else after their join, as in /sync)."""
        receipt = _RECEIPT_STREAM.format(room="a.room_id", user="?")
        rows = await self.db.fetchall(
            "SELECT a.users, e.type FROM current_state m JOIN events j ON j.event_id = m.event_id"
            " JOIN event_push_actions a ON a.room_id = m.room_id JOIN events e ON e.event_id = a.event_id"
            " WHERE m.type = 'm.room.member' AND m.state_key = ? AND m.membership = 'join'"
            f" AND e.redacted_by IS NULL AND {_LIKE} AND a.stream > COALESCE(({receipt}), j.stream)",
            user_id, _like(user_id), user_id)
        mine = [r for r in rows if _has(r, user_id)]
        return len(mine), sum(1 for r in mine if r["type"] == "m.call.invite")

    # --- pushers ---------------------------------------------------------------------

    async def pushers(self, user_id: str | None = None) -> list[Pusher]:
        if user_id is None:
            rows = await self.db.fetchall("SELECT * FROM pushers ORDER BY created_ts")
        else:
            rows = await self.db.fetchall("SELECT * FROM pushers WHERE user_id = ? ORDER BY created_ts", user_id)
        return [_pusher(r) for r in rows]

    async def set_pusher(self, p: Pusher, append: bool) -> list[tuple[str, str, str]]:
        """Create or update a pusher; without `append`, the same app_id and pushkey of other users
        go (spec). Returns the (user_id, app_id, pushkey) removed."""
        async with self.db.transaction() as tx:
            removed: list[tuple[str, str, str]] = []
            if not append:
                rows = await tx.fetchall("DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?"
                                         " RETURNING user_id", p.app_id, p.pushkey, p.user_id)
                removed = [(r["user_id"], p.app_id, p.pushkey) for r in rows]
            await tx.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name,"
                " profile_tag, lang, data, created_ts, last_stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind,"
                " app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name,"
                " profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data",
                p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name, p.device_display_name, p.profile_tag,
                p.lang, json.dumps(p.data), p.created_ts, p.last_stream)
        return removed

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        row = await self.db.fetchone("DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?"
                                     " RETURNING user_id", user_id, app_id, pushkey)
        return row is not None

    async def delete_pushkey(self, app_id: str, pushkey: str) -> list[str]:
        """A pushkey a gateway rejected: gone for every user. Returns their IDs."""
        rows = await self.db.fetchall("DELETE FROM pushers WHERE app_id = ? AND pushkey = ? RETURNING user_id",
                                      app_id, pushkey)
        return [r["user_id"] for r in rows]

    async def advance_pusher(self, user_id: str, app_id: str, pushkey: str, stream: int) -> None:
        await self.db.execute("UPDATE pushers SET last_stream = ? WHERE user_id = ? AND app_id = ? AND pushkey = ?"
                              " AND last_stream < ?", stream, user_id, app_id, pushkey, stream)

    # --- email -----------------------------------------------------------------------

    async def email_setting(self, user_id: str) -> tuple[bool, int] | None:
        row = await self.db.fetchone("SELECT enabled, last_stream FROM email_notifications WHERE user_id = ?",
                                     user_id)
        return None if row is None else (bool(row["enabled"]), int(row["last_stream"]))

    async def set_email(self, user_id: str, enabled: bool, last_stream: int) -> None:
        """Turn mails on (counting from `last_stream`) or off."""
        await self.db.execute(
            "INSERT INTO email_notifications (user_id, enabled, last_stream) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET enabled = excluded.enabled, last_stream ="
            " CASE WHEN email_notifications.enabled = 1 THEN email_notifications.last_stream"
            " ELSE excluded.last_stream END", user_id, int(enabled), last_stream)

    async def email_users(self) -> list[tuple[str, int]]:
        rows = await self.db.fetchall("SELECT user_id, last_stream FROM email_notifications WHERE enabled = 1")
        return [(r["user_id"], int(r["last_stream"])) for r in rows]

    async def advance_email(self, user_id: str, stream: int) -> None:
        await self.db.execute("UPDATE email_notifications SET last_stream = ? WHERE user_id = ? AND last_stream < ?",
                              stream, user_id, stream)
