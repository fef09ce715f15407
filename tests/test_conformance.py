"""Conformance with the Client-Server API for what stock clients call: capabilities, room tags,
registration as Element starts it, account deactivation, OpenID tokens (issue 11)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import nio

from bench.servers import RunningServer
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.conftest import auth, register
from tests.rooms_helpers import User
from tests.test_federation_whispr import membership_in_timeline, pair, users_on_both  # noqa: F401 (fixture)
from tests.test_nio_client import PASSWORD, backend_env, server_url  # noqa: F401 (fixtures)

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
    versions = caps["m.room_versions"]
    assert versions["default"] == "11"
    assert versions["available"] == {v: "stable" for v in KNOWN_ROOM_VERSIONS}
    assert {"10", "11", "12"} <= versions["available"].keys()
    assert caps["m.change_password"] == {"enabled": True}
    assert caps["m.set_displayname"] == {"enabled": True}
    assert caps["m.set_avatar_url"] == {"enabled": True}
    assert caps["m.3pid_changes"] == {"enabled": True}
    assert caps["m.get_login_token"] == {"enabled": False}
    # Honest: what is enabled works, what is not is not served.
    resp = await client.put(f"{V3}/profile/@cap:test.local/displayname", headers=auth(token),
                            json={"displayname": "Cap"})
    assert resp.status == 200
    for path in ("/_matrix/client/v1/login/get_token",):
        resp = await client.post(path, headers=auth(token), json={})
        assert resp.status == 404, path
    # 3pid changes are served: adding an address asks for the password first.
    resp = await client.post(f"{V3}/account/3pid/add", headers=auth(token), json={"sid": "s", "client_secret": "c"})
    assert resp.status == 401 and (await resp.json())["flows"] == [{"stages": ["m.login.password"]}]
    for version in ("10", "11", "12"):
        resp = await client.post(f"{V3}/createRoom", headers=auth(token), json={"room_version": version})
        assert resp.status == 200, version
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


# ==== registration ===============================================================================

async def post_register(client: Any, body: dict[str, Any], status: int) -> dict[str, Any]:
    resp = await client.post(f"{V3}/register", json=body)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_register_as_element_starts_it(client: Any) -> None:
    # Element's first call: no parameters, no auth: the flows and a session, not a 400.
    first = await post_register(client, {}, 401)
    assert first["flows"] == [{"stages": ["m.login.dummy"]}] and first["session"] and first["completed"] == []
    assert first["params"] == {}
    reg = await post_register(client, {"username": "elle", "password": "correct horse",
                                       "initial_device_display_name": "Element Web",
                                       "auth": {"type": "m.login.dummy", "session": first["session"]}}, 200)
    assert reg["user_id"] == "@elle:test.local" and reg["access_token"]
    resp = await client.get(f"{V3}/devices", headers=auth(reg["access_token"]))
    assert [d["display_name"] for d in (await resp.json())["devices"]] == ["Element Web"]


async def test_register_session_keeps_the_first_requests_parameters(client: Any) -> None:
    first = await post_register(client, {"username": "kept", "password": "correct horse", "device_id": "KEPTDEV",
                                         "initial_device_display_name": "Phone", "refresh_token": True}, 401)
    # The follow-up carries only auth.
    done = {"auth": {"type": "m.login.dummy", "session": first["session"]}}
    reg = await post_register(client, done, 200)
    assert reg["user_id"] == "@kept:test.local" and reg["device_id"] == "KEPTDEV"
    assert reg["refresh_token"] and reg["expires_in_ms"] > 0
    resp = await client.get(f"{V3}/devices", headers=auth(reg["access_token"]))
    assert [(d["device_id"], d["display_name"]) for d in (await resp.json())["devices"]] == [("KEPTDEV", "Phone")]
    resp = await client.post(f"{V3}/login", json={"type": "m.login.password", "password": "correct horse",
                                                  "identifier": {"type": "m.id.user", "user": "kept"}})
    assert resp.status == 200  # the remembered password is the account's

    # A completed session's request, retried, gets the same answer (and creates nothing).
    assert await post_register(client, done, 200) == reg
    assert await post_register(client, {**done, "username": "kept", "password": "correct horse",
                                        "device_id": "KEPTDEV", "refresh_token": True}, 200) == reg
    assert await post_register(client, {**done, "username": "other"}, 200) == reg
    resp = await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))
    assert (await resp.json())["user_id"] == "@kept:test.local"

    # inhibit_login is remembered too.
    first = await post_register(client, {"username": "quiet", "password": "correct horse",
                                         "inhibit_login": True}, 401)
    reg = await post_register(client, {"auth": {"type": "m.login.dummy", "session": first["session"]}}, 200)
    assert reg == {"user_id": "@quiet:test.local", "home_server": "test.local"}

    # No password anywhere in the round: a clear error once the stages are done.
    first = await post_register(client, {}, 401)
    err = await post_register(client, {"auth": {"type": "m.login.dummy", "session": first["session"]}}, 400)
    assert err["errcode"] == "M_MISSING_PARAM"
    # Bad parameters are refused at once, before any stage.
    for bad, errcode in (({"inhibit_login": "yes"}, "M_BAD_JSON"), ({"password": "short"}, "M_WEAK_PASSWORD"),
                         ({"username": "kept"}, "M_USER_IN_USE"), ({"username": "Kept"}, "M_INVALID_USERNAME")):
        assert (await post_register(client, bad, 400))["errcode"] == errcode
    # A session made elsewhere (another endpoint's) is not a registration session.
    err = await post_register(client, {"username": "x1", "password": "correct horse",
                                       "auth": {"type": "m.login.dummy", "session": "made-up"}}, 400)
    assert err["errcode"] == "M_UNKNOWN"


async def test_register_available_username_rules_and_reserved_names(serve: Any) -> None:
    client = await serve(registration={"reserved_localparts": ["admin", "staff"]})
    await register(client, "taken")

    async def available(name: str, status: int) -> dict[str, Any]:
        resp = await client.get(f"{V3}/register/available", params={"username": name})
        assert resp.status == status, (name, await resp.text())
        return await resp.json()

    assert await available("free", 200) == {"available": True}
    assert await available("a.b_c=d-e/f+0", 200) == {"available": True}  # the spec's whole grammar
    assert (await available("taken", 400))["errcode"] == "M_USER_IN_USE"
    longest = "x" * (255 - len("@:test.local"))
    assert await available(longest, 200) == {"available": True}
    for bad in ("Upper", "sp ace", "caf\u00e9", "colon:", "", longest + "x"):
        assert (await available(bad, 400))["errcode"] == "M_INVALID_USERNAME", bad
    resp = await client.get(f"{V3}/register/available")
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_USERNAME"
    for reserved in ("admin", "staff"):
        assert (await available(reserved, 400))["errcode"] == "M_INVALID_USERNAME"
        err = await post_register(client, {"username": reserved, "password": "correct horse"}, 400)
        assert err["errcode"] == "M_INVALID_USERNAME" and "reserved" in err["error"]
    # A name not on this server's list is free.
    assert await available("root", 200) == {"available": True}


async def test_nio_registers_interactively_and_sees_reserved_and_taken_names(server_url: str) -> None:
    first, again, reserved, user = (nio.AsyncClient(server_url, "nio_ui") for _ in range(4))
    try:
        # Step one as Element makes it (nio always sends a stage): `{}` gets the flows and a session.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server_url}/_matrix/client/v3/register", json={}) as resp:
                assert resp.status == 401
                session = (await resp.json())["session"]
        # Step two: the stage done with the parameters (nio expects flows in any answer of
        # register_interactive, so it reads the success as an error: the login below proves it).
        await first.register_interactive("nio_ui", PASSWORD, {"type": "m.login.dummy", "session": session},
                                         device_name="nio")
        login = await user.login(PASSWORD, device_name="nio login")
        assert isinstance(login, nio.LoginResponse) and login.user_id.startswith("@nio_ui:"), login

        taken = await again.register("nio_ui", PASSWORD)
        assert isinstance(taken, nio.responses.RegisterErrorResponse) and taken.status_code == "M_USER_IN_USE", taken
        # The sample config reserves "admin".
        refused = await reserved.register("admin", PASSWORD)
        assert isinstance(refused, nio.responses.RegisterErrorResponse), refused
        assert refused.status_code == "M_INVALID_USERNAME", refused
    finally:
        for c in (first, again, reserved, user):
            await c.close()


async def test_register_with_email_the_last_request_carries_only_auth(serve: Any, smtp: Any) -> None:
    from tests.test_email_verification import new_secret, request_register_token, submit_code

    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True})
    first = await post_register(client, {}, 401)
    assert first["flows"] == [{"stages": ["m.login.email.identity"]}]
    session = first["session"]
    # Element sends the parameters with the session, then polls with the stage only.
    second = await post_register(client, {"username": "mel", "password": "correct horse",
                                          "auth": {"session": session}}, 401)
    assert second["session"] == session and second["completed"] == []
    secret = new_secret()
    sid = (await (await request_register_token(client, "mel@example.org", secret)).json())["sid"]
    assert (await submit_code(client, sid, secret, smtp.code_for("mel@example.org"))).status == 200
    stage = {"auth": {"type": "m.login.email.identity", "session": session,
                      "threepid_creds": {"sid": sid, "client_secret": secret}}}
    reg = await post_register(client, stage, 200)
    assert reg["user_id"] == "@mel:test.local"
    # The retry (the mailed token is spent by now) answers the same.
    assert await post_register(client, stage, 200) == reg


# ==== account deactivation =======================================================================

async def deactivate(client: Any, token: str, user: str, password: str = "correct horse", **body: Any) -> Any:
    first = await client.post(f"{V3}/account/deactivate", headers=auth(token), json=body)
    assert first.status == 401, await first.text()
    flows = (await first.json())["flows"]
    assert flows == [{"stages": ["m.login.password"]}]
    return await client.post(f"{V3}/account/deactivate", headers=auth(token), json={**body, "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password,
        "session": (await first.json())["session"]}})


async def test_deactivate_with_erase_leaves_rooms_revokes_everything_and_keeps_the_name(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    await alice.call("PUT", f"/profile/{alice.user_id}/displayname", json={"displayname": "Alice A."})
    await alice.call("PUT", f"/profile/{alice.user_id}/avatar_url", json={"avatar_url": "mxc://test.local/abc"})
    await alice.call("PUT", f"/profile/{alice.user_id}/org.whispr.bio", json={"org.whispr.bio": "hello"})
    own = await alice.create_room()
    await alice.call("POST", f"/rooms/{own}/invite", json={"user_id": bob.user_id})
    await bob.call("POST", f"/join/{own}")
    bobs = await bob.create_room(preset="public_chat")
    await alice.call("POST", f"/join/{bobs}")
    invited = await bob.create_room(invite=[alice.user_id])
    resp = await client.post(f"{V3}/login", json={"type": "m.login.password", "password": "correct horse",
                                                  "identifier": {"type": "m.id.user", "user": "alice"},
                                                  "refresh_token": True})
    second = await resp.json()
    openid = await alice.call("POST", f"/user/{alice.user_id}/openid/request_token", json={})
    since = (await bob.sync())["next_batch"]

    # Without the password, or with a wrong one: not deactivated.
    resp = await deactivate(client, alice.token, "alice", password="wrong password")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.post(f"{V3}/account/deactivate", headers=alice.h, json={"erase": "yes"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_BAD_JSON"
    # Someone else's password does not deactivate alice.
    resp = await deactivate(client, alice.token, "bob")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    await alice.call("GET", "/account/whoami")

    resp = await deactivate(client, alice.token, "alice", erase=True)
    assert resp.status == 200 and await resp.json() == {"id_server_unbind_result": "no-support"}

    # Every token is dead: both devices' access tokens, the refresh token.
    for token in (alice.token, second["access_token"]):
        resp = await client.get(f"{V3}/account/whoami", headers=auth(token))
        assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": second["refresh_token"]})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    # Login: deactivated (for whoever has the password), the name never given again.
    resp = await client.post(f"{V3}/login", json={"type": "m.login.password", "password": "correct horse",
                                                  "identifier": {"type": "m.id.user", "user": "alice"}})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_USER_DEACTIVATED"
    resp = await client.post(f"{V3}/login", json={"type": "m.login.password", "password": "wrong password",
                                                  "identifier": {"type": "m.id.user", "user": "alice"}})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.post(f"{V3}/register", json={"username": "alice", "password": "correct horse"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_USER_IN_USE"
    resp = await client.get(f"{V3}/register/available", params={"username": "alice"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_USER_IN_USE"

    # Out of every room (joined, own, invited), with the leave events sent.
    for room in (own, bobs, invited):
        member = await bob.call("GET", f"/rooms/{room}/state/m.room.member/{alice.user_id}")
        assert member["membership"] == "leave", room
    body = await bob.sync(since)
    for room in (own, bobs):
        events = body["rooms"]["join"][room]["timeline"]["events"]
        assert [e["content"]["membership"] for e in events if e.get("state_key") == alice.user_id] == ["leave"]
    # The profile is erased; the user directory no longer finds alice.
    assert await bob.call("GET", f"/profile/{alice.user_id}") == {}
    found = await bob.call("POST", "/user_directory/search", json={"search_term": "alice"})
    assert found["results"] == []
    # The OpenID token is gone with the rest (the federation endpoint is tested with two servers).
    assert openid["access_token"]


async def test_deactivate_without_erase_keeps_the_profile(client: Any) -> None:
    carol, dan = await User.new(client, "carol"), await User.new(client, "dan")
    await carol.call("PUT", f"/profile/{carol.user_id}/displayname", json={"displayname": "Carol C."})
    resp = await deactivate(client, carol.token, carol.user_id)  # identified by the full user ID
    assert resp.status == 200, await resp.text()
    assert await dan.call("GET", f"/profile/{carol.user_id}") == {"displayname": "Carol C."}
    resp = await client.post(f"{V3}/account/deactivate", json={})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"


# ==== OpenID =====================================================================================

async def test_openid_request_token_shape_and_only_for_yourself(client: Any) -> None:
    erin, fay = await User.new(client, "erin"), await User.new(client, "fay")
    token = await erin.call("POST", f"/user/{erin.user_id}/openid/request_token", json={})
    assert token["token_type"] == "Bearer" and token["matrix_server_name"] == "test.local"
    assert token["expires_in"] == 3600 and len(token["access_token"]) >= 32
    again = await erin.call("POST", f"/user/{erin.user_id}/openid/request_token", json={})
    assert again["access_token"] != token["access_token"]
    err = await fay.call("POST", f"/user/{erin.user_id}/openid/request_token", json={}, expect=403)
    assert err["errcode"] == "M_FORBIDDEN"
    # The OpenID token is not an access token.
    resp = await client.get(f"{V3}/account/whoami", headers=auth(token["access_token"]))
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    # The spec's method is POST.
    resp = await client.get(f"{V3}/user/{erin.user_id}/openid/request_token", headers=erin.h)
    assert resp.status == 405 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"


# ==== over federation: two Whispr servers ========================================================

async def test_openid_userinfo_and_deactivation_over_federation(
        pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await bob.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await alice.call("POST", f"/join/{room}")
        await bob.sync_until(membership_in_timeline(room, alice.user_id, "join"))

        # A widget hands alice's OpenID token to its backend, which asks alice's server.
        token = await alice.call("POST", f"/user/{alice.user_id}/openid/request_token", json={})
        assert token["matrix_server_name"] == a.server_name
        userinfo = f"https://{a.server_name}/_matrix/federation/v1/openid/userinfo"

        async def ask(access_token: str | None) -> tuple[int, dict[str, Any]]:
            params = {} if access_token is None else {"access_token": access_token}
            async with session.get(userinfo, params=params, ssl=False) as resp:
                return resp.status, await resp.json()

        assert await ask(token["access_token"]) == (200, {"sub": alice.user_id})
        for bad in ("wot_made-up", "", None):
            status, body = await ask(bad)
            assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", bad

        # Deactivated: the leave reaches the other server's room, the OpenID token dies.
        first = await alice.call("POST", "/account/deactivate", json={}, expect=401)
        await alice.call("POST", "/account/deactivate", json={"erase": True, "auth": {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id},
            "password": "long enough pw", "session": first["session"]}})
        await bob.sync_until(membership_in_timeline(room, alice.user_id, "leave"))
        status, body = await ask(token["access_token"])
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_concurrent_tag_changes_are_all_kept(client: Any) -> None:
    """Element moves a room between tags with a DELETE and a PUT at once: neither may be lost."""
    alice = await User.new(client, "alice")
    room = await alice.create_room()
    tags = f"/user/{alice.user_id}/rooms/{room}/tags"
    await alice.call("PUT", f"{tags}/m.favourite", json={})
    await asyncio.gather(alice.call("DELETE", f"{tags}/m.favourite"),
                         *(alice.call("PUT", f"{tags}/u.t{i}", json={"order": i / 20}) for i in range(20)))
    assert await alice.call("GET", tags) == {"tags": {f"u.t{i}": {"order": i / 20} for i in range(20)}}


# ==== response shapes the spec's schemas type ====================================================
# Found by `make conform` (fuzz/spec_fuzz.py --conformance): an optional field the spec types as a
# string or integer is left out when unknown; null fails the schema (and typed SDKs' decoders).

def without_nulls(value: Any, where: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{where}/{key} is null"
            without_nulls(item, f"{where}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            without_nulls(item, f"{where}/{i}")


async def test_devices_keep_an_unknown_display_name_as_null_for_nio(client: Any) -> None:
    """The one exception: the spec's schema wants display_name absent rather than null, but
    matrix-nio's DevicesResponse requires the key (null allowed), as Synapse sends it."""
    alice = await User.new(client, "alice")  # registered without initial_device_display_name
    devices = (await alice.call("GET", "/devices"))["devices"]
    assert [set(d) for d in devices] == [{"device_id", "display_name", "last_seen_ts", "last_seen_ip"}]
    assert devices[0]["display_name"] is None
    resp = nio.DevicesResponse.from_dict({"devices": devices})
    assert isinstance(resp, nio.DevicesResponse) and resp.devices[0].id == devices[0]["device_id"]
    device = await alice.call("GET", f"/devices/{devices[0]['device_id']}")
    assert device["device_id"] == devices[0]["device_id"] and device["display_name"] is None
    await alice.call("PUT", f"/devices/{device['device_id']}", json={"display_name": "Phone"})
    assert (await alice.call("GET", f"/devices/{device['device_id']}"))["display_name"] == "Phone"


