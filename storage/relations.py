"""Relations between events (`m.relates_to`), indexed by parent.

A row is written in the relating event's own transaction, only for an accepted timeline event
(never an outlier, a rejected or a soft-failed one), and deleted when the event is redacted: the
index holds exactly the relations that count. The parent is not checked here (it may arrive
later); readers ask by parent *and* room, so a relation to another room's event is never found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from homeserver.events.event import Event
from homeserver.events.relations import REFERENCE, REPLACE, THREAD, relation_of
from storage.database import Connection, Database, conditions

# The relation types a bundled aggregation summarises (Client-Server API, "Server-side aggregation").
BUNDLED = (THREAD, REPLACE, REFERENCE)
_COLUMNS = "event_id, relates_to_id, rel_type, room_id, sender, type, stream"
_CHUNK = 500  # ids per IN list, so statements stay bounded whatever the page


@dataclass(frozen=True)
class RelationRow:
    event_id: str
    parent_id: str
    rel_type: str
    room_id: str
    sender: str
    type: str
    stream: int


@dataclass(frozen=True)
class Summary:
    """One parent's children of one relation type."""

    parent_id: str
    rel_type: str
    room_id: str
    count: int
    latest_stream: int
    participated: bool  # the asking user sent one of them


async def index_relation(tx: Connection, event: Event) -> None:
    """Index the event's relation, if it has one, with the stream position its row holds now
    (read back, so every write path shares this); a redaction held for it means no row."""
    relation = relation_of(event.content)
    if relation is None:
        return
    await tx.execute(
        f"INSERT INTO event_relations ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, stream FROM events"
        " WHERE event_id = ? AND redacted_by IS NULL AND outlier = 0 AND rejected IS NULL AND soft_failed = 0"
        " ON CONFLICT DO NOTHING",
        event.event_id, relation.parent_id, relation.rel_type, event.room_id, event.sender, event.type,
        event.event_id)


def pg_relation_cte(event: Event) -> tuple[str, list[Any]]:
    """The same row as a CTE of the one-statement PostgreSQL message write (its position is `s`)."""
    relation = relation_of(event.content)
    if relation is None:
        return "", []
    return (f", rl AS (INSERT INTO event_relations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, (SELECT pos FROM s))"
            " ON CONFLICT DO NOTHING)",
            [event.event_id, relation.parent_id, relation.rel_type, event.room_id, event.sender, event.type])


async def unindex_relation(tx: Connection, event_id: str, room_id: str) -> None:
    """A redacted event no longer relates to anything."""
    await tx.execute("DELETE FROM event_relations WHERE event_id = ? AND room_id = ?", event_id, room_id)


def _row(r: Any) -> RelationRow:
    return RelationRow(r["event_id"], r["relates_to_id"], r["rel_type"], r["room_id"], r["sender"], r["type"],
                       int(r["stream"]))


class RelationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def summaries(self, parent_ids: Sequence[str], user_id: str, ignored: Sequence[str] = (),
                        upto: int | None = None) -> list[Summary]:
        """Count, latest position and the user's participation per (parent, bundled type), leaving
        out the children of `ignored` senders and those after `upto`: one statement per 500
        parents, and usually an empty answer from the index alone."""
        found: list[Summary] = []
        types = ",".join(f"'{t}'" for t in BUNDLED)
        skip = f" AND sender NOT IN ({','.join('?' * len(ignored))})" if ignored else ""
        skip += " AND stream <= ?" if upto is not None else ""
        for start in range(0, len(parent_ids), _CHUNK):
            chunk = list(parent_ids[start:start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                "SELECT relates_to_id, rel_type, room_id, COUNT(*) AS n, MAX(stream) AS latest,"
                " MAX(CASE WHEN sender = ? THEN 1 ELSE 0 END) AS mine FROM event_relations"
                f" WHERE relates_to_id IN ({marks}) AND rel_type IN ({types}){skip}"
                " GROUP BY relates_to_id, rel_type, room_id", user_id, *chunk, *ignored,
                *([upto] if upto is not None else []))
            found += [Summary(r["relates_to_id"], r["rel_type"], r["room_id"], int(r["n"]), int(r["latest"]),
                              bool(r["mine"])) for r in rows]
        return found

    async def bundle_rows(self, parents: Sequence[str], streams: Sequence[int]) -> list[RelationRow]:
        """The edits and references of `parents`, and the rows at `streams` (threads' latest events)."""
        found: list[RelationRow] = []
        for start in range(0, max(len(parents), len(streams)), _CHUNK):
            ids, positions = list(parents[start:start + _CHUNK]), list(streams[start:start + _CHUNK])
            clauses: list[str] = []
            args: list[Any] = []
            if ids:
                clauses.append(f"(relates_to_id IN ({','.join('?' * len(ids))})"
                               f" AND rel_type IN ('{REPLACE}', '{REFERENCE}'))")
                args += ids
            if positions:
                clauses.append(f"stream IN ({','.join('?' * len(positions))})")
                args += positions
            rows = await self.db.fetchall(
                f"SELECT {_COLUMNS} FROM event_relations WHERE {' OR '.join(clauses)} ORDER BY stream", *args)
            found += [_row(r) for r in rows]
        return found

    async def children(self, room_id: str, parent_id: str, *, rel_type: str | None, event_type: str | None,
                       after: int | None, upto: int | None, backwards: bool, limit: int,
                       depth: int = 1) -> list[RelationRow]:
        """A page of the events relating to `parent_id` (through up to `depth` relations), in
        after < stream <= upto, newest first if `backwards`."""
        clauses, args = conditions(("r.rel_type = ?", rel_type), ("r.type = ?", event_type),
                                   ("r.stream > ?", after), ("r.stream <= ?", upto))
        where = " AND ".join(clauses) or "1 = 1"
        order = f"ORDER BY r.stream {'DESC' if backwards else 'ASC'} LIMIT ?"
        columns = ", ".join("r." + c.strip() for c in _COLUMNS.split(","))
        if depth <= 1:  # direct children: straight off the parent's index
            rows = await self.db.fetchall(
                f"SELECT {columns} FROM event_relations r WHERE r.relates_to_id = ? AND r.room_id = ? AND {where}"
                f" {order}", parent_id, room_id, *args, limit)
            return [_row(r) for r in rows]
        rows = await self.db.fetchall(
            "WITH RECURSIVE tree (event_id, depth) AS ("
            " SELECT event_id, 1 FROM event_relations WHERE relates_to_id = ? AND room_id = ?"
            " UNION SELECT c.event_id, t.depth + 1 FROM event_relations c JOIN tree t ON c.relates_to_id = t.event_id"
            " WHERE c.room_id = ? AND t.depth < ?)"
            f" SELECT {columns} FROM event_relations r JOIN tree t ON t.event_id = r.event_id WHERE {where} {order}",
            parent_id, room_id, room_id, depth, *args, limit)
        return [_row(r) for r in rows]

    async def threads(self, room_id: str, *, participant: str | None, before: int | None,
                      limit: int) -> list[tuple[str, int]]:
        """(root ID, latest position) of the room's threads, latest activity first, with latest
        below `before`; with a `participant`, those whose root or a reply they sent."""
        where = ""
        args: list[Any] = []
        if participant is not None:
            where = (" AND (relates_to_id IN (SELECT p.relates_to_id FROM event_relations p WHERE p.room_id = ?"
                     " AND p.rel_type = ? AND p.sender = ?) OR EXISTS (SELECT 1 FROM events e"
                     " WHERE e.event_id = event_relations.relates_to_id AND e.sender = ?))")
            args += [room_id, THREAD, participant, participant]
        having = ""
        if before is not None:
            having = " HAVING MAX(stream) < ?"
            args.append(before)
        rows = await self.db.fetchall(
            "SELECT relates_to_id, MAX(stream) AS latest FROM event_relations WHERE room_id = ? AND rel_type = ?"
            f"{where} GROUP BY relates_to_id{having} ORDER BY latest DESC LIMIT ?", room_id, THREAD, *args, limit)
        return [(r["relates_to_id"], int(r["latest"])) for r in rows]
