"""Accounts: registration, password checks, sessions (devices + tokens), logout, refresh."""

from __future__ import annotations

import logging
import secrets
import string
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from homeserver.clock import now_ms
from homeserver.config import Config
from homeserver.accounts.email_verification import release_stale_claim
from homeserver.errors import MatrixError, bad_json, forbidden, unknown_token, user_locked, user_suspended
from homeserver.events.ids import normalise_email, user_id_for, validate_localpart
from homeserver.accounts.models import Device, RefreshToken, Threepid, User
from homeserver.sync.notifier import Notifier
from homeserver.accounts.passwords import PasswordHasher
from homeserver.accounts.tokens import TokenCodec, digest, new_refresh_token, new_token_id
from storage.store import Store

log = logging.getLogger("whispr.accounts")

MAX_DEVICE_ID_LENGTH = 128
MAX_DEVICE_NAME_LENGTH = 256
# How often a device's last-seen time is written: not on every request.
LAST_SEEN_INTERVAL_MS = 60_000
TOKEN_CACHE_SIZE = 100_000
GUEST_PREFIX = "guest_"  # guest localparts: the server picks them


@dataclass(frozen=True)
class Requester:
    """Who made an authenticated request."""

    user_id: str
    device_id: str
    is_guest: bool = False
    locked: bool = False  # the handler answers 401 M_USER_LOCKED, but for logging out
    suspended: bool = False  # may read, not act (see require_not_suspended)

    def require_not_suspended(self) -> None:
        if self.suspended:
            raise user_suspended()


@dataclass(frozen=True)
class LoginTarget:
    """What a login identifier names: the local user it resolves to (None: no such account), and
    `key`, the same for every spelling of that identifier, known or not (per-account rate limits)."""

    user_id: str | None
    key: str


@dataclass(frozen=True)
class Session:
    user_id: str
    device_id: str
    access_token: str
    refresh_token: str | None
    expires_in_ms: int | None

    def to_json(self, server_name: str) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": self.user_id, "device_id": self.device_id,
                                "access_token": self.access_token, "home_server": server_name}
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
            body["expires_in_ms"] = self.expires_in_ms
        return body


def _new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def check_device_params(device_id: object, display_name: object) -> tuple[str | None, str | None]:
    if device_id is not None and (not isinstance(device_id, str) or not device_id
                                  or len(device_id) > MAX_DEVICE_ID_LENGTH):
        raise bad_json(f"device_id must be a string of 1-{MAX_DEVICE_ID_LENGTH} characters")
    if display_name is not None and (not isinstance(display_name, str)
                                     or len(display_name) > MAX_DEVICE_NAME_LENGTH):
        raise bad_json(f"initial_device_display_name must be a string of at most {MAX_DEVICE_NAME_LENGTH} characters")
    return device_id, display_name


