"""Reporting content to the server admins: events, rooms, users; and the admins' view of event reports.

A user may report only what they can see: an event they may read (else 404 M_NOT_FOUND, whether
it exists or not, so reports reveal nothing), a room this server knows, a user that exists.
Admins read the event reports through homeserver/admin/reports.py.
"""

from __future__ import annotations

from typing import Any

from homeserver.accounts.accounts import Requester
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, invalid_param, not_found
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.timeline import Timeline
from storage.reports import NewReport
from storage.store import Store

MAX_REASON = 4096


def _reason(body: dict[str, Any], required: bool) -> str | None:
    reason = body.get("reason")
    if reason is None and not required:
        return None
    if not isinstance(reason, str):
        raise MatrixError(400, "M_BAD_JSON" if reason is not None else "M_MISSING_PARAM", "reason must be a string")
    if len(reason) > MAX_REASON:
        raise invalid_param(f"reason may hold at most {MAX_REASON} characters")
    return reason


class Reports:
    def __init__(self, store: Store, timeline: Timeline, rooms: Rooms) -> None:
        self._store = store
        self._timeline = timeline
        self._rooms = rooms

    async def report_event(self, who: Requester, room_id: str, event_id: str, body: dict[str, Any]) -> None:
        score = body.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not -100 <= score <= 0):
            raise invalid_param("score must be an integer between -100 and 0")
        reason = _reason(body, required=False)
        try:
            await self._timeline.event(who, room_id, event_id)
        except MatrixError as e:
            if e.status in (403, 404):
                raise not_found("Event not found") from None
            raise
        await self._store.reports.add(NewReport("event", now_ms(), who.user_id, room_id=room_id, event_id=event_id,
                                                reason=reason, score=score))

    async def report_room(self, who: Requester, room_id: str, body: dict[str, Any]) -> None:
        reason = _reason(body, required=True)
        if await self._rooms.room(room_id) is None:
            raise not_found("Room not found")
        await self._store.reports.add(NewReport("room", now_ms(), who.user_id, room_id=room_id, reason=reason))

    async def report_user(self, who: Requester, user_id: str, body: dict[str, Any], server_name: str) -> None:
        reason = _reason(body, required=True)
        if not user_id.startswith("@") or ":" not in user_id:
            raise invalid_param("Not a user ID")
        if user_id.split(":", 1)[1] == server_name and not await self._store.users.exists(user_id):
            raise not_found("User not found")
        await self._store.reports.add(NewReport("user", now_ms(), who.user_id, target_user_id=user_id,
                                                reason=reason))
