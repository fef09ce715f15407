"""OpenID tokens: a user proves who they are to a third party (a widget, an integration manager).

The client asks for a token (`POST /user/{userId}/openid/request_token`) and hands it to the
third party, which asks our federation API (`GET /openid/userinfo`) whose it is. A token proves
the user ID and nothing else: it opens no other endpoint. Only its hash is stored, and it expires.
"""

from __future__ import annotations

import secrets
from typing import Any

from homeserver.clock import now_ms
from homeserver.errors import forbidden, unknown_token
from homeserver.accounts.tokens import digest
from storage.store import Store

OPENID_TOKEN_LIFETIME_S = 3600


class OpenId:
    def __init__(self, store: Store, server_name: str) -> None:
        self._store = store
        self._server_name = server_name

    async def request_token(self, requester: str, user_id: str) -> dict[str, Any]:
        if requester != user_id:
            raise forbidden("You can only request OpenID tokens for yourself")
        token = "wot_" + secrets.token_urlsafe(32)
        now = now_ms()
        await self._store.openid.add(digest(token), user_id, now + OPENID_TOKEN_LIFETIME_S * 1000, now)
        return {"access_token": token, "token_type": "Bearer", "matrix_server_name": self._server_name,
                "expires_in": OPENID_TOKEN_LIFETIME_S}

    async def userinfo(self, token: object) -> str:
        """The user a token names, or 401 M_UNKNOWN_TOKEN."""
        if not isinstance(token, str) or not token:
            raise unknown_token("Missing or unknown OpenID token")
        user_id = await self._store.openid.user_for(digest(token), now_ms())
        if user_id is None:
            raise unknown_token("Unknown or expired OpenID token")
        return user_id
