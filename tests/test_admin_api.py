"""The Synapse-compatible admin API over HTTP, on both backends: shared-secret registration (HMAC computed
here as Synapse's documentation says), users, rooms and their shutdown, media, registration tokens and the
m.login.registration_token stage, the server version; 401 without a token, 403 for non-admins."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any
from urllib.parse import quote

from tests.conftest import SERVER_NAME, auth, login, register
from tests.media_helpers import MEDIA, upload

ADMIN = "/_synapse/admin"
SECRET = "the shared secret of this server"
PASSWORD = "correct horse"


def synapse_mac(nonce: str, user: str, password: str, admin: bool = False, user_type: str | None = None,
                secret: str = SECRET) -> str:
    """As docs/admin_api/register_api.md gives it: HMAC-SHA1 keyed with the shared secret over nonce,
    username, password and "admin"/"notadmin" (and the user type), separated by NUL bytes, hex-encoded."""
    mac = hmac.new(key=secret.encode("utf8"), digestmod=hashlib.sha1)
    mac.update(nonce.encode("utf8"))
    mac.update(b"\x00")
    mac.update(user.encode("utf8"))
    mac.update(b"\x00")
    mac.update(password.encode("utf8"))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type:
        mac.update(b"\x00")
        mac.update(user_type.encode("utf8"))
    return mac.hexdigest()


async def nonce(client: Any) -> str:
    resp = await client.get(f"{ADMIN}/v1/register")
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["nonce"])


async def shared_secret_register(client: Any, user: str, admin: bool = False, **extra: Any) -> Any:
    n = await nonce(client)
    return await client.post(f"{ADMIN}/v1/register", json={
        "nonce": n, "username": user, "password": PASSWORD, "admin": admin,
        "mac": synapse_mac(n, user, PASSWORD, admin, extra.get("user_type")), **extra})


async def start(serve: Any, **overrides: Any) -> tuple[Any, str]:
    """A server with the shared secret set, and the access token of an admin registered with it."""
    client = await serve(registration_shared_secret=SECRET, **overrides)
    resp = await shared_secret_register(client, "root", admin=True)
    assert resp.status == 200, await resp.text()
    return client, (await resp.json())["access_token"]


def uid(localpart: str) -> str:
    return f"@{localpart}:{SERVER_NAME}"


def q(value: str) -> str:
    return quote(value, safe="")


async def expect(resp: Any, status: int, errcode: str | None = None) -> Any:
    body = await resp.json()
    assert resp.status == status, (resp.status, body)
    if errcode is not None:
        assert body["errcode"] == errcode, body
    return body


# --- shared-secret registration ----------------------------------------------------------------


async def test_shared_secret_registration_as_synapse_documents_it(serve: Any) -> None:
    client, admin_token = await start(serve)
    whoami = await client.get("/_matrix/client/v3/account/whoami", headers=auth(admin_token))
    assert (await expect(whoami, 200))["user_id"] == uid("root")  # a reserved name: the operator's to give
    body = await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('root'))}", headers=auth(admin_token)), 200)
    assert body["admin"] is True

    # not an admin, with a display name and a user type (which the MAC then covers)
    resp = await shared_secret_register(client, "bot1", displayname="Bot One", user_type="bot")
    created = await expect(resp, 200)
    assert created["user_id"] == uid("bot1") and created["home_server"] == SERVER_NAME
    assert created["access_token"] and created["device_id"]
    body = await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('bot1'))}", headers=auth(admin_token)), 200)
    assert body["admin"] is False and body["user_type"] == "bot" and body["displayname"] == "Bot One"
    assert (await login(client, "bot1", PASSWORD)).status == 200

    # a wrong MAC: 403, and the nonce is spent all the same
    n = await nonce(client)
    wrong = {"nonce": n, "username": "mallory", "password": PASSWORD, "admin": True,
             "mac": synapse_mac(n, "mallory", PASSWORD, admin=False)}
    await expect(await client.post(f"{ADMIN}/v1/register", json=wrong), 403, "M_FORBIDDEN")
    wrong["mac"] = synapse_mac(n, "mallory", PASSWORD, admin=True)
    await expect(await client.post(f"{ADMIN}/v1/register", json=wrong), 400, "M_UNKNOWN")
    # the MAC keyed with another secret
    n = await nonce(client)
    other = {"nonce": n, "username": "mallory", "password": PASSWORD, "admin": False,
             "mac": synapse_mac(n, "mallory", PASSWORD, secret="guess")}
    await expect(await client.post(f"{ADMIN}/v1/register", json=other), 403, "M_FORBIDDEN")
    assert (await login(client, "mallory", PASSWORD)).status == 403
    # an unknown nonce, a malformed body, a name in use
    await expect(await client.post(f"{ADMIN}/v1/register", json={**other, "nonce": "made-up"}), 400, "M_UNKNOWN")
    n = await nonce(client)
    await expect(await client.post(f"{ADMIN}/v1/register", json={"nonce": n, "username": 5}), 400)
    await expect(await client.post(f"{ADMIN}/v1/register", data=b"[not json"), 400, "M_NOT_JSON")
    resp = await shared_secret_register(client, "bot1")
    await expect(resp, 400, "M_USER_IN_USE")


async def test_shared_secret_registration_is_off_without_a_secret(serve: Any) -> None:
    client = await serve()
    await expect(await client.get(f"{ADMIN}/v1/register"), 400, "M_UNKNOWN")
    body = {"nonce": "x", "username": "root", "password": PASSWORD, "admin": True,
            "mac": synapse_mac("x", "root", PASSWORD, True, secret="")}
    await expect(await client.post(f"{ADMIN}/v1/register", json=body), 400, "M_UNKNOWN")


async def test_server_version(serve: Any) -> None:
    client = await serve()
    body = await expect(await client.get(f"{ADMIN}/v1/server_version"), 200)
    assert body["server_version"].startswith("Whispr ")


# --- auth ----------------------------------------------------------------------------------------

ADMIN_ONLY = [
    ("GET", "/v2/users"), ("GET", f"/v2/users/{q(uid('bob'))}"), ("PUT", f"/v2/users/{q(uid('bob'))}"),
    ("GET", f"/v1/users/{q(uid('bob'))}/admin"), ("PUT", f"/v1/users/{q(uid('bob'))}/admin"),
    ("POST", f"/v1/deactivate/{q(uid('bob'))}"), ("POST", f"/v1/reset_password/{q(uid('bob'))}"),
    ("GET", f"/v1/whois/{q(uid('bob'))}"), ("GET", f"/v1/users/{q(uid('bob'))}/media"),
    ("GET", f"/v1/users/{q(uid('bob'))}/joined_rooms"), ("GET", f"/v2/users/{q(uid('bob'))}/devices"),
    ("DELETE", f"/v2/users/{q(uid('bob'))}/devices/ABC"),
    ("GET", "/v1/rooms"), ("GET", "/v1/rooms/!r:x"), ("GET", "/v1/rooms/!r:x/members"),
    ("GET", "/v1/rooms/!r:x/state"), ("DELETE", "/v2/rooms/!r:x"), ("DELETE", "/v1/rooms/!r:x"),
    ("GET", "/v2/rooms/!r:x/delete_status"), ("GET", "/v2/rooms/delete_status/abc"),
    ("GET", "/v1/rooms/!r:x/block"), ("PUT", "/v1/rooms/!r:x/block"),
    ("POST", f"/v1/media/quarantine/{SERVER_NAME}/abc"), ("POST", f"/v1/media/unquarantine/{SERVER_NAME}/abc"),
    ("DELETE", f"/v1/media/{SERVER_NAME}/abc"),
    ("GET", "/v1/registration_tokens"), ("POST", "/v1/registration_tokens/new"),
    ("GET", "/v1/registration_tokens/abc"), ("PUT", "/v1/registration_tokens/abc"),
    ("DELETE", "/v1/registration_tokens/abc"),
]


async def test_every_endpoint_needs_a_server_admin(serve: Any) -> None:
    client, _ = await start(serve)
    bob = await register(client, "bob")
    for method, path in ADMIN_ONLY:
        resp = await client.request(method, ADMIN + path, json={})
        await expect(resp, 401, "M_MISSING_TOKEN")
        resp = await client.request(method, ADMIN + path, json={}, headers=auth("not-a-token"))
        await expect(resp, 401, "M_UNKNOWN_TOKEN")
        resp = await client.request(method, ADMIN + path, json={}, headers=auth(bob["access_token"]))
        await expect(resp, 403, "M_FORBIDDEN")
    # nothing of it changed bob
    assert (await login(client, "bob")).status == 200


# --- users ---------------------------------------------------------------------------------------


async def test_list_and_search_users(serve: Any) -> None:
    client, token = await start(serve)
    for name in ("alice", "bob", "carol"):
        await register(client, name)
    h = auth(token)
    body = await expect(await client.get(f"{ADMIN}/v2/users", headers=h), 200)
    assert [u["name"] for u in body["users"]] == [uid(n) for n in ("alice", "bob", "carol", "root")]
    assert body["total"] == 4 and "next_token" not in body
    alice = body["users"][0]
    assert alice["admin"] is False and alice["deactivated"] is False and alice["displayname"] == "alice"
    assert alice["creation_ts"] > 1_600_000_000_000  # ms in the list
    page = await expect(await client.get(f"{ADMIN}/v2/users?limit=2", headers=h), 200)
    assert [u["name"] for u in page["users"]] == [uid("alice"), uid("bob")] and page["next_token"] == "2"
    rest = await expect(await client.get(f"{ADMIN}/v2/users?limit=2&from=2", headers=h), 200)
    assert [u["name"] for u in rest["users"]] == [uid("carol"), uid("root")] and "next_token" not in rest
    back = await expect(await client.get(f"{ADMIN}/v2/users?dir=b&limit=1", headers=h), 200)
    assert back["users"][0]["name"] == uid("root")
    found = await expect(await client.get(f"{ADMIN}/v2/users?name=AR", headers=h), 200)
    assert [u["name"] for u in found["users"]] == [uid("carol")]
    # a LIKE wildcard is taken literally
    assert (await expect(await client.get(f"{ADMIN}/v2/users?name=%25", headers=h), 200))["total"] == 0
    admins = await expect(await client.get(f"{ADMIN}/v2/users?admins=true", headers=h), 200)
    assert [u["name"] for u in admins["users"]] == [uid("root")]
    same = await expect(await client.get(f"{ADMIN}/v2/users?guests=false", headers=h), 200)
    assert same["total"] == 4
    for bad in ("from=-1", "limit=x", "order_by=password", "dir=sideways", "deactivated=maybe", "guests=no"):
        await expect(await client.get(f"{ADMIN}/v2/users?{bad}", headers=h), 400)


async def test_query_create_and_modify_a_user(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('nobody'))}", headers=h), 404, "M_NOT_FOUND")
    await expect(await client.get(f"{ADMIN}/v2/users/{q('@x:elsewhere.org')}", headers=h), 400)
    await expect(await client.get(f"{ADMIN}/v2/users/not-a-user-id", headers=h), 400)

    resp = await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h, json={
        "password": PASSWORD, "displayname": "Dave", "admin": False,
        "threepids": [{"medium": "email", "address": "dave@example.org"}]})
    created = await expect(resp, 201)
    assert created["name"] == uid("dave") and created["displayname"] == "Dave" and created["admin"] is False
    assert [t["address"] for t in created["threepids"]] == ["dave@example.org"]
    assert created["creation_ts"] < 10_000_000_000  # seconds in the query, as Synapse's
    dave = await login(client, "dave", PASSWORD)
    assert dave.status == 200
    dave_token = (await dave.json())["access_token"]

    # modify: admin, display name, password (devices logged out by default)
    resp = await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h,
                            json={"admin": True, "displayname": "David", "password": "another horse"})
    body = await expect(resp, 200)
    assert body["admin"] is True and body["displayname"] == "David"
    await expect(await client.get("/_matrix/client/v3/account/whoami", headers=auth(dave_token)), 401)
    assert (await login(client, "dave", "another horse")).status == 200
    profile = await expect(await client.get(f"/_matrix/client/v3/profile/{q(uid('dave'))}"), 200)
    assert profile["displayname"] == "David"
    is_admin = await client.get(f"{ADMIN}/v1/users/{q(uid('dave'))}/admin", headers=h)
    assert (await expect(is_admin, 200)) == {"admin": True}
    await expect(await client.put(f"{ADMIN}/v1/users/{q(uid('dave'))}/admin", headers=h,
                                  json={"admin": False}), 200)
    assert (await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('dave'))}/admin", headers=h), 200)) \
        == {"admin": False}

    for bad in ({"admin": "yes"}, {"password": 7}, {"displayname": ["x"]}, {"user_type": "wizard"},
                {"threepids": "dave@example.org"}, {"threepids": [{"medium": "msisdn", "address": "1"}]},
                {"password": "short"}):
        resp = await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h, json=bad)
        await expect(resp, 400)
    await expect(await client.put(f"{ADMIN}/v2/users/{q('@x:elsewhere.org')}", headers=h, json={}), 400)
    await expect(await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h, data=b"{"), 400, "M_NOT_JSON")

    # a refused change changes nothing: no half-made account, no half-done reactivation
    for bad in ({"password": PASSWORD, "displayname": "x" * 1000},
                {"password": PASSWORD, "avatar_url": "https://not-mxc.example/a.png"},
                {"password": PASSWORD, "threepids": [{"medium": "email", "address": "dave@example.org"}]}):
        resp = await client.put(f"{ADMIN}/v2/users/{q(uid('erin'))}", headers=h, json=bad)
        await expect(resp, 400)
        await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('erin'))}", headers=h), 404)
        assert (await login(client, "erin", PASSWORD)).status == 403

    # deactivate through PUT, then re-activate with a new password
    body = await expect(await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h,
                                         json={"deactivated": True}), 200)
    assert body["deactivated"] is True and body["threepids"] == []
    assert (await login(client, "dave", "another horse")).status == 403
    await expect(await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h,
                                  json={"deactivated": False}), 400)
    await expect(await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h,
                                  json={"deactivated": False, "password": "short"}), 400, "M_WEAK_PASSWORD")
    still = await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h), 200)
    assert still["deactivated"] is True
    body = await expect(await client.put(f"{ADMIN}/v2/users/{q(uid('dave'))}", headers=h,
                                         json={"deactivated": False, "password": "third horse"}), 200)
    assert body["deactivated"] is False
    assert (await login(client, "dave", "third horse")).status == 200


async def test_deactivate_reset_password_and_whois(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    bob = await register(client, "bob")
    await client.get("/_matrix/client/v3/account/whoami", headers=auth(bob["access_token"]))

    whois = await expect(await client.get(f"{ADMIN}/v1/whois/{q(uid('bob'))}", headers=h), 200)
    assert whois["user_id"] == uid("bob") and list(whois["devices"]) == [bob["device_id"]]
    connection = whois["devices"][bob["device_id"]]["sessions"][0]["connections"][0]
    assert connection["ip"] == "127.0.0.1" and connection["last_seen"] > 0
    # the spec's endpoint: admins, or users about themselves
    spec = f"/_matrix/client/v3/admin/whois/{q(uid('bob'))}"
    assert (await expect(await client.get(spec, headers=h), 200))["user_id"] == uid("bob")
    assert (await expect(await client.get(spec, headers=auth(bob["access_token"])), 200))["user_id"] == uid("bob")
    carol = await register(client, "carol")
    await expect(await client.get(spec, headers=auth(carol["access_token"])), 403, "M_FORBIDDEN")

    devices = await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('bob'))}/devices", headers=h), 200)
    assert devices["total"] == 1 and devices["devices"][0]["device_id"] == bob["device_id"]
    assert devices["devices"][0]["last_seen_ip"] == "127.0.0.1"
    room = await create_room(client, bob["access_token"], name="Bob's")
    rooms = await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('bob'))}/joined_rooms", headers=h), 200)
    assert rooms == {"joined_rooms": [room], "total": 1}
    await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('nobody'))}/joined_rooms", headers=h), 404)
    second = await login(client, "bob")
    second_token = (await second.json())["access_token"]
    second_device = (await second.json())["device_id"]
    await expect(await client.delete(f"{ADMIN}/v2/users/{q(uid('bob'))}/devices/{second_device}", headers=h), 200)
    await expect(await client.get("/_matrix/client/v3/account/whoami", headers=auth(second_token)), 401)

    url = f"{ADMIN}/v1/reset_password/{q(uid('bob'))}"
    await expect(await client.post(url, headers=h, json={}), 400, "M_MISSING_PARAM")
    await expect(await client.post(url, headers=h, json={"new_password": "short"}), 400, "M_WEAK_PASSWORD")
    await expect(await client.post(url, headers=h, json={"new_password": "new horse!", "logout_devices": "no"}), 400)
    await expect(await client.post(f"{ADMIN}/v1/reset_password/{q(uid('nobody'))}", headers=h,
                                   json={"new_password": "new horse!"}), 404)
    await expect(await client.post(url, headers=h, json={"new_password": "new horse!"}), 200)
    await expect(await client.get("/_matrix/client/v3/account/whoami", headers=auth(bob["access_token"])), 401)
    assert (await login(client, "bob")).status == 403
    assert (await login(client, "bob", "new horse!")).status == 200

    url = f"{ADMIN}/v1/deactivate/{q(uid('bob'))}"
    await expect(await client.post(url, headers=h, json={"erase": "yes"}), 400)
    await expect(await client.post(f"{ADMIN}/v1/deactivate/{q(uid('nobody'))}", headers=h, json={}), 404)
    body = await expect(await client.post(url, headers=h, json={"erase": True}), 200)
    assert body == {"id_server_unbind_result": "success"}
    resp = await login(client, "bob", "new horse!")
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_USER_DEACTIVATED"
    user = await expect(await client.get(f"{ADMIN}/v2/users/{q(uid('bob'))}", headers=h), 200)
    assert user["deactivated"] is True and user["erased"] is True and user["displayname"] is None
    listed = await expect(await client.get(f"{ADMIN}/v2/users", headers=h), 200)
    assert uid("bob") not in [u["name"] for u in listed["users"]]
    listed = await expect(await client.get(f"{ADMIN}/v2/users?deactivated=true", headers=h), 200)
    assert uid("bob") in [u["name"] for u in listed["users"]]


# --- rooms ---------------------------------------------------------------------------------------


async def create_room(client: Any, token: str, **body: Any) -> str:
    resp = await client.post("/_matrix/client/v3/createRoom", json=body, headers=auth(token))
    return str((await expect(resp, 200))["room_id"])


async def test_list_rooms_details_members_state(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    music = await create_room(client, alice["access_token"], name="Music Theory", topic="Notation",
                              preset="public_chat", room_alias_name="music", visibility="public")
    books = await create_room(client, bob["access_token"], name="Books")
    await expect(await client.post(f"/_matrix/client/v3/join/{q(music)}", headers=auth(bob["access_token"]),
                                   json={}), 200)

    body = await expect(await client.get(f"{ADMIN}/v1/rooms", headers=h), 200)
    assert [r["room_id"] for r in body["rooms"]] == [books, music]  # by name
    assert body["total_rooms"] == 2 and body["offset"] == 0 and "next_batch" not in body
    m = body["rooms"][1]
    assert m["name"] == "Music Theory" and m["canonical_alias"] == f"#music:{SERVER_NAME}"
    assert m["joined_members"] == 2 and m["joined_local_members"] == 2 and m["public"] is True
    assert m["creator"] == uid("alice") and m["join_rules"] == "public" and m["federatable"] is True
    assert m["state_events"] >= 6 and m["version"] and m["encryption"] is None
    by_size = await expect(await client.get(f"{ADMIN}/v1/rooms?order_by=joined_members", headers=h), 200)
    assert [r["room_id"] for r in by_size["rooms"]] == [music, books]
    page = await expect(await client.get(f"{ADMIN}/v1/rooms?limit=1&from=1", headers=h), 200)
    assert [r["room_id"] for r in page["rooms"]] == [music] and page["prev_batch"] == 0
    for term, expected in (("theory", [music]), ("music", [music]), (books, [books]), ("nothing", [])):
        found = await expect(await client.get(f"{ADMIN}/v1/rooms?search_term={q(term)}", headers=h), 200)
        assert [r["room_id"] for r in found["rooms"]] == expected, term
    public = await expect(await client.get(f"{ADMIN}/v1/rooms?public_rooms=false", headers=h), 200)
    assert [r["room_id"] for r in public["rooms"]] == [books]
    for bad in ("order_by=secret", "from=-2", "limit=lots", "dir=up"):
        await expect(await client.get(f"{ADMIN}/v1/rooms?{bad}", headers=h), 400)

    details = await expect(await client.get(f"{ADMIN}/v1/rooms/{q(music)}", headers=h), 200)
    assert details["topic"] == "Notation" and details["joined_local_devices"] == 2 and details["forgotten"] is False
    members = await expect(await client.get(f"{ADMIN}/v1/rooms/{q(music)}/members", headers=h), 200)
    assert members == {"members": sorted([uid("alice"), uid("bob")]), "total": 2}
    state = await expect(await client.get(f"{ADMIN}/v1/rooms/{q(music)}/state", headers=h), 200)
    assert {"m.room.create", "m.room.name", "m.room.member"} <= {e["type"] for e in state["state"]}
    only = await expect(await client.get(f"{ADMIN}/v1/rooms/{q(music)}/state?type=m.room.member", headers=h), 200)
    assert sorted(e["state_key"] for e in only["state"]) == sorted([uid("alice"), uid("bob")])
    for path in ("", "/members", "/state"):
        await expect(await client.get(f"{ADMIN}/v1/rooms/{q('!unknown:' + SERVER_NAME)}{path}", headers=h),
                     404, "M_NOT_FOUND")


async def test_delete_room_moves_members_to_a_new_room(serve: Any) -> None:
    """new_room_user_id: the local members land in a read-only room of that user, which keeps the aliases."""
    client, token = await start(serve)
    h = auth(token)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    room = await create_room(client, alice["access_token"], name="Bad room", preset="public_chat",
                             room_alias_name="bad")
    await expect(await client.post(f"/_matrix/client/v3/join/{q(room)}", headers=auth(bob["access_token"]),
                                   json={}), 200)
    result = await expect(await client.delete(f"{ADMIN}/v1/rooms/{q(room)}", headers=h, json={
        "new_room_user_id": uid("root"), "room_name": "Closed", "message": "That room broke the rules"}), 200)
    new = result["new_room_id"]
    assert new and new != room
    assert sorted(result["kicked_users"]) == [uid("alice"), uid("bob")]
    assert result["local_aliases"] == [f"#bad:{SERVER_NAME}"]

    bob_h = auth(bob["access_token"])
    joined = await expect(await client.get("/_matrix/client/v3/joined_rooms", headers=bob_h), 200)
    assert joined["joined_rooms"] == [new]
    name = await expect(await client.get(f"/_matrix/client/v3/rooms/{q(new)}/state/m.room.name", headers=bob_h), 200)
    assert name == {"name": "Closed"}
    messages = await expect(await client.get(f"/_matrix/client/v3/rooms/{q(new)}/messages", headers=bob_h), 200)
    assert [e["content"]["body"] for e in messages["chunk"] if e["type"] == "m.room.message"] == [
        "That room broke the rules"]
    levels = await expect(await client.get(f"/_matrix/client/v3/rooms/{q(new)}/state/m.room.power_levels",
                                           headers=bob_h), 200)
    assert levels["users_default"] == -10
    resp = await client.put(f"/_matrix/client/v3/rooms/{q(new)}/send/m.room.message/t1", headers=bob_h,
                            json={"msgtype": "m.text", "body": "hey"})
    await expect(resp, 403, "M_FORBIDDEN")
    resolved = await expect(await client.get(f"/_matrix/client/v3/directory/room/{q('#bad:' + SERVER_NAME)}"), 200)
    assert resolved["room_id"] == new
    await expect(await client.get(f"{ADMIN}/v1/rooms/{q(room)}", headers=h), 404)  # purged


async def wait_for_delete(client: Any, token: str, delete_id: str) -> dict[str, Any]:
    for _ in range(200):
        status = await expect(await client.get(f"{ADMIN}/v2/rooms/delete_status/{delete_id}", headers=auth(token)),
                              200)
        if status["status"] in ("complete", "failed"):
            return dict(status)
        await asyncio.sleep(0.05)
    raise AssertionError("the deletion did not finish")


async def test_delete_room_blocks_purges_and_reports_status(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    room = await create_room(client, alice["access_token"], name="Bad room", preset="public_chat",
                             room_alias_name="bad")
    await expect(await client.post(f"/_matrix/client/v3/join/{q(room)}", headers=auth(bob["access_token"]),
                                   json={}), 200)
    await expect(await client.put(f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/t1",
                                  headers=auth(bob["access_token"]), json={"msgtype": "m.text", "body": "x"}), 200)
    first = await expect(await client.get("/_matrix/client/v3/sync", headers=auth(bob["access_token"])), 200)
    assert room in first["rooms"]["join"]

    url = f"{ADMIN}/v2/rooms/{q(room)}"
    await expect(await client.delete(url, headers=h, json={"block": "yes"}), 400, "M_BAD_JSON")
    await expect(await client.delete(url, headers=h, json={"new_room_user_id": "@root:elsewhere.org"}), 400,
                 "M_INVALID_PARAM")
    await expect(await client.delete(url, headers=h, json={"new_room_user_id": "root"}), 400)
    await expect(await client.delete(f"{ADMIN}/v2/rooms/{q('!unknown:' + SERVER_NAME)}", headers=h, json={}), 404)
    delete_id = (await expect(await client.delete(url, headers=h, json={"block": True, "purge": True}), 200))[
        "delete_id"]
    status = await wait_for_delete(client, token, delete_id)
    assert status["status"] == "complete", status
    assert status["room_id"] == room and status["delete_id"] == delete_id
    assert sorted(status["shutdown_room"]["kicked_users"]) == sorted([uid("alice"), uid("bob")])
    assert status["shutdown_room"]["failed_to_kick_users"] == []
    assert status["shutdown_room"]["local_aliases"] == [f"#bad:{SERVER_NAME}"]
    assert status["shutdown_room"]["new_room_id"] is None
    by_room = await expect(await client.get(f"{ADMIN}/v2/rooms/{q(room)}/delete_status", headers=h), 200)
    assert [r["delete_id"] for r in by_room["results"]] == [delete_id]
    await expect(await client.get(f"{ADMIN}/v2/rooms/delete_status/nope", headers=h), 404)

    # purged: the room is gone; blocked: nobody of ours may join it again
    await expect(await client.get(f"{ADMIN}/v1/rooms/{q(room)}", headers=h), 404)
    assert (await expect(await client.get(f"{ADMIN}/v1/rooms", headers=h), 200))["total_rooms"] == 0
    resp = await client.post(f"/_matrix/client/v3/join/{q(room)}", headers=auth(bob["access_token"]), json={})
    await expect(resp, 403, "M_FORBIDDEN")
    await expect(await client.get(f"/_matrix/client/v3/directory/room/{q('#bad:' + SERVER_NAME)}"), 404)
    assert (await expect(await client.get(f"{ADMIN}/v1/rooms/{q(room)}/block", headers=h), 200)) == {
        "block": True, "user_id": uid("root")}
    # the members' syncs go on without the room
    resp = await client.get(f"/_matrix/client/v3/sync?since={first['next_batch']}&timeout=0",
                            headers=auth(bob["access_token"]))
    later = await expect(resp, 200)
    assert room not in later.get("rooms", {}).get("join", {})
    joined = await expect(await client.get("/_matrix/client/v3/joined_rooms", headers=auth(bob["access_token"])), 200)
    assert joined["joined_rooms"] == []
    # the rest of the server is unharmed
    other = await create_room(client, bob["access_token"], name="Fine")
    await expect(await client.put(f"/_matrix/client/v3/rooms/{q(other)}/send/m.room.message/t2",
                                  headers=auth(bob["access_token"]), json={"msgtype": "m.text", "body": "ok"}), 200)

    # unblock
    await expect(await client.put(f"{ADMIN}/v1/rooms/{q(room)}/block", headers=h, json={"block": "x"}), 400)
    await expect(await client.put(f"{ADMIN}/v1/rooms/{q(room)}/block", headers=h, json={"block": False}), 200)
    assert (await expect(await client.get(f"{ADMIN}/v1/rooms/{q(room)}/block", headers=h), 200)) == {"block": False}


async def test_delete_room_v1_without_purge_keeps_the_history(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    alice = await register(client, "alice")
    room = await create_room(client, alice["access_token"], name="Kept")
    body = await expect(await client.delete(f"{ADMIN}/v1/rooms/{q(room)}", headers=h, json={"purge": False}), 200)
    assert body["kicked_users"] == [uid("alice")] and body["new_room_id"] is None
    details = await expect(await client.get(f"{ADMIN}/v1/rooms/{q(room)}", headers=h), 200)
    assert details["joined_members"] == 0 and details["name"] == "Kept"
    # not blocked: alice may come back (a public room would let her; this one is invite-only)
    resp = await client.post(f"/_matrix/client/v3/join/{q(room)}", headers=auth(alice["access_token"]), json={})
    assert resp.status == 403 and "blocked" not in (await resp.json())["error"]


# --- media ---------------------------------------------------------------------------------------


async def test_media_quarantine_delete_and_a_users_uploads(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    bob = await register(client, "bob")
    first = await upload(client, bob["access_token"], b"first file", "text/plain", filename="a.txt")
    second = await upload(client, bob["access_token"], b"second file!", "text/plain", filename="b.txt")
    ids = [first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]]

    listed = await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('bob'))}/media", headers=h), 200)
    assert listed["total"] == 2 and sorted(m["media_id"] for m in listed["media"]) == sorted(ids)
    item = next(m for m in listed["media"] if m["media_id"] == ids[0])
    assert item["media_length"] == 10 and item["media_type"] == "text/plain" and item["upload_name"] == "a.txt"
    assert item["quarantined_by"] is None
    page = await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('bob'))}/media?limit=1", headers=h), 200)
    assert len(page["media"]) == 1 and page["next_token"] == 1
    await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('nobody'))}/media", headers=h), 404)
    await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('bob'))}/media?order_by=x", headers=h), 400)

    download = f"{MEDIA}/download/{SERVER_NAME}/{ids[0]}"
    bh = auth(bob["access_token"])
    await expect(await client.post(f"{ADMIN}/v1/media/quarantine/{SERVER_NAME}/{ids[0]}", headers=h), 200)
    assert (await client.get(download, headers=bh)).status == 404
    listed = await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('bob'))}/media", headers=h), 200)
    assert next(m for m in listed["media"] if m["media_id"] == ids[0])["quarantined_by"] is not None
    await expect(await client.post(f"{ADMIN}/v1/media/unquarantine/{SERVER_NAME}/{ids[0]}", headers=h), 200)
    resp = await client.get(download, headers=bh)
    assert resp.status == 200 and await resp.read() == b"first file"
    await expect(await client.post(f"{ADMIN}/v1/media/quarantine/{SERVER_NAME}/unknownmedia", headers=h), 404)

    deleted = await expect(await client.delete(f"{ADMIN}/v1/media/{SERVER_NAME}/{ids[0]}", headers=h), 200)
    assert deleted == {"deleted_media": [ids[0]], "total": 1}
    assert (await client.get(download, headers=bh)).status == 404
    await expect(await client.delete(f"{ADMIN}/v1/media/{SERVER_NAME}/{ids[0]}", headers=h), 404)
    await expect(await client.delete(f"{ADMIN}/v1/media/elsewhere.org/abcdef", headers=h), 400)
    listed = await expect(await client.get(f"{ADMIN}/v1/users/{q(uid('bob'))}/media", headers=h), 200)
    assert [m["media_id"] for m in listed["media"]] == [ids[1]]


# --- registration tokens -------------------------------------------------------------------------


async def test_registration_tokens_crud(serve: Any) -> None:
    client, token = await start(serve)
    h = auth(token)
    base = f"{ADMIN}/v1/registration_tokens"
    made = await expect(await client.post(f"{base}/new", headers=h, json={}), 200)
    assert len(made["token"]) == 16 and made["uses_allowed"] is None and made["expiry_time"] is None
    assert made["pending"] == 0 and made["completed"] == 0
    named = await expect(await client.post(f"{base}/new", headers=h, json={"token": "friends-2026",
                                                                          "uses_allowed": 3}), 200)
    assert named == {"token": "friends-2026", "uses_allowed": 3, "pending": 0, "completed": 0, "expiry_time": None}
    short = await expect(await client.post(f"{base}/new", headers=h, json={"length": 5}), 200)
    assert len(short["token"]) == 5
    for bad in ({"token": "friends-2026"}, {"token": "has space"}, {"token": "x" * 65}, {"token": 5},
                {"uses_allowed": -1}, {"uses_allowed": "3"}, {"expiry_time": 1}, {"length": 0}, {"length": 65}):
        await expect(await client.post(f"{base}/new", headers=h, json=bad), 400, "M_INVALID_PARAM")

    listed = await expect(await client.get(base, headers=h), 200)
    assert {t["token"] for t in listed["registration_tokens"]} == {made["token"], "friends-2026", short["token"]}
    assert (await expect(await client.get(f"{base}/friends-2026", headers=h), 200)) == named
    await expect(await client.get(f"{base}/unknown", headers=h), 404, "M_NOT_FOUND")

    updated = await expect(await client.put(f"{base}/friends-2026", headers=h,
                                            json={"uses_allowed": 0, "expiry_time": 4_000_000_000_000}), 200)
    assert updated["uses_allowed"] == 0 and updated["expiry_time"] == 4_000_000_000_000
    valid = await expect(await client.get(f"{base}?valid=false", headers=h), 200)
    assert [t["token"] for t in valid["registration_tokens"]] == ["friends-2026"]  # no use left
    valid = await expect(await client.get(f"{base}?valid=true", headers=h), 200)
    assert {t["token"] for t in valid["registration_tokens"]} == {made["token"], short["token"]}
    unlimited = await expect(await client.put(f"{base}/friends-2026", headers=h, json={"uses_allowed": None}), 200)
    assert unlimited["uses_allowed"] is None and unlimited["expiry_time"] == 4_000_000_000_000
    await expect(await client.put(f"{base}/friends-2026", headers=h, json={"expiry_time": 5}), 400)
    await expect(await client.put(f"{base}/unknown", headers=h, json={"uses_allowed": 1}), 404)

    await expect(await client.delete(f"{base}/friends-2026", headers=h), 200)
    await expect(await client.get(f"{base}/friends-2026", headers=h), 404)
    await expect(await client.delete(f"{base}/friends-2026", headers=h), 404)


async def register_with_token(client: Any, username: str, token: str) -> Any:
    body = {"username": username, "password": PASSWORD}
    first = await client.post("/_matrix/client/v3/register", json=body)
    flow = await expect(first, 401)
    assert {"stages": ["m.login.registration_token", "m.login.dummy"]} in flow["flows"]
    session = flow["session"]
    resp = await client.post("/_matrix/client/v3/register", json={
        **body, "auth": {"type": "m.login.registration_token", "token": token, "session": session}})
    if resp.status != 401 or (await resp.json()).get("errcode"):
        return resp
    assert "m.login.registration_token" in (await resp.json())["completed"]
    return await client.post("/_matrix/client/v3/register", json={
        **body, "auth": {"type": "m.login.dummy", "session": session}})


async def test_invite_only_sign_up_with_registration_tokens(serve: Any) -> None:
    client, token = await start(serve, registration={"requires_token": True})
    h = auth(token)
    validity = "/_matrix/client/v1/register/m.login.registration_token/validity"
    made = await expect(await client.post(f"{ADMIN}/v1/registration_tokens/new", headers=h,
                                          json={"token": "once", "uses_allowed": 1}), 200)
    assert made["token"] == "once"
    assert (await expect(await client.get(f"{validity}?token=once"), 200)) == {"valid": True}
    assert (await expect(await client.get(f"{validity}?token=other"), 200)) == {"valid": False}
    await expect(await client.get(validity), 400, "M_MISSING_PARAM")
    for odd in ("%00", "x" * 100, "%F0%9F%98%80"):
        assert (await expect(await client.get(f"{validity}?token={odd}"), 200)) == {"valid": False}

    # without a token there is no way in: the dummy stage alone completes no flow
    first = await expect(await client.post("/_matrix/client/v3/register", json={"username": "x",
                                                                              "password": PASSWORD}), 401)
    resp = await client.post("/_matrix/client/v3/register", json={
        "username": "x", "password": PASSWORD, "auth": {"type": "m.login.dummy", "session": first["session"]}})
    assert resp.status == 401 and "user_id" not in await resp.json()
    # a wrong token
    resp = await register_with_token(client, "eve", "wrong")
    await expect(resp, 401, "M_UNAUTHORIZED")
    await expect(await register_with_token(client, "eve", "bad\x00token"), 401, "M_UNAUTHORIZED")

    done = await expect(await register_with_token(client, "newbie", "once"), 200)
    assert done["user_id"] == uid("newbie") and done["access_token"]
    used = await expect(await client.get(f"{ADMIN}/v1/registration_tokens/once", headers=h), 200)
    assert used["completed"] == 1 and used["pending"] == 0
    assert (await expect(await client.get(f"{validity}?token=once"), 200)) == {"valid": False}
    resp = await register_with_token(client, "second", "once")
    await expect(resp, 401, "M_UNAUTHORIZED")
    assert (await login(client, "second", PASSWORD)).status == 403

    # a pending use holds the last place until its sign-up completes
    await expect(await client.post(f"{ADMIN}/v1/registration_tokens/new", headers=h,
                                   json={"token": "last", "uses_allowed": 1}), 200)
    first = await expect(await client.post("/_matrix/client/v3/register", json={"username": "p1",
                                                                              "password": PASSWORD}), 401)
    resp = await client.post("/_matrix/client/v3/register", json={
        "username": "p1", "password": PASSWORD,
        "auth": {"type": "m.login.registration_token", "token": "last", "session": first["session"]}})
    assert resp.status == 401 and not (await resp.json()).get("errcode")
    pending = await expect(await client.get(f"{ADMIN}/v1/registration_tokens/last", headers=h), 200)
    assert pending["pending"] == 1 and pending["completed"] == 0
    await expect(await register_with_token(client, "p2", "last"), 401, "M_UNAUTHORIZED")


async def test_token_validity_is_refused_when_tokens_are_off(serve: Any) -> None:
    client = await serve()
    resp = await client.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=x")
    await expect(resp, 403, "M_FORBIDDEN")


async def test_the_last_use_of_a_token_goes_to_one_sign_up_only(serve: Any) -> None:
    client, token = await start(serve, registration={"requires_token": True})
    await expect(await client.post(f"{ADMIN}/v1/registration_tokens/new", headers=auth(token),
                                   json={"token": "one-seat", "uses_allowed": 1}), 200)
    sessions = []
    for name in ("racer1", "racer2", "racer3", "racer4"):
        first = await expect(await client.post("/_matrix/client/v3/register", json={"username": name,
                                                                                  "password": PASSWORD}), 401)
        sessions.append((name, first["session"]))

    async def take(name: str, session: str) -> bool:
        resp = await client.post("/_matrix/client/v3/register", json={
            "username": name, "password": PASSWORD,
            "auth": {"type": "m.login.registration_token", "token": "one-seat", "session": session}})
        body = await resp.json()
        assert resp.status == 401, body
        return "m.login.registration_token" in body.get("completed", [])

    won = await asyncio.gather(*(take(name, session) for name, session in sessions))
    assert sum(won) == 1, won
    state = await expect(await client.get(f"{ADMIN}/v1/registration_tokens/one-seat", headers=auth(token)), 200)
    assert state["pending"] == 1 and state["completed"] == 0


HOSTILE_BODIES: list[Any] = [
    [], "text", 5, None, {"admin": [1]}, {"password": {"a": 1}}, {"password": "x" * 100_000}, {"block": None},
    {"purge": 1}, {"force_purge": "yes"}, {"token": None, "length": 10**30}, {"uses_allowed": 10**30},
    {"uses_allowed": 2**63}, {"expiry_time": 10**30}, {"expiry_time": -5}, {"threepids": [None]},
    {"threepids": [{"medium": "email", "address": None}]}, {"erase": None}, {"new_password": None},
    {"new_password": "\ud800"}, {"displayname": None, "avatar_url": 5}, {"user_type": ["bot"]},
    {"deactivated": "false"}, {"logout_devices": None}, {"nonce": {"x": 1}}, {"mac": 5},
    {"username": "\x00", "password": "x"}, {"token": "\ud800"}, {"new_room_user_id": 5},
]
HOSTILE_QUERIES = ["from=1e400", f"from={10**30}", f"limit={10**30}", "limit=-0", f"from={2**63}", "dir=",
                   "order_by=", "search_term=%00", "name=%25%5F", "name=%00", "user_id=%00", "token=%00",
                   "valid=1", "type=", "deactivated=", "admins=2"]


async def test_hostile_input_to_every_admin_endpoint_is_a_matrix_error(serve: Any) -> None:
    """As the admin: never a 500, always a JSON Matrix error for what is refused, and the server stays up."""
    client, token = await start(serve)
    h = auth(token)
    bob = await register(client, "bob")
    room = await create_room(client, bob["access_token"], name="r")
    media = (await upload(client, bob["access_token"], b"m", "text/plain")).rsplit("/", 1)[1]
    await expect(await client.post(f"{ADMIN}/v1/registration_tokens/new", headers=h, json={"token": "tok"}), 200)
    routes = [(m, p.replace(q(uid("bob")), "{user}").replace("!r:x", "{room}").replace("/abc", "/{x}"))
              for m, p in ADMIN_ONLY] + [("POST", "/v1/register"), ("GET", "/v1/server_version")]
    values = {"user": [q(uid("bob")), q("@"), q("@a:"), "x" * 300, "%00", q("@bob:" + "x" * 300)],
              "room": [q(room), q("!"), "%00", q("!" + "x" * 300)],
              "x": ["/" + media, "/..", "/%00", "/tok", "/" + "x" * 300]}
    statuses = []
    for method, template in routes:
        paths = [template]
        for key, options in values.items():
            if "{" + key + "}" in template:
                paths = [p.replace("{" + key + "}", v) for p in paths for v in options]
        for path in paths:
            for query in HOSTILE_QUERIES:
                resp = await client.request(method, f"{ADMIN}{path}?{query}", headers=h, json={})
                statuses.append(await _matrix_answer(resp, method, path, query))
            for body in HOSTILE_BODIES:
                resp = await client.request(method, f"{ADMIN}{path}", headers=h, json=body)
                statuses.append(await _matrix_answer(resp, method, path, body))
            resp = await client.request(method, f"{ADMIN}{path}", headers=h, data=b"\xff{not json")
            statuses.append(await _matrix_answer(resp, method, path, "bytes"))
    assert 500 not in statuses
    # still answering, and the admin still an admin
    await expect(await client.get(f"{ADMIN}/v2/users", headers=h), 200)


async def _matrix_answer(resp: Any, method: str, path: str, what: Any) -> int:
    assert resp.status != 500, (method, path, what, await resp.text())
    if resp.status >= 400:
        body = await resp.json()
        assert isinstance(body.get("errcode"), str) and isinstance(body.get("error"), str), (method, path, what, body)
    else:
        await resp.read()
    return int(resp.status)
