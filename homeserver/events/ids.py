"""Matrix identifiers: user IDs and localparts."""

from __future__ import annotations

import re

from homeserver.errors import MatrixError

_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
MAX_USER_ID_LENGTH = 255


def user_id_for(localpart: str, server_name: str) -> str:
    return f"@{localpart}:{server_name}"


def validate_localpart(localpart: object, server_name: str) -> str:
    if not isinstance(localpart, str) or not localpart:
        raise MatrixError(400, "M_INVALID_USERNAME", "username must be a non-empty string")
    if not _LOCALPART.match(localpart):
        raise MatrixError(400, "M_INVALID_USERNAME",
                          "username may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'")
    if len(user_id_for(localpart, server_name)) > MAX_USER_ID_LENGTH:
        raise MatrixError(400, "M_INVALID_USERNAME", "username is too long")
    return localpart


def parse_user_id(user_id: str) -> tuple[str, str]:
    """Split ``@localpart:server`` into its parts, or raise M_INVALID_PARAM."""
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        raise MatrixError(400, "M_INVALID_PARAM", f"not a user ID: {user_id!r}")
    localpart, server = user_id[1:].split(":", 1)
    if not localpart or not server or len(user_id) > MAX_USER_ID_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM", f"not a user ID: {user_id!r}")
    return localpart, server


def normalise_email(address: object) -> str:
    if not isinstance(address, str) or "@" not in address or len(address) > 254 or any(c.isspace() for c in address):
        raise MatrixError(400, "M_INVALID_PARAM", "not a valid email address")
    local, domain = address.rsplit("@", 1)
    if not local or "." not in domain:
        raise MatrixError(400, "M_INVALID_PARAM", "not a valid email address")
    # Lower-cased whole, as mail providers treat addresses: one mailbox, one account.
    return f"{local}@{domain}".lower()
