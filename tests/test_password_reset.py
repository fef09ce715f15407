"""Password reset by mail (no access token) and password change with UIA, over HTTP."""

from __future__ import annotations

from typing import Any

from tests.conftest import auth, login, register
from tests.test_email_verification import new_secret, open_link, signup, signup_verified, submit_code

V3 = "/_matrix/client/v3"
NEW_PASSWORD = "a brand new password"


async def request_reset(client: Any, email: str, client_secret: str, send_attempt: int = 1) -> Any:
    return await client.post(f"{V3}/account/password/email/requestToken",
                             json={"email": email, "client_secret": client_secret, "send_attempt": send_attempt})


async def reset_uia(client: Any, creds: dict[str, str], new_password: str = NEW_PASSWORD,
                    **extra: Any) -> Any:
    """POST /account/password without a token: the first call opens a UIA session, the second answers it."""
    first = await client.post(f"{V3}/account/password", json={"new_password": new_password, **extra})
    assert first.status == 401, await first.text()
    body = await first.json()
    assert [f["stages"] for f in body["flows"]] == [["m.login.email.identity"]]
    return await client.post(f"{V3}/account/password", json={
        "new_password": new_password, **extra,
        "auth": {"type": "m.login.email.identity", "threepid_creds": creds, "session": body["session"]}})


async def whoami_status(client: Any, token: str) -> int:
    return (await client.get(f"{V3}/account/whoami", headers=auth(token))).status


