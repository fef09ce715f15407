"""Conformance with the Client-Server API for what stock clients call: capabilities, room tags,
registration as Element starts it, account deactivation, OpenID tokens (issue 11)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import auth, register
from tests.rooms_helpers import User

V3 = "/_matrix/client/v3"


# ==== capabilities ===============================================================================

async def test_capabilities_follow_config_and_the_endpoints_served(serve: Any) -> None:
    client = await serve(rooms={"default_version": "11"})
    resp = await client.get(f"{V3}/capabilities")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    token = (await register(client, "cap"))["access_token"]
    resp = await client.get(f"{V3}/capabilities", headers=auth(token))
    assert resp.status == 200
    caps = (await resp.json())["capabilities"]
    assert caps["m.room_versions"] == {"default": "11",
                                       "available": {"10": "stable", "11": "stable", "12": "stable"}}
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.set_displayname"] == {"enabled": True}
    assert caps["m.set_avatar_url"] == {"enabled": True}
    assert caps["m.3pid_changes"] == {"enabled": False}
    assert caps["m.get_login_token"] == {"enabled": False}
    # Honest: what is enabled works, what is not is not served.
    resp = await client.put(f"{V3}/profile/@cap:test.local/displayname", headers=auth(token),
                            json={"displayname": "Cap"})
    assert resp.status == 200
    for path in ("/_matrix/client/v1/login/get_token", f"{V3}/account/3pid/add", f"{V3}/account/3pid/delete"):
        resp = await client.post(path, headers=auth(token), json={})
        assert resp.status == 404, path
    # The default room version is what createRoom uses.
    resp = await client.post(f"{V3}/createRoom", headers=auth(token), json={})
    room_id = (await resp.json())["room_id"]
    resp = await client.get(f"{V3}/rooms/{room_id}/state/m.room.create", headers=auth(token))
    assert (await resp.json()).get("room_version", "1") == "11"


# ==== room tags ==================================================================================

def room_account_data(body: dict[str, Any], room: str) -> list[dict[str, Any]]:
    return body["rooms"]["join"].get(room, {}).get("account_data", {}).get("events", [])


async def test_room_tags_are_room_account_data_delivered_in_sync(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room()
    tags = f"/user/{alice.user_id}/rooms/{room}/tags"
    assert await alice.call("GET", tags) == {"tags": {}}
    since = (await alice.sync())["next_batch"]

    # A PUT wakes a waiting sync and arrives as m.tag in the room's account data.
    poll = asyncio.create_task(alice.sync(since, timeout=10_000))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await alice.call("PUT", f"{tags}/m.favourite", json={"order": 0.25})
    body = await asyncio.wait_for(poll, 5)
    assert room_account_data(body, room) == [{"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}}}}]
    # without a body, and a second tag kept beside the first
    await alice.call("PUT", f"{tags}/u.work", data=b"")
    await alice.call("PUT", f"{tags}/u.later", json={})
    assert await alice.call("GET", tags) == {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}, "u.later": {}}}
    assert await alice.call("GET", f"/user/{alice.user_id}/rooms/{room}/account_data/m.tag") == {
        "tags": {"m.favourite": {"order": 0.25}, "u.work": {}, "u.later": {}}}

    await alice.call("DELETE", f"{tags}/u.work")
    await alice.call("DELETE", f"{tags}/never-set")
    body = await alice.sync(body["next_batch"])
    assert room_account_data(body, room) == [
        {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}, "u.later": {}}}}]
    # the initial sync carries it too
    assert room_account_data(await alice.sync(), room) == [
        {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}, "u.later": {}}}}]

    # Only for yourself.
    for method in ("GET", "PUT", "DELETE"):
        err = await bob.call(method, f"{tags}" + ("" if method == "GET" else "/m.lowpriority"), expect=403,
                             **({"json": {}} if method == "PUT" else {}))
        assert err["errcode"] == "M_FORBIDDEN"
    # Bad input: a clear Matrix error.
    err = await alice.call("PUT", f"{tags}/{'t' * 256}", json={}, expect=400)
    assert err["errcode"] == "M_INVALID_PARAM"
    await alice.call("PUT", f"{tags}/{'é' * 127}", json={})  # 254 bytes
    for bad in ({"order": "first"}, {"order": True}):
        assert (await alice.call("PUT", f"{tags}/u.x", json=bad, expect=400))["errcode"] == "M_BAD_JSON"
    err = await alice.call("PUT", f"{tags}/u.x", data=b"[1]", expect=400)
    assert err["errcode"] == "M_BAD_JSON"
