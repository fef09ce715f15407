"""All of Whispr's SQL, one small store per area, composed into `Store`."""

from __future__ import annotations

import builtins
import json
from typing import Any

from homeserver.accounts.models import Device, EmailValidation, Profile, RefreshToken, Threepid, User
from storage.admin import AdminStore
from storage.database import Database, Row
from storage.e2ee import E2eeStore
from storage.federation import FederationStore
from storage.friends import FriendStore
from storage.media import MediaStore
from storage.openid import OpenIdStore
from storage.presence import PresenceStore
from storage.registration_tokens import RegistrationTokenStore
from storage.push import PushStore
from storage.relations import RelationStore
from storage.reports import ReportStore
from storage.rooms import RoomStore
from storage.search import SearchStore
from storage.server_keys import ServerKeyStore
from storage.user_data import UserDataStore


def _user(row: Row) -> User:
    return User(row["user_id"], row["localpart"], row["password_hash"], row["created_ts"],
                bool(row["deactivated"]), bool(row["email_otp_enabled"]), row["totp_secret"],
                bool(row["totp_enabled"]), bool(row["is_guest"]), bool(row["admin"]), row["user_type"],
                bool(row["erased"]), bool(row["locked"]), bool(row["suspended"]))


def _device(row: Row) -> Device:
    return Device(row["user_id"], row["device_id"], row["display_name"], row["token_id"],
                  row["token_expires_ts"], row["created_ts"], row["last_seen_ts"], row["last_seen_ip"])


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, user: User) -> bool:
        """Insert the user and an empty profile; False if the ID is taken."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "INSERT INTO users (user_id, localpart, password_hash, created_ts, is_guest) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING user_id",
                user.user_id, user.localpart, user.password_hash, user.created_ts, int(user.is_guest))
            if row is None:
                return False
            await tx.execute("INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                             user.user_id, user.localpart)
        return True

    async def delete_unused(self, user_id: str) -> None:
        """Remove an account that was just created and never used (its profile and addresses too)."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM threepids WHERE user_id = ?", user_id)
            await tx.execute("DELETE FROM profiles WHERE user_id = ?", user_id)
            await tx.execute("DELETE FROM users WHERE user_id = ?", user_id)

    async def get(self, user_id: str) -> User | None:
        row = await self.db.fetchone("SELECT * FROM users WHERE user_id = ?", user_id)
        return None if row is None else _user(row)

    async def moderation(self, user_id: str) -> tuple[bool, bool]:
        """(locked, suspended); both false for an unknown user."""
        row = await self.db.fetchone("SELECT locked, suspended FROM users WHERE user_id = ?", user_id)
        return (False, False) if row is None else (bool(row["locked"]), bool(row["suspended"]))

    async def set_moderation(self, user_id: str, *, locked: bool | None = None,
                             suspended: bool | None = None) -> None:
        if locked is not None:
            await self.db.execute("UPDATE users SET locked = ? WHERE user_id = ?", int(locked), user_id)
        if suspended is not None:
            await self.db.execute("UPDATE users SET suspended = ? WHERE user_id = ?", int(suspended), user_id)

    async def exists(self, user_id: str) -> bool:
        return await self.db.fetchval("SELECT 1 FROM users WHERE user_id = ?", user_id) is not None

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self.db.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", password_hash, user_id)

    async def upgrade_guest(self, user_id: str, password_hash: str) -> bool:
        """Make a guest account a full one with this password; False if it is no guest (any more)."""
        row = await self.db.fetchone("UPDATE users SET is_guest = 0, password_hash = ? WHERE user_id = ?"
                                     " AND is_guest = 1 AND deactivated = 0 RETURNING user_id", password_hash, user_id)
        return row is not None

    async def guests_among(self, user_ids: list[str]) -> list[str]:
        """Which of these (local) users are guests."""
        found: list[str] = []
        for start in range(0, len(user_ids), 500):  # bounded statements, whatever the room's size
            chunk = user_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await self.db.fetchall(f"SELECT user_id FROM users WHERE is_guest = 1 AND user_id IN ({marks})",
                                          *chunk)
            found += [r["user_id"] for r in rows]
        return found

    async def set_deactivated(self, user_id: str, erased: bool = False) -> None:
        # Once erased, always erased (a later deactivation without erasure does not undo it).
        await self.db.execute("UPDATE users SET deactivated = 1, erased = CASE WHEN ? = 1 THEN 1 ELSE erased END"
                              " WHERE user_id = ?", int(erased), user_id)

    async def set_email_otp(self, user_id: str, enabled: bool) -> None:
        await self.db.execute("UPDATE users SET email_otp_enabled = ? WHERE user_id = ?", int(enabled), user_id)

    async def set_totp(self, user_id: str, secret: str | None, enabled: bool) -> None:
        await self.db.execute("UPDATE users SET totp_secret = ?, totp_enabled = ? WHERE user_id = ?",
                              secret, int(enabled), user_id)


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(self, device: Device) -> None:
        """Create the device, or give an existing one a new token (re-login with its ID)."""
        await self.db.execute(
            "INSERT INTO devices (user_id, device_id, display_name, token_id, token_expires_ts, created_ts)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET"
            " token_id = excluded.token_id, token_expires_ts = excluded.token_expires_ts,"
            " display_name = COALESCE(excluded.display_name, devices.display_name)",
            device.user_id, device.device_id, device.display_name, device.token_id,
            device.token_expires_ts, device.created_ts)

    async def get(self, user_id: str, device_id: str) -> Device | None:
        row = await self.db.fetchone("SELECT * FROM devices WHERE user_id = ? AND device_id = ?",
                                     user_id, device_id)
        return None if row is None else _device(row)

    async def list(self, user_id: str) -> list[Device]:
        rows = await self.db.fetchall("SELECT * FROM devices WHERE user_id = ? ORDER BY created_ts", user_id)
        return [_device(r) for r in rows]

    async def set_token(self, user_id: str, device_id: str, token_id: str, expires_ts: int | None) -> None:
        await self.db.execute(
            "UPDATE devices SET token_id = ?, token_expires_ts = ? WHERE user_id = ? AND device_id = ?",
            token_id, expires_ts, user_id, device_id)

    async def set_display_name(self, user_id: str, device_id: str, name: str | None) -> None:
        await self.db.execute("UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                              name, user_id, device_id)

    async def touch(self, user_id: str, device_id: str, ts: int, ip: str | None) -> None:
        await self.db.execute(
            "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ? WHERE user_id = ? AND device_id = ?",
            ts, ip, user_id, device_id)

    # `builtins.list`: in this class `list` is the method above.
    async def delete(self, user_id: str, device_ids: builtins.list[str]) -> None:
        async with self.db.transaction() as tx:
            for device_id in device_ids:
                await tx.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", user_id, device_id)
                await tx.execute("DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?",
                                 user_id, device_id)

    async def delete_all(self, user_id: str, except_device: str | None = None) -> builtins.list[str]:
        """Delete every device of the user but one; return the deleted IDs."""
        rows = await self.db.fetchall("SELECT device_id FROM devices WHERE user_id = ?", user_id)
        gone = [r["device_id"] for r in rows if r["device_id"] != except_device]
        await self.delete(user_id, gone)
        return gone


class RefreshTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, token: RefreshToken) -> None:
        await self.db.execute(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts, expires_ts)"
            " VALUES (?, ?, ?, ?, ?)",
            token.token_hash, token.user_id, token.device_id, token.created_ts, token.expires_ts)

    async def get(self, token_hash: str) -> RefreshToken | None:
        row = await self.db.fetchone("SELECT * FROM refresh_tokens WHERE token_hash = ?", token_hash)
        if row is None:
            return None
        return RefreshToken(row["token_hash"], row["user_id"], row["device_id"], row["created_ts"],
                            row["expires_ts"], bool(row["used"]))

    async def spend(self, token_hash: str) -> bool:
        """Mark the token used; False if it already was (a concurrent or repeated use)."""
        row = await self.db.fetchone(
            "UPDATE refresh_tokens SET used = 1 WHERE token_hash = ? AND used = 0 RETURNING token_hash",
            token_hash)
        return row is not None


class ThreepidStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, threepid: Threepid) -> bool:
        row = await self.db.fetchone(
            "INSERT INTO threepids (medium, address, user_id, validated_ts, added_ts) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING address",
            threepid.medium, threepid.address, threepid.user_id, threepid.validated_ts, threepid.added_ts)
        return row is not None

    async def get(self, medium: str, address: str) -> Threepid | None:
        row = await self.db.fetchone("SELECT * FROM threepids WHERE medium = ? AND address = ?", medium, address)
        if row is None:
            return None
        return Threepid(row["medium"], row["address"], row["user_id"], row["validated_ts"], row["added_ts"])

    async def for_user(self, user_id: str) -> list[Threepid]:
        rows = await self.db.fetchall("SELECT * FROM threepids WHERE user_id = ? ORDER BY added_ts", user_id)
        return [Threepid(r["medium"], r["address"], r["user_id"], r["validated_ts"], r["added_ts"]) for r in rows]

    async def delete_for_user(self, user_id: str) -> None:
        await self.db.execute("DELETE FROM threepids WHERE user_id = ?", user_id)

    async def delete_one(self, user_id: str, medium: str, address: str) -> bool:
        row = await self.db.fetchone("DELETE FROM threepids WHERE user_id = ? AND medium = ? AND address = ?"
                                     " RETURNING address", user_id, medium, address)
        return row is not None

    async def release_unverified(self, medium: str, address: str, added_before: int) -> str | None:
        """Drop a claim on an address that was never verified and is older than `added_before`;
        the account that held it, or None."""
        row = await self.db.fetchone(
            "DELETE FROM threepids WHERE medium = ? AND address = ? AND validated_ts IS NULL AND added_ts < ?"
            " RETURNING user_id", medium, address, added_before)
        return None if row is None else row["user_id"]

    async def mark_validated(self, medium: str, address: str, ts: int) -> None:
        await self.db.execute("UPDATE threepids SET validated_ts = ? WHERE medium = ? AND address = ?",
                              ts, medium, address)


class EmailValidationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, v: EmailValidation) -> None:
        await self.db.execute(
            "INSERT INTO email_validations (sid, client_secret, email, purpose, token_hash, code_hash,"
            " send_attempt, created_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            v.sid, v.client_secret, v.email, v.purpose, v.token_hash, v.code_hash, v.send_attempt,
            v.created_ts, v.expires_ts)

    async def get(self, sid: str) -> EmailValidation | None:
        row = await self.db.fetchone("SELECT * FROM email_validations WHERE sid = ?", sid)
        return None if row is None else _validation(row)

    async def latest(self, email: str, client_secret: str, purpose: str) -> EmailValidation | None:
        row = await self.db.fetchone(
            "SELECT * FROM email_validations WHERE email = ? AND client_secret = ? AND purpose = ?"
            " ORDER BY created_ts DESC LIMIT 1", email, client_secret, purpose)
        return None if row is None else _validation(row)

    async def count_attempt(self, sid: str) -> int:
        return int(await self.db.fetchval(
            "UPDATE email_validations SET attempts = attempts + 1 WHERE sid = ? RETURNING attempts", sid) or 0)

    async def mark_validated(self, sid: str, ts: int) -> None:
        await self.db.execute(
            "UPDATE email_validations SET validated_ts = ? WHERE sid = ? AND validated_ts IS NULL", ts, sid)

    async def consume(self, sid: str) -> bool:
        """Use a validated session once (to register or reset a password)."""
        row = await self.db.fetchone(
            "UPDATE email_validations SET consumed = 1 WHERE sid = ? AND consumed = 0"
            " AND validated_ts IS NOT NULL RETURNING sid", sid)
        return row is not None


