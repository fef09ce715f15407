"""Events as clients see them (the Client-Server API's ClientEvent format)."""

from __future__ import annotations

from typing import Any

from homeserver.events.event import Event
from homeserver.events.redaction import redact
from homeserver.events.room_versions import RoomVersion


def client_event(ev: Event, version: RoomVersion | None, now: int, *, device: tuple[str, str] | None = None,
                 redaction: Event | None = None) -> dict[str, Any]:
    """Serialise for a client. `device` is the (user, device) asking, so its own sends carry transaction_id."""
    pdu = ev.pdu
    content = pdu.get("content", {})
    unsigned: dict[str, Any] = {"age": max(0, now - int(pdu.get("origin_server_ts", now)))}
    for key in ("replaces_state", "prev_content", "prev_sender"):
        if key in ev.unsigned:
            unsigned[key] = ev.unsigned[key]
    if "invite_room_state" in ev.unsigned:
        unsigned["invite_room_state"] = ev.unsigned["invite_room_state"]
    txn = ev.unsigned.get("_txn")
    if txn is not None and device is not None and device == (ev.sender, txn[0]):
        unsigned["transaction_id"] = txn[1]
    if ev.unsigned.get("redacted_by") and version is not None:
        content = redact(pdu, version).get("content", {})
        if redaction is not None:
            unsigned["redacted_because"] = client_event(redaction, version, now)
    out: dict[str, Any] = {"type": pdu["type"], "content": content, "sender": pdu["sender"],
                           "origin_server_ts": pdu.get("origin_server_ts", 0), "event_id": ev.event_id,
                           "room_id": ev.room_id, "unsigned": unsigned}
    if "state_key" in pdu:
        out["state_key"] = pdu["state_key"]
    target = ev.redaction_target(version) if version is not None else None
    if target is not None:
        out["redacts"] = target  # clients read it top-level in every version
    return out


def stripped_state(ev: Event) -> dict[str, Any]:
    """The short form of state shown with invites."""
    return {"type": ev.type, "state_key": ev.state_key, "content": ev.content, "sender": ev.sender}


def stripped_from_json(raw: Any) -> dict[str, Any] | None:
    """The stripped form of a state event received as JSON (stripped already, or a full PDU);
    None when it lacks the shape (type, state_key and sender strings, a content object)."""
    if not isinstance(raw, dict):
        return None
    etype, state_key, sender, content = raw.get("type"), raw.get("state_key"), raw.get("sender"), raw.get("content")
    if not (isinstance(etype, str) and isinstance(state_key, str) and isinstance(sender, str)
            and isinstance(content, dict)):
        return None
    return {"type": etype, "state_key": state_key, "content": content, "sender": sender}
