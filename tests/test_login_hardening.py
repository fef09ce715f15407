"""Login hardening over HTTP: no timing tell for unknown accounts, per-account failed-login limits,
and the client address behind trusted reverse proxies (X-Forwarded-For)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from multidict import CIMultiDict

from homeserver.config import ConfigError, load_config
from tests.conftest import auth, login, register

V3 = "/_matrix/client/v3"
UNLIMITED = {"per_second": 1000.0, "burst": 1000}
# libsodium's "interactive" argon2id cost: the default, and what makes a wrong password slow.
REAL_ARGON2 = {"argon2_opslimit": 2, "argon2_memlimit_kib": 65536}


async def _timed_login(client: Any, user: str, password: str) -> float:
    start = time.perf_counter()
    resp = await login(client, user, password)
    elapsed = time.perf_counter() - start
    assert resp.status == 403, await resp.text()
    return elapsed


async def test_unknown_user_costs_as_much_as_a_wrong_password(serve: Any) -> None:
    client = await serve(passwords=REAL_ARGON2)
    await register(client, "alice")
    await _timed_login(client, "nobody", "guess")  # the first check may set things up: not measured
    wrong, unknown = [], []
    for i in range(3):
        wrong.append(await _timed_login(client, "alice", f"wrong {i}"))
        unknown.append(await _timed_login(client, f"nobody{i}", f"guess {i}"))
        unknown.append(await _timed_login(client, f"@ghost{i}:elsewhere.example", "guess"))
    # Loose on purpose (a shared machine): before the fix the ratio was about 1/60.
    assert statistics.median(unknown) >= statistics.median(wrong) / 3, (wrong, unknown)


def _limits(**buckets: Any) -> dict[str, Any]:
    return {"enabled": True, "register": UNLIMITED, "login": UNLIMITED, "login_failed": UNLIMITED,
            "login_failed_account": UNLIMITED, **buckets}


async def test_failed_logins_are_limited_per_account(serve: Any) -> None:
    client = await serve(rate_limits=_limits(login_failed_account={"per_second": 0.01, "burst": 3}))
    await register(client, "alice")
    await register(client, "bob")
    # Good logins do not use up the failed-login allowance.
    for _ in range(5):
        assert (await login(client, "alice")).status == 200
    for target in ("alice", "ghost"):  # an unknown account answers exactly like a known one
        for i in range(3):
            assert (await login(client, target, f"wrong {i}")).status == 403
        resp = await login(client, target, "wrong again")
        body = await resp.json()
        assert resp.status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
    # Locked: even the right password waits, by any spelling of the account.
    assert (await login(client, "alice")).status == 429
    assert (await login(client, "@alice:test.local")).status == 429
    assert (await login(client, "ALICE")).status == 429
    assert (await login(client, "bob")).status == 200


async def test_failed_logins_are_limited_per_address_before_the_check(serve: Any) -> None:
    client = await serve(rate_limits=_limits(login_failed={"per_second": 0.01, "burst": 2}))
    await register(client, "alice")
    await register(client, "bob")
    assert (await login(client, "alice", "wrong")).status == 403
    assert (await login(client, "bob", "wrong")).status == 403
    resp = await login(client, "bob")  # guessing must stop, right or wrong
    assert resp.status == 429 and (await resp.json())["retry_after_ms"] > 0


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(serve: Any) -> None:
    client = await serve(rate_limits=_limits(login={"per_second": 0.01, "burst": 1}))
    await register(client, "alice")
    spoofed = {"X-Forwarded-For": "198.51.100.7"}
    resp = await client.post(f"{V3}/login", headers=spoofed, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "correct horse"})
    assert resp.status == 200
    token = (await resp.json())["access_token"]
    other = {"X-Forwarded-For": "203.0.113.9"}
    assert (await login_with(client, other)).status == 429  # the header does not buy a new bucket
    devices = await (await client.get(f"{V3}/devices", headers={**auth(token), **spoofed})).json()
    assert {d["last_seen_ip"] for d in devices["devices"] if d["last_seen_ip"]} == {"127.0.0.1"}


async def login_with(client: Any, headers: Any, user: str = "alice") -> Any:
    return await client.post(f"{V3}/login", headers=headers, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
        "password": "correct horse"})


async def test_trusted_proxy_forwarded_for_is_the_client_address(serve: Any) -> None:
    client = await serve(listen={"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]},
                         rate_limits=_limits(login={"per_second": 0.01, "burst": 1}))
    await register(client, "alice")
    # Rightmost hop that is not a trusted proxy: what the client itself wrote on the left is ignored.
    first = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.2.3"}
    resp = await login_with(client, first)
    assert resp.status == 200
    token = (await resp.json())["access_token"]
    assert (await login_with(client, {"X-Forwarded-For": "198.51.100.7"})).status == 429
    assert (await login_with(client, {"X-Forwarded-For": "203.0.113.9"})).status == 200
    # Two headers are one list; ports and brackets are not part of the address.
    two = CIMultiDict([("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "10.0.0.1")])
    assert (await login_with(client, two)).status == 200
    assert (await login_with(client, {"X-Forwarded-For": "192.0.2.1"})).status == 429
    assert (await login_with(client, {"X-Forwarded-For": "[2001:db8::5]:443"})).status == 200
    assert (await login_with(client, {"X-Forwarded-For": "2001:db8::5"})).status == 429
    devices = await (await client.get(f"{V3}/devices", headers={**auth(token), **first})).json()
    assert {d["last_seen_ip"] for d in devices["devices"] if d["last_seen_ip"]} == {"198.51.100.7"}
    # A header that is not an address falls back to the nearest trusted hop, never to the text.
    resp = await login_with(client, {"X-Forwarded-For": "<script>, 10.9.9.9"})
    assert resp.status == 200
    resp = await client.get(f"{V3}/devices", headers={**auth((await resp.json())["access_token"]),
                                                      "X-Forwarded-For": "<script>, 10.9.9.9"})
    seen = {d["device_id"]: d["last_seen_ip"] for d in (await resp.json())["devices"]}
    assert "10.9.9.9" in seen.values() and "<script>" not in seen.values()


def test_trusted_proxies_must_be_cidrs() -> None:
    config = load_config(None, environ={"WHISPR_LISTEN__TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert config.listen.trusted_proxies == ["10.0.0.0/8", "::1"]
    with pytest.raises(ConfigError, match="listen.trusted_proxies"):
        load_config(None, environ={}, overrides={"listen": {"trusted_proxies": ["nginx"]}})
