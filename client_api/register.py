"""Registration with user-interactive auth, availability, email tokens for sign-up."""

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, client_ip, hs, json_body, ok
from homeserver.accounts.accounts import check_device_params
from homeserver.errors import MatrixError, forbidden


async def register(request: web.Request) -> web.Response:
    server = hs(request)
    if not server.config.registration.enabled:
        raise forbidden("Registration is disabled on this server")
    body = await json_body(request)
    kind = request.query.get("kind", "user")
    if kind == "guest":
        raise forbidden("Guest access is disabled")
    if kind != "user":
        raise MatrixError(400, "M_INVALID_PARAM", "kind must be user or guest")
    username = body.get("username")
    if username is not None:
        username = await server.accounts.check_available(username)
    device_id, display_name = check_device_params(body.get("device_id"), body.get("initial_device_display_name"))
    server.accounts.hasher.check_strength(body.get("password"))

    require_email = server.config.registration.require_email_verification
    flows = [["m.login.email.identity"]] if require_email else [["m.login.dummy"]]

    async def dummy(_auth: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def email(auth: dict[str, Any]) -> dict[str, Any]:
        return {"email": await server.emails.consume(auth.get("threepid_creds"), "register")}

    auth = body.get("auth")
    if not isinstance(auth, dict) or auth.get("session") is None:
        # The first call of a UIA round (also when it already carries a stage, as
        # matrix-nio sends m.login.dummy without a session); counts against the register bucket.
        await server.limiter.check("register", client_ip(request))
    results = await server.uia.run(auth, flows, {"m.login.dummy": dummy, "m.login.email.identity": email})
    address = results.get("m.login.email.identity", {}).get("email")
    user = await server.accounts.create_user(username, body.get("password"), email=address,
                                             email_validated=address is not None)
    if body.get("inhibit_login") is True:
        return ok({"user_id": user.user_id, "home_server": server.config.server_name})
    session = await server.accounts.create_session(user.user_id, device_id, display_name,
                                                   body.get("refresh_token") is True)
    return ok(session.to_json(server.config.server_name))


async def available(request: web.Request) -> web.Response:
    server = hs(request)
    await server.limiter.check("register", client_ip(request), cost=0.1)
    await server.accounts.check_available(request.query.get("username"))
    return ok({"available": True})


async def email_request_token(request: web.Request) -> web.Response:
    server = hs(request)
    body = await json_body(request)
    await server.limiter.check("email", client_ip(request))
    sid = await server.emails.request_token(body.get("email"), body.get("client_secret"),
                                            body.get("send_attempt"), "register")
    return ok({"sid": sid, "submit_url": server.emails.submit_url})


def setup(app: web.Application) -> None:
    app.router.add_post(f"{CLIENT_V3}/register", register)
    app.router.add_get(f"{CLIENT_V3}/register/available", available)
    app.router.add_post(f"{CLIENT_V3}/register/email/requestToken", email_request_token)
