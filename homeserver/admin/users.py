"""Accounts as a server admin sees them: list, query, create or modify, deactivate, reset, whois.

Response shapes follow Synapse's user admin API, so that operators' scripts and admin web UIs work.
"""

from __future__ import annotations

from typing import Any

from homeserver.accounts.accounts import Accounts
from homeserver.accounts.deactivation import Deactivation
from homeserver.accounts.models import Threepid, User
from homeserver.accounts.profiles import Profiles
from homeserver.admin.shared_secret import USER_TYPES
from homeserver.clock import now_ms
from homeserver.errors import MatrixError, bad_json, invalid_param, not_found
from homeserver.events.ids import normalise_email, parse_user_id
from storage.admin import USER_ORDER
from storage.store import Store

MAX_PAGE = 1000
# The spec's integer range (canonical JSON); both engines store far more, none stores any integer.
MAX_SAFE_INT = 2**53 - 1


def page_bounds(offset: int, limit: int) -> tuple[int, int]:
    if not 0 <= offset <= MAX_SAFE_INT:
        raise invalid_param(f"from must be an integer from 0 to {MAX_SAFE_INT}")
    if limit < 0:
        raise invalid_param("limit must not be negative")
    return offset, min(limit, MAX_PAGE)


class AdminUsers:
    def __init__(self, server_name: str, accounts: Accounts, deactivation: Deactivation, profiles: Profiles,
                 store: Store) -> None:
        self._server_name = server_name
        self._accounts = accounts
        self._deactivation = deactivation
        self._profiles = profiles
        self._store = store

    def local_user_id(self, user_id: str) -> str:
        """The ID if it names a user of this server (400 otherwise, as Synapse answers)."""
        localpart, server = parse_user_id(user_id)
        if "\x00" in user_id:
            raise invalid_param("not a user ID")
        if server != self._server_name:
            raise MatrixError(400, "M_UNKNOWN", "Can only look up local users")
        return user_id

    async def existing(self, user_id: str) -> User:
        user = await self._store.users.get(self.local_user_id(user_id))
        if user is None:
            raise not_found("User not found")
        return user

    async def _moderated(self, user_id: str) -> User:
        """The spec's account moderation targets: a local user (400 M_INVALID_PARAM), existing and
        not deactivated (404)."""
        _, server = parse_user_id(user_id)
        if server != self._server_name:
            raise invalid_param("Not a user of this server")
        user = await self._store.users.get(user_id)
        if user is None or user.deactivated:
            raise not_found("User not found")
        return user

    async def moderation(self, user_id: str, kind: str) -> dict[str, bool]:
        """GET /_matrix/client/v1/admin/lock|suspend/{userId}: {"locked": ...} or {"suspended": ...}."""
        user = await self._moderated(user_id)
        return {kind: user.locked if kind == "locked" else user.suspended}

    async def set_moderation(self, admin_id: str, user_id: str, kind: str, body: dict[str, Any]) -> dict[str, bool]:
        value = body.get(kind)
        if not isinstance(value, bool):
            raise bad_json(f"{kind} must be a boolean")
        user = await self._moderated(user_id)
        if user.admin and user.user_id != admin_id:
            raise MatrixError(403, "M_FORBIDDEN", "Another server admin cannot be locked or suspended")
        if kind == "locked":
            await self._accounts.set_moderation(user.user_id, locked=value)
        else:
            await self._accounts.set_moderation(user.user_id, suspended=value)
        return {kind: value}

    async def is_admin(self, user_id: str) -> bool:
        user = await self._store.users.get(user_id)
        return user is not None and user.admin

    async def set_admin(self, user_id: str, admin: object) -> None:
        if not isinstance(admin, bool):
            raise bad_json("admin must be a boolean")
        await self.existing(user_id)
        await self._store.admin.set_admin(user_id, admin)

    async def list_users(self, *, name: str | None, user_id: str | None, deactivated: bool, admins: bool | None,
                   order_by: str, backwards: bool, offset: int, limit: int) -> dict[str, Any]:
        if order_by not in USER_ORDER:
            raise invalid_param(f"order_by must be one of {', '.join(USER_ORDER)}")
        offset, limit = page_bounds(offset, limit)
        if "\x00" in (name or "") + (user_id or ""):
            raise invalid_param("name and user_id must not hold NUL characters")
        rows, total = await self._store.admin.list_users(
            name=name, user_id=user_id, deactivated=deactivated, admins=admins, order_by=order_by,
            backwards=backwards, offset=offset, limit=limit)
        users = [{
            "name": r["user_id"], "is_guest": False, "admin": bool(r["admin"]), "user_type": r["user_type"],
            "deactivated": bool(r["deactivated"]), "erased": bool(r["erased"]), "shadow_banned": False,
            "displayname": r["displayname"], "avatar_url": r["avatar_url"], "creation_ts": r["created_ts"],
            "last_seen_ts": r["last_seen_ts"], "locked": bool(r["locked"]), "suspended": bool(r["suspended"]),
        } for r in rows]
        body: dict[str, Any] = {"users": users, "total": total}
        if offset + len(users) < total:
            body["next_token"] = str(offset + len(users))
        return body

    async def query(self, user_id: str) -> dict[str, Any]:
        user = await self.existing(user_id)
        profile = await self._store.profiles.get(user.user_id)
        threepids = await self._store.threepids.for_user(user.user_id)
        return {
            "name": user.user_id,
            "displayname": profile.displayname if profile else None,
            "avatar_url": profile.avatar_url if profile else None,
            "threepids": [{"medium": t.medium, "address": t.address, "added_at": t.added_ts,
                           "validated_at": t.validated_ts} for t in threepids],
            "is_guest": False, "admin": user.admin, "deactivated": user.deactivated, "erased": user.erased,
            "shadow_banned": False, "locked": user.locked, "suspended": user.suspended,
            # Synapse gives this one in seconds (its list, in ms).
            "creation_ts": user.created_ts // 1000,
            "appservice_id": None, "consent_server_notice_sent": None, "consent_version": None,
            "consent_ts": None, "external_ids": [], "user_type": user.user_type,
        }

    async def upsert(self, user_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """PUT /v2/users/{userId}: create the account or change what the body gives; (account, created)."""
        localpart, _ = parse_user_id(self.local_user_id(user_id))
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise bad_json("password must be a string")
        logout_devices = body.get("logout_devices", True)
        for flag in ("logout_devices", "admin", "deactivated", "locked"):
            if flag in body and not isinstance(body[flag], bool):
                raise bad_json(f"{flag} must be a boolean")
        for key in ("displayname", "avatar_url"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise bad_json(f"{key} must be a string")
        if "user_type" in body and body["user_type"] is not None and body["user_type"] not in USER_TYPES:
            raise invalid_param(f"user_type must be null or one of {', '.join(USER_TYPES)}")
        # Everything that can be refused is checked before anything changes.
        if password is not None:
            self._accounts.hasher.check_strength(password)
        threepids = self._threepids(body.get("threepids")) if "threepids" in body else None
        if threepids is not None:
            await self._check_threepids_free(user_id, threepids)
        user = await self._store.users.get(user_id)
        if user is None:
            if body.get("deactivated") is True:
                raise invalid_param("A new account cannot be deactivated")
            # No password: an account that cannot log in with one (Synapse allows it too).
            if password is not None:
                await self._accounts.create_user(localpart, password, allow_reserved=True)
            else:
                await self._create_without_password(localpart)
        elif body.get("deactivated") is False and user.deactivated and password is None:
            raise invalid_param("Must provide a password to re-activate an account")
        try:
            for key in ("displayname", "avatar_url"):
                if key in body:
                    # "" removes the field, as in Synapse; the profile checks the value first.
                    await self._profiles.set_field(user_id, user_id, key, body[key] or None)
        except MatrixError:
            if user is None:
                await self._accounts.discard_new_user(user_id)  # no half-made account stays
            raise
        if user is not None:
            if body.get("deactivated") is False and user.deactivated:
                await self._store.admin.reactivate(user_id)
            if password is not None:
                await self._accounts.set_password(user_id, password, logout_devices, None)
        if "admin" in body:
            await self._store.admin.set_admin(user_id, body["admin"])
        if "user_type" in body:
            await self._store.admin.set_user_type(user_id, body["user_type"])
        if threepids is not None:
            await self._replace_threepids(user_id, threepids)
        if body.get("deactivated") is True and user is not None and not user.deactivated:
            await self._deactivation.deactivate(user_id, erase=False)
        return await self.query(user_id), user is None

    async def _create_without_password(self, localpart: str) -> None:
        # An empty hash matches no password (PasswordHasher.verify).
        await self._accounts.create_user(localpart, None, password_hash="", allow_reserved=True)

    @staticmethod
    def _threepids(value: object) -> list[str]:
        if not isinstance(value, list):
            raise bad_json("threepids must be a list")
        addresses = []
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("medium"), str):
                raise bad_json("each threepid needs a medium and an address")
            if item["medium"] != "email":
                raise invalid_param("Only the email medium is supported")
            addresses.append(normalise_email(item.get("address")))
        return list(dict.fromkeys(addresses))

    async def _check_threepids_free(self, user_id: str, addresses: list[str]) -> None:
        for address in addresses:
            holder = await self._store.threepids.get("email", address)
            if holder is not None and holder.user_id != user_id:
                raise MatrixError(400, "M_THREEPID_IN_USE", f"{address} belongs to another account")

    async def _replace_threepids(self, user_id: str, addresses: list[str]) -> None:
        await self._store.threepids.delete_for_user(user_id)
        ts = now_ms()
        for address in addresses:
            if not await self._store.threepids.add(Threepid("email", address, user_id, ts, ts)):
                raise MatrixError(400, "M_THREEPID_IN_USE", f"{address} belongs to another account")

    async def deactivate(self, user_id: str, erase: object) -> None:
        if not isinstance(erase, bool):
            raise bad_json("erase must be a boolean")
        await self.existing(user_id)
        await self._deactivation.deactivate(user_id, erase)

    async def reset_password(self, user_id: str, new_password: object, logout_devices: object) -> None:
        if not isinstance(new_password, str):
            raise MatrixError(400, "M_MISSING_PARAM", "new_password must be a string")
        if not isinstance(logout_devices, bool):
            raise bad_json("logout_devices must be a boolean")
        await self.existing(user_id)
        await self._accounts.set_password(user_id, new_password, logout_devices, None)

    async def joined_rooms(self, user_id: str) -> dict[str, Any]:
        user = await self.existing(user_id)
        rooms = sorted(r for r, (m, _) in (await self._store.rooms.rooms_for_user(user.user_id)).items()
                       if m == "join")
        return {"joined_rooms": rooms, "total": len(rooms)}

    async def devices(self, user_id: str) -> dict[str, Any]:
        user = await self.existing(user_id)
        devices = [{"device_id": d.device_id, "display_name": d.display_name, "last_seen_ip": d.last_seen_ip,
                    "last_seen_ts": d.last_seen_ts, "last_seen_user_agent": None, "user_id": d.user_id}
                   for d in await self._store.devices.list(user.user_id)]
        return {"devices": devices, "total": len(devices)}

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """Log one session out (deleting an unknown device is no error, as in Synapse)."""
        user = await self.existing(user_id)
        await self._accounts.delete_devices(user.user_id, [device_id])

    async def whois(self, user_id: str) -> dict[str, Any]:
        user = await self.existing(user_id)
        devices = await self._store.devices.list(user.user_id)
        sessions: dict[str, Any] = {}
        for d in devices:
            connections = []
            if d.last_seen_ts is not None:
                # No user agent is recorded; the spec's schema has it a string, so it is left out.
                connections.append({"ip": d.last_seen_ip, "last_seen": d.last_seen_ts} if d.last_seen_ip
                                   else {"last_seen": d.last_seen_ts})
            sessions[d.device_id] = {"sessions": [{"connections": connections}]}
        return {"user_id": user.user_id, "devices": sessions}
