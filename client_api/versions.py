"""What the server supports: GET /_matrix/client/versions (spec versions, Whispr's feature flags)
and GET /capabilities (what a user may do here).

Each capability must be honest: a client hides a feature when it is false and offers it when it
is true, so a capability is true only where the endpoint behind it exists and the config allows it.
"""

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, hs, ok, requester
from homeserver.config import Config
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS

SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"]
UNSTABLE_FEATURES = {
    "org.whispr.signup": True,
    "org.whispr.login.email_otp": True,
    "org.whispr.login.totp": True,
    "org.whispr.profile.bio": True,
}


async def versions(_request: web.Request) -> web.Response:
    return ok({"versions": SPEC_VERSIONS, "unstable_features": UNSTABLE_FEATURES})


def capabilities_for(config: Config) -> dict[str, Any]:
    return {
        "m.change_password": {"enabled": True},  # POST /account/password
        "m.room_versions": {
            "default": config.rooms.default_version,
            "available": {identifier: "stable" for identifier in KNOWN_ROOM_VERSIONS},
        },
        "m.set_displayname": {"enabled": True},  # PUT /profile/{userId}/displayname
        "m.set_avatar_url": {"enabled": True},  # PUT /profile/{userId}/avatar_url
        # POST /account/3pid/add and /delete (email addresses).
        "m.3pid_changes": {"enabled": True},
        # POST /login/get_token, when login.get_login_token is on.
        "m.get_login_token": {"enabled": config.login.get_login_token},
        # PUT /profile/{userId}/{keyName} takes namespaced custom fields.
        "m.profile_fields": {"enabled": True},
    }


async def capabilities(request: web.Request) -> web.Response:
    who = await requester(request)
    caps = capabilities_for(hs(request).config)
    if await hs(request).admin_users.is_admin(who.user_id):
        # PUT /admin/lock and /admin/suspend; omitted for everyone else, as the spec asks.
        caps["m.account_moderation"] = {"lock": True, "suspend": True}
    return ok({"capabilities": caps})


def setup(app: web.Application) -> None:
    app.router.add_get("/_matrix/client/versions", versions)
    app.router.add_get(f"{CLIENT_V3}/capabilities", capabilities)
