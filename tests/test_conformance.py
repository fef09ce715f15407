"""Conformance with the Client-Server API for what stock clients call: capabilities, room tags,
registration as Element starts it, account deactivation, OpenID tokens (issue 11)."""

from __future__ import annotations

from typing import Any

from tests.conftest import auth, register

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
