"""Full-text search over messages, room names and topics (the index the triggers of migration 15 keep).

Both engines answer the same query shape: the index is searched first (FTS5 MATCH, or the
tsvector's GIN index), then each hit joins its event by primary key for the room, sender and
stream bounds, and only then is it ordered. Terms are words (the caller keeps only letters and
digits, so no query syntax of either engine gets through), each matched as a prefix, all required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from homeserver.events.event import Event
from storage.database import Database
from storage.rooms import event_from_row

_COLUMNS = ("e.stream, e.event_id, e.json, e.rejected, e.redacted_by, e.unsigned, e.txn_device, e.txn_id,"
            " e.outlier, e.soft_failed")


@dataclass(frozen=True)
class SearchScope:
    """Where to look. The rooms' bounds (a leave) are the caller's to apply: lists of any length
    are one parameter each here, and a bound per room would not be."""

    rooms: dict[str, int | None]  # room_id -> last readable stream position (None: no bound)
    types: tuple[str, ...]
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchHit:
    event: Event
    rank: float


class SearchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _in(self, column: str, values: Sequence[str], negate: bool = False) -> tuple[str, Any]:
        """`column` (NOT) IN a list of any length, as one parameter: an array, or a JSON array."""
        if self.db.engine == "postgres":
            return (f"{column} <> ALL(?::text[])" if negate else f"{column} = ANY(?::text[])"), list(values)
        return (f"{column} {'NOT IN' if negate else 'IN'} (SELECT value FROM json_each(?))",
                json.dumps(list(values)))

    def _where(self, scope: SearchScope) -> tuple[str, list[Any]]:
        clauses = ["e.rejected IS NULL", "e.outlier = 0", "e.soft_failed = 0", "e.redacted_by IS NULL"]
        args: list[Any] = []
        for column, values, negate in (("e.type", scope.types, False), ("e.room_id", list(scope.rooms), False),
                                       ("e.sender", scope.senders, False), ("e.sender", scope.not_senders, True)):
            if values is None or (negate and not values):
                continue
            clause, arg = self._in(column, values, negate)
            clauses.append(clause)
            args.append(arg)
        return " AND ".join(clauses), args

    def _select(self, columns: str, words: Sequence[str], scope: SearchScope,
                before_stream: int | None = None) -> tuple[str, list[Any]]:
        """SELECT `columns` (which may name `rank`, higher is better) FROM the hits joined to their
        events WHERE they are in scope. On PostgreSQL the hits are found first, through the GIN index
        and in the scope's rooms (a materialised CTE): the planner cannot tell how selective a prefix
        query is and would otherwise walk every entry newest first, testing each."""
        where, args = self._where(scope)
        if before_stream is not None:
            where += " AND e.stream < ?"
            args.append(before_stream)
        if self.db.engine == "postgres":
            query = " & ".join(f"{w}:*" for w in words)
            rank = "ts_rank(s.vector, to_tsquery('english', ?))"
            sql = (f"WITH s AS MATERIALIZED (SELECT stream, vector FROM event_search"
                   f" WHERE vector @@ to_tsquery('english', ?) AND room_id = ANY(?::text[]))"
                   f" SELECT {columns.replace('{rank}', rank)} FROM s JOIN events e ON e.stream = s.stream"
                   f" WHERE {where}")
            return sql, [query, list(scope.rooms), *([query] if "{rank}" in columns else []), *args]
        query = " ".join(f'"{w}"*' for w in words)
        sql = (f"SELECT {columns.replace('{rank}', '-bm25(event_search)')} FROM event_search"
               f" JOIN events e ON e.stream = event_search.rowid WHERE event_search MATCH ? AND {where}")
        return sql, [query, *args]

    async def search(self, words: Sequence[str], scope: SearchScope, *, by_rank: bool, limit: int,
                     offset: int = 0, before_stream: int | None = None) -> list[SearchHit]:
        """Hits by rank (then newest first), or newest first; `before_stream` pages the latter."""
        if not words or not scope.rooms or not scope.types:
            return []
        sql, args = self._select(f"{_COLUMNS}, {{rank}} AS rank", words, scope, before_stream)
        order = "rank DESC, e.stream DESC" if by_rank else "e.stream DESC"
        rows = await self.db.fetchall(f"{sql} ORDER BY {order} LIMIT ? OFFSET ?", *args, limit, offset)
        return [SearchHit(event_from_row(r), float(r["rank"])) for r in rows]

    async def count(self, words: Sequence[str], scope: SearchScope) -> int:
        if not words or not scope.rooms or not scope.types:
            return 0
        sql, args = self._select("COUNT(*)", words, scope)
        return int(await self.db.fetchval(sql, *args) or 0)
