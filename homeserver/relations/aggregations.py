"""Bundled aggregations: `unsigned["m.relations"]` of the events a client is served.

Per page of events, one indexed statement summarises every child of every event in it (the
common answer, "none", ends there); only a page with children asks for the edits, references
and threads' latest events, again one statement, and reads those events at once. Formats (the
spec, v1.7 on): `m.thread` {latest_event, count, current_user_participated}; `m.replace` the
most recent valid edit as a whole event, the original's content left as it is; `m.reference`
{chunk: [{event_id}]}. State events get none. Children sent by users the reader ignores are
left out, as their events are from the timeline. A thread's latest event carries its own bundle
(its edit: what a thread summary shows), one more round for a page with threads.
"""

from __future__ import annotations

from typing import Any, Sequence

from homeserver.events.client_format import client_event
from homeserver.events.event import Event
from homeserver.events.relations import REFERENCE, REPLACE, THREAD, relation_of
from homeserver.rooms.rooms import Rooms
from homeserver.sync.ignored import IgnoredUsers
from storage.relations import RelationRow
from storage.store import Store

Bundles = dict[str, dict[str, Any]]  # event ID -> its m.relations


def valid_edit(original: Event, edit: Event) -> bool:
    """The spec's "Validity of replacement events" (the room is checked by the index's readers)."""
    if edit.sender != original.sender or edit.type != original.type or edit.is_state or original.is_state:
        return False
    own = relation_of(original.content)
    if own is not None and own.rel_type == REPLACE:
        return False  # an edit of an edit
    # An encrypted edit carries m.new_content in its ciphertext, out of the server's sight.
    return edit.type == "m.room.encrypted" or isinstance(edit.content.get("m.new_content"), dict)


def _most_recent(edits: list[Event]) -> Event:
    return max(edits, key=lambda e: (e.origin_server_ts, e.event_id))


class Aggregations:
    def __init__(self, rooms: Rooms, store: Store, ignored: IgnoredUsers) -> None:
        self._rooms = rooms
        self._store = store
        self._ignored = ignored

    async def bundles(self, user_id: str, events: Sequence[Event], now: int, upto: int | None = None,
                      nested: bool = False) -> Bundles:
        """The bundled aggregations of the events (of any rooms) that have some, from children up to
        `upto` (a user who left sees none sent after)."""
        parents = {e.event_id: e for e in events if not e.is_state and not e.rejected}
        if not parents:
            return {}
        ignored = sorted(await self._ignored.of(user_id))
        summaries = [s for s in await self._store.relations.summaries(list(parents), user_id, ignored, upto)
                     if s.room_id == parents[s.parent_id].room_id]
        if not summaries:
            return {}
        threads = {s.parent_id: s for s in summaries if s.rel_type == THREAD}
        listed = [s.parent_id for s in summaries if s.rel_type in (REPLACE, REFERENCE)]
        rows = await self._store.relations.bundle_rows(listed, [s.latest_stream for s in threads.values()])
        latest: dict[str, RelationRow] = {}
        edits: dict[str, list[RelationRow]] = {}
        references: dict[str, list[str]] = {}
        for row in rows:
            parent = parents.get(row.parent_id)
            if parent is None or row.room_id != parent.room_id or (upto is not None and row.stream > upto):
                continue
            thread = threads.get(row.parent_id)
            if row.rel_type == THREAD and thread is not None and row.stream == thread.latest_stream:
                latest[row.parent_id] = row
            elif row.rel_type == REPLACE and row.sender == parent.sender and row.type == parent.type \
                    and not parent.unsigned.get("redacted_by"):
                edits.setdefault(row.parent_id, []).append(row)
            elif row.rel_type == REFERENCE and row.sender not in ignored:
                references.setdefault(row.parent_id, []).append(row.event_id)
        wanted = [r.event_id for r in latest.values()] + [r.event_id for rs in edits.values() for r in rs]
        found = await self._rooms.get_events(wanted) if wanted else {}
        latest_events = [found[r.event_id] for r in latest.values() if r.event_id in found]
        inner = await self.bundles(user_id, latest_events, now, upto, nested=True) if latest_events and not nested \
            else {}
        out: Bundles = {}
        for parent_id, parent in parents.items():
            bundle: dict[str, Any] = {}
            version = None
            if parent_id in latest or parent_id in edits:
                version = await self._rooms.room_version(parent.room_id)
            thread = threads.get(parent_id)
            last = latest.get(parent_id)
            if thread is not None and last is not None and last.event_id in found:
                bundle[THREAD] = {
                    "latest_event": attach([client_event(found[last.event_id], version, now)], inner)[0],
                    "count": thread.count,
                    "current_user_participated": thread.participated or parent.sender == user_id,
                }
            valid = [found[r.event_id] for r in edits.get(parent_id, [])
                     if r.event_id in found and valid_edit(parent, found[r.event_id])]
            if valid:
                bundle[REPLACE] = client_event(_most_recent(valid), version, now)
            if parent_id in references:
                bundle[REFERENCE] = {"chunk": [{"event_id": e} for e in references[parent_id]]}
            if bundle:
                out[parent_id] = bundle
        return out


def attach(serialised: list[dict[str, Any]], bundles: Bundles) -> list[dict[str, Any]]:
    """Put each event's bundle under its unsigned (client events as client_event makes them)."""
    if bundles:
        for ev in serialised:
            bundle = bundles.get(ev.get("event_id", ""))
            if bundle is not None:
                ev.setdefault("unsigned", {})["m.relations"] = bundle
    return serialised
