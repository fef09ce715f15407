"""Login with a 6-digit code mailed after the password (login.email_otp), over HTTP with a real SMTP server."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import auth, login, register
from tests.test_email_verification import signup, signup_verified

V3 = "/_matrix/client/v3"
WHISPR = "/_matrix/client/unstable/org.whispr"
EMAIL_OTP = "org.whispr.login.email_otp"


def wrong_code(right: str) -> str:
    return "000000" if right != "000000" else "111111"


async def answer(client: Any, session: str, code: str, kind: str = EMAIL_OTP) -> Any:
    return await client.post(f"{V3}/login", json={"type": kind, "session": session, "code": code})


async def challenge(client: Any, username: str, **extra: Any) -> dict[str, Any]:
    """A password login that must stop at the mailed-code step; returns the 401 body."""
    resp = await login(client, username, **extra)
    body = await resp.json()
    assert resp.status == 401, body
    assert body["errcode"] == "ORG.WHISPR.LOGIN_CHALLENGE" and body["next"] == EMAIL_OTP, body
    assert isinstance(body["session"], str) and body["session"]
    return body


async def login_flows(client: Any) -> list[str]:
    resp = await client.get(f"{V3}/login")
    assert resp.status == 200
    return [f["type"] for f in (await resp.json())["flows"]]


async def test_required_code_login(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    types = await login_flows(client)
    assert EMAIL_OTP in types and "m.login.password" not in types
    await signup_verified(client, smtp, "amy")
    sent = len(smtp.messages)

    body = await challenge(client, "amy", device_id="PHONE", initial_device_display_name="phone")
    assert body["completed"] == [] and body["expires_in_ms"] == 600_000
    assert len(smtp.messages) == sent + 1
    mail = smtp.last_to("amy@example.org")
    assert "login code" in mail["Subject"]
    code = smtp.code_for("amy@example.org")

    resp = await answer(client, body["session"], wrong_code(code))
    err = await resp.json()
    assert resp.status == 403 and err["errcode"] == "M_FORBIDDEN" and err["tries_left"] == 4

    resp = await answer(client, body["session"], code)
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    assert tokens["user_id"] == "@amy:test.local" and tokens["device_id"] == "PHONE"
    resp = await client.get(f"{V3}/account/whoami", headers=auth(tokens["access_token"]))
    assert resp.status == 200 and (await resp.json())["device_id"] == "PHONE"
    devices = (await (await client.get(f"{V3}/devices", headers=auth(tokens["access_token"]))).json())["devices"]
    assert {"device_id": "PHONE", "display_name": "phone"}.items() <= \
        next(d for d in devices if d["device_id"] == "PHONE").items()

    # Single use: the same session and code do not log in again.
    resp = await answer(client, body["session"], code)
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_required_code_login_by_email_identifier(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "ben")
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.thirdparty", "medium": "email",
                                                   "address": "ben@example.org"},
        "password": "correct horse"})
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "ORG.WHISPR.LOGIN_CHALLENGE"
    resp = await answer(client, body["session"], smtp.code_for("ben@example.org"))
    assert resp.status == 200 and (await resp.json())["user_id"] == "@ben:test.local"


async def test_each_login_gets_its_own_code(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "cid")
    first = await challenge(client, "cid")
    first_code = smtp.code_for("cid@example.org")
    second = await challenge(client, "cid")
    second_code = smtp.code_for("cid@example.org")
    assert first["session"] != second["session"]
    if first_code != second_code:
        # A code answers only the login it was mailed for.
        assert (await answer(client, second["session"], first_code)).status == 403
    assert (await answer(client, first["session"], first_code)).status == 200
    assert (await answer(client, second["session"], second_code)).status == 200


async def test_five_wrong_codes_kill_the_login(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "dee")
    body = await challenge(client, "dee")
    code = smtp.code_for("dee@example.org")
    tries = []
    for _ in range(5):
        resp = await answer(client, body["session"], wrong_code(code))
        assert resp.status == 403
        tries.append((await resp.json()).get("tries_left"))
    assert tries == [4, 3, 2, 1, None]
    resp = await answer(client, body["session"], code)
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    # A fresh password login starts over with a new code.
    again = await challenge(client, "dee")
    assert (await answer(client, again["session"], smtp.code_for("dee@example.org"))).status == 200


async def test_four_wrong_codes_then_the_right_one(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "dot")
    body = await challenge(client, "dot")
    code = smtp.code_for("dot@example.org")
    for left in (4, 3, 2, 1):
        resp = await answer(client, body["session"], wrong_code(code))
        assert resp.status == 403 and (await resp.json())["tries_left"] == left
    assert (await answer(client, body["session"], code)).status == 200


async def test_concurrent_guesses_get_no_more_than_five_tries(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "dax")
    body = await challenge(client, "dax")
    code = smtp.code_for("dax@example.org")
    guesses = [f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 21)]
    responses = await asyncio.gather(*[answer(client, body["session"], g) for g in guesses])
    assert all(r.status == 403 for r in responses)
    tries_left = sorted([b["tries_left"] for b in [await r.json() for r in responses] if "tries_left" in b])
    assert tries_left == [1, 2, 3, 4]
    resp = await answer(client, body["session"], code)
    assert resp.status == 403


async def test_right_code_sent_twice_at_once_logs_in_once(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "dyl")
    body = await challenge(client, "dyl")
    code = smtp.code_for("dyl@example.org")
    responses = await asyncio.gather(*[answer(client, body["session"], code) for _ in range(5)])
    assert sorted(r.status for r in responses) == [200, 403, 403, 403, 403]


async def test_resend_is_rate_limited(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "eli")
    body = await challenge(client, "eli")
    sent = len(smtp.messages)
    resp = await client.post(f"{WHISPR}/login/resend", json={"session": body["session"]})
    err = await resp.json()
    assert resp.status == 429 and err["errcode"] == "M_LIMIT_EXCEEDED"
    assert 55_000 < err["retry_after_ms"] <= 60_000
    assert len(smtp.messages) == sent
    resp = await client.post(f"{WHISPR}/login/resend", json={"session": "no-such-session"})
    assert resp.status == 403
    # The pending login is unharmed.
    assert (await answer(client, body["session"], smtp.code_for("eli@example.org"))).status == 200


async def test_resend_mails_a_new_code_that_replaces_the_old(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required", "otp_resend_interval_s": 0})
    await signup_verified(client, smtp, "fox")
    body = await challenge(client, "fox")
    old = smtp.code_for("fox@example.org")
    sent = len(smtp.messages)
    resp = await client.post(f"{WHISPR}/login/resend", json={"session": body["session"]})
    assert resp.status == 200 and (await resp.json())["expires_in_ms"] == 600_000
    assert len(smtp.messages) == sent + 1
    new = smtp.code_for("fox@example.org")
    if new != old:
        resp = await answer(client, body["session"], old)
        assert resp.status == 403 and (await resp.json())["tries_left"] == 4
    assert (await answer(client, body["session"], new)).status == 200


async def test_code_expires(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required", "otp_ttl_s": 1})
    await signup_verified(client, smtp, "gil")
    body = await challenge(client, "gil")
    assert body["expires_in_ms"] == 1000
    code = smtp.code_for("gil@example.org")
    await asyncio.sleep(1.3)
    resp = await answer(client, body["session"], code)
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_wrong_password_sends_no_mail(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await signup_verified(client, smtp, "hub")
    sent = len(smtp.messages)
    resp = await login(client, "hub", "not the password")
    body = await resp.json()
    assert resp.status == 403 and body["errcode"] == "M_FORBIDDEN" and "session" not in body
    resp = await login(client, "nobody-here")
    assert resp.status == 403
    assert len(smtp.messages) == sent


async def test_required_without_verified_email_is_refused(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    await register(client, "ivo")            # no email at all
    await signup(client, "jay", "jay@example.org")  # email never verified
    sent = len(smtp.messages)
    for name in ("ivo", "jay"):
        resp = await login(client, name)
        body = await resp.json()
        assert resp.status == 403 and body["errcode"] == "M_FORBIDDEN" and "session" not in body
    assert len(smtp.messages) == sent


async def test_off_is_stock_password_login(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "off"})
    types = await login_flows(client)
    assert "m.login.password" in types and EMAIL_OTP not in types
    await signup_verified(client, smtp, "kit")
    sent = len(smtp.messages)
    resp = await login(client, "kit")
    assert resp.status == 200 and (await resp.json())["user_id"] == "@kit:test.local"
    # Opting in has no effect while the server has the feature off.
    token = (await resp.json())["access_token"]
    assert (await client.put(f"{WHISPR}/account/email_otp", headers=auth(token), json={"enabled": True})).status == 200
    assert (await login(client, "kit")).status == 200
    resp = await client.post(f"{V3}/login", json={
        "type": EMAIL_OTP, "identifier": {"type": "m.id.user", "user": "kit"}, "password": "correct horse"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_UNKNOWN"
    assert len(smtp.messages) == sent


async def test_optional_applies_to_users_who_opted_in(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "optional"})
    types = await login_flows(client)
    assert "m.login.password" in types and EMAIL_OTP in types
    lou = await signup_verified(client, smtp, "lou")
    await signup_verified(client, smtp, "max")
    resp = await client.get(f"{WHISPR}/account/security", headers=auth(lou["access_token"]))
    assert await resp.json() == {"email_otp_mode": "optional", "email_otp_enabled": False, "totp_enabled": False}

    resp = await client.put(f"{WHISPR}/account/email_otp", headers=auth(lou["access_token"]),
                            json={"enabled": "yes"})
    assert resp.status == 400
    resp = await client.put(f"{WHISPR}/account/email_otp", headers=auth(lou["access_token"]),
                            json={"enabled": True})
    assert resp.status == 200
    resp = await client.get(f"{WHISPR}/account/security", headers=auth(lou["access_token"]))
    assert (await resp.json())["email_otp_enabled"] is True

    sent = len(smtp.messages)
    assert (await login(client, "max")).status == 200
    assert len(smtp.messages) == sent
    body = await challenge(client, "lou")
    assert len(smtp.messages) == sent + 1
    assert (await answer(client, body["session"], smtp.code_for("lou@example.org"))).status == 200

    # Opting out again.
    resp = await client.put(f"{WHISPR}/account/email_otp", headers=auth(lou["access_token"]),
                            json={"enabled": False})
    assert resp.status == 200
    assert (await login(client, "lou")).status == 200


async def test_optional_code_can_be_asked_for_by_the_client(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "optional"})
    await signup_verified(client, smtp, "ned")
    resp = await client.post(f"{V3}/login", json={
        "type": EMAIL_OTP, "identifier": {"type": "m.id.user", "user": "ned"}, "password": "correct horse"})
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "ORG.WHISPR.LOGIN_CHALLENGE"
    assert (await answer(client, body["session"], smtp.code_for("ned@example.org"))).status == 200


async def test_opt_in_needs_a_verified_email(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "optional"})
    reg = await register(client, "oli")
    resp = await client.put(f"{WHISPR}/account/email_otp", headers=auth(reg["access_token"]),
                            json={"enabled": True})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    unverified = await signup(client, "pam", "pam@example.org")
    resp = await client.put(f"{WHISPR}/account/email_otp", headers=auth(unverified["access_token"]),
                            json={"enabled": True})
    assert resp.status == 403
    assert (await login(client, "oli")).status == 200
    assert (await login(client, "pam")).status == 200
