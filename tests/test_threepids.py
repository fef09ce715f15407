"""An account's email addresses end to end with a real SMTP server (aiosmtpd): request a token,
validate it with the mailed code, add it behind the password, list, log in with it, delete it;
binding at identity servers and phone numbers answered as unsupported."""

from __future__ import annotations

from typing import Any

from tests.conftest import login
from tests.rooms_helpers import User
from tests.test_email_verification import email_login, new_secret, submit_code

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"


async def request_token(client: Any, email: str, secret: str, attempt: int = 1) -> Any:
    return await client.post(f"{V3}/account/3pid/email/requestToken",
                             json={"email": email, "client_secret": secret, "send_attempt": attempt})


async def add(user: User, sid: str, secret: str, expect: int = 200) -> Any:
    """POST /account/3pid/add through user-interactive auth with the password."""
    first = await user.client.post(f"{V3}/account/3pid/add", headers=user.h,
                                   json={"sid": sid, "client_secret": secret})
    assert first.status == 401, await first.text()
    session = (await first.json())["session"]
    return await user.call("POST", "/account/3pid/add", expect=expect, json={
        "sid": sid, "client_secret": secret,
        "auth": {"type": "m.login.password", "session": session, "password": PASSWORD,
                 "identifier": {"type": "m.id.user", "user": user.user_id}}})


async def test_add_list_login_delete(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    alice = await User.new(client, "alice")
    secret = new_secret()
    resp = await request_token(client, "Alice@Example.org", secret)
    assert resp.status == 200, await resp.text()
    sid = (await resp.json())["sid"]
    # Not validated yet: the addition is refused.
    assert (await add(alice, sid, secret, expect=400))["errcode"] == "M_THREEPID_AUTH_FAILED"
    resp = await submit_code(client, sid, secret, smtp.code_for("alice@example.org"))
    assert resp.status == 200, await resp.text()
    await add(alice, sid, secret)
    listed = (await alice.call("GET", "/account/3pid"))["threepids"]
    assert [(t["medium"], t["address"]) for t in listed] == [("email", "alice@example.org")]
    assert listed[0]["validated_at"] > 0
    assert (await email_login(client, "alice@example.org")).status == 200
    # The session is used up, and the address is taken for anyone else.
    assert (await add(alice, sid, secret, expect=400))["errcode"] == "M_THREEPID_AUTH_FAILED"
    bob = await User.new(client, "bob")
    taken = await request_token(client, "alice@example.org", new_secret())
    assert taken.status == 400 and (await taken.json())["errcode"] == "M_THREEPID_IN_USE"

    deleted = await alice.call("POST", "/account/3pid/delete", json={"medium": "email",
                                                                     "address": "alice@example.org"})
    assert deleted == {"id_server_unbind_result": "no-support"}
    assert (await alice.call("GET", "/account/3pid"))["threepids"] == []
    assert (await email_login(client, "alice@example.org")).status == 403
    assert (await login(client, "alice")).status == 200
    # Free again: bob may have it now.
    secret = new_secret()
    sid = (await (await request_token(client, "alice@example.org", secret)).json())["sid"]
    await submit_code(client, sid, secret, smtp.code_for("alice@example.org"))
    await add(bob, sid, secret)
    assert [t["address"] for t in (await bob.call("GET", "/account/3pid"))["threepids"]] == ["alice@example.org"]


async def test_wrong_password_and_unsupported(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port)
    alice = await User.new(client, "alice")
    first = await client.post(f"{V3}/account/3pid/add", headers=alice.h, json={"sid": "x", "client_secret": "y"})
    session = (await first.json())["session"]
    wrong = await client.post(f"{V3}/account/3pid/add", headers=alice.h, json={
        "sid": "x", "client_secret": "y", "auth": {"type": "m.login.password", "session": session,
                                                    "password": "nope", "identifier": {"type": "m.id.user",
                                                                                        "user": "alice"}}})
    assert wrong.status in (401, 403)
    unbind = await alice.call("POST", "/account/3pid/unbind", json={"medium": "email", "address": "a@b.org"})
    assert unbind == {"id_server_unbind_result": "no-support"}
    bind = await alice.call("POST", "/account/3pid/bind", expect=400, json={
        "client_secret": "a", "id_server": "id.example.org", "id_access_token": "t", "sid": "s"})
    assert bind["errcode"] == "M_SERVER_NOT_TRUSTED"
    for path in ("/account/3pid/msisdn/requestToken", "/register/msisdn/requestToken",
                 "/account/password/msisdn/requestToken"):
        resp = await client.post(V3 + path, json={"client_secret": "a", "country": "GB",
                                                  "phone_number": "07700900001", "send_attempt": 1})
        assert resp.status == 400 and (await resp.json())["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED", path
