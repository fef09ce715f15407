"""Event reports for the admin API (Synapse's `/_synapse/admin/v1/event_reports`): list, read, delete."""

from __future__ import annotations

from typing import Any

from homeserver.errors import invalid_param, not_found
from homeserver.rooms.rooms import Rooms
from storage.database import Row
from storage.store import Store

MAX_PAGE = 1000


class AdminReports:
    def __init__(self, store: Store, rooms: Rooms) -> None:
        self._store = store
        self._rooms = rooms

    async def event_reports(self, *, offset: int, limit: int, backwards: bool, room_id: str | None,
                            reporter: str | None) -> dict[str, Any]:
        if offset < 0 or limit < 0:
            raise invalid_param("from and limit must not be negative")
        limit = min(limit, MAX_PAGE)
        rows, total = await self._store.reports.page("event", offset=offset, limit=limit, backwards=backwards,
                                                     room_id=room_id, reporter=reporter)
        body: dict[str, Any] = {"event_reports": [await self._describe(r) for r in rows], "total": total}
        if offset + len(rows) < total:
            body["next_token"] = offset + len(rows)
        return body

    async def event_report(self, report_id: int) -> dict[str, Any]:
        row = await self._store.reports.get("event", report_id)
        if row is None:
            raise not_found("Report not found")
        return await self._describe(row, with_event=True)

    async def delete_event_report(self, report_id: int) -> None:
        if not await self._store.reports.delete("event", report_id):
            raise not_found("Report not found")

    async def _describe(self, row: Row, with_event: bool = False) -> dict[str, Any]:
        room_id, event_id = row["room_id"], row["event_id"]
        event = await self._rooms.get_event(event_id)
        state = await self._rooms.current_state_ids(room_id)
        found = await self._rooms.get_events([i for i in (state.get(("m.room.name", "")),
                                                          state.get(("m.room.canonical_alias", ""))) if i])
        name = alias = None
        for ev in found.values():
            if ev.type == "m.room.name" and isinstance(ev.content.get("name"), str):
                name = ev.content["name"]
            if ev.type == "m.room.canonical_alias" and isinstance(ev.content.get("alias"), str):
                alias = ev.content["alias"]
        report: dict[str, Any] = {
            "id": row["id"], "received_ts": row["received_ts"], "room_id": room_id, "name": name,
            "event_id": event_id, "user_id": row["reporter"], "reason": row["reason"], "score": row["score"],
            "sender": event.sender if event is not None else None, "canonical_alias": alias,
        }
        if with_event:
            report["event_json"] = event.pdu if event is not None else None
        return report
