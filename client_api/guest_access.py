"""What a guest may call: the spec's list (Client-Server API, "Guest access"), everything else is
403 M_GUEST_ACCESS_FORBIDDEN. The list is checked in `requester`, so an endpoint added later is
closed to guests until it is named here.

Routes are compared by their path template with the parameter names blanked, so a handler's
choice of names does not matter. Besides the spec's list, guests may call what Synapse also lets
them (capabilities, joining by alias, their joined rooms, the public room list, key changes, TURN).
"""

from __future__ import annotations

import re

from aiohttp import web

from homeserver.errors import MatrixError

_C = "/_matrix/client/v3"
_MEDIA = "/_matrix/client/v1/media"
_PARAM = re.compile(r"\{[^}]*\}")

GUEST_ROUTES: frozenset[tuple[str, str]] = frozenset({
    # reading rooms (and previews)
    ("GET", f"{_C}/rooms/{{}}/state"),
    ("GET", f"{_C}/rooms/{{}}/state/{{}}"),
    ("GET", f"{_C}/rooms/{{}}/state/{{}}/"),
    ("GET", f"{_C}/rooms/{{}}/state/{{}}/{{}}"),
    ("GET", f"{_C}/rooms/{{}}/context/{{}}"),
    ("GET", f"{_C}/rooms/{{}}/event/{{}}"),
    ("GET", f"{_C}/rooms/{{}}/messages"),
    ("GET", f"{_C}/rooms/{{}}/members"),
    ("GET", f"{_C}/rooms/{{}}/initialSync"),
    ("GET", f"{_C}/sync"),
    ("GET", "/_matrix/client/unstable/org.whispr/sync/stream"),  # our /sync as server-sent events
    ("GET", f"{_C}/events"),
    ("GET", f"{_MEDIA}/download/{{}}/{{}}"),
    ("GET", f"{_MEDIA}/download/{{}}/{{}}/{{}}"),
    ("GET", f"{_MEDIA}/thumbnail/{{}}/{{}}"),
    # sending
    ("POST", f"{_C}/rooms/{{}}/join"),
    ("POST", f"{_C}/join/{{}}"),
    ("POST", f"{_C}/rooms/{{}}/leave"),
    ("PUT", f"{_C}/rooms/{{}}/send/{{}}/{{}}"),
    ("PUT", f"{_C}/rooms/{{}}/state/{{}}"),
    ("PUT", f"{_C}/rooms/{{}}/state/{{}}/"),
    ("PUT", f"{_C}/rooms/{{}}/state/{{}}/{{}}"),
    ("PUT", f"{_C}/sendToDevice/{{}}/{{}}"),
    # their own account
    ("GET", f"{_C}/devices"),
    ("GET", f"{_C}/devices/{{}}"),
    ("PUT", f"{_C}/devices/{{}}"),
    ("GET", f"{_C}/account/whoami"),
    # end-to-end encryption
    ("POST", f"{_C}/keys/upload"),
    ("POST", f"{_C}/keys/query"),
    ("POST", f"{_C}/keys/claim"),
    ("GET", f"{_C}/keys/changes"),
    # what Synapse allows too
    ("GET", f"{_C}/capabilities"),
    ("GET", f"{_C}/joined_rooms"),
    ("GET", f"{_C}/publicRooms"),
    ("POST", f"{_C}/publicRooms"),
    ("GET", f"{_C}/voip/turnServer"),  # calls, unless voip.turn_allow_guests is off
})
# Of the profile, a guest may set or remove only its display name.
_PROFILE_FIELD = f"{_C}/profile/{{}}/{{}}"
GUEST_PROFILE_FIELDS = frozenset({"displayname"})


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return _PARAM.sub("{}", resource.canonical) if resource is not None else request.path


def check_guest_may_call(request: web.Request) -> None:
    """403 M_GUEST_ACCESS_FORBIDDEN unless a guest may call this endpoint."""
    method = "GET" if request.method == "HEAD" else request.method
    template = _template(request)
    if (method, template) in GUEST_ROUTES:
        return
    if method in ("PUT", "DELETE") and template == _PROFILE_FIELD \
            and request.match_info.get("key") in GUEST_PROFILE_FIELDS:
        return
    raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guests may not use this endpoint")
