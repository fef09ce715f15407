"""Cross-signing keys and signatures, and room key backups, over HTTP."""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from tests.e2ee_helpers import b64, sign
from tests.rooms_helpers import User
from tests.test_e2ee_keys import keyed

PASSWORD = "correct horse"


class CrossKey:
    def __init__(self, user_id: str, usage: str) -> None:
        self.user_id, self.usage = user_id, usage
        self.key = SigningKey.generate()
        self.public = b64(bytes(self.key.verify_key))
        self.key_id = f"ed25519:{self.public}"

    def body(self, signer: CrossKey | None = None) -> dict[str, Any]:
        obj = {"user_id": self.user_id, "usage": [self.usage], "keys": {self.key_id: self.public}}
        return sign(obj, self.user_id, signer.key_id, signer.key) if signer else obj


def password_auth(user: User, session: str) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": PASSWORD, "session": session}


async def test_cross_signing_upload_query_and_signatures(client: Any) -> None:
    alice, dev = await keyed(client, "alice")
    bob, _ = await keyed(client, "bob")
    msk, ssk, usk = (CrossKey(alice.user_id, u) for u in ("master", "self_signing", "user_signing"))
    # the first upload needs no password
    await alice.call("POST", "/keys/device_signing/upload", json={
        "master_key": msk.body(), "self_signing_key": ssk.body(msk), "user_signing_key": usk.body(msk)})
    # a self-signing key not signed by the master key is refused
    rogue = CrossKey(alice.user_id, "self_signing")
    bad = await alice.call("POST", "/keys/device_signing/upload", json={"self_signing_key": rogue.body()},
                           expect=401)  # replacing keys asks for the password first
    done = await alice.call("POST", "/keys/device_signing/upload", json={
        "self_signing_key": rogue.body(), "auth": password_auth(alice, bad["session"])}, expect=400)
    assert done["errcode"] == "M_INVALID_SIGNATURE"
    # bob sees alice's master and self-signing keys, not her user-signing key
    seen = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert seen["master_keys"][alice.user_id]["keys"] == {msk.key_id: msk.public}
    assert seen["self_signing_keys"][alice.user_id]["keys"] == {ssk.key_id: ssk.public}
    assert alice.user_id not in seen["user_signing_keys"]
    own = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert own["user_signing_keys"][alice.user_id]["keys"] == {usk.key_id: usk.public}
    # alice signs her device with her self-signing key; a forged signature is a failure, not stored
    signed = sign(dev.device_keys(), alice.user_id, ssk.key_id, ssk.key)
    forged = sign(dev.device_keys(), alice.user_id, ssk.key_id, SigningKey.generate())
    result = await alice.call("POST", "/keys/signatures/upload", json={alice.user_id: {dev.device_id: forged}})
    assert result["failures"][alice.user_id][dev.device_id]["errcode"] == "M_INVALID_SIGNATURE"
    result = await alice.call("POST", "/keys/signatures/upload", json={alice.user_id: {dev.device_id: signed}})
    assert result["failures"] == {}
    seen = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert ssk.key_id in seen["device_keys"][alice.user_id][dev.device_id]["signatures"][alice.user_id]
    # bob signs alice's master key with his user-signing key: only bob sees that signature
    bmsk, busk = CrossKey(bob.user_id, "master"), CrossKey(bob.user_id, "user_signing")
    await bob.call("POST", "/keys/device_signing/upload", json={"master_key": bmsk.body(),
                                                                "user_signing_key": busk.body(bmsk)})
    their = seen["master_keys"][alice.user_id]
    result = await bob.call("POST", "/keys/signatures/upload", json={
        alice.user_id: {msk.public: sign(their, bob.user_id, busk.key_id, busk.key)}})
    assert result["failures"] == {}
    by_bob = await bob.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert busk.key_id in by_bob["master_keys"][alice.user_id]["signatures"][bob.user_id]
    by_alice = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert bob.user_id not in by_alice["master_keys"][alice.user_id].get("signatures", {})


def session(fmi: int, fwd: int, verified: bool, tag: str) -> dict[str, Any]:
    return {"first_message_index": fmi, "forwarded_count": fwd, "is_verified": verified,
            "session_data": {"ciphertext": tag}}