def _validation(row: Row) -> EmailValidation:
    return EmailValidation(row["sid"], row["client_secret"], row["email"], row["purpose"], row["token_hash"],
                           row["code_hash"], row["send_attempt"], row["attempts"], row["created_ts"],
                           row["expires_ts"], row["validated_ts"], bool(row["consumed"]))


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str) -> Profile | None:
        row = await self.db.fetchone("SELECT * FROM profiles WHERE user_id = ?", user_id)
        if row is None:
            return None
        return Profile(row["user_id"], row["displayname"], row["avatar_url"], json.loads(row["fields"]))

    async def set_displayname(self, user_id: str, value: str | None) -> None:
        await self.db.execute("UPDATE profiles SET displayname = ? WHERE user_id = ?", value, user_id)

    async def set_avatar_url(self, user_id: str, value: str | None) -> None:
        await self.db.execute("UPDATE profiles SET avatar_url = ? WHERE user_id = ?", value, user_id)

    async def erase(self, user_id: str) -> None:
        """Clear the display name, avatar and every custom field."""
        await self.db.execute("UPDATE profiles SET displayname = NULL, avatar_url = NULL, fields = '{}'"
                              " WHERE user_id = ?", user_id)

    async def set_field(self, user_id: str, key: str, value: Any) -> None:
        """Set (or with None, remove) one custom field, read-modify-write in a transaction."""
        async with self.db.transaction() as tx:
            raw = await tx.fetchval("SELECT fields FROM profiles WHERE user_id = ?", user_id)
            fields = json.loads(raw or "{}")
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
            await tx.execute("UPDATE profiles SET fields = ? WHERE user_id = ?", json.dumps(fields), user_id)


class RecoveryCodeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def replace(self, user_id: str, code_hashes: list[str]) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM totp_recovery_codes WHERE user_id = ?", user_id)
            for h in code_hashes:
                await tx.execute("INSERT INTO totp_recovery_codes (user_id, code_hash) VALUES (?, ?)", user_id, h)

    async def use(self, user_id: str, code_hash: str) -> bool:
        row = await self.db.fetchone(
            "UPDATE totp_recovery_codes SET used = 1 WHERE user_id = ? AND code_hash = ? AND used = 0"
            " RETURNING code_hash", user_id, code_hash)
        return row is not None

    async def remaining(self, user_id: str) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM totp_recovery_codes WHERE user_id = ? AND used = 0", user_id))


class Store:
    """Every area's store over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = UserStore(db)
        self.devices = DeviceStore(db)
        self.refresh_tokens = RefreshTokenStore(db)
        self.threepids = ThreepidStore(db)
        self.email_validations = EmailValidationStore(db)
        self.profiles = ProfileStore(db)
        self.recovery_codes = RecoveryCodeStore(db)
        self.rooms = RoomStore(db)
        self.user_data = UserDataStore(db)
        self.federation = FederationStore(db)
        self.server_keys = ServerKeyStore(db)
        self.media = MediaStore(db)
        self.openid = OpenIdStore(db)
        self.friends = FriendStore(db)
        self.admin = AdminStore(db)
        self.registration_tokens = RegistrationTokenStore(db)
        self.push = PushStore(db)
        self.e2ee = E2eeStore(db)
        self.relations = RelationStore(db)
        self.search = SearchStore(db)
        self.reports = ReportStore(db)
        self.presence = PresenceStore(db)

    async def ping(self) -> None:
        """One round trip to the database (health checks); raises if it does not answer."""
        await self.db.fetchval("SELECT 1")

    async def close(self) -> None:
        await self.db.close()
