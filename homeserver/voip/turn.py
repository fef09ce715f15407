"""TURN credentials (GET /voip/turnServer), as the TURN REST API defines them for a shared secret:
the username is "expiry:user_id" (expiry in seconds since the epoch) and the password the base64
HMAC-SHA1 of the username keyed with the secret, which the TURN server (coturn's
static-auth-secret) recomputes. Without a shared secret, fixed credentials; without TURN URIs, {}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from homeserver.config import VoipConfig
from homeserver.errors import MatrixError


def turn_password(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def turn_server(config: VoipConfig, user_id: str, is_guest: bool, now_ms: int) -> dict[str, Any]:
    if not config.turn_uris:
        return {}
    if is_guest and not config.turn_allow_guests:
        raise MatrixError(403, "M_FORBIDDEN", "Guests may not use TURN on this server")
    ttl = config.turn_user_lifetime_s
    if config.turn_shared_secret:
        username = f"{now_ms // 1000 + ttl}:{user_id}"
        password = turn_password(config.turn_shared_secret, username)
    elif config.turn_username and config.turn_password:
        username, password = config.turn_username, config.turn_password
    else:
        return {}
    return {"username": username, "password": password, "uris": list(config.turn_uris), "ttl": ttl}
