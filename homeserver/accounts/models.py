"""Domain objects shared by the domain services and the storage layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class User:
    user_id: str
    localpart: str
    password_hash: str | None
    created_ts: int
    deactivated: bool = False
    email_otp_enabled: bool = False
    totp_secret: str | None = None
    totp_enabled: bool = False
    is_guest: bool = False
    admin: bool = False
    user_type: str | None = None   # "bot", "support" or None (Synapse's user types)
    erased: bool = False
    locked: bool = False
    suspended: bool = False


@dataclass(frozen=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    token_id: str
    token_expires_ts: int | None
    created_ts: int
    last_seen_ts: int | None = None
    last_seen_ip: str | None = None


@dataclass(frozen=True)
class RefreshToken:
    token_hash: str
    user_id: str
    device_id: str
    created_ts: int
    expires_ts: int
    used: bool


@dataclass(frozen=True)
class Threepid:
    medium: str
    address: str
    user_id: str
    validated_ts: int | None
    added_ts: int


@dataclass(frozen=True)
class EmailValidation:
    sid: str
    client_secret: str
    email: str
    purpose: str
    token_hash: str
    code_hash: str
    send_attempt: int
    attempts: int
    created_ts: int
    expires_ts: int
    validated_ts: int | None
    consumed: bool


@dataclass
class Profile:
    user_id: str
    displayname: str | None = None
    avatar_url: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MediaRecord:
    """One item of the media repository, local or a cached copy of a remote one."""
    origin: str
    media_id: str
    content_type: str
    upload_name: str | None
    size: int | None          # None while an async upload is pending
    sha256: str | None        # names the file on disk; None while pending
    created_ts: int
    quarantined: bool = False
    user_id: str | None = None             # the uploader (local media only)
    unused_expires_ts: int | None = None   # pending async uploads expire unused
    last_access_ts: int | None = None      # remote media only

    @property
    def pending(self) -> bool:
        return self.sha256 is None

    @property
    def mxc(self) -> str:
        return f"mxc://{self.origin}/{self.media_id}"
