"""The last timeline events of recently active rooms, so that a woken /sync needs no query.

For each room it keeps every timeline event with a stream position above the
room's `floor`. Events persisted by this process are appended before their
notification goes out, and every stream notification is observed: one for an
event that was not appended here (another worker, an invite recorded by the
federation endpoints) raises the floor past it, as does an applied redaction of an
event held here (the held copy no longer says it is redacted). A reader therefore
gets either the exact answer the database would give, or None and asks the
database.

It also tells /sync when a page of events surely has no children (relations), so that the
bundled aggregations cost no query in the common case: a relation is sent after its parent,
so for a parent above the floor every child is held here too.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict

from homeserver.events.event import Event
from homeserver.events.relations import relation_of

EVENTS_PER_ROOM = 100
MAX_ROOMS = 1024


class _Ring:
    __slots__ = ("floor", "streams", "events", "parents")

    def __init__(self, floor: int) -> None:
        self.floor = floor  # every timeline event of the room above this position is held
        self.streams: list[int] = []
        self.events: list[Event] = []
        self.parents: dict[str, int] = {}  # parent ID -> position of its latest child held

    def raise_floor(self, stream: int) -> None:
        if stream <= self.floor:
            return
        cut = bisect_right(self.streams, stream)
        del self.streams[:cut]
        del self.events[:cut]
        self.floor = stream
        if self.parents:
            self.parents = {p: s for p, s in self.parents.items() if s > stream}


class RecentEvents:
    def __init__(self, per_room: int = EVENTS_PER_ROOM, max_rooms: int = MAX_ROOMS) -> None:
        self._per_room = per_room
        self._max_rooms = max_rooms
        self._rings: OrderedDict[str, _Ring] = OrderedDict()

    def append(self, event: Event, redacted: str | None = None) -> None:
        """An accepted timeline event this process has just committed (before it notifies);
        `redacted` is the event it redacted, if it is a redaction that was applied."""
        room_id = event.room_id
        ring = self._rings.get(room_id)
        if ring is None:
            # Positions are unique across rooms: nothing else of this room lies in (stream - 1, stream].
            ring = self._rings[room_id] = _Ring(event.stream - 1)
            if len(self._rings) > self._max_rooms:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(room_id)
        if event.stream <= ring.floor:
            return
        if redacted is not None:
            for held in ring.events:
                if held.event_id == redacted:
                    ring.raise_floor(held.stream)
                    break
        relation = relation_of(event.content)
        if relation is not None:
            ring.parents[relation.parent_id] = max(event.stream, ring.parents.get(relation.parent_id, event.stream))
        if ring.streams and event.stream < ring.streams[-1]:
            index = bisect_right(ring.streams, event.stream)
            ring.streams.insert(index, event.stream)
            ring.events.insert(index, event)
        else:
            ring.streams.append(event.stream)
            ring.events.append(event)
        if len(ring.events) > self._per_room:
            ring.raise_floor(ring.streams[len(ring.events) - self._per_room - 1])

    def observe(self, stream: int, room_id: str | None, receipt: bool) -> None:
        """A stream notification (local or relayed): an event we do not hold makes the room's past unsure."""
        if room_id is None or receipt:
            return
        ring = self._rings.get(room_id)
        if ring is None or stream <= ring.floor:
            return
        index = bisect_right(ring.streams, stream)
        if index == 0 or ring.streams[index - 1] != stream:
            ring.raise_floor(stream)

    def between(self, room_id: str, after: int | None, upto: int, limit: int | None = None,
                min_floor: int = 0) -> list[Event] | None:
        """The room's timeline events with after < stream <= upto, newest first, at most `limit`;
        None unless they are surely all here. `upto` must not pass the notifier's position, and
        nothing at or below `min_floor` is trusted (positions the notifier gave up waiting for)."""
        ring = self._rings.get(room_id)
        if ring is None:
            return None
        floor = max(ring.floor, min_floor)
        hi = bisect_right(ring.streams, upto)
        if after is not None and after >= floor:
            lo = bisect_right(ring.streams, after)
        else:
            lo = bisect_right(ring.streams, floor)
            # Events below the floor may be missing: enough newer ones must make them irrelevant.
            if limit is None or hi - lo < limit:
                return None
        if limit is not None:
            lo = max(lo, hi - limit)
        return ring.events[lo:hi][::-1]

    def may_have_children(self, room_id: str, events: list[Event], min_floor: int = 0) -> bool:
        """False only when no event relates to any of these (of one room): all lie above the
        room's floor and none is the parent of an event held."""
        ring = self._rings.get(room_id)
        if ring is None:
            return True
        floor = max(ring.floor, min_floor)
        return any(e.stream <= floor or e.event_id in ring.parents for e in events)
