"""Account deactivation (`POST /account/deactivate`): the account stays, unusable, forever.

The users row is kept (deactivated), so its user ID is never given to anyone else: other
servers' rooms still hold its events and their authors must stay unambiguous. Everything that
lets the account act goes: devices and tokens, OpenID tokens, email addresses (free to sign
up again), memberships (left, with the leave events sent like any other), pushers.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from homeserver.accounts.accounts import Accounts
from homeserver.rooms.membership import Membership
from storage.store import Store

log = logging.getLogger("whispr.deactivation")

# Memberships that make a user part of a room, all ended by a leave.
_IN_ROOM = ("join", "invite", "knock")


class Deactivation:
    def __init__(self, accounts: Accounts, membership: Membership, store: Store) -> None:
        self._accounts = accounts
        self._membership = membership
        self._store = store
        # Other domains' clean-ups (push: pushers and email notifications), called with the user ID.
        self.on_deactivated: list[Callable[[str], Awaitable[None]]] = []

    async def deactivate(self, user_id: str, erase: bool) -> None:
        # First the flag (logins fail from here on), then the tokens, then the rooms.
        await self._store.users.set_deactivated(user_id, erase)
        await self._accounts.logout_all(user_id)
        await self._store.openid.delete_for_user(user_id)
        await self._store.threepids.delete_for_user(user_id)
        for room_id, (membership, _) in (await self._membership.rooms_of(user_id)).items():
            if membership not in _IN_ROOM:
                continue
            try:
                await self._membership.leave(room_id, user_id)
            except Exception:  # one room (an unreachable server's) must not keep the user in the others
                log.exception("deactivation of %s: could not leave %s", user_id, room_id)
        # After the leaves, so that no profile change is announced to the rooms.
        if erase:
            await self._store.profiles.erase(user_id)
        for hook in self.on_deactivated:
            await hook(user_id)
        log.info("deactivated %s%s", user_id, " and erased its profile" if erase else "")
