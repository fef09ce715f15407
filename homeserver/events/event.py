"""Events: a thin, typed view over a PDU's JSON (the JSON stays the source of truth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homeserver.events.room_versions import RoomVersion

StateKey = tuple[str, str]  # (event type, state_key)


def _ids(references: Any) -> list[str]:
    """Event IDs of a prev_events/auth_events list: plain IDs, or (room versions 1, 2)
    [event_id, {hashes}] pairs, whose shape the format check on receipt enforced."""
    return [r[0] if isinstance(r, list) else r for r in references]


@dataclass(frozen=True, eq=False)
class Event:
    """A PDU as it was signed, with its event ID (not part of the JSON for room versions >= 3)."""

    event_id: str
    pdu: dict[str, Any]
    # Local bookkeeping, never part of the signed PDU: stream position, rejection.
    stream: int = 0
    rejected: str | None = None
    unsigned: dict[str, Any] = field(default_factory=dict)

    @property
    def room_id(self) -> str:
        room_id = self.pdu.get("room_id")
        if room_id is None and self.pdu.get("type") == "m.room.create":
            return "!" + self.event_id[1:]  # v12: the room ID is the create event's reference hash
        return room_id  # type: ignore[return-value]

    @property
    def type(self) -> str:
        return self.pdu["type"]

    @property
    def sender(self) -> str:
        return self.pdu["sender"]

    @property
    def content(self) -> dict[str, Any]:
        return self.pdu.get("content", {})

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def key(self) -> StateKey:
        """The (type, state_key) slot a state event fills."""
        return (self.pdu["type"], self.pdu["state_key"])

    @property
    def depth(self) -> int:
        return int(self.pdu.get("depth", 0))

    @property
    def origin_server_ts(self) -> int:
        return int(self.pdu.get("origin_server_ts", 0))

    @property
    def auth_event_ids(self) -> list[str]:
        return _ids(self.pdu.get("auth_events", []))

    @property
    def prev_event_ids(self) -> list[str]:
        return _ids(self.pdu.get("prev_events", []))

    @property
    def membership(self) -> str | None:
        if self.type != "m.room.member":
            return None
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    def redaction_target(self, version: RoomVersion) -> str | None:
        """The event an m.room.redaction names: under `content` from v11 on, top-level before
        (the other place is just data in that version)."""
        if self.type != "m.room.redaction":
            return None
        target = self.content.get("redacts") if version.redacts_in_content else self.pdu.get("redacts")
        return target if isinstance(target, str) else None
