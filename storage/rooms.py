"""Rooms, events, state groups, current state, memberships and aliases."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from homeserver.events.event import Event, StateKey
from storage.database import Connection, Database, Row, conditions
from storage.push import EventPush, insert_actions, insert_actions_at_position, pg_actions_cte
from storage.relations import index_relation, pg_relation_cte, unindex_relation

# A group stores only what changed since its parent; after this many links a
# full snapshot is written so that reading any group walks a bounded chain.
MAX_CHAIN_LENGTH = 64
STATE_CACHE_SIZE = 2048

StateMap = dict[StateKey, str]


@dataclass(frozen=True)
class RoomInfo:
    room_id: str
    room_version: str
    creator: str
    is_public: bool
    created_ts: int
    current_group: int | None
    last_stream: int


@dataclass(frozen=True)
class SendContext:
    """What building a local event needs, read in one round trip."""

    room: RoomInfo | None
    extremities: list[str]


@dataclass(frozen=True)
class Persisted:
    stream: int
    state_after: int | None
    redacted_by: str | None = None  # a held redaction applied to the event as it was stored


@dataclass(frozen=True)
class HeldRedaction:
    """A received redaction whose target is not here yet: applied to the target when it arrives,
    in the same room, if `any_sender` (its sender had the redact level) or the target's sender is
    on `sender_server` (None: no same-server rule in the room version)."""

    redaction_id: str
    target_id: str
    room_id: str
    sender_server: str | None
    any_sender: bool


@dataclass(frozen=True)
class TxnRef:
    device_id: str
    txn_id: str


def _room(row: Row) -> RoomInfo:
    return RoomInfo(row["room_id"], row["room_version"], row["creator"], bool(row["is_public"]),
                    row["created_ts"], row["current_group"], row["last_stream"])


def event_from_row(row: Row) -> Event:
    unsigned = json.loads(row["unsigned"]) if row["unsigned"] else {}
    if row["redacted_by"]:
        unsigned["redacted_by"] = row["redacted_by"]
    if row["txn_id"]:
        unsigned["_txn"] = [row["txn_device"], row["txn_id"]]
    if row["outlier"]:
        unsigned["_outlier"] = True
    if row["soft_failed"]:
        unsigned["_soft_failed"] = True
    return Event(row["event_id"], json.loads(row["json"]), stream=row["stream"], rejected=row["rejected"],
                 unsigned=unsigned)


_EVENT_COLUMNS = "stream, event_id, json, rejected, redacted_by, unsigned, txn_device, txn_id, outlier, soft_failed"

# The redaction held for an event arriving from another server (see HeldRedaction), as a value of
# its INSERT: no statement of its own. Arguments: event ID, room ID, the event sender's server.
_HELD_REDACTION = ("(SELECT redaction_id FROM held_redactions WHERE target_id = ? AND room_id = ?"
                   " AND (any_sender = 1 OR sender_server = ?) ORDER BY redaction_id LIMIT 1)")


def _held_args(event: Event) -> tuple[str, str, str]:
    sender = event.sender
    return event.event_id, event.room_id, sender.split(":", 1)[1] if ":" in sender else ""


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._groups: OrderedDict[int, StateMap] = OrderedDict()

    # --- rooms -----------------------------------------------------------

    async def create_room(self, room_id: str, room_version: str, creator: str, ts: int, is_public: bool) -> None:
        await self.db.execute(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES (?, ?, ?, ?, ?)",
            room_id, room_version, creator, int(is_public), ts)

    async def ensure_room(self, room_id: str, room_version: str, creator: str, ts: int) -> None:
        """Record a room this server learns of from others (joins, invites)."""
        await self.db.execute(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING", room_id, room_version, creator, ts)

    async def get_room(self, room_id: str) -> RoomInfo | None:
        row = await self.db.fetchone("SELECT * FROM rooms WHERE room_id = ?", room_id)
        return None if row is None else _room(row)

    async def send_context(self, room_id: str) -> SendContext:
        """The room and its forward extremities in one statement (a row per extremity),
        since a send is the hottest write there is."""
        rows = await self.db.fetchall(
            "SELECT r.*, fe.event_id AS extremity FROM rooms r"
            " LEFT JOIN forward_extremities fe ON fe.room_id = r.room_id WHERE r.room_id = ?", room_id)
        if not rows:
            return SendContext(None, [])
        return SendContext(_room(rows[0]), [r["extremity"] for r in rows if r["extremity"] is not None])

    async def set_public(self, room_id: str, is_public: bool) -> None:
        await self.db.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", int(is_public), room_id)

    async def public_rooms(self) -> list[RoomInfo]:
        rows = await self.db.fetchall("SELECT * FROM rooms WHERE is_public = 1 ORDER BY created_ts")
        return [_room(r) for r in rows]

    async def last_streams(self) -> dict[str, int]:
        rows = await self.db.fetchall("SELECT room_id, last_stream FROM rooms")
        return {r["room_id"]: r["last_stream"] for r in rows}

    async def current_stream(self) -> int:
        return int(await self.db.fetchval("SELECT pos FROM stream_counter WHERE name = 'stream'"))

    # --- events ------------------------------------------------------------

    async def persist_event(self, event: Event, *, state_before: int | None, before_map: StateMap | None,
                            prev_extremities: Sequence[str], txn: TxnRef | None = None,
                            unsigned: dict[str, Any] | None = None, redacts: str | None = None,
                            push: EventPush | None = None) -> Persisted:
        """Store one accepted event and everything that follows from it, in one transaction.

        `before_map` is the full state before the event (from the state cache), so
        a state event can start a fresh snapshot without reading it back. `redacts` is the event
        it redacts, when the caller found the redaction allowed.
        """
        if not event.is_state:
            if self.db.engine == "postgres":
                return await self._persist_message_pg(event, state_before, prev_extremities, txn, unsigned,
                                                      redacts, push)
            return await self._persist_message(event, state_before, prev_extremities, txn, unsigned, redacts,
                                               push)
        async with self.db.transaction() as tx:
            stream = await next_stream(tx)
            state_after = state_before
            if event.is_state:
                state_after = await self._new_group(tx, event.room_id, state_before, before_map or {},
                                                    {event.key: event.event_id})
            await tx.execute(
                "INSERT INTO events (stream, event_id, room_id, type, state_key, sender, depth, origin_server_ts,"
                " json, state_before, state_after, unsigned, txn_device, txn_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                stream, event.event_id, event.room_id, event.type, event.state_key, event.sender, event.depth,
                event.origin_server_ts, json.dumps(event.pdu, separators=(",", ":")), state_before, state_after,
                json.dumps(unsigned) if unsigned else None,
                txn.device_id if txn else None, txn.txn_id if txn else None)
            await index_relation(tx, event)
            if event.is_state:
                await tx.execute(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,"
                    " membership = excluded.membership",
                    event.room_id, event.type, event.state_key, event.event_id, event.membership)
            await tx.execute("UPDATE rooms SET last_stream = ?, current_group = ? WHERE room_id = ?",
                             stream, state_after, event.room_id)
            await _extend_and_redact(tx, event, prev_extremities, redacts)
            await insert_actions(tx, push, stream)
        return Persisted(stream, state_after)

    async def _persist_message(self, event: Event, state_group: int | None, prev_extremities: Sequence[str],
                               txn: TxnRef | None, unsigned: dict[str, Any] | None,
                               redacts: str | None, push: EventPush | None = None) -> Persisted:
        """persist_event for an event that adds no state: every write refers to the new position
        through a subquery and the position is read last, with COMMIT, so that on SQLite the
        whole transaction is one hand-off to the writer thread."""
        position = "(SELECT pos FROM stream_counter WHERE name = 'stream')"
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE stream_counter SET pos = pos + 1 WHERE name = 'stream'")
            await tx.execute(
                f"INSERT INTO events (stream, event_id, room_id, type, sender, depth, origin_server_ts, json,"
                f" state_before, state_after, unsigned, txn_device, txn_id)"
                f" VALUES ({position}, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event.event_id, event.room_id, event.type, event.sender, event.depth, event.origin_server_ts,
                json.dumps(event.pdu, separators=(",", ":")), state_group, state_group,
                json.dumps(unsigned) if unsigned else None,
                txn.device_id if txn else None, txn.txn_id if txn else None)
            await index_relation(tx, event)
            await tx.execute(f"UPDATE rooms SET last_stream = {position}, current_group = ? WHERE room_id = ?",
                             state_group, event.room_id)
            await _extend_and_redact(tx, event, prev_extremities, redacts)
            await insert_actions_at_position(tx, push)
            stream = await tx.fetchval_and_commit("SELECT pos FROM stream_counter WHERE name = 'stream'")
        return Persisted(int(stream), state_group)

    async def _persist_message_pg(self, event: Event, state_group: int | None, prev_extremities: Sequence[str],
                                  txn: TxnRef | None, unsigned: dict[str, Any] | None,
                                  redacts: str | None, push: EventPush | None = None) -> Persisted:
        """persist_event for an event that adds no state, on PostgreSQL: the same writes as one
        statement of data-modifying CTEs (one round trip, atomic), since the room's lock is held
        meanwhile and round trips are what bound a busy room's messages/s there."""
        redaction = (" , x AS (UPDATE events SET redacted_by = ? WHERE event_id = ? AND room_id = ?"
                     " AND redacted_by IS NULL), xr AS (DELETE FROM event_relations WHERE event_id = ?"
                     " AND room_id = ?)") if redacts else ""
        args: list[Any] = [
            event.event_id, event.room_id, event.type, event.sender, event.depth, event.origin_server_ts,
            json.dumps(event.pdu, separators=(",", ":")), state_group, state_group,
            json.dumps(unsigned) if unsigned else None, txn.device_id if txn else None, txn.txn_id if txn else None,
            state_group, event.room_id, event.room_id, list(prev_extremities), event.room_id, event.event_id]
        if redacts:
            args += [event.event_id, redacts, event.room_id, redacts, event.room_id]
        relation, relation_args = pg_relation_cte(event)
        args += relation_args
        actions, action_args = pg_actions_cte(push)
        args += action_args
        stream = await self.db.fetchval(
            "WITH s AS (UPDATE stream_counter SET pos = pos + 1 WHERE name = 'stream' RETURNING pos),"
            " e AS (INSERT INTO events (stream, event_id, room_id, type, sender, depth, origin_server_ts,"
            " json, state_before, state_after, unsigned, txn_device, txn_id)"
            " VALUES ((SELECT pos FROM s), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)),"
            " r AS (UPDATE rooms SET last_stream = (SELECT pos FROM s), current_group = ? WHERE room_id = ?),"
            " d AS (DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ANY(?::text[])),"
            " f AS (INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?))"
            f"{redaction}{relation}{actions} SELECT pos FROM s", *args)
        return Persisted(int(stream), state_group)

    async def persist_outlier(self, event: Event, *, rejected: str | None = None, soft_failed: bool = False,
                              unsigned: dict[str, Any] | None = None,
                              state_groups: tuple[int | None, int | None] = (None, None)) -> int | None:
        """Store an event outside the timeline (auth chain, rejected or soft-failed); None if known.

        It takes a negative position so that no sync ever reports it. `state_groups` (before, after)
        are known for a soft-failed event: it stays part of the room's graph."""
        async with self.db.transaction() as tx:
            if await tx.fetchval("SELECT 1 FROM events WHERE event_id = ?", event.event_id) is not None:
                return None
            stream = int(await tx.fetchval(
                "UPDATE stream_counter SET pos = pos - 1 WHERE name = 'outlier' RETURNING pos"))
            await tx.execute(
                "INSERT INTO events (stream, event_id, room_id, type, state_key, sender, depth, origin_server_ts,"
                " json, rejected, outlier, soft_failed, unsigned, state_before, state_after, redacted_by)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_HELD_REDACTION})",
                stream, event.event_id, event.room_id, event.type, event.state_key, event.sender, event.depth,
                event.origin_server_ts, json.dumps(event.pdu, separators=(",", ":")), rejected,
                0 if (rejected or soft_failed) else 1, int(soft_failed), json.dumps(unsigned) if unsigned else None,
                *state_groups, *_held_args(event))
        return stream

    async def persist_backfilled(self, event: Event, redacts: str | None = None,
                                 held: HeldRedaction | None = None) -> int | None:
        """History fetched from another server (accepted by the caller): a timeline event older
        than all we hold. It takes the next negative position (from the outlier counter), so
        /messages finds it after everything held so far and no sync ever reports it as new.
        An event held as an outlier joins the timeline the same way; None if it was already
        there, or rejected or soft-failed here."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone("SELECT outlier, rejected, soft_failed FROM events WHERE event_id = ?",
                                    event.event_id)
            if row is not None and (not row["outlier"] or row["rejected"] or row["soft_failed"]):
                return None
            stream = int(await tx.fetchval(
                "UPDATE stream_counter SET pos = pos - 1 WHERE name = 'outlier' RETURNING pos"))
            if row is not None:
                await tx.execute("UPDATE events SET stream = ?, outlier = 0 WHERE event_id = ?",
                                 stream, event.event_id)
            else:
                await tx.execute(
                    "INSERT INTO events (stream, event_id, room_id, type, state_key, sender, depth,"
                    f" origin_server_ts, json, outlier, redacted_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0,"
                    f" {_HELD_REDACTION})",
                    stream, event.event_id, event.room_id, event.type, event.state_key, event.sender,
                    event.depth, event.origin_server_ts, json.dumps(event.pdu, separators=(",", ":")),
                    *_held_args(event))
            await index_relation(tx, event)
            await _redact(tx, event, redacts, held)
        return stream

    async def event_at_time(self, room_id: str, ts: int, forwards: bool,
                            max_stream: int | None = None) -> tuple[str, int] | None:
        """The room's timeline event nearest `ts` at or after it (`forwards`) or at or before it:
        (event ID, origin_server_ts). `max_stream` leaves out what was sent after it."""
        compare, order = (">=", "ASC") if forwards else ("<=", "DESC")
        bound = "" if max_stream is None else " AND stream <= ?"
        args: list[Any] = [room_id, ts] + ([] if max_stream is None else [max_stream])
        row = await self.db.fetchone(
            f"SELECT event_id, origin_server_ts FROM events WHERE room_id = ? AND origin_server_ts {compare} ?"
            f"{bound} AND rejected IS NULL AND outlier = 0 AND soft_failed = 0"
            f" ORDER BY origin_server_ts {order}, stream {order} LIMIT 1", *args)
        return None if row is None else (row["event_id"], int(row["origin_server_ts"]))

    async def earliest_timeline_event(self, room_id: str) -> Event | None:
        """The oldest event of the room's timeline as held here (where backfill continues from)."""
        row = await self.db.fetchone(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE room_id = ? AND rejected IS NULL AND outlier = 0"
            f" AND soft_failed = 0 ORDER BY stream LIMIT 1", room_id)
        return None if row is None else event_from_row(row)

    async def persist_remote_event(self, event: Event, *, state_before: int | None, before_map: StateMap,
                                   current_before: StateMap, new_current: StateMap | None,
                                   prev_extremities: Sequence[str],
                                   unsigned: dict[str, Any] | None = None, redacts: str | None = None,
                                   held: HeldRedaction | None = None, push: EventPush | None = None) -> Persisted:
        """Store an accepted event from another server, whose parents may fork the room.

        `new_current` is the room's resolved state after it (None: the state after the event).
        A redaction is applied to `redacts` (the caller found it allowed) or kept as `held`
        until its target arrives; a redaction held for this event is applied as it is stored.
        An event held as an outlier (first seen as an auth event) joins the timeline in place."""
        async with self.db.transaction() as tx:
            stream = await next_stream(tx)
            state_after = state_before
            after_map = before_map
            if event.is_state:
                state_after = await self._new_group(tx, event.room_id, state_before, before_map,
                                                    {event.key: event.event_id})
                after_map = {**before_map, event.key: event.event_id}
            current_group = state_after
            if new_current is not None and new_current != after_map:
                delta = {k: v for k, v in new_current.items() if after_map.get(k) != v}
                current_group = await self._new_group(tx, event.room_id, state_after, after_map, delta)
            current = new_current if new_current is not None else after_map
            redacted_by = await tx.fetchval(
                "INSERT INTO events (stream, event_id, room_id, type, state_key, sender, depth, origin_server_ts,"
                f" json, state_before, state_after, unsigned, redacted_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                f" ?, {_HELD_REDACTION}) ON CONFLICT (event_id) DO UPDATE SET stream = excluded.stream, outlier = 0,"
                " state_before = excluded.state_before, state_after = excluded.state_after,"
                " unsigned = excluded.unsigned, redacted_by = COALESCE(events.redacted_by, excluded.redacted_by)"
                " WHERE events.outlier = 1 RETURNING redacted_by",
                stream, event.event_id, event.room_id, event.type, event.state_key, event.sender, event.depth,
                event.origin_server_ts, json.dumps(event.pdu, separators=(",", ":")), state_before, state_after,
                json.dumps(unsigned) if unsigned else None, *_held_args(event))
            await index_relation(tx, event)
            await self._write_current_state(tx, event.room_id, current_before, current)
            await tx.execute("UPDATE rooms SET last_stream = ?, current_group = ? WHERE room_id = ?",
                             stream, current_group, event.room_id)
            for prev in prev_extremities:
                await tx.execute("DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?",
                                 event.room_id, prev)
            await tx.execute("INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)"
                             " ON CONFLICT DO NOTHING", event.room_id, event.event_id)
            await _redact(tx, event, redacts, held)
            await insert_actions(tx, push, stream)
        return Persisted(stream, state_after, redacted_by)

    async def _write_current_state(self, tx: Connection, room_id: str, old: StateMap, new: StateMap) -> None:
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if not changed and len(new) >= len(old):
            return
        for (etype, skey), event_id in changed.items():
            membership = None
            if etype == "m.room.member":
                raw = await tx.fetchval("SELECT json FROM events WHERE event_id = ?", event_id)
                value = json.loads(raw).get("content", {}).get("membership") if raw else None
                membership = value if isinstance(value, str) else None
            await tx.execute(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,"
                " membership = excluded.membership", room_id, etype, skey, event_id, membership)
        for etype, skey in set(old) - set(new):
            await tx.execute("DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
                             room_id, etype, skey)

    async def replace_current_state(self, room_id: str, group: int | None, old: StateMap, new: StateMap) -> None:
        """Adopt a state wholesale (after joining a remote room)."""
        async with self.db.transaction() as tx:
            await self._write_current_state(tx, room_id, old, new)
            await tx.execute("UPDATE rooms SET current_group = ? WHERE room_id = ?", group, room_id)

    async def record_invite(self, event: Event, room_version: str, ts: int,
                            unsigned: dict[str, Any] | None = None, push: EventPush | None = None) -> int:
        """An invite to a room we are not in (or its rejection): the invitee's membership row,
        visible to their sync. The event is an outlier, outside any timeline, but takes a
        positive position so that the invitee's sync reports it."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING", event.room_id, room_version, event.sender, ts)
            stream = await next_stream(tx)
            inserted = await tx.fetchval(
                "INSERT INTO events (stream, event_id, room_id, type, state_key, sender, depth, origin_server_ts,"
                " json, unsigned, outlier) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (event_id) DO NOTHING"
                " RETURNING event_id",
                stream, event.event_id, event.room_id, event.type, event.state_key, event.sender, event.depth,
                event.origin_server_ts, json.dumps(event.pdu, separators=(",", ":")),
                json.dumps(unsigned) if unsigned else None)
            if inserted is not None:
                await insert_actions(tx, push, stream)
            await tx.execute(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id,"
                " membership = excluded.membership",
                event.room_id, "m.room.member", event.state_key, event.event_id, event.membership)
            await tx.execute("UPDATE rooms SET last_stream = ? WHERE room_id = ?", stream, event.room_id)
        return stream

    async def room_servers(self, room_id: str) -> set[str]:
        """Servers with a joined member in the room's current state."""
        rows = await self.db.fetchall(
            "SELECT state_key FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " AND membership = 'join'", room_id)
        return {r["state_key"].split(":", 1)[1] for r in rows if ":" in r["state_key"]}

    async def events_by_depth(self, room_id: str, before_ids: Sequence[str], limit: int) -> list[Event]:
        """For backfill: events of the room at or below the given events' depth, deepest first."""
        if not before_ids:
            return []
        marks = ",".join("?" * len(before_ids))
        depth = await self.db.fetchval(
            f"SELECT MAX(depth) FROM events WHERE event_id IN ({marks}) AND room_id = ?", *before_ids, room_id)
        if depth is None:
            return []
        rows = await self.db.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE room_id = ? AND depth <= ? AND rejected IS NULL"
            f" ORDER BY depth DESC, stream DESC LIMIT ?", room_id, depth, limit)
        return [event_from_row(r) for r in rows]

    async def _new_group(self, tx: Connection, room_id: str, parent: int | None, parent_map: StateMap,
                         delta: StateMap) -> int:
        chain = 0
        if parent is not None:
            chain = int(await tx.fetchval("SELECT chain_length FROM state_groups WHERE id = ?", parent) or 0) + 1
        snapshot = parent is None or chain >= MAX_CHAIN_LENGTH
        group_id = int(await tx.fetchval(
            "INSERT INTO state_groups (room_id, prev_id, chain_length) VALUES (?, ?, ?) RETURNING id",
            room_id, None if snapshot else parent, 0 if snapshot else chain))
        full = {**parent_map, **delta}
        rows = full if snapshot else delta
        await tx.executemany(
            "INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES (?, ?, ?, ?)",
            [(group_id, t, sk, eid) for (t, sk), eid in rows.items()])
        self._remember(group_id, full)
        return group_id

    async def new_state_group(self, room_id: str, parent: int | None, parent_map: StateMap, delta: StateMap) -> int:
        async with self.db.transaction() as tx:
            return await self._new_group(tx, room_id, parent, parent_map, delta)

    def _remember(self, group_id: int, state: StateMap) -> None:
        self._groups[group_id] = state
        self._groups.move_to_end(group_id)
        while len(self._groups) > STATE_CACHE_SIZE:
            self._groups.popitem(last=False)

    async def state_map(self, group_id: int | None) -> StateMap:
        """The full state of a group. Groups never change, so caching them is always safe.

        Callers must not mutate the returned map."""
        if group_id is None:
            return {}
        cached = self._groups.get(group_id)
        if cached is not None:
            self._groups.move_to_end(group_id)
            return cached
        chain: list[int] = []
        gid: int | None = group_id
        while gid is not None and gid not in self._groups:
            chain.append(gid)
            gid = await self.db.fetchval("SELECT prev_id FROM state_groups WHERE id = ?", gid)
        state: StateMap = dict(self._groups[gid]) if gid is not None else {}
        for link in reversed(chain):
            rows = await self.db.fetchall(
                "SELECT type, state_key, event_id FROM state_group_entries WHERE group_id = ?", link)
            state.update({(r["type"], r["state_key"]): r["event_id"] for r in rows})
        self._remember(group_id, state)
        return state

    async def get_event(self, event_id: str) -> Event | None:
        row = await self.db.fetchone(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", event_id)
        return None if row is None else event_from_row(row)

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, Event] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id IN ({marks})", *chunk)
            for r in rows:
                found[r["event_id"]] = event_from_row(r)
        return found

    async def event_state_groups(self, event_id: str) -> tuple[int | None, int | None] | None:
        row = await self.db.fetchone("SELECT state_before, state_after FROM events WHERE event_id = ?", event_id)
        return None if row is None else (row["state_before"], row["state_after"])

    async def state_groups_of(self, event_ids: Sequence[str]) -> dict[str, tuple[int | None, int | None]]:
        """(state before, state after) of each event held, in one statement."""
        if not event_ids:
            return {}
        marks = ",".join("?" * len(event_ids))
        rows = await self.db.fetchall(
            f"SELECT event_id, state_before, state_after FROM events WHERE event_id IN ({marks})", *event_ids)
        return {r["event_id"]: (r["state_before"], r["state_after"]) for r in rows}

    async def first_state_group(self, room_id: str) -> int | None:
        """The state before the oldest event held with state: for a room joined over federation,
        the room as this server found it."""
        return await self.db.fetchval(
            "SELECT state_before FROM events WHERE room_id = ? AND state_before IS NOT NULL AND stream > 0"
            " ORDER BY stream LIMIT 1", room_id)

    async def group_at_stream(self, room_id: str, stream: int) -> int | None:
        """The room's state after the last timeline event at or before a stream position (never an
        event at a negative position: outliers, history, soft-failed events)."""
        return await self.db.fetchval(
            "SELECT state_after FROM events WHERE room_id = ? AND stream <= ? AND stream > 0"
            " ORDER BY stream DESC LIMIT 1", room_id, stream)

    async def room_events(self, room_id: str, *, after: int | None = None, before: int | None = None,
                          limit: int = 10, backwards: bool = True) -> list[Event]:
        """Events of a room in stream order with after < stream <= before; newest first if `backwards`."""
        bounds, args = conditions(("stream > ?", after), ("stream <= ?", before))
        clauses = ["room_id = ?", "rejected IS NULL", "outlier = 0", "soft_failed = 0", *bounds]
        args = [room_id, *args]
        order = "DESC" if backwards else "ASC"
        rows = await self.db.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY stream {order} LIMIT ?",
            *args, limit)
        return [event_from_row(r) for r in rows]

    async def event_for_txn(self, user_id: str, txn: TxnRef) -> str | None:
        return await self.db.fetchval(
            "SELECT event_id FROM events WHERE sender = ? AND txn_device = ? AND txn_id = ?",
            user_id, txn.device_id, txn.txn_id)

    async def forward_extremities(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall("SELECT event_id FROM forward_extremities WHERE room_id = ?", room_id)
        return [r["event_id"] for r in rows]

    # --- membership and current state ---------------------------------------

    async def current_state_ids(self, room_id: str) -> StateMap:
        rows = await self.db.fetchall(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", room_id)
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def rooms_for_user(self, user_id: str) -> dict[str, tuple[str, str]]:
        """room_id -> (membership, member event ID) for every room the user has a membership in."""
        rows = await self.db.fetchall(
            "SELECT room_id, membership, event_id FROM current_state WHERE type = 'm.room.member'"
            " AND state_key = ?", user_id)
        return {r["room_id"]: (r["membership"], r["event_id"]) for r in rows}

    async def members(self, room_id: str, membership: str | None = None) -> dict[str, str]:
        """user_id -> member event ID."""
        sql = "SELECT state_key, event_id FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
        args: list[Any] = [room_id]
        if membership is not None:
            sql += " AND membership = ?"
            args.append(membership)
        rows = await self.db.fetchall(sql, *args)
        return {r["state_key"]: r["event_id"] for r in rows}

    async def member_counts(self, room_id: str) -> dict[str, int]:
        """membership -> how many users have it now."""
        rows = await self.db.fetchall(
            "SELECT membership, COUNT(*) AS n FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
            " GROUP BY membership", room_id)
        return {r["membership"]: int(r["n"]) for r in rows}

    async def first_members(self, room_id: str, memberships: tuple[str, ...], exclude: str,
                            limit: int) -> list[str]:
        """The first `limit` users with one of `memberships`, by their member event's stream order."""
        marks = ", ".join("?" * len(memberships))
        rows = await self.db.fetchall(
            "SELECT c.state_key FROM current_state c JOIN events e ON e.event_id = c.event_id"
            f" WHERE c.room_id = ? AND c.type = 'm.room.member' AND c.membership IN ({marks})"
            " AND c.state_key != ? ORDER BY e.stream LIMIT ?", room_id, *memberships, exclude, limit)
        return [r["state_key"] for r in rows]

    async def membership_changes(self, user_id: str, after: int, upto: int) -> list[Event]:
        """The user's accepted membership events in (after, upto]; the only outliers at positive
        positions are memberships in rooms we are not in (record_invite), which count."""
        rows = await self.db.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE type = 'm.room.member' AND state_key = ?"
            " AND stream > ? AND stream <= ? AND rejected IS NULL AND soft_failed = 0"
            " ORDER BY stream", user_id, after, upto)
        return [event_from_row(r) for r in rows]

    async def shares_room(self, user_a: str, user_b: str) -> bool:
        row = await self.db.fetchone(
            "SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id"
            " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'"
            " AND b.type = 'm.room.member' AND b.state_key = ? AND b.membership = 'join' LIMIT 1",
            user_a, user_b)
        return row is not None

    async def mutual_rooms(self, user_a: str, user_b: str, after: str, limit: int) -> tuple[list[str], int]:
        """Rooms both users are joined to, by room ID after `after`, and how many there are in all."""
        shared = ("FROM current_state a JOIN current_state b ON a.room_id = b.room_id"
                  " WHERE a.type = 'm.room.member' AND a.state_key = ? AND a.membership = 'join'"
                  " AND b.type = 'm.room.member' AND b.state_key = ? AND b.membership = 'join'")
        rows = await self.db.fetchall(f"SELECT a.room_id {shared} AND a.room_id > ? ORDER BY a.room_id LIMIT ?",
                                      user_a, user_b, after, limit)
        total = await self.db.fetchval(f"SELECT COUNT(*) {shared}", user_a, user_b)
        return [r["room_id"] for r in rows], int(total or 0)

    async def forget(self, user_id: str, room_id: str) -> None:
        await self.db.execute("INSERT INTO forgotten_rooms (user_id, room_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                              user_id, room_id)

    async def unforget(self, user_id: str, room_id: str) -> None:
        await self.db.execute("DELETE FROM forgotten_rooms WHERE user_id = ? AND room_id = ?", user_id, room_id)

    async def forgotten(self, user_id: str) -> set[str]:
        rows = await self.db.fetchall("SELECT room_id FROM forgotten_rooms WHERE user_id = ?", user_id)
        return {r["room_id"] for r in rows}

    # --- aliases -------------------------------------------------------------

    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        row = await self.db.fetchone(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
            " RETURNING alias", alias, room_id, creator)
        return row is not None

    async def get_alias(self, alias: str) -> tuple[str, str] | None:
        row = await self.db.fetchone("SELECT room_id, creator FROM room_aliases WHERE alias = ?", alias)
        return None if row is None else (row["room_id"], row["creator"])

    async def delete_alias(self, alias: str) -> None:
        await self.db.execute("DELETE FROM room_aliases WHERE alias = ?", alias)

    async def move_aliases(self, old_room_id: str, new_room_id: str) -> None:
        """Every alias of a room now names another (a room upgrade)."""
        await self.db.execute("UPDATE room_aliases SET room_id = ? WHERE room_id = ?", new_room_id, old_room_id)

    async def aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self.db.fetchall("SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias", room_id)
        return [r["alias"] for r in rows]

    # --- user directory ------------------------------------------------------

    async def search_users(self, term: str, limit: int, searcher: str | None) -> list[Row]:
        """Local users whose ID or display name contains `term`, by user ID. With a `searcher`, only
        those joined to a room the searcher is joined to, or to a room whose join rule is public."""
        like = "%" + term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = ("SELECT u.user_id, p.displayname, p.avatar_url FROM users u JOIN profiles p ON p.user_id = u.user_id"
               " WHERE u.deactivated = 0 AND (LOWER(u.user_id) LIKE ? ESCAPE '\\'"
               " OR LOWER(COALESCE(p.displayname, '')) LIKE ? ESCAPE '\\')")
        args: list[Any] = [like, like]
        if searcher is not None:
            # The join rule is read from the event itself: searches are rare next to state changes,
            # so no column is kept up to date on every write for them.
            join_rule = ("json_extract(e.json, '$.content.join_rule')" if self.db.engine == "sqlite"
                         else "(e.json::json -> 'content' ->> 'join_rule')")
            sql += (" AND u.user_id IN (SELECT m.state_key FROM current_state m"
                    " WHERE m.type = 'm.room.member' AND m.membership = 'join' AND (m.room_id IN ("
                    "SELECT s.room_id FROM current_state s WHERE s.type = 'm.room.member' AND s.state_key = ?"
                    " AND s.membership = 'join') OR m.room_id IN ("
                    "SELECT j.room_id FROM current_state j JOIN events e ON e.event_id = j.event_id"
                    f" WHERE j.type = 'm.room.join_rules' AND j.state_key = '' AND {join_rule} = 'public')))")
            args.append(searcher)
        return await self.db.fetchall(sql + " ORDER BY u.user_id LIMIT ?", *args, limit)


async def _extend_and_redact(tx: Connection, event: Event, prev_extremities: Sequence[str],
                             redacts: str | None) -> None:
    """A new local event replaces the extremities it follows, and marks what it redacts."""
    for prev in prev_extremities:
        await tx.execute("DELETE FROM forward_extremities WHERE room_id = ? AND event_id = ?", event.room_id, prev)
    await tx.execute("INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
                     event.room_id, event.event_id)
    await _redact(tx, event, redacts, None)


async def _redact(tx: Connection, event: Event, redacts: str | None, held: HeldRedaction | None) -> None:
    """Mark the event a redaction redacts (never in another room), or hold the redaction for later."""
    if redacts:
        await tx.execute("UPDATE events SET redacted_by = ? WHERE event_id = ? AND room_id = ?"
                         " AND redacted_by IS NULL", event.event_id, redacts, event.room_id)
        await unindex_relation(tx, redacts, event.room_id)
    if held is not None:
        await tx.execute(
            "INSERT INTO held_redactions (target_id, redaction_id, room_id, sender_server, any_sender)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            held.target_id, held.redaction_id, held.room_id, held.sender_server, int(held.any_sender))


async def next_stream(tx: Connection) -> int:
    """Allocate the next stream position; holding the row lock orders concurrent writers."""
    return int(await tx.fetchval("UPDATE stream_counter SET pos = pos + 1 WHERE name = 'stream' RETURNING pos"))
