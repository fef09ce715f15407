"""Registration tokens: invite-only sign-up (the spec's `m.login.registration_token` stage).

A token may be limited in uses and in time. A sign-up that passed the stage holds one use as
*pending* until it completes (then *completed*) or its UIA session expires (then the use is free
again), so a token of N uses never lets more than N accounts in.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

from homeserver.accounts.uia import SESSION_TTL_S
from homeserver.admin.users import MAX_SAFE_INT
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, invalid_param, not_found
from storage.database import Row
from storage.registration_tokens import RegistrationTokenStore

STAGE = "m.login.registration_token"
# Synapse's limits: tokens of at most 64 characters from the spec's unreserved set.
MAX_TOKEN_LENGTH = 64
DEFAULT_TOKEN_LENGTH = 16
TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]+")
_GENERATED_CHARS = string.ascii_letters + string.digits


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "uses_allowed": self.uses_allowed, "pending": self.pending,
                "completed": self.completed, "expiry_time": self.expiry_time}


def _well_formed(token: object) -> bool:
    return isinstance(token, str) and len(token) <= MAX_TOKEN_LENGTH and TOKEN_RE.fullmatch(token) is not None


def _token(row: Row) -> RegistrationToken:
    return RegistrationToken(row["token"], row["uses_allowed"], int(row["pending"]), int(row["completed"]),
                             row["expiry_time"])


def _non_negative(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INT:
        raise invalid_param(f"{key} must be null or an integer from 0 to {MAX_SAFE_INT}")
    return value


def _expiry(body: dict[str, Any]) -> int | None:
    value = _non_negative(body, "expiry_time")
    if value is not None and value < now_ms():
        raise invalid_param("expiry_time must not be in the past")
    return value


class RegistrationTokens:
    def __init__(self, store: RegistrationTokenStore) -> None:
        self._store = store

    async def create(self, body: dict[str, Any]) -> RegistrationToken:
        uses_allowed = _non_negative(body, "uses_allowed")
        expiry_time = _expiry(body)
        token = body.get("token")
        if token is None:
            length = body.get("length", DEFAULT_TOKEN_LENGTH)
            if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= MAX_TOKEN_LENGTH:
                raise invalid_param(f"length must be an integer from 1 to {MAX_TOKEN_LENGTH}")
            token = "".join(secrets.choice(_GENERATED_CHARS) for _ in range(length))
        elif not _well_formed(token):
            raise invalid_param(f"token must be 1 to {MAX_TOKEN_LENGTH} of the characters A-Z a-z 0-9 . _ ~ -")
        if not await self._store.create(token, uses_allowed, expiry_time, now_ms()):
            raise invalid_param("Token already exists")
        return await self.get(token)

    async def all(self, valid: bool | None = None) -> list[RegistrationToken]:
        return [_token(r) for r in await self._store.all(now_ms(), valid)]

    async def get(self, token: str) -> RegistrationToken:
        row = await self._store.get(token, now_ms()) if _well_formed(token) else None
        if row is None:
            raise not_found(f"No such registration token: {token}")
        return _token(row)

    async def update(self, token: str, body: dict[str, Any]) -> RegistrationToken:
        changes: dict[str, Any] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _non_negative(body, "uses_allowed")
        if "expiry_time" in body:
            changes["expiry_time"] = _expiry(body)
        if not _well_formed(token) or not await self._store.update(token, changes):
            raise not_found(f"No such registration token: {token}")
        return await self.get(token)

    async def delete(self, token: str) -> None:
        if not _well_formed(token) or not await self._store.delete(token):
            raise not_found(f"No such registration token: {token}")

    async def valid(self, token: object) -> bool:
        """Whether a sign-up could use this token now (GET .../registration_token/validity)."""
        if not isinstance(token, str) or not token:
            raise MatrixError(400, "M_MISSING_PARAM", "token is required")
        return _well_formed(token) and await self._store.usable(token, now_ms())

    async def begin_use(self, auth: dict[str, Any]) -> dict[str, Any]:
        """The UIA stage: hold one use of the token for this sign-up; what the registration completes."""
        token = auth.get("token")
        if not isinstance(token, str) or not token:
            raise MatrixError(400, "M_MISSING_PARAM", "token is required")
        use_id = secrets.token_urlsafe(12)
        ts = now_ms()
        if not _well_formed(token) or not await self._store.begin_use(token, use_id, ts, ts + SESSION_TTL_S * 1000):
            raise MatrixError(401, "M_UNAUTHORIZED", "Invalid registration token")
        return {"token": token, "use": use_id}

    async def complete_use(self, stage_result: dict[str, Any]) -> None:
        await self._store.complete_use(stage_result["use"], stage_result["token"])
        await self._store.drop_expired_uses(now_ms())
