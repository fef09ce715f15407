"""Profiles: display name, avatar, Whispr bio, validation and permissions."""

from __future__ import annotations

from typing import Any

from tests.conftest import auth, register

V3 = "/_matrix/client/v3"


async def test_profile_round_trip_with_bio(client: Any) -> None:
    alice = await register(client, "alice")
    me = alice["user_id"]
    h = auth(alice["access_token"])
    assert (await client.put(f"{V3}/profile/{me}/displayname", headers=h, json={"displayname": "Alice"})).status == 200
    assert (await client.put(f"{V3}/profile/{me}/avatar_url", headers=h,
                             json={"avatar_url": "mxc://test.local/abc123"})).status == 200
    assert (await client.put(f"{V3}/profile/{me}/org.whispr.bio", headers=h,
                             json={"org.whispr.bio": "I like tea"})).status == 200
    profile = await (await client.get(f"{V3}/profile/{me}")).json()
    assert profile == {"displayname": "Alice", "avatar_url": "mxc://test.local/abc123", "org.whispr.bio": "I like tea"}
    assert await (await client.get(f"{V3}/profile/{me}/displayname")).json() == {"displayname": "Alice"}
    assert (await client.delete(f"{V3}/profile/{me}/org.whispr.bio", headers=h)).status == 200
    resp = await client.get(f"{V3}/profile/{me}/org.whispr.bio")
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_profile_validation(client: Any) -> None:
    alice = await register(client, "alice")
    me, h = alice["user_id"], auth(alice["access_token"])
    cases = [
        ("displayname", {"displayname": "x" * 257}),
        ("displayname", {"displayname": 42}),
        ("avatar_url", {"avatar_url": "https://example.org/a.png"}),
        ("org.whispr.bio", {"org.whispr.bio": "b" * 1025}),
        ("displayname", {}),
    ]
    for key, body in cases:
        resp = await client.put(f"{V3}/profile/{me}/{key}", headers=h, json=body)
        assert resp.status == 400, (key, body)
        assert (await resp.json())["errcode"] == "M_BAD_JSON"
    resp = await client.put(f"{V3}/profile/{me}/notnamespaced", headers=h, json={"notnamespaced": 1})
    assert resp.status == 400
    # Nothing was stored by the refused requests.
    assert await (await client.get(f"{V3}/profile/{me}")).json() == {"displayname": "alice"}


async def test_cannot_edit_someone_else_and_unknown_user(client: Any) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")
    resp = await client.put(f"{V3}/profile/{bob['user_id']}/displayname", headers=auth(alice["access_token"]),
                            json={"displayname": "hacked"})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.put(f"{V3}/profile/{bob['user_id']}/displayname", json={"displayname": "anon"})
    assert resp.status == 401
    resp = await client.get(f"{V3}/profile/@ghost:test.local")
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
    resp = await client.get(f"{V3}/profile/not-a-user-id")
    assert resp.status == 400
