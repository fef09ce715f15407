"""Account locking and suspension by server admins (PUT /_matrix/client/v1/admin/lock|suspend/{userId}):
a locked user gets 401 M_USER_LOCKED with soft_logout everywhere but logout, and no new token; a
suspended one reads but cannot send, join, invite or change their profile (403 M_USER_SUSPENDED)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.conftest import auth, login
from tests.rooms_helpers import User
from tests.test_admin_api import start

ADMIN = "/_matrix/client/v1/admin"


async def moderate(client: Any, token: str, kind: str, user_id: str, value: bool, expect: int = 200) -> Any:
    field = {"lock": "locked", "suspend": "suspended"}[kind]
    resp = await client.put(f"{ADMIN}/{kind}/{quote(user_id)}", headers=auth(token), json={field: value})
    body = await resp.json()
    assert resp.status == expect, body
    return body


async def test_lock(serve: Any) -> None:
    client, root = await start(serve)
    alice = await User.new(client, "alice")
    assert await moderate(client, root, "lock", alice.user_id, True) == {"locked": True}
    got = await client.get(f"{ADMIN}/lock/{quote(alice.user_id)}", headers=auth(root))
    assert await got.json() == {"locked": True}
    body = await alice.call("GET", "/sync", expect=401)
    assert body["errcode"] == "M_USER_LOCKED" and body["soft_logout"] is True
    assert (await alice.call("GET", "/account/whoami", expect=401))["errcode"] == "M_USER_LOCKED"
    resp = await login(client, "alice")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_USER_LOCKED"
    # Unlocked: the same session works again (it was never invalidated).
    await moderate(client, root, "lock", alice.user_id, False)
    await alice.call("GET", "/account/whoami")
    await moderate(client, root, "lock", alice.user_id, True)
    await alice.call("POST", "/logout")  # logging out is allowed while locked
    await moderate(client, root, "lock", alice.user_id, False)
    assert (await login(client, "alice")).status == 200


async def test_suspend(serve: Any) -> None:
    client, root = await start(serve)
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await bob.create_room(preset="public_chat")
    own_room = await alice.create_room(preset="public_chat")
    mine = await alice.send(own_room, "mine")
    await moderate(client, root, "suspend", alice.user_id, True)
    caps = (await (await client.get("/_matrix/client/v3/capabilities", headers=auth(root))).json())["capabilities"]
    assert caps["m.account_moderation"] == {"lock": True, "suspend": True}
    assert "m.account_moderation" not in (await alice.call("GET", "/capabilities"))["capabilities"]

    def suspended(body: Any) -> None:
        assert body["errcode"] == "M_USER_SUSPENDED", body

    suspended(await alice.call("POST", f"/join/{room}", expect=403))
    suspended(await alice.call("POST", "/createRoom", expect=403, json={}))
    suspended(await alice.send(own_room, "hello", expect=403))
    suspended(await alice.call("POST", f"/rooms/{own_room}/invite", expect=403, json={"user_id": bob.user_id}))
    suspended(await alice.call("PUT", f"/profile/{quote(alice.user_id)}/displayname", expect=403,
                               json={"displayname": "x"}))
    # Reading, redacting their own events and leaving still work.
    await alice.call("GET", "/sync")
    await alice.call("GET", f"/rooms/{own_room}/messages", params={"dir": "b"})
    await alice.call("PUT", f"/rooms/{own_room}/redact/{mine}/t1", json={})
    await alice.call("POST", f"/rooms/{own_room}/leave")
    await moderate(client, root, "suspend", alice.user_id, False)
    await alice.call("POST", f"/join/{room}")


async def test_admin_only_and_errors(serve: Any) -> None:
    client, root = await start(serve)
    alice = await User.new(client, "alice")
    resp = await client.put(f"{ADMIN}/lock/{quote(alice.user_id)}", headers=alice.h, json={"locked": True})
    assert resp.status == 403
    root_id = (await (await client.get("/_matrix/client/v3/account/whoami", headers=auth(root))).json())["user_id"]
    # Another admin cannot be locked; nor can unknown or remote users.
    await client.put(f"/_synapse/admin/v1/users/{quote(alice.user_id)}/admin", headers=auth(root),
                     json={"admin": True})
    other_admin = alice.token
    assert (await moderate(client, other_admin, "lock", root_id, True, expect=403))["errcode"] == "M_FORBIDDEN"
    assert (await moderate(client, root, "suspend", "@nobody:" + root_id.split(":", 1)[1], True,
                           expect=404))["errcode"] == "M_NOT_FOUND"
    assert (await moderate(client, root, "suspend", "@x:elsewhere.org", True,
                           expect=400))["errcode"] == "M_INVALID_PARAM"
    resp = await client.put(f"{ADMIN}/suspend/{quote(alice.user_id)}", headers=auth(root), json={"suspended": 1})
    assert resp.status == 400
