"""Registration with user-interactive auth, availability, email tokens for sign-up."""

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, client_ip, hs, json_body, ok
from homeserver.accounts.accounts import check_device_params
from homeserver.accounts.uia import StageChecker
from homeserver.admin.registration_tokens import STAGE as TOKEN_STAGE
from homeserver.errors import MatrixError, forbidden, bad_json
from homeserver.server import HomeServer

# Registration sessions are for registration only.
REGISTER_BIND = "register"


async def _given_parameters(server: HomeServer, body: dict[str, Any]) -> dict[str, Any]:
    """The registration parameters this request gives, checked; the password as its hash."""
    given: dict[str, Any] = {}
    if body.get("guest_access_token") is not None:
        # A guest upgrading: it keeps its user ID, which `username` (if given) must be.
        guest = await server.accounts.guest_of(body["guest_access_token"])
        username = body.get("username")
        if username is not None and (not isinstance(username, str) or username.lower() != guest[1:].split(":")[0]):
            await server.accounts.check_available(username)
            raise MatrixError(400, "M_INVALID_PARAM", "An upgrading guest keeps its user ID: username must be its own")
        given["guest_user_id"] = guest
    elif body.get("username") is not None:
        given["username"] = await server.accounts.check_available(body["username"])
    device_id, display_name = check_device_params(body.get("device_id"), body.get("initial_device_display_name"))
    if device_id is not None:
        given["device_id"] = device_id
    if display_name is not None:
        given["initial_device_display_name"] = display_name
    for flag in ("inhibit_login", "refresh_token"):
        if body.get(flag) is not None:
            if not isinstance(body[flag], bool):
                raise bad_json(f"{flag} must be a boolean")
            given[flag] = body[flag]
    if body.get("password") is not None:
        password = server.accounts.hasher.check_strength(body["password"])
        given["password_hash"] = await server.accounts.hasher.hash(password)
    return given


async def register(request: web.Request) -> web.Response:
    """Register through UIA; the session keeps the parameters (Element's first call is `{}`)."""
    server = hs(request)
    kind = request.query.get("kind", "user")
    if kind == "guest":
        return await _register_guest(request, server)
    if kind != "user":
        raise MatrixError(400, "M_INVALID_PARAM", "kind must be user or guest")
    if not server.config.registration.enabled:
        raise forbidden("Registration is disabled on this server")
    body = await json_body(request, allow_empty=True)

    require_email = server.config.registration.require_email_verification
    flows = [["m.login.email.identity"]] if require_email else [["m.login.dummy"]]
    if server.config.registration.requires_token:
        # Invite-only: every flow starts with a registration token (as Synapse's flows do).
        flows = [[TOKEN_STAGE, *flow] for flow in flows]

    async def dummy(_auth: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def email(auth: dict[str, Any]) -> dict[str, Any]:
        return {"email": await server.emails.consume(auth.get("threepid_creds"), "register")}

    auth = body.get("auth")
    earlier = await server.uia.answered(auth, REGISTER_BIND)
    if earlier is not None:
        # A retry of a completed registration, maybe with the whole first body (its username
        # is taken by now, by this very registration): the same answer.
        return ok(earlier)
    if not isinstance(auth, dict) or auth.get("session") is None:
        # The first call of a UIA round (also when it already carries a stage, as
        # matrix-nio sends m.login.dummy without a session); counts against the register bucket.
        await server.limiter.check("register", client_ip(request))
    given = await _given_parameters(server, body)
    checkers: dict[str, StageChecker] = {"m.login.dummy": dummy, "m.login.email.identity": email,
                                         TOKEN_STAGE: server.registration_tokens.begin_use}
    done = await server.uia.run_remembering(auth, flows, checkers, given, bind=REGISTER_BIND)
    if done.response is not None:
        return ok(done.response)  # answered between our look above and now
    params = done.request
    if "password_hash" not in params:
        raise MatrixError(400, "M_MISSING_PARAM", "password is required")
    address = done.results.get("m.login.email.identity", {}).get("email")
    if "guest_user_id" in params:
        user_id = params["guest_user_id"]
        await server.accounts.upgrade_guest(user_id, params["password_hash"], email=address)
    else:
        user_id = (await server.accounts.create_user(params.get("username"), None, email=address,
                                                     email_validated=address is not None,
                                                     password_hash=params["password_hash"])).user_id
    if TOKEN_STAGE in done.results:
        await server.registration_tokens.complete_use(done.results[TOKEN_STAGE])
    if params.get("inhibit_login") is True:
        response = {"user_id": user_id, "home_server": server.config.server_name}
    else:
        session = await server.accounts.create_session(user_id, params.get("device_id"),
                                                       params.get("initial_device_display_name"),
                                                       params.get("refresh_token") is True)
        response = session.to_json(server.config.server_name)
    await server.uia.finish(done.session, response)
    return ok(response)


async def _register_guest(request: web.Request, server: HomeServer) -> web.Response:
    """A guest account: no UIA, and of the body only the device's display name counts (the spec)."""
    if not server.config.registration.allow_guest_access:
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled on this server")
    body = await json_body(request, allow_empty=True)
    await server.limiter.check("register", client_ip(request))
    _, display_name = check_device_params(None, body.get("initial_device_display_name"))
    session = await server.accounts.register_guest(display_name)
    return ok(session.to_json(server.config.server_name))


async def available(request: web.Request) -> web.Response:
    server = hs(request)
    await server.limiter.check("register", client_ip(request), cost=0.1)
    await server.accounts.check_available(request.query.get("username"))
    return ok({"available": True})


async def token_validity(request: web.Request) -> web.Response:
    """GET /v1/register/m.login.registration_token/validity: whether a sign-up could use the token now."""
    server = hs(request)
    if not server.config.registration.enabled or not server.config.registration.requires_token:
        raise forbidden("Registration tokens are not enabled on this server")
    await server.limiter.check("register", client_ip(request), cost=0.1)
    return ok({"valid": await server.registration_tokens.valid(request.query.get("token"))})


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
    app.router.add_get(f"/_matrix/client/v1/register/{TOKEN_STAGE}/validity", token_validity)
