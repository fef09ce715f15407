"""Reports of events, rooms and users to the server's admins (the admin API reads the event reports)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Row


@dataclass(frozen=True)
class NewReport:
    kind: str  # event, room, user
    received_ts: int
    reporter: str
    room_id: str | None = None
    event_id: str | None = None
    target_user_id: str | None = None
    reason: str | None = None
    score: int | None = None


_COLUMNS = "id, kind, received_ts, reporter, room_id, event_id, target_user_id, reason, score"


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, report: NewReport) -> int:
        return int(await self.db.fetchval(
            "INSERT INTO reports (kind, received_ts, reporter, room_id, event_id, target_user_id, reason, score)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id", report.kind, report.received_ts, report.reporter,
            report.room_id, report.event_id, report.target_user_id, report.reason, report.score))

    async def get(self, kind: str, report_id: int) -> Row | None:
        return await self.db.fetchone(f"SELECT {_COLUMNS} FROM reports WHERE kind = ? AND id = ?", kind, report_id)

    async def page(self, kind: str, *, offset: int, limit: int, backwards: bool, room_id: str | None,
                   reporter: str | None) -> tuple[list[Row], int]:
        """One page of a kind's reports (newest first if `backwards`), and how many match in all."""
        where, args = "kind = ?", [kind]
        if room_id is not None:
            where += " AND room_id = ?"
            args.append(room_id)
        if reporter is not None:
            where += " AND reporter = ?"
            args.append(reporter)
        total = int(await self.db.fetchval(f"SELECT COUNT(*) FROM reports WHERE {where}", *args) or 0)
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM reports WHERE {where} ORDER BY id {'DESC' if backwards else 'ASC'}"
            " LIMIT ? OFFSET ?", *args, limit, offset)
        return rows, total

    async def delete(self, kind: str, report_id: int) -> bool:
        row = await self.db.fetchone("DELETE FROM reports WHERE kind = ? AND id = ? RETURNING id", kind, report_id)
        return row is not None
