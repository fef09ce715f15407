"""TOTP second factor over HTTP: enrollment, login step, replay protection, recovery codes, disabling."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp

from tests.conftest import auth, login, register
from tests.test_email_verification import signup_verified

V3 = "/_matrix/client/v3"
WHISPR = "/_matrix/client/unstable/org.whispr"
TOTP = "org.whispr.login.totp"
EMAIL_OTP = "org.whispr.login.email_otp"


def code_at(secret: str, step_offset: int) -> str:
    """The code for the time step `step_offset` steps from now (the server accepts -1, 0 and +1)."""
    return pyotp.TOTP(secret).at(time.time() + 30 * step_offset)


async def enroll(client: Any, token: str) -> tuple[str, list[str]]:
    """Enroll and confirm with the current code; returns the secret and the recovery codes."""
    resp = await client.post(f"{WHISPR}/totp/enroll", headers=auth(token), json={})
    assert resp.status == 200, await resp.text()
    secret = (await resp.json())["secret"]
    resp = await client.post(f"{WHISPR}/totp/confirm", headers=auth(token), json={"code": code_at(secret, 0)})
    assert resp.status == 200, await resp.text()
    return secret, (await resp.json())["recovery_codes"]


async def totp_challenge(client: Any, username: str) -> str:
    resp = await login(client, username)
    body = await resp.json()
    assert resp.status == 401, body
    assert body["errcode"] == "ORG.WHISPR.LOGIN_CHALLENGE" and body["next"] == TOTP, body
    return body["session"]


async def answer(client: Any, session: str, code: str, kind: str = TOTP) -> Any:
    return await client.post(f"{V3}/login", json={"type": kind, "session": session, "code": code})


async def test_enroll_confirm_and_login_with_totp(client: Any) -> None:
    reg = await register(client, "ana")
    token = reg["access_token"]
    resp = await client.post(f"{WHISPR}/totp/enroll", headers=auth(token), json={})
    assert resp.status == 200
    body = await resp.json()
    secret = body["secret"]
    uri = urlsplit(body["otpauth_uri"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert "@ana:test.local" in unquote(uri.path)
    assert parse_qs(uri.query)["secret"] == [secret] and parse_qs(uri.query)["issuer"] == ["Whispr"]

    # Not active until confirmed: password login still goes straight through.
    assert (await login(client, "ana")).status == 200
    resp = await client.post(f"{WHISPR}/totp/confirm", headers=auth(token), json={"code": "12345"})
    assert resp.status == 403
    resp = await client.post(f"{WHISPR}/totp/confirm", headers=auth(token), json={"code": code_at(secret, 5)})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    assert (await login(client, "ana")).status == 200

    confirm_code = code_at(secret, 0)
    resp = await client.post(f"{WHISPR}/totp/confirm", headers=auth(token), json={"code": confirm_code})
    assert resp.status == 200, await resp.text()
    codes = (await resp.json())["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    resp = await client.get(f"{WHISPR}/account/security", headers=auth(token))
    assert (await resp.json())["totp_enabled"] is True
    # Confirming again or re-enrolling needs disabling first.
    resp = await client.post(f"{WHISPR}/totp/confirm", headers=auth(token), json={"code": code_at(secret, 1)})
    assert resp.status == 400 and (await resp.json())["errcode"] == "ORG.WHISPR.TOTP_NOT_PENDING"
    resp = await client.post(f"{WHISPR}/totp/enroll", headers=auth(token), json={})
    assert resp.status == 400 and (await resp.json())["errcode"] == "ORG.WHISPR.TOTP_ENABLED"

    # The password alone no longer logs in.
    resp = await login(client, "ana")
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "ORG.WHISPR.LOGIN_CHALLENGE"
    assert body["next"] == TOTP and body["completed"] == [] and "access_token" not in body
    session = body["session"]
    # The code used to confirm the enrollment is spent.
    resp = await answer(client, session, confirm_code)
    assert resp.status == 403 and (await resp.json())["tries_left"] == 4
    # A wrong code, then the wrong step type.
    resp = await answer(client, session, code_at(secret, 5))
    assert resp.status == 403 and (await resp.json())["tries_left"] == 3
    resp = await answer(client, session, code_at(secret, 1), kind=EMAIL_OTP)
    assert resp.status == 400
    login_code = code_at(secret, 1)
    resp = await answer(client, session, login_code)
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    assert tokens["user_id"] == "@ana:test.local"
    assert (await client.get(f"{V3}/account/whoami", headers=auth(tokens["access_token"]))).status == 200

    # Replaying the code that just logged in is refused in a new login.
    session = await totp_challenge(client, "ana")
    resp = await answer(client, session, login_code)
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"


async def test_recovery_codes_work_once(client: Any) -> None:
    reg = await register(client, "bo")
    _, codes = await enroll(client, reg["access_token"])
    session = await totp_challenge(client, "bo")
    resp = await answer(client, session, codes[0].upper())  # case and spaces do not matter
    assert resp.status == 200, await resp.text()
    session = await totp_challenge(client, "bo")
    resp = await answer(client, session, codes[0])
    assert resp.status == 403 and (await resp.json())["tries_left"] == 4
    resp = await answer(client, session, " " + codes[1] + " ")
    assert resp.status == 200
    # A recovery code is not a second password: it is only asked for after the password.
    resp = await login(client, "bo", codes[2])
    assert resp.status == 403


async def test_five_wrong_totp_codes_kill_the_login(client: Any) -> None:
    reg = await register(client, "cy")
    secret, _ = await enroll(client, reg["access_token"])
    session = await totp_challenge(client, "cy")
    for left in (4, 3, 2, 1):
        resp = await answer(client, session, code_at(secret, 10))
        assert resp.status == 403 and (await resp.json())["tries_left"] == left
    resp = await answer(client, session, code_at(secret, 10))
    assert resp.status == 403 and "tries_left" not in await resp.json()
    resp = await answer(client, session, code_at(secret, 1))
    assert resp.status == 403


async def test_disable_totp(client: Any) -> None:
    reg = await register(client, "di")
    token = reg["access_token"]
    secret, codes = await enroll(client, token)
    resp = await client.post(f"{WHISPR}/totp/disable", headers=auth(token), json={"code": code_at(secret, 10)})
    assert resp.status == 403
    resp = await client.post(f"{WHISPR}/totp/disable", headers=auth(token), json={"code": code_at(secret, 1)})
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"{WHISPR}/account/security", headers=auth(token))
    assert (await resp.json())["totp_enabled"] is False
    resp = await login(client, "di")
    assert resp.status == 200 and "access_token" in await resp.json()
    # The old recovery codes are gone with it, and a fresh enrollment gets a new secret.
    resp = await client.post(f"{WHISPR}/totp/disable", headers=auth(token), json={"code": codes[0]})
    assert resp.status == 403
    secret2, codes2 = await enroll(client, token)
    assert secret2 != secret and not set(codes2) & set(codes)
    session = await totp_challenge(client, "di")
    assert (await answer(client, session, codes[0])).status == 403
    assert (await answer(client, session, codes2[0])).status == 200


async def test_disable_with_a_recovery_code(client: Any) -> None:
    reg = await register(client, "ed")
    token = reg["access_token"]
    _, codes = await enroll(client, token)
    resp = await client.post(f"{WHISPR}/totp/disable", headers=auth(token), json={"code": codes[3]})
    assert resp.status == 200
    assert (await login(client, "ed")).status == 200


async def test_totp_endpoints_need_a_token(client: Any) -> None:
    for path in ("enroll", "confirm", "disable"):
        resp = await client.post(f"{WHISPR}/totp/{path}", json={"code": "123456"})
        assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"


async def test_email_code_then_totp(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, login={"email_otp": "required"})
    fay = await signup_verified(client, smtp, "fay")
    secret, _ = await enroll(client, fay["access_token"])
    resp = await login(client, "fay")
    body = await resp.json()
    assert resp.status == 401 and body["next"] == EMAIL_OTP
    session = body["session"]
    # The TOTP step cannot be answered first.
    resp = await answer(client, session, code_at(secret, 1))
    assert resp.status == 400
    resp = await answer(client, session, smtp.code_for("fay@example.org"), kind=EMAIL_OTP)
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "ORG.WHISPR.LOGIN_CHALLENGE"
    assert body["next"] == TOTP and body["completed"] == [EMAIL_OTP] and body["session"] == session
    resp = await answer(client, session, code_at(secret, 1))
    assert resp.status == 200 and (await resp.json())["user_id"] == "@fay:test.local"


async def test_one_totp_code_sent_to_two_logins_at_once_logs_in_once(client: Any) -> None:
    reg = await register(client, "gil")
    secret, _ = await enroll(client, reg["access_token"])
    sessions = [await totp_challenge(client, "gil") for _ in range(2)]
    code = code_at(secret, 1)
    responses = await asyncio.gather(*[answer(client, s, code) for s in sessions])
    assert sorted(r.status for r in responses) == [200, 403]
