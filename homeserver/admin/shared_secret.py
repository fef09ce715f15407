"""Shared-secret registration, as Synapse's `/_synapse/admin/v1/register`.

Whoever holds `registration_shared_secret` may create accounts, admins included: the client asks for a
nonce (single use, valid for a minute) and sends with the account's details the HMAC-SHA1, keyed with
the secret, of nonce, username, password and "admin" or "notadmin" (and the user type, if any), joined
by NUL bytes, in hex. Provisioning scripts and conformance suites register this way.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from homeserver.accounts.accounts import Accounts
from homeserver.accounts.profiles import Profiles
from homeserver.ephemeral import Ephemeral
from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param
from storage.admin import AdminStore

NONCE_TTL_S = 60
MAX_FIELD_LENGTH = 512
USER_TYPES = ("bot", "support")


def registration_mac(secret: str, nonce: str, username: str, password: str, admin: bool,
                     user_type: str | None = None) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    parts = [nonce, username, password, "admin" if admin else "notadmin"]
    if user_type is not None:
        parts.append(user_type)
    mac.update(b"\x00".join(p.encode() for p in parts))
    return mac.hexdigest()


def _text(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD_LENGTH or "\x00" in value:
        raise invalid_param(f"{key} must be a string of 1 to {MAX_FIELD_LENGTH} characters without NUL")
    return value


class SharedSecretRegistration:
    def __init__(self, secret: str, ephemeral: Ephemeral, accounts: Accounts, profiles: Profiles,
                 admin_store: AdminStore) -> None:
        self._secret = secret
        self._ephemeral = ephemeral
        self._accounts = accounts
        self._profiles = profiles
        self._admin_store = admin_store

    def _require_enabled(self) -> None:
        if not self._secret:
            raise MatrixError(400, "M_UNKNOWN", "Shared secret registration is not enabled")

    async def nonce(self) -> str:
        self._require_enabled()
        nonce = secrets.token_hex(32)
        await self._ephemeral.put(f"admin-nonce:{nonce}", {}, NONCE_TTL_S)
        return nonce

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        self._require_enabled()
        nonce = body.get("nonce")
        if not isinstance(nonce, str) or await self._ephemeral.get(f"admin-nonce:{nonce}") is None:
            raise MatrixError(400, "M_UNKNOWN", "unrecognised nonce")
        # Single use, whatever follows; incr makes it so across workers too.
        first = await self._ephemeral.incr(f"admin-nonce-used:{nonce}", NONCE_TTL_S)
        await self._ephemeral.delete(f"admin-nonce:{nonce}")
        if first != 1:
            raise MatrixError(400, "M_UNKNOWN", "unrecognised nonce")
        username = _text(body, "username")
        password = _text(body, "password")
        assert username is not None and password is not None
        displayname = _text(body, "displayname", required=False)
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise bad_json("admin must be a boolean")
        user_type = _text(body, "user_type", required=False)
        if user_type is not None and user_type not in USER_TYPES:
            raise invalid_param(f"user_type must be one of {', '.join(USER_TYPES)}")
        mac = body.get("mac")
        want = registration_mac(self._secret, nonce, username, password, admin, user_type)
        if not isinstance(mac, str) or not hmac.compare_digest(mac.lower().encode(), want.encode()):
            raise forbidden("HMAC incorrect")
        user = await self._accounts.create_user(username.lower(), password, allow_reserved=True)
        if admin:
            await self._admin_store.set_admin(user.user_id, True)
        if user_type is not None:
            await self._admin_store.set_user_type(user.user_id, user_type)
        if displayname is not None:
            await self._profiles.set_field(user.user_id, user.user_id, "displayname", displayname)
        session = await self._accounts.create_session(user.user_id, None, None, False)
        return session.to_json(self._accounts.server_name)
