"""POST /search, category room_events: full-text search of the rooms a user is or was joined to.

A hit is shown only if the user may read it: in a room they are joined to, or up to their leave
of one they left, and only where the room's history visibility let them see it (the same rule
as /messages). The index is searched first and visibility judged on each window of hits, so a
page may take a few windows; `next_batch` says where the next page starts (an offset into the
ranked hits, or the stream position below the last hit when newest first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from homeserver.accounts.accounts import Requester
from homeserver.errors import MatrixError, bad_json
from homeserver.events.event import Event
from homeserver.rooms.rooms import Rooms
from homeserver.rooms.timeline import Timeline
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.sync.filters import parse_event_filter, string_list
from homeserver.sync.ignored import IgnoredUsers
from homeserver.sync.sync import SyncToken
from storage.search import SearchHit, SearchScope
from storage.store import Store

# The searchable keys and the event type each is found in.
KEY_TYPES = {"content.body": "m.room.message", "content.name": "m.room.name", "content.topic": "m.room.topic"}
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
DEFAULT_CONTEXT = 5
MAX_CONTEXT = 100
MAX_WINDOWS = 8  # windows of hits one page may judge before it answers short, with a next_batch
MAX_TERMS = 20
MAX_WORD = 100  # longer words are matched by their first characters (a prefix)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class _Request:
    words: tuple[str, ...]
    scope_types: tuple[str, ...]
    rooms: frozenset[str] | None
    not_rooms: frozenset[str]
    senders: tuple[str, ...] | None
    not_senders: tuple[str, ...]
    limit: int
    by_rank: bool
    context: tuple[int, int, bool] | None  # before, after, include_profile
    group_by: tuple[str, ...]
    include_state: bool


def _count(raw: dict[str, Any], key: str, default: int, cap: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_json(f"event_context.{key} must be a non-negative integer")
    return min(value, cap)


def _parse(raw: Any) -> _Request:
    if not isinstance(raw, dict):
        raise bad_json("room_events must be an object")
    term = raw.get("search_term")
    if not isinstance(term, str):
        raise MatrixError(400, "M_BAD_JSON", "room_events.search_term must be a string")
    keys = string_list(raw.get("keys"), "room_events.keys")
    if keys is None:
        keys = tuple(KEY_TYPES)
    if any(k not in KEY_TYPES for k in keys):
        raise bad_json(f"room_events.keys may hold only {', '.join(KEY_TYPES)}")
    order_by = raw.get("order_by", "rank")
    if order_by not in ("rank", "recent"):
        raise bad_json("room_events.order_by must be rank or recent")
    raw_filter = raw.get("filter")
    filt = parse_event_filter(raw_filter, "room_events.filter")
    rooms = not_rooms = None
    if isinstance(raw_filter, dict):
        rooms = string_list(raw_filter.get("rooms"), "room_events.filter.rooms")
        not_rooms = string_list(raw_filter.get("not_rooms"), "room_events.filter.not_rooms")
    context = None
    raw_context = raw.get("event_context")
    if raw_context is not None:
        if not isinstance(raw_context, dict):
            raise bad_json("room_events.event_context must be an object")
        profile = raw_context.get("include_profile", False)
        if not isinstance(profile, bool):
            raise bad_json("event_context.include_profile must be a boolean")
        context = (_count(raw_context, "before_limit", DEFAULT_CONTEXT, MAX_CONTEXT),
                   _count(raw_context, "after_limit", DEFAULT_CONTEXT, MAX_CONTEXT), profile)
    group_by: list[str] = []
    groupings = raw.get("groupings")
    if groupings is not None:
        groups = groupings.get("group_by", []) if isinstance(groupings, dict) else None
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise bad_json("room_events.groupings.group_by must be a list of objects")
        for group in groups:
            if group.get("key") not in ("room_id", "sender"):
                raise bad_json("a grouping key must be room_id or sender")
            group_by.append(group["key"])
    include_state = raw.get("include_state", False)
    if not isinstance(include_state, bool):
        raise bad_json("room_events.include_state must be a boolean")
    types = tuple(KEY_TYPES[k] for k in dict.fromkeys(keys))
    by_type = replace(filt, senders=None, not_senders=())  # senders are matched in SQL
    return _Request(
        words=tuple(dict.fromkeys(w.lower()[:MAX_WORD] for w in _WORD.findall(term)))[:MAX_TERMS],
        scope_types=tuple(t for t in types if by_type.allows(t, "")),
        rooms=frozenset(rooms) if rooms is not None else None, not_rooms=frozenset(not_rooms or ()),
        senders=filt.senders, not_senders=filt.not_senders,
        limit=min(filt.limit if filt.limit is not None else DEFAULT_LIMIT, MAX_LIMIT),
        by_rank=order_by == "rank", context=context, group_by=tuple(dict.fromkeys(group_by)),
        include_state=include_state)


def _parse_batch(token: str | None, by_rank: bool) -> int | None:
    """The offset (by rank) or the stream position to page below (newest first)."""
    if token is None:
        return None
    kind, value = token[:1], token[1:]
    digits = value if by_rank else value.removeprefix("-")  # offsets count up; positions may be negative
    if kind != ("o" if by_rank else "r") or not digits.isdigit() or len(value) > 18:
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid next_batch")
    return int(value)


def highlights(words: tuple[str, ...], texts: list[str]) -> list[str]:
    """The words of the results that matched a term (each term is a prefix), and the terms."""
    found = dict.fromkeys(words)
    for text in texts:
        for word in _WORD.findall(text):
            if any(word.lower().startswith(w) for w in words):
                found[word] = None
    return sorted(found)


class Search:
    def __init__(self, rooms: Rooms, store: Store, timeline: Timeline, visibility: HistoryVisibility,
                 ignored: IgnoredUsers) -> None:
        self._rooms = rooms
        self._store = store
        self._timeline = timeline
        self._visibility = visibility
        self._ignored = ignored

    async def search(self, who: Requester, body: dict[str, Any], next_batch: str | None) -> dict[str, Any]:
        categories = body.get("search_categories")
        if not isinstance(categories, dict):
            raise MatrixError(400, "M_BAD_JSON", "search_categories must be an object")
        if "room_events" not in categories:
            return {"search_categories": {}}
        request = _parse(categories["room_events"])
        return {"search_categories": {"room_events": await self._room_events(who, request, next_batch)}}

    async def _scope(self, who: Requester, request: _Request) -> tuple[SearchScope, dict[str, bool]]:
        """The rooms to search, each with its reading bound, and whether the user is joined now."""
        memberships = await self._store.rooms.rooms_for_user(who.user_id)
        forgotten = await self._store.rooms.forgotten(who.user_id)
        wanted = {r: m for r, m in memberships.items() if m[0] in ("join", "leave", "ban") and r not in forgotten
                  and r not in request.not_rooms and (request.rooms is None or r in request.rooms)}
        left = await self._rooms.get_events([m[1] for m in wanted.values() if m[0] != "join"])
        rooms: dict[str, int | None] = {}
        joined: dict[str, bool] = {}
        for room_id, (membership, event_id) in wanted.items():
            if membership == "join":
                rooms[room_id], joined[room_id] = None, True
            elif event_id in left:
                rooms[room_id], joined[room_id] = left[event_id].stream, False
        not_senders = tuple(request.not_senders) + tuple(await self._ignored.of(who.user_id))
        return SearchScope(rooms, request.scope_types, request.senders, not_senders), joined

    async def _room_events(self, who: Requester, request: _Request, next_batch: str | None) -> dict[str, Any]:
        position = _parse_batch(next_batch, request.by_rank)
        scope, joined = await self._scope(who, request)
        search = self._store.search
        shown: list[SearchHit] = []
        exhausted = False
        for _ in range(MAX_WINDOWS):
            window = request.limit - len(shown) + 5
            if request.by_rank:
                hits = await search.search(request.words, scope, by_rank=True, limit=window, offset=position or 0)
            else:
                hits = await search.search(request.words, scope, by_rank=False, limit=window, before_stream=position)
            visible = await self._visible(who.user_id, [h.event for h in hits], scope.rooms, joined)
            consumed = 0
            for hit in hits:
                if len(shown) == request.limit:
                    break
                consumed += 1
                position = (position or 0) + 1 if request.by_rank else hit.event.stream
                if hit.event.event_id in visible:
                    shown.append(hit)
            if len(hits) < window and consumed == len(hits):
                exhausted = True
                break
            if len(shown) == request.limit:
                break
        results = await self._results(who, shown, request)
        section: dict[str, Any] = {
            "count": await search.count(request.words, scope),
            "highlights": highlights(request.words, [_text(h.event) for h in shown]),
            "results": results,
        }
        if not exhausted and position is not None:
            section["next_batch"] = ("o" if request.by_rank else "r") + str(position)
        if request.group_by:
            section["groups"] = self._groups(shown, request.group_by)
        if request.include_state:
            section["state"] = await self._state(who, {h.event.room_id for h in shown})
        return section

    async def _visible(self, user_id: str, events: list[Event], bounds: dict[str, int | None],
                       joined: dict[str, bool]) -> set[str]:
        """The hits the user may read: up to their leave of a room they left, and as history
        visibility lets them."""
        by_room: dict[str, list[Event]] = {}
        for event in events:
            bound = bounds.get(event.room_id)
            if bound is None or event.stream <= bound:
                by_room.setdefault(event.room_id, []).append(event)
        visible: set[str] = set()
        for room_id, room_events in by_room.items():
            allowed = await self._visibility.filter(user_id, room_events, joined_now=joined.get(room_id, False))
            visible.update(e.event_id for e in allowed)
        return visible

    async def _results(self, who: Requester, shown: list[SearchHit], request: _Request) -> list[dict[str, Any]]:
        results = []
        for hit in shown:
            event = hit.event
            result: dict[str, Any] = {"rank": hit.rank,
                                      "result": (await self._timeline.serialise(who, event.room_id, [event]))[0]}
            if request.context is not None:
                result["context"] = await self._context(who, event, *request.context)
            results.append(result)
        return results

    async def _context(self, who: Requester, event: Event, before_n: int, after_n: int,
                       include_profile: bool) -> dict[str, Any]:
        reading = await self._timeline.reading(event.room_id, who.user_id)
        rooms = self._store.rooms
        before = await rooms.room_events(event.room_id, before=event.stream - 1, limit=before_n, backwards=True)
        after = await rooms.room_events(event.room_id, after=event.stream, before=reading.upto, limit=after_n,
                                        backwards=False)
        ignored = await self._ignored.of(who.user_id)
        before = await self._visibility.filter(
            who.user_id, [e for e in before if e.sender not in ignored or e.is_state], reading.joined)
        after = await self._visibility.filter(
            who.user_id, [e for e in after if e.sender not in ignored or e.is_state], reading.joined)
        context: dict[str, Any] = {
            "start": str(SyncToken((before[-1].stream if before else event.stream) - 1, 0)),
            "end": str(SyncToken(after[-1].stream if after else event.stream, 0)),
            "events_before": await self._timeline.serialise(who, event.room_id, before),
            "events_after": await self._timeline.serialise(who, event.room_id, after),
        }
        if include_profile:
            context["profile_info"] = await self._profiles(event, [event, *before, *after])
        return context

    async def _profiles(self, at: Event, events: list[Event]) -> dict[str, dict[str, Any]]:
        """Each sender's display name and avatar as their member event had them at the hit."""
        state = await self._rooms.state_at_event(at.event_id)
        senders = {e.sender for e in events}
        ids = [state[("m.room.member", s)] for s in senders if ("m.room.member", s) in state]
        members = await self._rooms.get_events(ids)
        profiles = {}
        for member in members.values():
            content = member.content
            profiles[member.state_key or ""] = {
                k: content[k] for k in ("displayname", "avatar_url") if isinstance(content.get(k), str)}
        return {s: profiles.get(s, {}) for s in senders}

    @staticmethod
    def _groups(shown: list[SearchHit], group_by: tuple[str, ...]) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for key in group_by:
            group: dict[str, dict[str, Any]] = {}
            for hit in shown:
                value = hit.event.room_id if key == "room_id" else hit.event.sender
                entry = group.setdefault(value, {"results": [], "order": len(group) + 1})
                entry["results"].append(hit.event.event_id)
            groups[key] = group
        return groups

    async def _state(self, who: Requester, room_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
        state = {}
        for room_id in sorted(room_ids):
            ids = await self._timeline.visible_state(room_id, who.user_id)
            events = await self._rooms.get_events(ids.values())
            state[room_id] = await self._timeline.serialise(
                who, room_id, sorted(events.values(), key=lambda e: e.stream))
        return state


def _text(event: Event) -> str:
    key = {"m.room.message": "body", "m.room.name": "name", "m.room.topic": "topic"}.get(event.type, "")
    value = event.content.get(key)
    return value if isinstance(value, str) else ""