class Accounts:
    def __init__(self, config: Config, store: Store, hasher: PasswordHasher, notifier: Notifier) -> None:
        self._config = config
        self._store = store
        self._hasher = hasher
        self._tokens = TokenCodec(config.secrets.jwt_secret, config.server_name)
        self._last_seen: dict[tuple[str, str], int] = {}
        # (user, device) -> the token ID the device table holds; every change to a device
        # goes through _device_changed, which the notifier relays to the other processes.
        self._live_tokens: dict[tuple[str, str], str] = {}
        self._notifier = notifier
        notifier.on_handler("device", self._forget_device)
        # user -> (locked, suspended), kept like the tokens: every change is published.
        self._moderation: dict[str, tuple[bool, bool]] = {}
        notifier.on_handler("moderation", self._forget_moderation)
        # Called after devices are deleted or logged out (their encryption keys go with them), and
        # after a device is created or renamed: who shares a room with the user hears of it.
        self.on_devices_deleted: list[Callable[[str, Sequence[str]], Awaitable[None]]] = []
        self.on_device_updated: list[Callable[[str, str], Awaitable[None]]] = []

    def _forget_moderation(self, msg: dict[str, Any]) -> None:
        self._moderation.pop(msg["user_id"], None)

    def _forget_device(self, msg: dict[str, Any]) -> None:
        self._live_tokens.pop((msg["user_id"], msg["device_id"]), None)

    async def _device_changed(self, user_id: str, device_ids: list[str]) -> None:
        for device_id in device_ids:
            await self._notifier.publish("device", {"user_id": user_id, "device_id": device_id})

    async def _devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        await self._device_changed(user_id, device_ids)
        for hook in self.on_devices_deleted:
            await hook(user_id, device_ids)

    @property
    def server_name(self) -> str:
        return self._config.server_name

    @property
    def hasher(self) -> PasswordHasher:
        return self._hasher

    # --- registration -------------------------------------------------

    async def check_available(self, localpart: object, allow_reserved: bool = False) -> str:
        name = validate_localpart(localpart, self.server_name)
        if not allow_reserved and name in self._config.registration.reserved_localparts:
            raise MatrixError(400, "M_INVALID_USERNAME", "This user ID is reserved")
        if await self._store.users.exists(user_id_for(name, self.server_name)):
            raise MatrixError(400, "M_USER_IN_USE", "This user ID is already taken")
        return name

    async def create_user(self, localpart: object, password: object, email: str | None = None,
                          email_validated: bool = False, *, password_hash: str | None = None,
                          allow_reserved: bool = False) -> User:
        """Create an account; an email, if given, is attached (validated or not).

        `password_hash` (of a password already checked) stands in for `password`.
        """
        if localpart is None:
            localpart = await self._free_localpart()
        name = await self.check_available(localpart, allow_reserved)
        if password_hash is None:
            password_hash = await self._hasher.hash(self._hasher.check_strength(password))
        address = normalise_email(email) if email is not None else None
        if address is not None:
            await release_stale_claim(self._store, address, self._config.registration.unverified_email_ttl_s)
        if address is not None and await self._store.threepids.get("email", address) is not None:
            raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already registered")
        user = User(user_id_for(name, self.server_name), name, password_hash, now_ms())
        if not await self._store.users.create(user):
            raise MatrixError(400, "M_USER_IN_USE", "This user ID is already taken")
        if address is not None:
            ts = now_ms()
            if not await self._store.threepids.add(
                    Threepid("email", address, user.user_id, ts if email_validated else None, ts)):
                log.warning("email %s was taken during registration of %s", address, user.user_id)
        log.info("registered %s", user.user_id)
        return user

    async def discard_new_user(self, user_id: str) -> None:
        """Undo create_user when the rest of a sign-up failed (the mail could not be sent)."""
        await self._store.users.delete_unused(user_id)
        log.info("discarded %s: its sign-up did not complete", user_id)

    async def register_guest(self, display_name: str | None) -> Session:
        """A guest account (no password) and its one session; the server picks every name."""
        localpart = await self._free_localpart(GUEST_PREFIX)
        user = User(user_id_for(localpart, self.server_name), localpart, None, now_ms(), is_guest=True)
        if not await self._store.users.create(user):
            raise MatrixError(500, "M_UNKNOWN", "Could not pick a free user ID")
        log.info("registered guest %s", user.user_id)
        return await self.create_session(user.user_id, None, display_name, False, is_guest=True)

    async def guest_of(self, token: object) -> str:
        """The guest a guest access token names (a guest upgrading to a full account)."""
        if not isinstance(token, str) or not token:
            raise bad_json("guest_access_token must be a string")
        who = await self.authenticate(token)
        if not who.is_guest:
            raise MatrixError(400, "M_USER_IN_USE", "This access token is not a guest's")
        return who.user_id

    async def upgrade_guest(self, user_id: str, password_hash: str, email: str | None = None) -> None:
        """Make a guest a full user with this password (and verified email). The guest's sessions
        end: their tokens carry the guest mark, and the account is no guest any more."""
        if not await self._store.users.upgrade_guest(user_id, password_hash):
            raise MatrixError(400, "M_USER_IN_USE", "This account is not a guest account")
        if email is not None:
            ts = now_ms()
            address = normalise_email(email)
            if not await self._store.threepids.add(Threepid("email", address, user_id, ts, ts)):
                log.warning("email %s was taken during the upgrade of %s", address, user_id)
        await self.logout_all(user_id)
        log.info("guest %s upgraded to a full account", user_id)

    async def _free_localpart(self, prefix: str = "u") -> str:
        for _ in range(10):
            candidate = prefix + secrets.token_hex(6)
            if not await self._store.users.exists(user_id_for(candidate, self.server_name)):
                return candidate
        raise MatrixError(500, "M_UNKNOWN", "Could not pick a free user ID")

    # --- password checks ---------------------------------------------

    async def resolve_identifier(self, body: dict[str, Any]) -> LoginTarget:
        """What a login identifier (m.id.user or m.id.thirdparty email) names."""
        identifier = body.get("identifier")
        if identifier is None and isinstance(body.get("user"), str):  # deprecated top-level form
            identifier = {"type": "m.id.user", "user": body["user"]}
        if not isinstance(identifier, dict):
            raise bad_json("identifier is required")
        kind = identifier.get("type")
        if kind == "m.id.user":
            user = identifier.get("user")
            if not isinstance(user, str) or not user:
                raise bad_json("identifier.user must be a string")
            if user.startswith("@"):
                return LoginTarget(user if user.endswith(":" + self.server_name) else None, user)
            user_id = user_id_for(user.lower(), self.server_name)
            return LoginTarget(user_id, user_id)
        if kind == "m.id.thirdparty":
            if identifier.get("medium") != "email":
                raise MatrixError(400, "M_UNRECOGNIZED", "Only the email medium is supported")
            address = normalise_email(identifier.get("address"))
            threepid = await self._store.threepids.get("email", address)
            verified = threepid is not None and threepid.validated_ts is not None
            return LoginTarget(threepid.user_id if verified and threepid else None, "email:" + address)
        raise MatrixError(400, "M_UNRECOGNIZED", f"Unknown identifier type {kind!r}")

    async def verify_login(self, target: LoginTarget, password: str) -> User:
        """The user a login names if the password is theirs, else 403 M_FORBIDDEN. The hash is
        checked whatever the account (unknown, deactivated): no answer comes faster than another."""
        user = await self._store.users.get(target.user_id) if target.user_id else None
        matches = await self._hasher.verify(user.password_hash if user is not None else None, password)
        if user is None or not matches:
            raise forbidden("Invalid username or password")
        if user.deactivated:  # said only to whoever knows the password
            raise MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated")
        return user

    async def get_user(self, user_id: str) -> User | None:
        return await self._store.users.get(user_id)

    # --- sessions ----------------------------------------------------

    async def create_session(self, user_id: str, device_id: str | None, display_name: str | None,
                             want_refresh: bool, is_guest: bool = False) -> Session:
        if (await self.moderation(user_id))[0]:
            raise user_locked()  # no new access token until unlocked
        device_id = device_id or _new_device_id()
        ts = now_ms()
        token_id = new_token_id()
        expires_ts = ts + self._config.tokens.access_token_lifetime_s * 1000 if want_refresh else None
        await self._store.devices.upsert(Device(user_id, device_id, display_name, token_id, expires_ts, ts))
        await self._device_changed(user_id, [device_id])
        for hook in self.on_device_updated:
            await hook(user_id, device_id)
        return await self._issue(user_id, device_id, token_id, ts, expires_ts, want_refresh, is_guest)

    async def _issue(self, user_id: str, device_id: str, token_id: str, ts: int, expires_ts: int | None,
                     want_refresh: bool, is_guest: bool = False) -> Session:
        access = self._tokens.issue(user_id, device_id, token_id, ts, expires_ts, is_guest)
        refresh = None
        if want_refresh:
            refresh = new_refresh_token()
            await self._store.refresh_tokens.add(RefreshToken(
                digest(refresh), user_id, device_id, ts, ts + self._config.tokens.refresh_token_lifetime_s * 1000,
                False))
        return Session(user_id, device_id, access, refresh, expires_ts - ts if expires_ts else None)

    async def authenticate(self, token: str, ip: str | None = None) -> Requester:
        claims = self._tokens.decode(token)
        key = (claims.user_id, claims.device_id)
        live = self._live_tokens.get(key)
        if live is None:
            device = await self._store.devices.get(claims.user_id, claims.device_id)
            if device is None:
                raise unknown_token()
            live = device.token_id
            if len(self._live_tokens) >= TOKEN_CACHE_SIZE:
                self._live_tokens.pop(next(iter(self._live_tokens)))
            self._live_tokens[key] = live
        if not secrets.compare_digest(live, claims.token_id):
            raise unknown_token()
        ts = now_ms()
        if ts - self._last_seen.get(key, 0) > LAST_SEEN_INTERVAL_MS:
            self._last_seen[key] = ts
            await self._store.devices.touch(claims.user_id, claims.device_id, ts, ip)
        locked, suspended = await self.moderation(claims.user_id)
        return Requester(claims.user_id, claims.device_id, claims.is_guest, locked, suspended)

    async def moderation(self, user_id: str) -> tuple[bool, bool]:
        """(locked, suspended), from memory after the first request of the user."""
        state = self._moderation.get(user_id)
        if state is None:
            state = await self._store.users.moderation(user_id)
            if len(self._moderation) >= TOKEN_CACHE_SIZE:
                self._moderation.pop(next(iter(self._moderation)))
            self._moderation[user_id] = state
        return state

    async def set_moderation(self, user_id: str, *, locked: bool | None = None,
                             suspended: bool | None = None) -> None:
        await self._store.users.set_moderation(user_id, locked=locked, suspended=suspended)
        self._moderation.pop(user_id, None)
        await self._notifier.publish("moderation", {"user_id": user_id})

    async def refresh(self, refresh_token: object) -> Session:
        if not isinstance(refresh_token, str):
            raise bad_json("refresh_token must be a string")
        stored = await self._store.refresh_tokens.get(digest(refresh_token))
        if stored is None:
            raise unknown_token("Unknown refresh token")
        if stored.used or not await self._store.refresh_tokens.spend(stored.token_hash):
            # A spent token used again means it leaked: end the whole session.
            log.warning("reuse of a spent refresh token for %s/%s: revoking the session",
                        stored.user_id, stored.device_id)
            await self._store.devices.delete(stored.user_id, [stored.device_id])
            await self._devices_deleted(stored.user_id, [stored.device_id])
            raise unknown_token("This refresh token was already used; the session is revoked")
        if stored.expires_ts <= now_ms():
            raise unknown_token("This refresh token has expired")
        if await self._store.devices.get(stored.user_id, stored.device_id) is None:
            raise unknown_token("This session has been logged out")
        if (await self.moderation(stored.user_id))[0]:
            raise user_locked()
        ts = now_ms()
        token_id = new_token_id()
        expires_ts = ts + self._config.tokens.access_token_lifetime_s * 1000
        await self._store.devices.set_token(stored.user_id, stored.device_id, token_id, expires_ts)
        await self._device_changed(stored.user_id, [stored.device_id])
        return await self._issue(stored.user_id, stored.device_id, token_id, ts, expires_ts, True)

    async def logout(self, requester: Requester) -> None:
        await self._store.devices.delete(requester.user_id, [requester.device_id])
        await self._devices_deleted(requester.user_id, [requester.device_id])
        self._last_seen.pop((requester.user_id, requester.device_id), None)

    async def logout_all(self, user_id: str, except_device: str | None = None) -> list[str]:
        gone = await self._store.devices.delete_all(user_id, except_device)
        await self._devices_deleted(user_id, gone)
        for device_id in gone:
            self._last_seen.pop((user_id, device_id), None)
        return gone

    async def set_password(self, user_id: str, new_password: object, logout_devices: bool,
                           except_device: str | None) -> None:
        pw = self._hasher.check_strength(new_password)
        await self._store.users.set_password_hash(user_id, await self._hasher.hash(pw))
        if logout_devices:
            await self.logout_all(user_id, except_device)

    # --- devices -----------------------------------------------------

    async def devices(self, user_id: str) -> list[Device]:
        return await self._store.devices.list(user_id)

    async def device(self, user_id: str, device_id: str) -> Device | None:
        return await self._store.devices.get(user_id, device_id)

    async def rename_device(self, user_id: str, device_id: str, name: object) -> None:
        if name is not None and (not isinstance(name, str) or len(name) > MAX_DEVICE_NAME_LENGTH):
            raise bad_json(f"display_name must be a string of at most {MAX_DEVICE_NAME_LENGTH} characters")
        if await self._store.devices.get(user_id, device_id) is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown device")
        await self._store.devices.set_display_name(user_id, device_id, name)
        for hook in self.on_device_updated:
            await hook(user_id, device_id)

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        await self._store.devices.delete(user_id, device_ids)
        await self._devices_deleted(user_id, device_ids)
        for device_id in device_ids:
            self._last_seen.pop((user_id, device_id), None)

    async def emails(self, user_id: str) -> list[Threepid]:
        return await self._store.threepids.for_user(user_id)
