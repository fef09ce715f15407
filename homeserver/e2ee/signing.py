"""Checking the ed25519 signatures on keys that clients and servers upload."""

from __future__ import annotations

import binascii
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from homeserver.events.crypto import decode_base64

ED25519_KEY_BYTES = 32


def verify_key_signature(obj: dict[str, Any], signer: str, key_id: str, public_key: object) -> bool:
    """Whether `obj` (minus signatures and unsigned) carries a good signature by `signer` under
    `key_id` ("ed25519:<id>") made with the unpadded-base64 `public_key`."""
    if not isinstance(public_key, str) or not key_id.startswith("ed25519:"):
        return False
    try:
        raw = decode_base64(public_key)
        if len(raw) != ED25519_KEY_BYTES:
            return False
        verify_key = decode_verify_key_bytes(key_id, raw)
        verify_signed_json(obj, signer, verify_key)
    except (SignatureVerifyException, ValueError, binascii.Error, TypeError, KeyError, OverflowError):
        return False
    return True


def signature_of(obj: dict[str, Any], signer: str, key_id: str) -> str | None:
    sigs = obj.get("signatures")
    if not isinstance(sigs, dict) or not isinstance(sigs.get(signer), dict):
        return None
    value = sigs[signer].get(key_id)
    return value if isinstance(value, str) else None
