"""Reading relations: GET /relations (a parent's children, paged) and GET /threads (a room's
thread roots by latest activity), and the check a new thread reply must pass.

Who may read is /event's rule: 403 for someone who may not read the room at all, 404 for a
parent they may not see; children and roots are then filtered by history visibility and the
user's ignore list like /messages. Pages are in stream order; tokens are /messages' and
/sync's (`s<stream>_<typing>`), so either may start a page.
"""

from __future__ import annotations

from typing import Any

from homeserver.accounts.accounts import Requester
from homeserver.errors import MatrixError
from homeserver.events.event import Event
from homeserver.events.redaction import redact
from homeserver.events.relations import THREAD, relation_of
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.timeline import Timeline
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.sync.ignored import IgnoredUsers
from homeserver.sync.sync import SyncToken
from storage.store import Store

DEFAULT_LIMIT = 5  # what Synapse answers without a limit
MAX_LIMIT = 100
THREADS_DEFAULT_LIMIT = 5
RECURSION_DEPTH = 3  # the spec: "at least 3 levels"
_BOUND = 2**62  # positions beyond any real one (keeps absurd tokens inside BIGINT)


def _position(raw: str, name: str) -> int:
    try:
        stream = SyncToken.parse(raw).stream
    except MatrixError:
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown pagination token in {name}") from None
    return max(-_BOUND, min(stream, _BOUND))


def _limit(raw: int | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if raw < 1:
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be a positive integer")
    return min(raw, maximum)


class RelationsService:
    def __init__(self, rooms: Rooms, store: Store, timeline: Timeline, visibility: HistoryVisibility,
                 ignored: IgnoredUsers) -> None:
        self._rooms = rooms
        self._store = store
        self._timeline = timeline
        self._visibility = visibility
        self._ignored = ignored

    async def _shown(self, who: Requester, events: list[Event], joined_now: bool) -> list[Event]:
        ignored = await self._ignored.of(who.user_id)
        kept = [e for e in events if e.sender not in ignored or e.is_state]
        return await self._visibility.filter(who.user_id, kept, joined_now) if kept else kept

    async def children(self, who: Requester, room_id: str, parent_id: str, *, rel_type: str | None,
                       event_type: str | None, from_token: str | None, to_token: str | None, limit: int | None,
                       direction: str, recurse: str | None) -> dict[str, Any]:
        if direction not in ("b", "f"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
        if recurse not in (None, "true", "false"):
            raise MatrixError(400, "M_INVALID_PARAM", "recurse must be true or false")
        count = _limit(limit, DEFAULT_LIMIT, MAX_LIMIT)
        start = _position(from_token, "from") if from_token else None
        stop = _position(to_token, "to") if to_token else None
        _, reading = await self._timeline.visible_event(who, room_id, parent_id)
        backwards = direction == "b"
        # Backwards pages run from `from` down to `to`, forwards ones from `from` up to `to`.
        after, bound = (stop, start) if backwards else (start, stop)
        upto = min(reading.upto, _BOUND) if bound is None else min(reading.upto, bound)
        depth = RECURSION_DEPTH if recurse == "true" else 1
        rows = await self._store.relations.children(room_id, parent_id, rel_type=rel_type, event_type=event_type,
                                                    after=after, upto=upto, backwards=backwards, limit=count,
                                                    depth=depth)
        found = await self._rooms.get_events(r.event_id for r in rows)
        events = await self._shown(who, [found[r.event_id] for r in rows if r.event_id in found], reading.joined)
        body: dict[str, Any] = {"chunk": await self._timeline.serialise(who, room_id, events,
                                                                        bundle_upto=reading.upto)}
        if len(rows) == count:
            last = rows[-1].stream
            body["next_batch"] = str(SyncToken(last - 1 if backwards else last, 0))
        if from_token:
            body["prev_batch"] = from_token
        if recurse is not None:
            body["recursion_depth"] = depth
        return body

    async def threads(self, who: Requester, room_id: str, include: str | None, from_token: str | None,
                      limit: int | None) -> dict[str, Any]:
        if include not in (None, "all", "participated"):
            raise MatrixError(400, "M_INVALID_PARAM", "include must be all or participated")
        count = _limit(limit, THREADS_DEFAULT_LIMIT, MAX_LIMIT)
        before = _position(from_token, "from") if from_token else None
        reading = await self._timeline.reading(room_id, who.user_id)
        upto = min(reading.upto, _BOUND) + 1  # threads whose latest activity the user may read
        before = upto if before is None else min(before, upto)
        participant = who.user_id if include == "participated" else None
        rows = await self._store.relations.threads(room_id, participant=participant, before=before, limit=count)
        found = await self._rooms.get_events(root for root, _ in rows)
        roots = [found[r] for r, _ in rows if r in found and found[r].room_id == room_id and not found[r].rejected
                 and not found[r].unsigned.get("_soft_failed") and found[r].stream <= reading.upto]
        roots = await self._visibility.filter(who.user_id, roots, reading.joined) if roots else roots
        ignored = await self._ignored.of(who.user_id)
        version = await self._rooms.room_version(room_id)
        if version is not None and any(r.sender in ignored for r in roots):
            # The spec: an ignored user's root is shown redacted, as a client aggregating itself would.
            roots = [Event(r.event_id, redact(r.pdu, version), stream=r.stream, unsigned=r.unsigned)
                     if r.sender in ignored else r for r in roots]
        body: dict[str, Any] = {"chunk": await self._timeline.serialise(who, room_id, roots,
                                                                        bundle_upto=reading.upto)}
        if len(rows) == count:
            body["next_batch"] = str(SyncToken(rows[-1][1], 0))
        return body

    async def check_new(self, room_id: str, content: dict[str, Any]) -> None:
        """The spec's validation of m.thread: a thread may not start from an event that itself
        relates to another (400 M_UNKNOWN). Only sends with a thread relation pay a lookup."""
        relation = relation_of(content)
        if relation is None or relation.rel_type != THREAD:
            return
        root = await self._rooms.get_event(relation.parent_id)
        if root is not None and root.room_id == room_id and relation_of(root.content) is not None:
            raise MatrixError(400, "M_UNKNOWN", "Cannot start a thread from an event with a relation")
