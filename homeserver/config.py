"""Configuration: typed dataclasses loaded from YAML, overridable by environment.

Every key can be overridden by an environment variable named ``WHISPR_`` followed
by the key path in upper case, sections joined by a double underscore:
``WHISPR_SERVER_NAME``, ``WHISPR_LISTEN__PORT=8009``,
``WHISPR_DATABASE__ENGINE=postgres``, ``WHISPR_RATE_LIMITS__LOGIN__BURST=20``.
Values are parsed as YAML scalars, so ``true``, ``42`` and ``off`` mean what
they mean in the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

ENV_PREFIX = "WHISPR_"


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


@dataclass
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8008
    # Reverse proxies (CIDRs) whose X-Forwarded-For is believed: behind them the client address
    # is the rightmost hop that is not one of them. Empty: the header is ignored.
    trusted_proxies: list[str] = field(default_factory=list)


@dataclass
class DatabaseConfig:
    engine: Literal["sqlite", "postgres"] = "sqlite"
    # SQLite file; relative paths are under data_dir.
    path: str = "whispr.db"
    # PostgreSQL DSN, e.g. postgresql://user@127.0.0.1:5432/whispr
    url: str = ""
    pool_min: int = 2
    pool_max: int = 10
    # SQLite durability: FULL (an acknowledged write survives power loss) or NORMAL (faster
    # commits; a power cut or OS crash may lose the last ones, the database stays intact).
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"


@dataclass
class RedisConfig:
    # Empty: no Redis; ephemeral state (OTP codes, rate limits) stays in memory.
    url: str = ""
    # Prefix of every key; empty means "whispr:<server_name>:".
    key_prefix: str = ""


@dataclass
class SecretsConfig:
    # Empty: generated on first start and kept in data_dir/secrets.yaml.
    jwt_secret: str = ""


DEFAULT_RESERVED_LOCALPARTS = ("admin", "administrator", "root", "abuse", "postmaster", "security", "support",
                               "whispr")


@dataclass
class RegistrationConfig:
    enabled: bool = True
    # When true, /register requires a verified email (m.login.email.identity).
    require_email_verification: bool = False
    # An address given at sign-up and not verified within this time no longer blocks it:
    # another account may claim it (the first one loses it).
    unverified_email_ttl_s: int = 86_400
    # Localparts nobody may register over the API (M_INVALID_USERNAME); the CLI still may.
    reserved_localparts: list[str] = field(default_factory=lambda: list(DEFAULT_RESERVED_LOCALPARTS))
    # Guest accounts (POST /register?kind=guest, whatever `enabled` says): no password, the spec's
    # limited API, joins only where m.room.guest_access is can_join. Off: 403 M_GUEST_ACCESS_FORBIDDEN.
    allow_guest_access: bool = False
    # Invite-only sign-up: /register also needs an m.login.registration_token stage, with a token
    # an admin made (/_synapse/admin/v1/registration_tokens or `create-registration-token`).
    requires_token: bool = False


@dataclass
class LoginConfig:
    # off: password only. optional: users who opted in must enter a mailed code.
    # required: every password login needs a mailed code.
    email_otp: Literal["off", "optional", "required"] = "off"
    otp_ttl_s: int = 600
    otp_max_attempts: int = 5
    otp_resend_interval_s: int = 60
    # POST /login/get_token: a signed-in device (after re-entering the password) gets a single-use
    # token that logs another device in with m.login.token. Off by default, as Synapse's
    # login_via_existing_session.
    get_login_token: bool = False
    login_token_ttl_s: int = 120


@dataclass
class TokensConfig:
    # Lifetime of access tokens issued together with a refresh token.
    access_token_lifetime_s: int = 300
    # Lifetime of a refresh token (and so of an idle session using them).
    refresh_token_lifetime_s: int = 30 * 24 * 3600


@dataclass
class PasswordsConfig:
    min_length: int = 8
    # argon2id cost; the defaults are libsodium's "interactive" level.
    argon2_opslimit: int = 2
    argon2_memlimit_kib: int = 65536


@dataclass
class MailConfig:
    # Empty smtp_host: mails are written to the log instead of being sent.
    smtp_host: str = ""
    smtp_port: int = 25
    username: str = ""
    password: str = ""
    starttls: bool = False
    use_tls: bool = False
    from_address: str = "Whispr <noreply@localhost>"
    timeout_s: float = 10.0


@dataclass
class BucketConfig:
    per_second: float
    burst: int


@dataclass
class RateLimitsConfig:
    enabled: bool = True
    register: BucketConfig = field(default_factory=lambda: BucketConfig(0.17, 5))
    login: BucketConfig = field(default_factory=lambda: BucketConfig(0.5, 10))
    login_failed: BucketConfig = field(default_factory=lambda: BucketConfig(0.17, 5))
    # Failed password checks per account, whatever the address (Synapse's rc_login.failed_attempts).
    login_failed_account: BucketConfig = field(default_factory=lambda: BucketConfig(0.17, 3))
    otp: BucketConfig = field(default_factory=lambda: BucketConfig(0.2, 10))
    email: BucketConfig = field(default_factory=lambda: BucketConfig(0.1, 5))
    message: BucketConfig = field(default_factory=lambda: BucketConfig(10.0, 50))
    # Media uploads and async-upload creations per user.
    media_upload: BucketConfig = field(default_factory=lambda: BucketConfig(1.0, 30))
    # Friend requests sent per user (a repeated or answering request counts too).
    friend_request: BucketConfig = field(default_factory=lambda: BucketConfig(0.1, 10))
    # Reports of events, rooms and users per user.
    report: BucketConfig = field(default_factory=lambda: BucketConfig(0.2, 10))
    # Inbound federation requests per origin server.
    federation: BucketConfig = field(default_factory=lambda: BucketConfig(100.0, 500))


@dataclass
class RoomsConfig:
    # Room version of new rooms unless the client asks for another.
    default_version: str = "10"


@dataclass
class UserDirectoryConfig:
    # false: a search finds the users who share a room with the searcher or are joined to a
    # public room (Synapse's default); true: every local user.
    search_all_users: bool = False


@dataclass
class VoipConfig:
    # TURN servers handed to clients by GET /voip/turnServer (empty: none, answered {}).
    turn_uris: list[str] = field(default_factory=list)
    # The TURN REST API's shared secret (coturn's static-auth-secret): each user gets a username
    # "expiry:user_id" and its HMAC-SHA1 as password, valid turn_user_lifetime_s.
    turn_shared_secret: str = ""
    # Or fixed credentials for everyone, when no shared secret is set.
    turn_username: str = ""
    turn_password: str = ""
    turn_user_lifetime_s: int = 86400
    turn_allow_guests: bool = True


@dataclass
class PresenceConfig:
    # false (as Synapse's presence.enabled): PUT /presence is accepted and forgotten, everyone reads
    # as offline, nothing is sent to or taken from other servers.
    enabled: bool = True
    # An online user without activity (sending events, setting presence) this long becomes unavailable.
    idle_timeout_ms: int = 300_000
    # A user who stopped syncing (and did nothing else) this long goes offline.
    sync_timeout_ms: int = 30_000


@dataclass
class LimitsConfig:
    max_request_body_bytes: int = 1024 * 1024
    # Both listeners: a request head (line and headers) must arrive within this time of its
    # first byte, and a request body may not stall (no bytes at all) for longer than this.
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0


@dataclass
class FederationListenConfig:
    # Other servers must reach this address; 0.0.0.0 in production.
    host: str = "127.0.0.1"
    # 0: the port in server_name, or 8448 when it names none.
    port: int = 0


@dataclass
class FederationConfig:
    enabled: bool = True
    listen: FederationListenConfig = field(default_factory=FederationListenConfig)
    # PEM certificate chain and private key served on the federation port; relative paths are
    # under data_dir. When both are missing a self-signed pair is created (development only:
    # other servers must then turn off certificate checks for us).
    tls_certificate_path: str = "tls.crt"
    tls_private_key_path: str = "tls.key"
    tls_self_signed_if_missing: bool = True
    # Check the certificates of the servers we call. Only tests and closed networks turn this off.
    verify_tls: bool = True
    # Extra CA certificates (PEM file) trusted for outbound federation, besides the system's.
    tls_ca_file: str = ""
    # Loopback, private, link-local... addresses are refused as federation targets unless listed
    # here as CIDRs (e.g. 127.0.0.0/8 for tests on one machine).
    allowed_private_ranges: list[str] = field(default_factory=list)
    # Served as /.well-known/matrix/server {"m.server": ...} on the client listener when set.
    well_known_server: str = ""
    # How long the keys we publish stay valid (valid_until_ts = now + this).
    key_validity_s: int = 86400
    # Largest inbound request body (a transaction of 50 PDUs and 100 EDUs fits easily).
    max_transaction_bytes: int = 10 * 1024 * 1024
    # Outbound requests: total time, connect time, and the largest response body accepted.
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_response_bytes: int = 50 * 1024 * 1024
    # Backoff between retries of an unreachable destination (outbound queue).
    destination_min_retry_ms: int = 2_000
    destination_max_retry_ms: int = 3_600_000


@dataclass
class PushConfig:
    # Retries of a push gateway that fails: exponential backoff between these bounds.
    gateway_min_retry_ms: int = 1_000
    gateway_max_retry_ms: int = 600_000
    gateway_timeout_s: float = 30.0
    # Deliver pushes and notification mails from this process; with several workers, from one only
    # (false on the others), which looks for what the others wrote every pusher_refresh_s.
    deliver: bool = True
    pusher_refresh_s: float = 5.0
    # Push gateways at loopback, private or link-local addresses are refused unless listed here (CIDRs).
    allowed_private_ranges: list[str] = field(default_factory=list)
    # Email notifications (a per-user setting): a notification still unread this long after its
    # event is mailed, batched per user, looked for every email_interval_s.
    email_delay_s: float = 600.0
    email_interval_s: float = 60.0


# media.extra_thumbnail_sizes: how many, and how each is spelt ("640x480-scale").
MAX_EXTRA_THUMBNAIL_SIZES = 4
MAX_THUMBNAIL_SIDE = 4096
THUMBNAIL_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})-(crop|scale)")


@dataclass
class MediaConfig:
    # Directory of the media files (content-addressed) and thumbnails; relative: under data_dir.
    store_path: str = "media"
    # Largest upload, enforced while the body streams in (413 M_TOO_LARGE beyond it).
    max_upload_bytes: int = 100 * 1024 * 1024
    # Async uploads (POST /create): how many may be pending per user, and for how long.
    max_pending_uploads: int = 10
    pending_upload_ttl_s: int = 86400
    # How long a download may wait for a pending upload (clients ask with timeout_ms).
    max_download_wait_ms: int = 60_000
    # Thumbnails: images with more pixels (all frames together for animations) or bytes are
    # refused (413), which keeps decompression bombs out of Pillow.
    max_thumbnail_pixels: int = 32_000_000
    max_thumbnail_source_bytes: int = 50 * 1024 * 1024
    # Animated thumbnails keep at most this many frames.
    max_animated_frames: int = 100
    # Remote media: largest accepted, and how long an unused cached copy is kept (Synapse keeps
    # them forever); the sweep that drops them runs every remote_sweep_interval_s.
    max_remote_bytes: int = 100 * 1024 * 1024
    remote_cache_ttl_s: int = 7 * 86400
    remote_sweep_interval_s: int = 3600
    # Serve the deprecated unauthenticated /_matrix/media/v3/download|thumbnail paths.
    legacy_unauthenticated_downloads: bool = True
    # The spec's freeze of unauthenticated media (v1.11, as Synapse's enable_authenticated_media):
    # media uploaded, or remote media cached, from the freeze on is served only on the
    # authenticated /_matrix/client/v1/media paths; the legacy paths answer 404 for it and fetch
    # nothing remote. The freeze time is legacy_unauthenticated_freeze_ts (ms since the epoch),
    # or, when 0, the first start with the freeze on (recorded in the database, kept after).
    legacy_unauthenticated_freeze: bool = True
    legacy_unauthenticated_freeze_ts: int = 0
    # Thumbnails are made only in the spec's sizes (32x32, 96x96 crop; 320x240, 640x480, 800x600
    # scale) plus these, each "WIDTHxHEIGHT-crop" or "WIDTHxHEIGHT-scale" (at most 4); any other
    # request is answered with the nearest of them.
    extra_thumbnail_sizes: list[str] = field(default_factory=list)
    # Thumbnail generation (not serving a cached one) per requester: user, IP on the legacy
    # paths, server over federation.
    thumbnail_generation_rate: BucketConfig = field(default_factory=lambda: BucketConfig(1.0, 40))


@dataclass
class Config:
    server_name: str = "localhost:8448"
    # Base URL clients reach us at; used for links in mails.
    public_baseurl: str = "http://127.0.0.1:8008"
    data_dir: str = "./data"
    log_level: str = "INFO"
    # One line per request on the `whispr.access` logger (both listeners); tokens are redacted.
    access_log: bool = True
    # Shared-secret registration (/_synapse/admin/v1/register, as Synapse's): who knows this secret
    # may create accounts, admins too. Empty: the endpoint is off.
    registration_shared_secret: str = ""
    listen: ListenConfig = field(default_factory=ListenConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    login: LoginConfig = field(default_factory=LoginConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    passwords: PasswordsConfig = field(default_factory=PasswordsConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    user_directory: UserDirectoryConfig = field(default_factory=UserDirectoryConfig)
    voip: VoipConfig = field(default_factory=VoipConfig)
    push: PushConfig = field(default_factory=PushConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def media_path(self) -> Path:
        p = Path(self.media.store_path)
        return p if p.is_absolute() else self.data_path / p

    def sqlite_path(self) -> Path:
        p = Path(self.database.path)
        return p if p.is_absolute() else self.data_path / p


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping")
        return _build(tp, value, key + ".")
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads a bare `off` as False; accept it for the "off" literal.
        if value is False and "off" in allowed:
            value = "off"
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}")
        return value
    if origin in (types.UnionType, typing.Union):
        return value
    if origin is list:
        # A list in YAML, or a comma-separated string (how an environment variable spells it).
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: not a valid YAML list") from None
        elif isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_coerce(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string")
        return str(value)
    return value


_TOP_LEVEL_KEYS = frozenset(f.name for f in dataclasses.fields(Config))


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(sorted(prefix + k for k in unknown))}")
    kwargs = {name: _coerce(hints[name], data[name], prefix + name) for name in data}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "TEST_"):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if path[0] not in _TOP_LEVEL_KEYS:
            continue  # e.g. WHISPR_SYNAPSE_PYTHON belongs to the tools, not to the server
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {part} is not a section")
        node[path[-1]] = _env_scalar(raw)


def _env_scalar(raw: str) -> Any:
    """An environment value read as a YAML scalar; anything else (e.g. "whispr:prod:") stays a string."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, (dict, list)) else value


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Read YAML (if given), then environment overrides, then explicit overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    _apply_env(data, os.environ if environ is None else environ)
    if overrides:
        _deep_merge(data, overrides)
    config = _build(Config, data)
    _validate(config)
    return config


