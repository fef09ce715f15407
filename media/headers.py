"""Response headers for serving media safely (the spec's "Serving inline content")."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

# Types a browser may render inline: none of them can run script when served with this type.
INLINE_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav",
    "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

CONTENT_SECURITY_POLICY = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
                           "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")
MAX_FILENAME = 255
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+(\s*;.{0,200})?$")


def clean_content_type(value: str | None) -> str:
    """The uploader's Content-Type if it is a well-formed one, else application/octet-stream."""
    value = (value or "").strip()
    if not value or len(value) > 255 or not _CONTENT_TYPE.match(value) or any(c in value for c in "\r\n"):
        return "application/octet-stream"
    return value


def sanitise_filename(name: str | None) -> str | None:
    """A file name safe to store and to put in a header: no path, no control characters."""
    if not name:
        return None
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in '"')
    name = name.strip().lstrip(".")[:MAX_FILENAME]
    return name or None


def content_disposition(content_type: str, filename: str | None) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    kind = "inline" if base in INLINE_TYPES else "attachment"
    name = sanitise_filename(filename)
    if not name:
        return kind
    if name.isascii():
        return f'{kind}; filename="{name}"'
    # RFC 6266 / 5987: an ASCII fallback plus the UTF-8 name
    fallback = name.encode("ascii", "replace").decode().replace("?", "_")
    return f"{kind}; filename=\"{fallback}\"; filename*=utf-8''{quote(name, safe='')}"


def download_headers(content_type: str, filename: str | None, *, immutable: bool = True) -> dict[str, str]:
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(content_type, filename),
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if immutable:
        # An mxc URI always names the same bytes.
        headers["Cache-Control"] = "private, max-age=86400, immutable"
    return headers
