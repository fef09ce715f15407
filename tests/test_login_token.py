"""POST /login/get_token and m.login.token: a signed-in device, after re-entering its password, gets a
single-use token that logs in another device; off by default (404, not advertised)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import auth
from tests.rooms_helpers import User

GET_TOKEN = "/_matrix/client/v1/login/get_token"
V3 = "/_matrix/client/v3"


async def get_token(user: User, password: str = "correct horse") -> Any:
    first = await user.client.post(GET_TOKEN, headers=user.h, json={})
    assert first.status == 401, await first.text()
    session = (await first.json())["session"]
    return await user.client.post(GET_TOKEN, headers=user.h, json={"auth": {
        "type": "m.login.password", "session": session, "password": password,
        "identifier": {"type": "m.id.user", "user": user.user_id}}})


async def token_login(client: Any, token: str) -> Any:
    return await client.post(f"{V3}/login", json={"type": "m.login.token", "token": token,
                                                  "initial_device_display_name": "phone"})


async def test_get_token_and_log_in_once(serve: Any) -> None:
    client = await serve(login={"get_login_token": True})
    alice = await User.new(client, "alice")
    caps = (await alice.call("GET", "/capabilities"))["capabilities"]
    assert caps["m.get_login_token"] == {"enabled": True}
    flows = (await (await client.get(f"{V3}/login")).json())["flows"]
    assert {"type": "m.login.token", "get_login_token": True} in flows
    assert (await get_token(alice, password="wrong")).status in (401, 403)
    resp = await get_token(alice)
    body = await resp.json()
    assert resp.status == 200 and body["expires_in_ms"] == 120_000
    # Two logins racing with one token: exactly one gets in.
    first, second = await asyncio.gather(token_login(client, body["login_token"]),
                                         token_login(client, body["login_token"]))
    assert sorted([first.status, second.status]) == [200, 403]
    winner = first if first.status == 200 else second
    session = await winner.json()
    assert session["user_id"] == alice.user_id and session["device_id"]
    whoami = await client.get(f"{V3}/account/whoami", headers=auth(session["access_token"]))
    assert (await whoami.json())["user_id"] == alice.user_id
    assert (await token_login(client, "made-up")).status == 403


async def test_expired_token(serve: Any) -> None:
    client = await serve(login={"get_login_token": True, "login_token_ttl_s": 1})
    alice = await User.new(client, "alice")
    token = (await (await get_token(alice)).json())["login_token"]
    await asyncio.sleep(1.5)
    resp = await token_login(client, token)
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_off_by_default(client: Any) -> None:
    alice = await User.new(client, "alice")
    resp = await client.post(GET_TOKEN, headers=alice.h, json={})
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    flows = (await (await client.get(f"{V3}/login")).json())["flows"]
    assert all(f["type"] != "m.login.token" for f in flows)
    assert (await token_login(client, "anything")).status == 400
