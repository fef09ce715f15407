"""GET /_matrix/client/versions: spec versions and Whispr's feature flags."""

from aiohttp import web

from client_api.http import ok

SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"]
UNSTABLE_FEATURES = {
    "org.whispr.signup": True,
    "org.whispr.login.email_otp": True,
    "org.whispr.login.totp": True,
    "org.whispr.profile.bio": True,
}


async def versions(_request: web.Request) -> web.Response:
    return ok({"versions": SPEC_VERSIONS, "unstable_features": UNSTABLE_FEATURES})


def setup(app: web.Application) -> None:
    app.router.add_get("/_matrix/client/versions", versions)
