"""Email notifications about what is still unread after the delay: batched, through the real
SMTP server, with an unsubscribe link that works."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import auth
from tests.rooms_helpers import User
from tests.test_email_verification import signup_verified

WHISPR = "/_matrix/client/unstable/org.whispr"
EMAIL = {"push": {"email_delay_s": 0.5, "email_interval_s": 0.1}}


async def wait_for_mails(smtp: Any, n: int, timeout: float = 10.0) -> None:
    async def enough() -> None:
        while len(smtp.messages) < n:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(enough(), timeout)


async def test_unread_messages_are_mailed_once_then_unsubscribe(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, **EMAIL)
    reg = await signup_verified(client, smtp, "bob")
    bob = User(client, reg)
    alice = await User.new(client, "alice")
    assert (await bob.client.get(f"{WHISPR}/notifications/email", headers=bob.h)).status == 200
    resp = await client.put(f"{WHISPR}/notifications/email", headers=bob.h, json={"enabled": True})
    assert resp.status == 200
    assert (await (await client.get(f"{WHISPR}/notifications/email", headers=bob.h)).json()) == {"enabled": True}
    mails_before = len(smtp.messages)
    room = await alice.create_room(name="Tea room", invite=[bob.user_id])
    await bob.call("POST", f"/join/{room}")
    read_one = await alice.send(room, "read quickly")
    await bob.call("POST", f"/rooms/{room}/receipt/m.read/{read_one}", json={})
    await alice.create_room(name="Second room", invite=[bob.user_id])  # an invite (as friend requests are)
    await alice.send(room, "first unread")
    await alice.send(room, "second unread")
    await wait_for_mails(smtp, mails_before + 1)
    await asyncio.sleep(0.5)
    assert len(smtp.messages) == mails_before + 1  # one mail for the batch, not one per message
    mail = smtp.last_to("bob@example.org")
    text = smtp.body(mail)
    assert "unread" in mail["Subject"]
    assert f"{alice.user_id} in Tea room: first unread" in text and "second unread" in text
    assert "read quickly" not in text
    assert f"{alice.user_id} invited you to Second room" in text
    assert "invited you to Tea room" not in text  # read with the receipt after it
    link = re.search(r"(http\S+unsubscribe\?\S+)", text)
    assert link is not None
    parts = urlsplit(link.group(1))
    # a forged token is refused
    bad = await client.get(f"{parts.path}?user_id={bob.user_id}&token=00")
    assert bad.status == 403 and (await bad.json())["errcode"] == "M_FORBIDDEN"
    done = await client.get(f"{parts.path}?{parts.query}")
    assert done.status == 200
    assert (await (await client.get(f"{WHISPR}/notifications/email", headers=bob.h)).json()) == {"enabled": False}
    await alice.send(room, "after unsubscribing")
    await asyncio.sleep(1.0)
    assert len(smtp.messages) == mails_before + 1


async def test_email_setting_needs_a_boolean(serve: Any, smtp: Any) -> None:
    client = await serve(smtp_port=smtp.port, **EMAIL)
    alice = await User.new(client, "alice")
    resp = await client.put(f"{WHISPR}/notifications/email", headers=auth(alice.token), json={"enabled": "yes"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_BAD_JSON"
    resp = await client.get(f"{WHISPR}/notifications/email/unsubscribe")
    assert resp.status == 400