async def test_reset_by_mail(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    amy = await signup_verified(client, smtp, "amy")
    other = await (await login(client, "amy", refresh_token=True)).json()
    sent = len(smtp.messages)

    secret = new_secret()
    resp = await request_reset(client, "amy@EXAMPLE.org", secret)
    assert resp.status == 200, await resp.text()
    sid = (await resp.json())["sid"]
    assert len(smtp.messages) == sent + 1
    mail = smtp.last_to("amy@example.org")
    assert "Reset" in mail["Subject"]
    creds = {"sid": sid, "client_secret": secret}

    # Before the code is submitted the stage fails and nothing changes.
    resp = await reset_uia(client, creds)
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "M_UNAUTHORIZED" and body["completed"] == []
    assert (await login(client, "amy")).status == 200

    resp = await submit_code(client, sid, secret, smtp.code_for("amy@example.org"))
    assert resp.status == 200
    resp = await reset_uia(client, creds)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {}

    # Every session is logged out; the new password works, the old one does not.
    assert await whoami_status(client, amy["access_token"]) == 401
    assert await whoami_status(client, other["access_token"]) == 401
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": other["refresh_token"]})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
    assert (await login(client, "amy")).status == 403
    resp = await login(client, "amy", NEW_PASSWORD)
    assert resp.status == 200 and (await resp.json())["user_id"] == "@amy:test.local"

    # The validation is used up: it cannot reset the password again.
    resp = await reset_uia(client, creds, "yet another password")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"
    assert (await login(client, "amy", NEW_PASSWORD)).status == 200
    assert (await login(client, "amy", "yet another password")).status == 403


async def test_reset_by_link_and_logout_devices_false(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    ben = await signup_verified(client, smtp, "ben")
    secret = new_secret()
    sid = (await (await request_reset(client, "ben@example.org", secret)).json())["sid"]
    assert (await open_link(client, smtp.link_for("ben@example.org"))).status == 200
    resp = await reset_uia(client, {"sid": sid, "client_secret": secret}, logout_devices=False)
    assert resp.status == 200, await resp.text()
    assert await whoami_status(client, ben["access_token"]) == 200
    assert (await login(client, "ben", NEW_PASSWORD)).status == 200
    assert (await login(client, "ben")).status == 403


async def test_reset_request_needs_a_verified_known_email(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    await signup(client, "cid", "cid@example.org")  # never verified
    sent = len(smtp.messages)
    resp = await request_reset(client, "nobody@example.org", new_secret())
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_NOT_FOUND"
    resp = await request_reset(client, "cid@example.org", new_secret())
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_NOT_FOUND"
    resp = await request_reset(client, "nobody@example.org", "bad secret!")
    assert resp.status == 400
    assert len(smtp.messages) == sent


async def test_reset_request_repeated_send_attempt_sends_one_mail(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    await signup_verified(client, smtp, "dee")
    sent = len(smtp.messages)
    secret = new_secret()
    first = await (await request_reset(client, "dee@example.org", secret, 1)).json()
    again = await (await request_reset(client, "dee@example.org", secret, 1)).json()
    assert first["sid"] == again["sid"] and len(smtp.messages) == sent + 1


async def test_other_validations_cannot_reset(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    # A validated sign-up session is for verifying the address, not for resetting.
    secret = new_secret()
    eve = await signup(client, "eve", "eve@example.org", secret)
    assert (await submit_code(client, eve["sid"], secret, smtp.code_for("eve@example.org"))).status == 200
    resp = await reset_uia(client, {"sid": eve["sid"], "client_secret": secret})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"
    # Nor a made-up or wrong-secret session.
    reset_secret = new_secret()
    sid = (await (await request_reset(client, "eve@example.org", reset_secret)).json())["sid"]
    assert (await submit_code(client, sid, reset_secret, smtp.code_for("eve@example.org"))).status == 200
    resp = await reset_uia(client, {"sid": sid, "client_secret": new_secret()})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"
    resp = await reset_uia(client, {"sid": "made-up", "client_secret": reset_secret})
    assert resp.status == 401
    assert await whoami_status(client, eve["access_token"]) == 200
    assert (await login(client, "eve")).status == 200
    # The genuine one still works after those failures.
    resp = await reset_uia(client, {"sid": sid, "client_secret": reset_secret})
    assert resp.status == 200


async def test_weak_new_password_is_refused_before_uia(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    resp = await client.post(f"{V3}/account/password", json={"new_password": "short"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_WEAK_PASSWORD"


async def test_authenticated_change_keeps_other_devices_when_asked(client: Any) -> None:
    reg = await register(client, "fin")
    other = await (await login(client, "fin")).json()
    body = {"new_password": NEW_PASSWORD, "logout_devices": False}
    first = await client.post(f"{V3}/account/password", headers=auth(reg["access_token"]), json=body)
    assert first.status == 401
    uia = await first.json()
    assert ["m.login.password"] in [f["stages"] for f in uia["flows"]]
    password_auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "fin"},
                     "session": uia["session"]}
    # The wrong current password fails the stage.
    resp = await client.post(f"{V3}/account/password", headers=auth(reg["access_token"]), json={
        **body, "auth": {**password_auth, "password": "not it"}})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.post(f"{V3}/account/password", headers=auth(reg["access_token"]), json={
        **body, "auth": {**password_auth, "password": "correct horse"}})
    assert resp.status == 200, await resp.text()
    assert await whoami_status(client, reg["access_token"]) == 200
    assert await whoami_status(client, other["access_token"]) == 200
    assert (await login(client, "fin")).status == 403
    assert (await login(client, "fin", NEW_PASSWORD)).status == 200


async def test_authenticated_change_cannot_use_another_users_password(client: Any) -> None:
    gus = await register(client, "gus")
    await register(client, "hal")
    body = {"new_password": NEW_PASSWORD}
    first = await client.post(f"{V3}/account/password", headers=auth(gus["access_token"]), json=body)
    session = (await first.json())["session"]
    resp = await client.post(f"{V3}/account/password", headers=auth(gus["access_token"]), json={
        **body, "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hal"},
                         "password": "correct horse", "session": session}})
    assert resp.status == 401
    assert (await login(client, "gus")).status == 200
    assert (await login(client, "hal")).status == 200
    # A UIA session opened for an unauthenticated reset cannot authorise gus's change.
    anon = await client.post(f"{V3}/account/password", json=body)
    resp = await client.post(f"{V3}/account/password", headers=auth(gus["access_token"]), json={
        **body, "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gus"},
                         "password": "correct horse", "session": (await anon.json())["session"]}})
    assert resp.status == 400
    assert (await login(client, "gus")).status == 200


async def test_authenticated_change_with_another_accounts_email_is_refused(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    ivy = await signup_verified(client, smtp, "ivy")
    await signup_verified(client, smtp, "jo")
    secret = new_secret()
    sid = (await (await request_reset(client, "jo@example.org", secret)).json())["sid"]
    assert (await submit_code(client, sid, secret, smtp.code_for("jo@example.org"))).status == 200
    body = {"new_password": NEW_PASSWORD}
    first = await client.post(f"{V3}/account/password", headers=auth(ivy["access_token"]), json=body)
    resp = await client.post(f"{V3}/account/password", headers=auth(ivy["access_token"]), json={
        **body, "auth": {"type": "m.login.email.identity", "threepid_creds": {"sid": sid, "client_secret": secret},
                         "session": (await first.json())["session"]}})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    assert (await login(client, "ivy")).status == 200
    assert (await login(client, "jo")).status == 200
