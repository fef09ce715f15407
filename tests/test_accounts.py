"""Registration, login, whoami, logout, devices, refresh tokens over HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt

from client_api.http import HS
from tests.conftest import auth, login, register

V3 = "/_matrix/client/v3"


async def test_register_login_whoami_logout(client: Any) -> None:
    reg = await register(client, "alice", initial_device_display_name="laptop")
    assert reg["user_id"] == "@alice:test.local" and reg["home_server"] == "test.local"
    assert "refresh_token" not in reg
    resp = await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))
    assert await resp.json() == {"user_id": "@alice:test.local", "device_id": reg["device_id"], "is_guest": False}

    resp = await login(client, "alice", device_id="PHONE")
    assert resp.status == 200
    phone = await resp.json()
    assert phone["device_id"] == "PHONE"
    claims = jwt.decode(phone["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "@alice:test.local" and claims["dev"] == "PHONE"

    resp = await client.post(f"{V3}/logout", headers=auth(phone["access_token"]))
    assert resp.status == 200
    resp = await client.get(f"{V3}/account/whoami", headers=auth(phone["access_token"]))
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    # The other session is untouched.
    resp = await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))
    assert resp.status == 200


async def test_login_by_full_user_id_and_wrong_password(client: Any) -> None:
    await register(client, "bob")
    assert (await login(client, "@bob:test.local")).status == 200
    resp = await login(client, "bob", "wrong password")
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await login(client, "nobody")
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await login(client, "@bob:elsewhere.org")
    assert resp.status == 403


async def test_login_flows_and_unknown_type(client: Any) -> None:
    flows = (await (await client.get(f"{V3}/login")).json())["flows"]
    assert {"type": "m.login.password"} in flows
    resp = await client.post(f"{V3}/login", json={"type": "m.login.magic"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_UNKNOWN"


async def test_register_validation(client: Any) -> None:
    await register(client, "carol")
    resp = await client.post(f"{V3}/register", json={"username": "carol", "password": "long enough"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_USER_IN_USE"
    resp = await client.post(f"{V3}/register", json={"username": "Bad Name!", "password": "long enough"})
    assert (await resp.json())["errcode"] == "M_INVALID_USERNAME"
    resp = await client.post(f"{V3}/register", json={"username": "dave", "password": "short"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_WEAK_PASSWORD"
    resp = await client.post(f"{V3}/register", json={"username": "dave", "password": "long enough",
                                                     "auth": {"type": "m.login.dummy", "session": "made-up"}})
    assert resp.status == 400
    resp = await client.get(f"{V3}/register/available", params={"username": "carol"})
    assert (await resp.json())["errcode"] == "M_USER_IN_USE"
    resp = await client.get(f"{V3}/register/available", params={"username": "erin"})
    assert await resp.json() == {"available": True}
    resp = await client.post(f"{V3}/register", params={"kind": "guest"}, json={})
    assert resp.status == 403


async def test_register_without_username_and_inhibit_login(client: Any) -> None:
    reg = await register(client, None, inhibit_login=True)  # type: ignore[arg-type]
    assert reg["user_id"].startswith("@u") and "access_token" not in reg


async def test_registration_disabled(serve: Any) -> None:
    client = await serve(registration={"enabled": False})
    resp = await client.post(f"{V3}/register", json={"username": "x", "password": "long enough"})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_concurrent_registration_of_one_name_creates_one_account(client: Any) -> None:
    async def attempt() -> int:
        first = await client.post(f"{V3}/register", json={"username": "race", "password": "long enough"})
        if first.status != 401:
            return first.status
        session = (await first.json())["session"]
        resp = await client.post(f"{V3}/register", json={
            "username": "race", "password": "long enough", "auth": {"type": "m.login.dummy", "session": session}})
        return resp.status

    statuses = await asyncio.gather(*(attempt() for _ in range(5)))
    assert statuses.count(200) == 1 and all(s == 400 for s in statuses if s != 200)


async def test_logout_all_and_devices(client: Any) -> None:
    reg = await register(client, "frank")
    other = await (await login(client, "frank", initial_device_display_name="tablet")).json()
    resp = await client.get(f"{V3}/devices", headers=auth(reg["access_token"]))
    devices = (await resp.json())["devices"]
    assert {d["device_id"] for d in devices} == {reg["device_id"], other["device_id"]}
    assert {d.get("display_name") for d in devices} >= {"tablet"}
    resp = await client.put(f"{V3}/devices/{other['device_id']}", headers=auth(reg["access_token"]),
                            json={"display_name": "old tablet"})
    assert resp.status == 200
    got = await (await client.get(f"{V3}/devices/{other['device_id']}", headers=auth(reg["access_token"]))).json()
    assert got["display_name"] == "old tablet"
    resp = await client.get(f"{V3}/devices/NOPE", headers=auth(reg["access_token"]))
    assert resp.status == 404

    resp = await client.post(f"{V3}/logout/all", headers=auth(other["access_token"]))
    assert resp.status == 200
    for token in (reg["access_token"], other["access_token"]):
        assert (await client.get(f"{V3}/account/whoami", headers=auth(token))).status == 401


async def test_delete_device_needs_password_uia(client: Any) -> None:
    reg = await register(client, "gina")
    other = await (await login(client, "gina")).json()
    url = f"{V3}/devices/{other['device_id']}"
    first = await client.delete(url, headers=auth(reg["access_token"]))
    assert first.status == 401
    session = (await first.json())["session"]
    wrong = await client.delete(url, headers=auth(reg["access_token"]), json={"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gina"},
        "password": "nope", "session": session}})
    assert wrong.status == 401 and (await wrong.json())["errcode"] == "M_FORBIDDEN"
    right = await client.delete(url, headers=auth(reg["access_token"]), json={"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gina"},
        "password": "correct horse", "session": session}})
    assert right.status == 200
    assert (await client.get(f"{V3}/account/whoami", headers=auth(other["access_token"]))).status == 401


async def test_refresh_tokens_rotate_and_reuse_revokes(serve: Any) -> None:
    client = await serve(tokens={"access_token_lifetime_s": 60})
    reg = await register(client, "hank", refresh_token=True)
    assert reg["refresh_token"].startswith("wrt_") and 0 < reg["expires_in_ms"] <= 60_000
    first = await client.post(f"{V3}/refresh", json={"refresh_token": reg["refresh_token"]})
    assert first.status == 200
    rotated = await first.json()
    assert rotated["refresh_token"] != reg["refresh_token"]
    # The old access token is replaced at once.
    assert (await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))).status == 401
    assert (await client.get(f"{V3}/account/whoami", headers=auth(rotated["access_token"]))).status == 200
    # Reusing the spent refresh token revokes the whole session.
    reuse = await client.post(f"{V3}/refresh", json={"refresh_token": reg["refresh_token"]})
    assert reuse.status == 401 and (await reuse.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert (await client.get(f"{V3}/account/whoami", headers=auth(rotated["access_token"]))).status == 401
    again = await client.post(f"{V3}/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert again.status == 401
    unknown = await client.post(f"{V3}/refresh", json={"refresh_token": "wrt_nope"})
    assert unknown.status == 401 and (await unknown.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_expired_access_token_is_soft_logout(serve: Any) -> None:
    client = await serve(tokens={"access_token_lifetime_s": 1})
    reg = await register(client, "ivy", refresh_token=True)
    await asyncio.sleep(2.1)
    resp = await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN" and body["soft_logout"] is True
    fresh = await (await client.post(f"{V3}/refresh", json={"refresh_token": reg["refresh_token"]})).json()
    assert (await client.get(f"{V3}/account/whoami", headers=auth(fresh["access_token"]))).status == 200


async def test_password_change_logs_out_other_devices(client: Any) -> None:
    reg = await register(client, "jack")
    other = await (await login(client, "jack")).json()
    body = {"new_password": "a brand new one"}
    first = await client.post(f"{V3}/account/password", headers=auth(reg["access_token"]), json=body)
    assert first.status == 401
    flows = [f["stages"] for f in (await first.json())["flows"]]
    assert ["m.login.password"] in flows
    resp = await client.post(f"{V3}/account/password", headers=auth(reg["access_token"]), json={
        **body, "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "jack"},
                         "password": "correct horse", "session": (await first.json())["session"]}})
    assert resp.status == 200
    assert (await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))).status == 200
    assert (await client.get(f"{V3}/account/whoami", headers=auth(other["access_token"]))).status == 401
    assert (await login(client, "jack")).status == 403
    assert (await login(client, "jack", "a brand new one")).status == 200


async def test_rate_limited_login_gets_retry_after(serve: Any) -> None:
    client = await serve(rate_limits={"enabled": True, "login": {"per_second": 0.1, "burst": 2}})
    await register(client, "kim")
    assert (await login(client, "kim")).status == 200
    assert (await login(client, "kim")).status == 200
    resp = await login(client, "kim")
    body = await resp.json()
    assert resp.status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0


async def test_rate_limited_registration(serve: Any) -> None:
    client = await serve(rate_limits={"enabled": True, "register": {"per_second": 0.01, "burst": 2}})
    for _ in range(2):
        resp = await client.post(f"{V3}/register", json={"username": "lee", "password": "long enough"})
        assert resp.status == 401
    resp = await client.post(f"{V3}/register", json={"username": "lee", "password": "long enough"})
    assert resp.status == 429 and (await resp.json())["errcode"] == "M_LIMIT_EXCEEDED"


async def test_unexpected_failure_is_m_unknown_without_trace(client: Any) -> None:
    reg = await register(client, "max")
    await client.app[HS].store.db.close()  # the database goes away under the server
    resp = await client.get(f"{V3}/account/whoami", headers=auth(reg["access_token"]))
    body = await resp.json()
    assert resp.status == 500 and body["errcode"] == "M_UNKNOWN"
    assert "request" in body["error"] and "Traceback" not in await resp.text()
