"""TOTP second factor (authenticator apps) with single-use recovery codes."""

from __future__ import annotations

import hmac
from datetime import datetime
import secrets

import pyotp

from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, bad_json
from homeserver.accounts.tokens import digest
from storage.store import Store

RECOVERY_CODES = 10
ISSUER = "Whispr"


class Totp:
    def __init__(self, store: Store, ephemeral: Ephemeral) -> None:
        self._store = store
        self._ephemeral = ephemeral

    async def begin_enrollment(self, user_id: str) -> dict[str, str]:
        """A new secret (not yet active) and its otpauth:// URI for a QR code."""
        user = await self._store.users.get(user_id)
        if user is not None and user.totp_enabled:
            raise MatrixError(400, "ORG.WHISPR.TOTP_ENABLED", "TOTP is already enabled; disable it first")
        secret = pyotp.random_base32()
        await self._store.users.set_totp(user_id, secret, False)
        uri = pyotp.TOTP(secret).provisioning_uri(name=user_id, issuer_name=ISSUER)
        return {"secret": secret, "otpauth_uri": uri}

    async def confirm_enrollment(self, user_id: str, code: object) -> list[str]:
        """Activate TOTP once the app shows a valid code; return fresh recovery codes."""
        user = await self._store.users.get(user_id)
        if user is None or not user.totp_secret or user.totp_enabled:
            raise MatrixError(400, "ORG.WHISPR.TOTP_NOT_PENDING", "No TOTP enrollment is pending")
        if not await self._check_code(user_id, user.totp_secret, code):
            raise MatrixError(403, "M_FORBIDDEN", "Wrong TOTP code")
        await self._store.users.set_totp(user_id, user.totp_secret, True)
        codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
        await self._store.recovery_codes.replace(user_id, [digest(c) for c in codes])
        return codes

    async def disable(self, user_id: str, code: object) -> None:
        if not await self.verify(user_id, code):
            raise MatrixError(403, "M_FORBIDDEN", "Wrong TOTP or recovery code")
        await self._store.users.set_totp(user_id, None, False)
        await self._store.recovery_codes.replace(user_id, [])

    async def verify(self, user_id: str, code: object) -> bool:
        """A current TOTP code (each usable once) or an unused recovery code."""
        user = await self._store.users.get(user_id)
        if user is None or not user.totp_enabled or not user.totp_secret:
            return False
        if await self._check_code(user_id, user.totp_secret, code):
            return True
        return isinstance(code, str) and await self._store.recovery_codes.use(user_id, digest(code.strip().lower()))

    async def _check_code(self, user_id: str, secret: str, code: object) -> bool:
        if not isinstance(code, str):
            raise bad_json("code must be a string")
        code = code.strip()
        totp = pyotp.TOTP(secret)
        if not (len(code) == 6 and code.isdigit()):
            return False
        for offset in (-1, 0, 1):  # allow one step of clock drift
            at = totp.timecode(datetime.now()) + offset
            if hmac.compare_digest(totp.generate_otp(at), code):
                # Atomic, so a code sent twice at once is still used once. The code is part of the
                # key so that a new secret (re-enrollment) is not blocked by the old one's use.
                if await self._ephemeral.incr(f"totp_used:{user_id}:{at}:{code}", 120) > 1:
                    return False  # replay of a code already used
                return True
        return False
