"""Cross-signing: a user's master, self-signing and user-signing keys, and the signatures they
(and devices) make, each checked against the key that must have made it before it is stored."""

from __future__ import annotations

from typing import Any

from homeserver.e2ee.device_lists import DeviceLists
from homeserver.e2ee.signing import signature_of, verify_key_signature
from homeserver.errors import MatrixError, bad_json
from storage.store import Store

FIELDS = {"master_key": "master", "self_signing_key": "self_signing", "user_signing_key": "user_signing"}


def invalid_signature(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_SIGNATURE", message)


def public_key(key: dict[str, Any]) -> tuple[str, str]:
    """(key ID, public key) of a cross-signing key, which holds exactly one ed25519 key."""
    return next(iter(key["keys"].items()))


def check_key(key: object, user_id: str, usage: str) -> dict[str, Any]:
    if not isinstance(key, dict) or key.get("user_id") != user_id:
        raise bad_json(f"{usage} key must be an object for {user_id}")
    usages, keys = key.get("usage"), key.get("keys")
    if not isinstance(usages, list) or usage not in usages:
        raise MatrixError(400, "M_INVALID_PARAM", f"{usage} key must have usage {usage!r}")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise MatrixError(400, "M_INVALID_PARAM", f"{usage} key must hold exactly one key")
    (key_id, value), = keys.items()
    if not isinstance(key_id, str) or not key_id.startswith("ed25519:") or key_id[8:] != value:
        raise MatrixError(400, "M_INVALID_PARAM", f"{usage} key must be 'ed25519:<public key>'")
    if "signatures" in key and not isinstance(key["signatures"], dict):
        raise bad_json("signatures must be an object")
    return {k: v for k, v in key.items() if k != "unsigned"}


class CrossSigning:
    def __init__(self, store: Store, lists: DeviceLists) -> None:
        self._store = store
        self._lists = lists

    async def held(self, user_id: str) -> dict[str, dict[str, Any]]:
        return (await self._store.e2ee.cross_signing_keys([user_id])).get(user_id, {})

    async def needs_auth(self, user_id: str, body: dict[str, Any]) -> bool:
        """The first upload, or the same keys again, need no password (as the spec allows)."""
        held = await self.held(user_id)
        if "master" not in held:
            return False
        return any(body.get(f) is not None and body[f] != held.get(t) for f, t in FIELDS.items())

    async def upload(self, user_id: str, body: dict[str, Any]) -> None:
        held = await self.held(user_id)
        new = {t: check_key(body[f], user_id, t) for f, t in FIELDS.items() if body.get(f) is not None}
        master = new.get("master") or held.get("master")
        if master is None:
            raise MatrixError(400, "M_MISSING_PARAM", "a master key is needed first")
        master_id, master_pub = public_key(master)
        for t in ("self_signing", "user_signing"):
            if t in new and not verify_key_signature(new[t], user_id, master_id, master_pub):
                raise invalid_signature(f"the {t} key must be signed by the master key")
        if not new:
            return
        if set(new) == {"user_signing"}:
            # Only the user's own clients care about their user-signing key: nobody is told.
            await self._store.e2ee.set_cross_signing_keys(user_id, new, record=False)
            await self._lists.keys_changed_quietly(user_id)
            return
        stream = await self._store.e2ee.set_cross_signing_keys(user_id, new)
        assert stream is not None
        await self._lists.announce(user_id, stream, signing_keys=True)

    async def upload_signatures(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        failures: dict[str, dict[str, Any]] = {}
        held = await self.held(user_id)
        device_sigs: dict[str, dict[str, Any]] = {}
        master_sigs: dict[str, Any] = {}
        user_sigs: list[tuple[str, str, str]] = []

        def fail(target: str, key_id: str, errcode: str, message: str) -> None:
            failures.setdefault(target, {})[key_id] = {"errcode": errcode, "error": message}

        for target, objects in body.items():
            if not isinstance(objects, dict):
                raise bad_json("signatures must map user IDs to {key ID: signed object}")
            for key_id, obj in objects.items():
                if not isinstance(obj, dict):
                    fail(target, key_id, "M_BAD_JSON", "not an object")
                    continue
                if target == user_id:
                    await self._own(user_id, key_id, obj, held, device_sigs, master_sigs, fail)
                else:
                    await self._other(user_id, target, key_id, obj, held, user_sigs, fail)
        if device_sigs or master_sigs or user_sigs:
            stream = await self._store.e2ee.add_signatures(user_id, device_sigs, master_sigs or None, user_sigs)
            await self._lists.announce(user_id, stream, list(device_sigs), signing_keys=bool(master_sigs))
        return {"failures": failures}

    async def _own(self, user_id: str, key_id: str, obj: dict[str, Any], held: dict[str, dict[str, Any]],
                   device_sigs: dict[str, dict[str, Any]], master_sigs: dict[str, Any], fail: Any) -> None:
        master = held.get("master")
        if master is not None and public_key(master)[1] == key_id:
            # our master key, signed by one of our devices
            if obj.get("keys") != master.get("keys"):
                fail(user_id, key_id, "M_INVALID_PARAM", "not the master key held")
                return
            for sig_id, sig in ((obj.get("signatures") or {}).get(user_id) or {}).items():
                if sig_id == public_key(master)[0] or not sig_id.startswith("ed25519:"):
                    continue
                device = await self._store.e2ee.device_keys(user_id, sig_id[8:])
                if device is not None and verify_key_signature(obj, user_id, sig_id,
                                                               (device.get("keys") or {}).get(sig_id)):
                    master_sigs[sig_id] = sig
                else:
                    fail(user_id, key_id, "M_INVALID_SIGNATURE", f"bad signature {sig_id}")
            return
        # one of our devices, signed by our self-signing key
        device = await self._store.e2ee.device_keys(user_id, key_id)
        ssk = held.get("self_signing")
        if device is None or ssk is None:
            fail(user_id, key_id, "M_NOT_FOUND", "no such device or no self-signing key")
            return
        if obj.get("keys") != device.get("keys"):
            fail(user_id, key_id, "M_INVALID_PARAM", "not the device keys held")
            return
        ssk_id, ssk_pub = public_key(ssk)
        sig = signature_of(obj, user_id, ssk_id)
        if sig is None or not verify_key_signature(obj, user_id, ssk_id, ssk_pub):
            fail(user_id, key_id, "M_INVALID_SIGNATURE", "not signed by the self-signing key")
            return
        device_sigs[key_id] = {ssk_id: sig}

    async def _other(self, user_id: str, target: str, key_id: str, obj: dict[str, Any],
                     held: dict[str, dict[str, Any]], user_sigs: list[tuple[str, str, str]], fail: Any) -> None:
        usk = held.get("user_signing")
        their = (await self._store.e2ee.cross_signing_keys([target])).get(target, {}).get("master")
        if usk is None or their is None or public_key(their)[1] != key_id or obj.get("keys") != their.get("keys"):
            fail(target, key_id, "M_NOT_FOUND", "no such master key, or no user-signing key of ours")
            return
        usk_id, usk_pub = public_key(usk)
        sig = signature_of(obj, user_id, usk_id)
        if sig is None or not verify_key_signature(obj, user_id, usk_id, usk_pub):
            fail(target, key_id, "M_INVALID_SIGNATURE", "not signed by the user-signing key")
            return
        user_sigs.append((target, usk_id, sig))