async def test_room_key_backup(client: Any) -> None:
    alice = await User.new(client, "alice")
    none = await alice.call("GET", "/room_keys/version", expect=404)
    assert none["errcode"] == "M_NOT_FOUND"
    version = (await alice.call("POST", "/room_keys/version", json={
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}}))["version"]
    info = await alice.call("GET", "/room_keys/version")
    assert info["version"] == version and info["count"] == 0
    put = await alice.call("PUT", "/room_keys/keys/!r:x/s1", params={"version": version},
                           json=session(5, 0, False, "first"))
    assert put["count"] == 1
    # a worse key (later index) does not replace it; a better one (verified) does
    await alice.call("PUT", "/room_keys/keys/!r:x/s1", params={"version": version}, json=session(9, 0, False, "worse"))
    got = await alice.call("GET", "/room_keys/keys/!r:x/s1", params={"version": version})
    assert got["session_data"] == {"ciphertext": "first"}
    better = await alice.call("PUT", "/room_keys/keys", params={"version": version}, json={
        "rooms": {"!r:x": {"sessions": {"s1": session(9, 0, True, "verified"), "s2": session(0, 0, False, "two")}}}})
    assert better["count"] == 2 and better["etag"] != put["etag"]
    got = await alice.call("GET", "/room_keys/keys", params={"version": version})
    assert got["rooms"]["!r:x"]["sessions"]["s1"]["session_data"] == {"ciphertext": "verified"}
    assert (await alice.call("GET", "/room_keys/version"))["etag"] == better["etag"]
    # writing to an old version is refused with the current one named
    newer = (await alice.call("POST", "/room_keys/version", json={
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}}))["version"]
    wrong = await alice.call("PUT", "/room_keys/keys/!r:x/s3", params={"version": version},
                             json=session(0, 0, False, "x"), expect=403)
    assert wrong["errcode"] == "M_WRONG_ROOM_KEYS_VERSION" and wrong["current_version"] == newer
    bad = await alice.call("PUT", "/room_keys/keys/!r:x/s3", params={"version": newer}, json={"x": 1}, expect=400)
    assert bad["errcode"] == "M_BAD_JSON"
    deleted = await alice.call("DELETE", "/room_keys/keys/!r:x", params={"version": version})
    assert deleted["count"] == 0
    await alice.call("DELETE", f"/room_keys/version/{newer}")
    assert (await alice.call("GET", "/room_keys/version"))["version"] == version
    await alice.call("GET", "/room_keys/version/99", expect=404)


async def test_backup_with_opaque_strings_as_older_clients_send(client: Any) -> None:
    alice = await User.new(client, "alice")
    version = (await alice.call("POST", "/room_keys/version", json={
        "algorithm": "m.megolm_backup.v1", "auth_data": "anopaquestring"}))["version"]
    assert (await alice.call("GET", f"/room_keys/version/{version}"))["auth_data"] == "anopaquestring"
    await alice.call("PUT", "/room_keys/keys/!abcd/1234", params={"version": version}, json={
        "first_message_index": 3, "forwarded_count": 0, "is_verified": False, "session_data": "opaque"})
    got = await alice.call("GET", "/room_keys/keys/!abcd/1234", params={"version": version})
    assert got["session_data"] == "opaque"
    assert (await alice.call("GET", "/room_keys/keys/!none", params={"version": version})) == {"sessions": {}}
    await alice.call("GET", "/room_keys/keys", params={"version": "bogusversion"}, expect=404)
    bad = await alice.call("POST", "/room_keys/version", json={"algorithm": "x"}, expect=400)
    assert bad["errcode"] == "M_BAD_JSON"


async def test_who_hears_of_cross_signing_changes(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(invite=[bob.user_id])
    await bob.call("POST", f"/join/{room}")
    start = await bob.sync()
    msk, ssk, usk = (CrossKey(alice.user_id, u) for u in ("master", "self_signing", "user_signing"))
    await alice.call("POST", "/keys/device_signing/upload", json={"master_key": msk.body(),
                                                                  "self_signing_key": ssk.body(msk)})
    seen = await bob.sync(start["next_batch"])
    assert alice.user_id in seen["device_lists"]["changed"]
    # a new user-signing key is alice's own business (password asked: keys exist now)
    first = await alice.call("POST", "/keys/device_signing/upload", json={"user_signing_key": usk.body(msk)},
                             expect=401)
    await alice.call("POST", "/keys/device_signing/upload", json={
        "user_signing_key": usk.body(msk), "auth": {"type": "m.login.password", "user": alice.user_id,
                                                    "password": PASSWORD, "session": first["session"]}})
    quiet = await bob.sync(seen["next_batch"])
    assert alice.user_id not in quiet["device_lists"]["changed"]
    own = await alice.call("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert own["user_signing_keys"][alice.user_id]["keys"] == {usk.key_id: usk.public}
