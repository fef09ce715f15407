"""Email verification over HTTP with a real SMTP server: registration, Whispr sign-up, links and codes."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from urllib.parse import urlsplit


from bench.servers import free_port
from tests.conftest import auth, login

V3 = "/_matrix/client/v3"
WHISPR = "/_matrix/client/unstable/org.whispr"
PASSWORD = "correct horse"


def new_secret() -> str:
    return "cs" + secrets.token_hex(8)


def wrong_code(right: str) -> str:
    return "000000" if right != "000000" else "111111"


async def request_register_token(client: Any, email: str, client_secret: str, send_attempt: int = 1) -> Any:
    return await client.post(f"{V3}/register/email/requestToken",
                             json={"email": email, "client_secret": client_secret, "send_attempt": send_attempt})


async def submit_code(client: Any, sid: str, client_secret: str, code: str) -> Any:
    return await client.post(f"{WHISPR}/email/submit_token",
                             json={"sid": sid, "client_secret": client_secret, "token": code})


async def open_link(client: Any, link: str) -> Any:
    """The link points at public_baseurl; follow its path and query on the test server."""
    parts = urlsplit(link)
    return await client.get(f"{parts.path}?{parts.query}")


async def email_login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": email},
        "password": password})


async def register_with_email(client: Any, username: str, creds: dict[str, str],
                              password: str = PASSWORD) -> Any:
    """The UIA dance for /register with m.login.email.identity; returns the final response."""
    body = {"username": username, "password": password}
    first = await client.post(f"{V3}/register", json=body)
    assert first.status == 401, await first.text()
    session = (await first.json())["session"]
    return await client.post(f"{V3}/register", json={
        **body, "auth": {"type": "m.login.email.identity", "threepid_creds": creds, "session": session}})


async def signup(client: Any, username: str, email: str, client_secret: str | None = None,
                 password: str = PASSWORD) -> dict[str, Any]:
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": username, "email": email, "password": password,
        "client_secret": client_secret or new_secret()})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def signup_verified(client: Any, smtp: Any, username: str, email: str | None = None,
                          password: str = PASSWORD) -> dict[str, Any]:
    """A Whispr sign-up whose email is then verified with the mailed code."""
    email = email or f"{username}@example.org"
    client_secret = new_secret()
    body = await signup(client, username, email, client_secret, password)
    resp = await submit_code(client, body["sid"], client_secret, smtp.code_for(email))
    assert resp.status == 200, await resp.text()
    return {**body, "email": email}


async def threepids(client: Any, token: str) -> list[dict[str, Any]]:
    resp = await client.get(f"{V3}/account/3pid", headers=auth(token))
    assert resp.status == 200
    return (await resp.json())["threepids"]


# --- requestToken --------------------------------------------------------


async def test_request_token_mails_a_code_and_a_link(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    secret = new_secret()
    resp = await request_register_token(client, "ann@Example.ORG", secret)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["sid"] and body["submit_url"].endswith(f"{WHISPR}/email/submit_token")
    assert len(smtp.messages) == 1
    msg = smtp.messages[0]
    assert msg["To"] == "ann@example.org"  # the domain is normalised
    assert "Verify" in msg["Subject"]
    code = smtp.code_for("ann@example.org")
    link = smtp.link_for("ann@example.org")
    assert len(code) == 6 and code.isdigit()
    query = urlsplit(link).query
    assert f"sid={body['sid']}" in query and f"client_secret={secret}" in query and "token=" in query


async def test_repeated_send_attempt_sends_no_second_mail(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    secret = new_secret()
    first = await (await request_register_token(client, "bea@example.org", secret, 1)).json()
    again = await (await request_register_token(client, "bea@example.org", secret, 1)).json()
    assert again["sid"] == first["sid"]
    assert len(smtp.messages) == 1
    # A new send_attempt sends a new mail with a new session and a different code.
    third = await (await request_register_token(client, "bea@example.org", secret, 2)).json()
    assert third["sid"] != first["sid"]
    assert len(smtp.messages) == 2
    # Going back to an older attempt number does not mail either.
    await request_register_token(client, "bea@example.org", secret, 1)
    assert len(smtp.messages) == 2


async def test_request_token_validation(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    resp = await request_register_token(client, "cat@example.org", "bad secret!")
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"
    resp = await client.post(f"{V3}/register/email/requestToken",
                             json={"email": "cat@example.org", "client_secret": new_secret(), "send_attempt": "1"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_BAD_JSON"
    resp = await request_register_token(client, "not an email", new_secret())
    assert resp.status == 400
    assert smtp.messages == []
    # An address already on an account cannot be used to register again.
    await signup(client, "cat", "cat@example.org")
    sent = len(smtp.messages)
    resp = await request_register_token(client, "cat@example.org", new_secret())
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_IN_USE"
    assert len(smtp.messages) == sent


# --- registration with require_email_verification -----------------------------------------


async def test_register_requires_verified_email_then_code_works(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True})
    first = await client.post(f"{V3}/register", json={"username": "dan", "password": PASSWORD})
    assert first.status == 401
    flows = [f["stages"] for f in (await first.json())["flows"]]
    assert flows == [["m.login.email.identity"]]
    session = (await first.json())["session"]
    # m.login.dummy is not enough.
    resp = await client.post(f"{V3}/register", json={"username": "dan", "password": PASSWORD,
                                                     "auth": {"type": "m.login.dummy", "session": session}})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"

    secret = new_secret()
    sid = (await (await request_register_token(client, "dan@example.org", secret)).json())["sid"]
    creds = {"sid": sid, "client_secret": secret}
    # Before the code is submitted the stage fails.
    resp = await register_with_email(client, "dan", creds)
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "M_UNAUTHORIZED" and body["completed"] == []
    # A wrong client_secret cannot submit the code.
    resp = await submit_code(client, sid, new_secret(), smtp.code_for("dan@example.org"))
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NO_VALID_SESSION"

    resp = await submit_code(client, sid, secret, smtp.code_for("dan@example.org"))
    assert resp.status == 200 and await resp.json() == {"success": True}
    resp = await register_with_email(client, "dan", creds)
    assert resp.status == 200, await resp.text()
    reg = await resp.json()
    assert reg["user_id"] == "@dan:test.local"
    [tp] = await threepids(client, reg["access_token"])
    assert tp["medium"] == "email" and tp["address"] == "dan@example.org"
    assert tp["org.whispr.validated"] is True and tp["validated_at"] > 0

    # The email is now a login identifier.
    resp = await email_login(client, "dan@EXAMPLE.org")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["user_id"] == "@dan:test.local"
    assert (await email_login(client, "dan@example.org", "wrong password")).status == 403

    # The same validation cannot register a second account.
    resp = await register_with_email(client, "dan2", creds)
    body = await resp.json()
    assert resp.status == 401 and body["errcode"] == "M_UNAUTHORIZED"
    resp = await client.get(f"{V3}/register/available", params={"username": "dan2"})
    assert await resp.json() == {"available": True}


async def test_register_after_following_the_link(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True})
    secret = new_secret()
    sid = (await (await request_register_token(client, "eve@example.org", secret)).json())["sid"]
    link = smtp.link_for("eve@example.org")
    # A tampered link does not verify.
    parts = urlsplit(link)
    bad = await client.get(parts.path + "?" + parts.query.replace("token=", "token=x"))
    assert bad.status == 400 and "Could not verify" in await bad.text()
    resp = await open_link(client, link)
    assert resp.status == 200 and "verified" in await resp.text()
    resp = await register_with_email(client, "eve", {"sid": sid, "client_secret": secret})
    assert resp.status == 200, await resp.text()
    assert (await email_login(client, "eve@example.org")).status == 200


async def test_concurrent_registrations_share_one_validation_only_once(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True})
    secret = new_secret()
    sid = (await (await request_register_token(client, "fay@example.org", secret)).json())["sid"]
    assert (await submit_code(client, sid, secret, smtp.code_for("fay@example.org"))).status == 200
    creds = {"sid": sid, "client_secret": secret}
    # Both UIA rounds race for the one validation: only one account may come out of it.
    results = await asyncio.gather(register_with_email(client, "fay1", creds),
                                   register_with_email(client, "fay2", creds))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 401], statuses


async def test_five_wrong_codes_kill_the_validation(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True})
    secret = new_secret()
    sid = (await (await request_register_token(client, "gus@example.org", secret)).json())["sid"]
    code = smtp.code_for("gus@example.org")
    wrong = wrong_code(code)
    errcodes = []
    for _ in range(5):
        resp = await submit_code(client, sid, secret, wrong)
        assert resp.status == 400
        errcodes.append((await resp.json())["errcode"])
    assert errcodes == ["M_INVALID_PARAM"] * 4 + ["M_NO_VALID_SESSION"]
    resp = await submit_code(client, sid, secret, code)
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NO_VALID_SESSION"
    # The link dies with the code.
    assert (await open_link(client, smtp.link_for("gus@example.org"))).status == 400
    resp = await register_with_email(client, "gus", {"sid": sid, "client_secret": secret})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"
    # A new mail (new send_attempt) starts over.
    sid2 = (await (await request_register_token(client, "gus@example.org", secret, 2)).json())["sid"]
    assert (await submit_code(client, sid2, secret, smtp.code_for("gus@example.org"))).status == 200
    resp = await register_with_email(client, "gus", {"sid": sid2, "client_secret": secret})
    assert resp.status == 200, await resp.text()


async def test_unknown_session_and_wrong_purpose(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, registration={"require_email_verification": True})
    resp = await submit_code(client, "no-such-sid", new_secret(), "123456")
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NO_VALID_SESSION"
    # A validated sign-up session (another purpose) does not satisfy registration.
    secret = new_secret()
    body = await signup(client, "hal", "hal@example.org", secret)
    assert (await submit_code(client, body["sid"], secret, smtp.code_for("hal@example.org"))).status == 200
    resp = await register_with_email(client, "hal2", {"sid": body["sid"], "client_secret": secret})
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"


# --- Whispr sign-up -----------------------------------------------------------


async def test_signup_email_unverified_until_code_is_used(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    secret = new_secret()
    body = await signup(client, "ida", "ida@Example.org", secret)
    assert body["user_id"] == "@ida:test.local" and body["access_token"] and body["device_id"]
    assert body["email"] == "ida@example.org" and body["email_verified"] is False and body["sid"]
    token = body["access_token"]
    assert (await client.get(f"{V3}/account/whoami", headers=auth(token))).status == 200
    [tp] = await threepids(client, token)
    assert tp["address"] == "ida@example.org" and tp["org.whispr.validated"] is False and tp["validated_at"] == 0
    # Not a login identifier yet; the username works.
    resp = await email_login(client, "ida@example.org")
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    assert (await login(client, "ida")).status == 200

    code = smtp.code_for("ida@example.org")
    wrong = wrong_code(code)
    resp = await submit_code(client, body["sid"], secret, wrong)
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"
    assert (await threepids(client, token))[0]["org.whispr.validated"] is False

    resp = await submit_code(client, body["sid"], secret, code)
    assert resp.status == 200
    [tp] = await threepids(client, token)
    assert tp["org.whispr.validated"] is True and tp["validated_at"] > 0
    resp = await email_login(client, "ida@example.org")
    assert resp.status == 200 and (await resp.json())["user_id"] == "@ida:test.local"


async def test_signup_verified_by_link(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    body = await signup(client, "jon", "jon@example.org")
    assert (await email_login(client, "jon@example.org")).status == 403
    assert (await open_link(client, smtp.link_for("jon@example.org"))).status == 200
    assert (await threepids(client, body["access_token"]))[0]["org.whispr.validated"] is True
    assert (await email_login(client, "jon@example.org")).status == 200


async def test_signup_resend_for_own_unverified_address(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    secret = new_secret()
    body = await signup(client, "kay", "kay@example.org", secret)
    first_code = smtp.code_for("kay@example.org")
    assert len(smtp.messages) == 1
    resp = await client.post(f"{WHISPR}/signup/email/requestToken", headers=auth(body["access_token"]),
                             json={"client_secret": secret, "send_attempt": 2})
    assert resp.status == 200, await resp.text()
    sid2 = (await resp.json())["sid"]
    assert sid2 != body["sid"] and len(smtp.messages) == 2
    second_code = smtp.code_for("kay@example.org")
    if second_code != first_code:
        assert (await submit_code(client, sid2, secret, first_code)).status == 400
    assert (await submit_code(client, sid2, secret, second_code)).status == 200
    assert (await email_login(client, "kay@example.org")).status == 200
    # Nothing left to verify.
    resp = await client.post(f"{WHISPR}/signup/email/requestToken", headers=auth(body["access_token"]),
                             json={"client_secret": secret, "send_attempt": 3})
    assert resp.status == 400 and len(smtp.messages) == 2


async def test_signup_rejects_taken_names_and_addresses(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    await signup(client, "lea", "lea@example.org")
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": "lea", "email": "other@example.org", "password": PASSWORD, "client_secret": new_secret()})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_USER_IN_USE"
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": "lea2", "email": "lea@EXAMPLE.org", "password": PASSWORD, "client_secret": new_secret()})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_IN_USE"
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": "lea3", "email": "lea3@example.org", "password": "short", "client_secret": new_secret()})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_WEAK_PASSWORD"
    assert (await client.get(f"{V3}/register/available", params={"username": "lea3"})).status == 200
    assert len(smtp.messages) == 1


async def test_four_wrong_codes_then_the_right_one(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    secret = new_secret()
    body = await signup(client, "max", "max@example.org", secret)
    code = smtp.code_for("max@example.org")
    for left in (4, 3, 2, 1):
        resp = await submit_code(client, body["sid"], secret, wrong_code(code))
        assert resp.status == 400 and f"{left} tries left" in (await resp.json())["error"]
    assert (await submit_code(client, body["sid"], secret, code)).status == 200
    assert (await email_login(client, "max@example.org")).status == 200


async def test_concurrent_guesses_get_no_more_than_five_tries(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    secret = new_secret()
    body = await signup(client, "ned", "ned@example.org", secret)
    code = smtp.code_for("ned@example.org")
    guesses = [f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 31)]
    responses = await asyncio.gather(*[submit_code(client, body["sid"], secret, g) for g in guesses])
    errors = [(await r.json())["error"] for r in responses]
    assert all(r.status == 400 for r in responses)
    # Exactly five guesses were checked against the code; the rest were refused unchecked.
    assert sum("tries left" in e for e in errors) == 5, errors
    assert (await submit_code(client, body["sid"], secret, code)).status == 400
    assert (await email_login(client, "ned@example.org")).status == 403


async def test_an_unverified_address_is_free_again_after_its_ttl(serve: Any, smtp: Any) -> None:
    """Nobody can hold another person's address for good by signing up with it and never verifying."""
    client = await serve(smtp_port=smtp.port, registration={"unverified_email_ttl_s": 1})
    squatter = await signup(client, "squatter", "mia@example.org")
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": "mia", "email": "mia@example.org", "password": PASSWORD, "client_secret": new_secret()})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_IN_USE"  # still reserved
    await asyncio.sleep(1.2)
    secret = new_secret()
    mia = await signup(client, "mia", "mia@example.org", secret)
    assert await threepids(client, squatter["access_token"]) == []  # the squatter lost it
    assert (await submit_code(client, mia["sid"], secret, smtp.code_for("mia@example.org"))).status == 200
    resp = await email_login(client, "mia@example.org")
    assert resp.status == 200 and (await resp.json())["user_id"] == "@mia:test.local"
    # A verified address is never released, however old.
    await asyncio.sleep(1.2)
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": "late", "email": "mia@example.org", "password": PASSWORD, "client_secret": new_secret()})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_IN_USE"
    resp = await request_register_token(client, "mia@example.org", new_secret())
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_IN_USE"


async def test_signup_leaves_no_account_when_the_mail_cannot_be_sent(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=free_port())  # nothing listens there
    resp = await client.post(f"{WHISPR}/signup", json={
        "username": "nia", "email": "nia@example.org", "password": PASSWORD, "client_secret": new_secret()})
    assert resp.status == 500 and (await resp.json())["errcode"] == "M_UNKNOWN"
    # Neither the name nor the address is taken: trying again later just works.
    assert (await client.get(f"{V3}/register/available", params={"username": "nia"})).status == 200
    assert (await login(client, "nia")).status == 403
    good = await serve(smtp_port=smtp.port)
    body = await signup(good, "nia", "nia@example.org")
    assert body["user_id"] == "@nia:test.local"
