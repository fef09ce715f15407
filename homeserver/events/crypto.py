"""Event hashing and signing: content hashes, reference-hash event IDs, ed25519 signatures.

Signatures cover the *redacted* event (plus the content hash), so they still verify after a
redaction; the content hash covers everything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import string
from pathlib import Path
from typing import Any

from canonicaljson import encode_canonical_json
from signedjson.key import generate_signing_key, read_signing_keys, write_signing_keys
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from homeserver.events.redaction import redact
from homeserver.events.room_versions import EventIdFormat, RoomVersion


class EventSignatureError(Exception):
    """The event is not (validly) signed by the expected server."""


def _unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _urlsafe_unpadded_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode_base64(text: str) -> bytes:
    """Decode padded or unpadded base64, standard or URL-safe alphabet (the spec allows both)."""
    text = text.rstrip("=")
    alphabet = "-_" if ("-" in text or "_" in text) else "+/"
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=alphabet.encode(), validate=True)


# ---- signing keys -------------------------------------------------------------------------------

def _new_key_version() -> str:
    return "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))


def load_or_create_signing_key(path: Path) -> SigningKey:
    """Read the first key from `path` (signedjson's `ed25519 <version> <base64>` format), or create it.

    A new file is created with O_EXCL and mode 0600 so the private key is never world-readable,
    even briefly.
    """
    path = Path(path)
    if path.exists():
        with path.open("r", encoding="ascii") as stream:
            keys = read_signing_keys(stream)
        if not keys:
            raise ValueError(f"no signing key in {path}")
        return keys[0]
    key = generate_signing_key(_new_key_version())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as stream:
        write_signing_keys(stream, [key])
    return key


def key_id(key: SigningKey | VerifyKey) -> str:
    """The `ed25519:<version>` identifier under which signatures from this key are published."""
    return f"{key.alg}:{key.version}"


# ---- hashes and IDs -----------------------------------------------------------------------------

def _content_hash_bytes(pdu: dict[str, Any]) -> bytes:
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


def compute_content_hash(pdu: dict[str, Any]) -> str:
    """sha256 of the canonical PDU minus unsigned/signatures/hashes, unpadded base64."""
    return _unpadded_b64(_content_hash_bytes(pdu))


def compute_reference_hash(pdu: dict[str, Any], room_version: RoomVersion) -> bytes:
    redacted = redact(pdu, room_version)
    for key in ("signatures", "unsigned", "age_ts"):
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def compute_event_id(pdu: dict[str, Any], room_version: RoomVersion) -> str:
    """The event's ID: '$' + unpadded base64 of the reference hash, URL-safe from room version 4
    (standard in v3); in v1 and v2 the `event_id` the PDU carries (ValueError if it has none)."""
    if room_version.event_id_format is EventIdFormat.V1:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError("the PDU has no event_id")
        return event_id
    digest = compute_reference_hash(pdu, room_version)
    if room_version.event_id_format is EventIdFormat.V3:
        return "$" + _unpadded_b64(digest)
    return "$" + _urlsafe_unpadded_b64(digest)


def new_opaque_event_id(server_name: str) -> str:
    """A v1/v2 event ID, `$opaque:domain`, for an event this server creates."""
    return f"${''.join(secrets.choice(string.ascii_letters) for _ in range(18))}:{server_name}"


def event_reference(event_id: str, pdu: dict[str, Any], room_version: RoomVersion) -> Any:
    """How another event lists this one in prev_events/auth_events: its ID, or in v1/v2 the pair
    [event_id, {"sha256": reference hash}]."""
    if room_version.event_refs_with_hashes:
        return [event_id, {"sha256": _unpadded_b64(compute_reference_hash(pdu, room_version))}]
    return event_id


def room_id_for_create_event(create_pdu: dict[str, Any], room_version: RoomVersion) -> str:
    """v12+: the room ID is the create event's ID with the '!' sigil."""
    return "!" + compute_event_id(create_pdu, room_version)[1:]


def check_content_hash(pdu: dict[str, Any]) -> bool:
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(claimed, str):
        return False
    try:
        return decode_base64(claimed) == _content_hash_bytes(pdu)
    except (binascii.Error, ValueError):
        return False


# ---- signatures ---------------------------------------------------------------------------------

def sign_event(pdu: dict[str, Any], server_name: str, signing_key: SigningKey,
               room_version: RoomVersion) -> dict[str, Any]:
    """Return a copy of `pdu` with `hashes.sha256` set and our signature added to `signatures`.

    Existing signatures from other servers are kept (they sign the same redacted form).
    """
    signed = dict(pdu)
    signed["hashes"] = {**(pdu.get("hashes") or {}), "sha256": compute_content_hash(pdu)}
    redacted = redact(signed, room_version)
    redacted.pop("signatures", None)
    new_signatures = sign_json(redacted, server_name, signing_key)["signatures"]
    signatures = {server: dict(sigs) for server, sigs in (pdu.get("signatures") or {}).items()}
    signatures.setdefault(server_name, {}).update(new_signatures[server_name])
    signed["signatures"] = signatures
    return signed


def verify_event_signature(pdu: dict[str, Any], server_name: str, verify_key: VerifyKey,
                           room_version: RoomVersion) -> None:
    """Raise EventSignatureError unless `server_name` signed the redacted form with `verify_key`."""
    redacted = redact(pdu, room_version)
    try:
        verify_signed_json(redacted, server_name, verify_key)
    except SignatureVerifyException as exc:
        raise EventSignatureError(str(exc)) from exc
