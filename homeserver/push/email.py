"""Email notifications: a user who turned them on gets one mail listing what notified them
(messages, mentions, invites and so friend requests) and is still unread once the oldest of it
is `email_delay_s` old, batched per user, with a link that turns the mails off.

Each user's position (`last_stream`) moves past what was looked at, mailed or read, so nothing
is mailed twice, and a restart resumes from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from urllib.parse import urlencode

from homeserver.accounts.mailer import Mailer
from homeserver.clock import now_ms
from homeserver.config import Config
from homeserver.errors import MatrixError, forbidden
from homeserver.push.notifications import Notifications
from homeserver.rooms.rooms import Rooms
from storage.push import Notification
from storage.store import Store

log = logging.getLogger("whispr.push.email")

MAX_PER_MAIL = 50
MAX_BODY_CHARS = 200
UNSUBSCRIBE_PATH = "/_matrix/client/unstable/org.whispr/notifications/email/unsubscribe"


class EmailNotifier:
    def __init__(self, config: Config, store: Store, notifications: Notifications, rooms: Rooms,
                 mailer: Mailer, position: Callable[[], int]) -> None:
        self._config = config
        self._position = position  # the stream position everything up to is committed (the notifier's)
        self._scanned: dict[str, int] = {}
        self._store = store
        self._notifications = notifications
        self._rooms = rooms
        self._mailer = mailer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="email notifications")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the setting ---------------------------------------------------------------------

    async def setting(self, user_id: str) -> bool:
        current = await self._store.push.email_setting(user_id)
        return current is not None and current[0]

    async def set(self, user_id: str, enabled: bool, position: int) -> None:
        """Turn the mails on (about what happens from now on) or off."""
        await self._store.push.set_email(user_id, enabled, position)

    async def remove_user(self, user_id: str) -> None:
        """Account deactivation: no more mails."""
        await self._store.push.set_email(user_id, False, 0)

    def unsubscribe_token(self, user_id: str) -> str:
        key = self._config.secrets.jwt_secret.encode()
        return hmac.new(key, b"email-unsubscribe\0" + user_id.encode(), hashlib.sha256).hexdigest()

    def unsubscribe_link(self, user_id: str) -> str:
        query = urlencode({"user_id": user_id, "token": self.unsubscribe_token(user_id)})
        return f"{self._config.public_baseurl.rstrip('/')}{UNSUBSCRIBE_PATH}?{query}"

    async def unsubscribe(self, user_id: str, token: str) -> None:
        if not hmac.compare_digest(token, self.unsubscribe_token(user_id)):
            raise forbidden("This unsubscribe link is not valid")
        await self._store.push.set_email(user_id, False, 0)

    # --- sending ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.push.email_interval_s)
            try:
                await self.run_once()
            except Exception:
                log.exception("email notifications failed")

    async def run_once(self) -> None:
        cutoff = now_ms() - int(self._config.push.email_delay_s * 1000)
        for user_id, last in await self._store.push.email_users():
            await self._user(user_id, max(last, self._scanned.get(user_id, 0)), cutoff)

    async def _user(self, user_id: str, last: int, cutoff: int) -> None:
        seen = self._position()  # read first: everything of the user's up to it is in the answer
        due = await self._store.push.notifications_after(user_id, last, MAX_PER_MAIL)
        if not due:
            self._scanned[user_id] = seen  # the next round reads from here, not from the last mail
            return
        if due[0].ts > cutoff:
            return  # nothing has waited long enough yet; once something has, the newer ones go with it
        read: dict[str, int] = {}
        for room_id, _, stream in await self._store.push.receipt_streams(user_id):
            read[room_id] = max(read.get(room_id, 0), stream)
        unread = [n for n in due if n.stream > read.get(n.room_id, 0)]
        addresses = [t.address for t in await self._store.threepids.for_user(user_id)
                     if t.medium == "email" and t.validated_ts]
        if unread and addresses:
            subject, body = await self._compose(user_id, unread)
            try:
                for address in addresses:
                    await self._mailer.send(address, subject, body)
            except MatrixError:
                return  # the mail server failed: the same batch next round
        await self._store.push.advance_email(user_id, due[-1].stream)

    async def _compose(self, user_id: str, unread: list[Notification]) -> tuple[str, str]:
        events = await self._rooms.get_events(n.event_id for n in unread)
        names: dict[str, str] = {}
        lines = []
        for n in unread:
            event = events.get(n.event_id)
            if event is None:
                continue
            if n.room_id not in names:
                name_event = await self._rooms.state_event(n.room_id, "m.room.name")
                name = name_event.content.get("name") if name_event is not None else None
                names[n.room_id] = name if isinstance(name, str) and name else n.room_id
            room = names[n.room_id]
            if event.type == "m.room.member" and event.state_key == user_id:
                lines.append(f"{event.sender} invited you to {room}")
                continue
            text = event.content.get("body")
            text = text if isinstance(text, str) else "(a message)" if event.type == "m.room.encrypted" else event.type
            lines.append(f"{event.sender} in {room}: {text[:MAX_BODY_CHARS]}")
        count = len(lines)
        subject = f"You have {count} unread notification{'s' if count != 1 else ''} on {self._config.server_name}"
        body = "\n".join(lines) + (
            f"\n\nYou get these mails because you turned on email notifications.\n"
            f"To stop them, open: {self.unsubscribe_link(user_id)}\n")
        return subject, body