def _deep_merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = dict(v) if isinstance(v, Mapping) else v


def _validate(config: Config) -> None:
    if not config.server_name or "/" in config.server_name:
        raise ConfigError("server_name: must be a host name with an optional port")
    if config.database.engine == "postgres" and not config.database.url:
        raise ConfigError("database.url: required when database.engine is postgres")
    if config.limits.max_request_body_bytes < 1024:
        raise ConfigError("limits.max_request_body_bytes: must be at least 1024")
    for i, cidr in enumerate(config.listen.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"listen.trusted_proxies[{i}]: {cidr!r} is not a CIDR range") from None
    if config.limits.header_timeout_s <= 0 or config.limits.body_timeout_s <= 0:
        raise ConfigError("limits.header_timeout_s and limits.body_timeout_s: must be positive")
    fed = config.federation
    for i, cidr in enumerate(fed.allowed_private_ranges):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"federation.allowed_private_ranges[{i}]: {cidr!r} is not a CIDR range") from None
    if not 0 <= fed.listen.port <= 65535:
        raise ConfigError("federation.listen.port: must be 0 (from server_name) or a port number")
    if not 3600 <= fed.key_validity_s <= 7 * 86400:
        raise ConfigError("federation.key_validity_s: must be between 3600 (1 hour) and 604800 (7 days)")
    if "/" in fed.well_known_server:
        raise ConfigError("federation.well_known_server: must be a host name with an optional port, no scheme")
    if fed.max_transaction_bytes < 65536:
        raise ConfigError("federation.max_transaction_bytes: must be at least 65536")
    media = config.media
    if media.max_upload_bytes < 1024:
        raise ConfigError("media.max_upload_bytes: must be at least 1024")
    if media.max_thumbnail_pixels < 1 or media.max_animated_frames < 1:
        raise ConfigError("media.max_thumbnail_pixels and media.max_animated_frames: must be positive")
    if media.remote_sweep_interval_s <= 0 or media.remote_cache_ttl_s <= 0:
        raise ConfigError("media.remote_cache_ttl_s and media.remote_sweep_interval_s: must be positive")
    if len(media.extra_thumbnail_sizes) > MAX_EXTRA_THUMBNAIL_SIZES:
        raise ConfigError(f"media.extra_thumbnail_sizes: at most {MAX_EXTRA_THUMBNAIL_SIZES} sizes")
    for i, size in enumerate(media.extra_thumbnail_sizes):
        match = THUMBNAIL_SIZE_RE.fullmatch(size)
        if match is None or not all(1 <= int(n) <= MAX_THUMBNAIL_SIDE for n in match.group(1, 2)):
            raise ConfigError(f"media.extra_thumbnail_sizes[{i}]: {size!r} is not WIDTHxHEIGHT-crop|scale"
                              f" with sides of 1 to {MAX_THUMBNAIL_SIDE}")
    if media.legacy_unauthenticated_freeze_ts < 0:
        raise ConfigError("media.legacy_unauthenticated_freeze_ts: must be 0 (first start) or a time in ms")
    if fed.max_response_bytes < 65536:
        raise ConfigError("federation.max_response_bytes: must be at least 65536")


def ensure_secrets(config: Config) -> None:
    """Fill in secrets not given in the config from data_dir/secrets.yaml, creating it."""
    if config.secrets.jwt_secret:
        return
    path = config.data_path / "secrets.yaml"
    stored: dict[str, Any] = {}
    if path.exists():
        stored = yaml.safe_load(path.read_text()) or {}
    if not stored.get("jwt_secret"):
        stored["jwt_secret"] = secrets.token_urlsafe(48)
        config.data_path.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(stored))
        path.chmod(0o600)
    config.secrets.jwt_secret = stored["jwt_secret"]


def generate_config_text(server_name: str = "localhost:8448", data_dir: str = "./data") -> str:
    """A fresh YAML config with new secrets, every section at its defaults."""
    config = Config(server_name=server_name, data_dir=data_dir)
    config.secrets.jwt_secret = secrets.token_urlsafe(48)
    return "# Whispr homeserver configuration (generated).\n" + yaml.safe_dump(
        dataclasses.asdict(config), sort_keys=False)
