"""Media IDs and `mxc://` URIs, validated as the spec asks (no path traversal through them)."""

from __future__ import annotations

import re
import secrets

from homeserver.errors import MatrixError

# The spec allows only these in a media ID; with the server-name grammar this keeps every
# identifier safe to use in a path or a URL.
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")
_SERVER_NAME = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?$")
_MXC = re.compile(r"^mxc://([^/]+)/([^/]+)$")


def new_media_id() -> str:
    """24 random URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(18)


def valid_media_id(media_id: str) -> bool:
    return bool(_MEDIA_ID.match(media_id))


def valid_server_name(name: str) -> bool:
    return bool(_SERVER_NAME.match(name)) and ".." not in name


def check_media_ref(server_name: str, media_id: str) -> None:
    """404 for anything that cannot name media (the spec's sanitising of mxc URIs)."""
    if not valid_server_name(server_name) or not valid_media_id(media_id):
        raise MatrixError(404, "M_NOT_FOUND", "No such media")


def parse_mxc(uri: str) -> tuple[str, str]:
    """(server name, media ID) of a valid `mxc://` URI; ValueError otherwise."""
    match = _MXC.match(uri) if isinstance(uri, str) else None
    if match is None or not valid_server_name(match[1]) or not valid_media_id(match[2]):
        raise ValueError(f"not an mxc:// URI: {uri!r}")
    return match[1], match[2]


def is_mxc(uri: object) -> bool:
    try:
        parse_mxc(uri)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True
