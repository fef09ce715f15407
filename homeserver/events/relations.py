"""The relation an event declares (`content["m.relates_to"]`, Client-Server API "Forming relationships
between events"): a `rel_type` and the parent's `event_id`. Anything else there (rich replies'
`m.in_reply_to` alone, wrong types) is no relation: ignored, never an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

THREAD = "m.thread"
REPLACE = "m.replace"
REFERENCE = "m.reference"
ANNOTATION = "m.annotation"


@dataclass(frozen=True)
class Relation:
    rel_type: str
    parent_id: str


def relation_of(content: Any) -> Relation | None:
    relates = content.get("m.relates_to") if isinstance(content, dict) else None
    if not isinstance(relates, dict):
        return None
    rel_type, parent = relates.get("rel_type"), relates.get("event_id")
    if not (isinstance(rel_type, str) and rel_type and isinstance(parent, str) and parent.startswith("$")):
        return None
    if len(rel_type) > 255 or len(parent) > 255:
        return None  # no event ID or relation name is that long
    return Relation(rel_type, parent)