async def test_joined_members_and_user_search_leave_out_unset_profile_fields(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("PUT", f"/profile/{bob.user_id}/avatar_url", json={"avatar_url": "mxc://test.local/bob"})
    await bob.call("POST", f"/join/{room}", json={})
    joined = (await alice.call("GET", f"/rooms/{room}/joined_members"))["joined"]
    without_nulls(joined)
    assert joined == {alice.user_id: {"display_name": "alice"},
                      bob.user_id: {"display_name": "bob", "avatar_url": "mxc://test.local/bob"}}

    found = await alice.call("POST", "/user_directory/search", json={"search_term": "alice"})
    without_nulls(found)
    assert found["results"] == [{"user_id": alice.user_id, "display_name": "alice"}]
    found = await alice.call("POST", "/user_directory/search", json={"search_term": "bob"})
    assert found["results"] == [{"user_id": bob.user_id, "display_name": "bob", "avatar_url": "mxc://test.local/bob"}]


async def test_whois_connections_carry_no_null_user_agent(client: Any) -> None:
    alice = await User.new(client, "alice")
    whois = await alice.call("GET", f"/admin/whois/{alice.user_id}")
    without_nulls(whois)
    [device] = whois["devices"].values()
    [connection] = device["sessions"][0]["connections"]
    assert connection["ip"] == "127.0.0.1" and isinstance(connection["last_seen"], int)


# ==== deprecated endpoints Synapse still serves ==================================================

async def test_events_by_id_finds_the_event_in_its_room_and_hides_other_rooms(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room()
    event_id = await alice.send(room, "hello")
    got = await alice.call("GET", f"/events/{event_id}")
    assert got["event_id"] == event_id and got["room_id"] == room and got["content"]["body"] == "hello"
    assert got["sender"] == alice.user_id and got["type"] == "m.room.message"
    # bob is not in the room: the event does not exist for him; nor does an unknown one
    assert (await bob.call("GET", f"/events/{event_id}", expect=404))["errcode"] == "M_NOT_FOUND"
    assert (await alice.call("GET", "/events/$nope", expect=404))["errcode"] == "M_NOT_FOUND"


async def test_global_initial_sync_lists_joined_invited_and_archived_rooms(client: Any) -> None:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    joined = await alice.create_room(name="Joined")
    for i in range(3):
        await alice.send(joined, f"m{i}")
    invited = await bob.create_room()
    await bob.call("POST", f"/rooms/{invited}/invite", json={"user_id": alice.user_id})
    left = await alice.create_room()
    await alice.call("POST", f"/rooms/{left}/leave", json={})
    await alice.call("PUT", f"/user/{alice.user_id}/account_data/org.example.a", json={"x": 1})

    body = await alice.call("GET", "/initialSync", params={"limit": "2"})
    assert isinstance(body["end"], str) and body["presence"] == []
    assert {"type": "org.example.a", "content": {"x": 1}} in body["account_data"]
    rooms = {r["room_id"]: r for r in body["rooms"]}
    assert set(rooms) == {joined, invited}
    assert rooms[invited] == {"room_id": invited, "membership": "invite"}
    snapshot = rooms[joined]
    assert snapshot["membership"] == "join" and snapshot["visibility"] == "private"
    assert [e["content"].get("body") for e in snapshot["messages"]["chunk"]] == ["m1", "m2"]
    assert {"start", "end"} <= set(snapshot["messages"])
    assert any(e["type"] == "m.room.name" and e["content"] == {"name": "Joined"} for e in snapshot["state"])

    archived = await alice.call("GET", "/initialSync", params={"archived": "true", "limit": "0"})
    assert {r["room_id"]: r["membership"] for r in archived["rooms"]} == {joined: "join", invited: "invite",
                                                                          left: "leave"}
    assert (await alice.call("GET", "/initialSync", params={"archived": "yes"}, expect=400))["errcode"] \
        == "M_INVALID_PARAM"
    await client.get(f"{V3}/initialSync")  # no token
    assert (await client.get(f"{V3}/initialSync")).status == 401


async def test_room_event_is_404_for_a_room_the_user_cannot_read(client: Any) -> None:
    """The spec documents 404 for "not found or no permission" (Complement's
    TestFetchEventNonWorldReadable); a 403 would tell existing rooms from unknown ones."""
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(preset="private_chat")
    event_id = await alice.send(room, "secret")
    for path in (f"/rooms/{room}/event/{event_id}", f"/rooms/{room}/event/$unknown",
                 f"/rooms/!unknown:test.local/event/{event_id}"):
        assert (await bob.call("GET", path, expect=404))["errcode"] == "M_NOT_FOUND", path
    assert (await alice.call("GET", f"/rooms/{room}/event/{event_id}"))["event_id"] == event_id
    await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility",
                     json={"history_visibility": "world_readable"})
    public_id = await alice.send(room, "public")
    assert (await bob.call("GET", f"/rooms/{room}/event/{public_id}"))["content"]["body"] == "public"
    await bob.call("GET", f"/rooms/{room}/event/{event_id}", expect=404)  # sent while history was shared
