"""Single-use login tokens (POST /login/get_token, then POST /login with m.login.token).

A token is random, kept only as its digest in the ephemeral store (shared by all workers with
Redis) for `login.login_token_ttl_s`, and redeemed once: the claim is an atomic counter, so two
concurrent logins with one token cannot both succeed.
"""

from __future__ import annotations

import secrets
from typing import Any

from homeserver.accounts.tokens import digest
from homeserver.config import LoginConfig
from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError

LOGIN_TOKEN = "m.login.token"


class LoginTokens:
    def __init__(self, config: LoginConfig, ephemeral: Ephemeral) -> None:
        self._config = config
        self._ephemeral = ephemeral

    @property
    def enabled(self) -> bool:
        return self._config.get_login_token

    async def issue(self, user_id: str) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        ttl = self._config.login_token_ttl_s
        await self._ephemeral.put(f"login_token:{digest(token)}", {"user_id": user_id}, ttl)
        return {"login_token": token, "expires_in_ms": ttl * 1000}

    async def redeem(self, token: object) -> str:
        """The user the token logs in; 403 M_FORBIDDEN if it is unknown, expired or used."""
        if not isinstance(token, str) or not token or len(token) > 256:
            raise MatrixError(403, "M_FORBIDDEN", "Invalid login token")
        key = f"login_token:{digest(token)}"
        state = await self._ephemeral.get(key)
        if state is None or await self._ephemeral.incr(key + ":claimed", self._config.login_token_ttl_s) != 1:
            raise MatrixError(403, "M_FORBIDDEN", "Invalid login token")
        await self._ephemeral.delete(key)
        return str(state["user_id"])
