"""Keys as a real client makes them: ed25519-signed device keys and signed one-time keys."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from canonicaljson import encode_canonical_json
from nacl.signing import SigningKey


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def sign(obj: dict[str, Any], user_id: str, key_id: str, key: SigningKey) -> dict[str, Any]:
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    sig = b64(key.sign(encode_canonical_json(unsigned)).signature)
    signatures = dict(obj.get("signatures", {}))
    signatures[user_id] = {**signatures.get(user_id, {}), key_id: sig}
    return {**obj, "signatures": signatures}


class Device:
    """A device's identity key and the key objects it uploads."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id, self.device_id = user_id, device_id
        self.key = SigningKey.generate()
        self.ed25519 = b64(bytes(self.key.verify_key))
        self.curve25519 = b64(secrets.token_bytes(32))

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.device_id}"

    def device_keys(self) -> dict[str, Any]:
        return sign({"user_id": self.user_id, "device_id": self.device_id,
                     "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                     "keys": {self.key_id: self.ed25519, f"curve25519:{self.device_id}": self.curve25519}},
                    self.user_id, self.key_id, self.key)

    def one_time_keys(self, n: int, start: int = 0) -> dict[str, Any]:
        return {f"signed_curve25519:K{i:05d}": sign({"key": b64(secrets.token_bytes(32))}, self.user_id,
                                                    self.key_id, self.key)
                for i in range(start, start + n)}

    def fallback_key(self, name: str = "F1") -> dict[str, Any]:
        return {f"signed_curve25519:{name}": sign({"key": b64(secrets.token_bytes(32)), "fallback": True},
                                                  self.user_id, self.key_id, self.key)}
