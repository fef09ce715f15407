"""Build signed PDUs into room DAGs for the auth-rule and state-resolution tests.

A `Branch` is one server's view of a room: its current state and forward extremity. Forking a
branch and sending on both copies produces the conflicting histories state resolution must merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from signedjson.key import decode_signing_key_base64

from homeserver.events.auth_rules import auth_types_for_event, check_auth
from homeserver.events.crypto import compute_event_id, event_reference, sign_event
from homeserver.events.event import Event, StateKey
from homeserver.events.room_versions import ROOM_V11, RoomVersion

SERVER = "example.org"
# Any fixed seed will do; fixed keeps event IDs (and therefore tie-breaks) reproducible.
KEY = decode_signing_key_base64("ed25519", "test", "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")

ALICE = f"@alice:{SERVER}"
BOB = f"@bob:{SERVER}"
CHARLIE = f"@charlie:{SERVER}"
ZARA = f"@zara:{SERVER}"
EVE = "@eve:evil.example"


class RoomGraph:
    """All events of one room, addressable by ID (what storage would give state resolution)."""

    def __init__(self, room_version: RoomVersion = ROOM_V11) -> None:
        self.room_version = room_version
        self.events: dict[str, Event] = {}
        self.room_id = f"!room:{SERVER}"
        self._clock = 0
        self.fetches = 0

    async def get_event(self, event_id: str) -> Event | None:
        self.fetches += 1
        return self.events.get(event_id)

    def make(self, type_: str, sender: str, content: dict[str, Any], *, state_key: str | None = None,
             prev: list[str], state: Mapping[StateKey, str], ts: int | None = None,
             auth: list[str] | None = None, extra: dict[str, Any] | None = None) -> Event:
        """Sign and store an event whose auth_events are selected from `state`."""
        self._clock += 1
        pdu: dict[str, Any] = {
            "type": type_, "sender": sender, "content": content, "room_id": self.room_id,
            "origin_server_ts": self._clock * 1000 if ts is None else ts,
            "prev_events": list(prev),
            "depth": 1 + max((self.events[p].depth for p in prev if p in self.events), default=0),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if type_ == "m.room.create" and self.room_version.room_id_from_create_event:
            del pdu["room_id"]
        pdu.update(extra or {})
        if auth is None:
            wanted = auth_types_for_event(pdu, self.room_version)
            auth = sorted(state[k] for k in wanted if k in state)
        pdu["auth_events"] = auth
        if self.room_version.event_refs_with_hashes:  # v1/v2: named by us, hash pairs
            pdu["event_id"] = pdu.get("event_id", f"$e{self._clock}:{SERVER}")
            pdu["prev_events"] = [self._reference(e) for e in pdu["prev_events"]]
            pdu["auth_events"] = [self._reference(e) for e in auth]
        pdu = sign_event(pdu, SERVER, KEY, self.room_version)
        event = Event(compute_event_id(pdu, self.room_version), pdu)
        if type_ == "m.room.create" and self.room_version.room_id_from_create_event:
            self.room_id = "!" + event.event_id[1:]
        self.events[event.event_id] = event
        return event

    def _reference(self, event_id: str) -> Any:
        known = self.events.get(event_id)
        return event_reference(event_id, known.pdu, self.room_version) if known else [event_id, {}]

    def state_events(self, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        return {k: self.events[v] for k, v in state.items()}


@dataclass
class Branch:
    graph: RoomGraph
    state: dict[StateKey, str] = field(default_factory=dict)
    head: list[str] = field(default_factory=list)

    def fork(self) -> "Branch":
        return Branch(self.graph, dict(self.state), list(self.head))

    def send(self, type_: str, sender: str, content: dict[str, Any], state_key: str | None = None,
             ts: int | None = None, check: bool = True, **kwargs: Any) -> Event:
        """Append an event; by default assert it is allowed here, as an honest server would."""
        event = self.graph.make(type_, sender, content, state_key=state_key, prev=self.head,
                                state=self.state, ts=ts, **kwargs)
        if check:
            check_auth(event, self.graph.state_events(self.state), self.graph.room_version)
        self.head = [event.event_id]
        if event.is_state:
            self.state[event.key] = event.event_id
        return event

    def draft(self, type_: str, sender: str, content: dict[str, Any], state_key: str | None = None,
              **kwargs: Any) -> Event:
        """An event built on this branch without appending it (for checking refusals)."""
        return self.graph.make(type_, sender, content, state_key=state_key, prev=self.head,
                               state=self.state, **kwargs)

    def auth_state(self) -> dict[StateKey, Event]:
        return self.graph.state_events(self.state)

    def member(self, user: str, membership: str, sender: str | None = None, **kwargs: Any) -> Event:
        return self.send("m.room.member", sender or user, {"membership": membership}, user, **kwargs)

    def power_levels(self, sender: str, users: dict[str, int], **kwargs: Any) -> Event:
        return self.send("m.room.power_levels", sender, {"users": users}, "", **kwargs)


def new_room(room_version: RoomVersion = ROOM_V11, creator: str = ALICE, join_rule: str = "public",
             users: dict[str, int] | None = None) -> Branch:
    """create, creator's join, power levels (creator 100), join rules: the usual opening."""
    graph = RoomGraph(room_version)
    branch = Branch(graph)
    content: dict[str, Any] = {"room_version": room_version.identifier}
    if room_version.creator_in_create_content:
        content["creator"] = creator
    branch.send("m.room.create", creator, content, "")
    branch.member(creator, "join")
    if users is None:
        users = {} if room_version.creators_have_infinite_power else {creator: 100}
    branch.power_levels(creator, users)
    branch.send("m.room.join_rules", creator, {"join_rule": join_rule}, "")
    return branch
