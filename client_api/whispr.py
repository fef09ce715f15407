"""Whispr's namespaced extensions (/_matrix/client/unstable/org.whispr/...).

Sign-up with email, email verification by link or code, login code re-send,
per-user email-code opt-in, and TOTP enrollment.
"""

from aiohttp import web

from client_api.http import WHISPR, client_ip, hs, json_body, ok, requester
from homeserver.accounts.accounts import check_device_params
from homeserver.accounts.email_verification import check_client_secret
from homeserver.errors import MatrixError, bad_json, forbidden
from homeserver.events.ids import normalise_email


async def signup(request: web.Request) -> web.Response:
    """Create an account from username + email + password; the email stays unverified until the mailed link
    or code is used."""
    server = hs(request)
    if not server.config.registration.enabled:
        raise forbidden("Registration is disabled on this server")
    body = await json_body(request)
    await server.limiter.check("register", client_ip(request))
    device_id, display_name = check_device_params(body.get("device_id"), body.get("initial_device_display_name"))
    address = normalise_email(body.get("email"))
    client_secret = body.get("client_secret")
    check_client_secret(client_secret)
    if body.get("username") is None:
        raise bad_json("username is required")
    user = await server.accounts.create_user(body.get("username"), body.get("password"), email=address)
    try:
        sid = await server.emails.request_token(address, client_secret, 1, "signup", for_user=user.user_id)
    except Exception:
        # No mail, no account: the person can simply try again.
        await server.accounts.discard_new_user(user.user_id)
        raise
    session = await server.accounts.create_session(user.user_id, device_id, display_name,
                                                   body.get("refresh_token") is True)
    return ok({**session.to_json(server.config.server_name), "sid": sid, "email": address,
               "email_verified": False, "submit_url": server.emails.submit_url})


async def signup_resend(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    body = await json_body(request)
    await server.limiter.check("email", who.user_id)
    pending = [t for t in await server.accounts.emails(who.user_id) if t.validated_ts is None]
    if not pending:
        raise MatrixError(400, "M_BAD_JSON", "This account has no unverified email address")
    sid = await server.emails.request_token(pending[0].address, body.get("client_secret"), body.get("send_attempt"),
                                            "signup", for_user=who.user_id)
    return ok({"sid": sid, "submit_url": server.emails.submit_url})


async def submit_token(request: web.Request) -> web.Response:
    server = hs(request)
    body = await json_body(request)
    await server.limiter.check("otp", client_ip(request))
    await server.emails.submit(body.get("sid"), body.get("client_secret"), body.get("token"))
    return ok({"success": True})


async def validate_link(request: web.Request) -> web.Response:
    """The link in the mail: a person's browser lands here."""
    server = hs(request)
    await server.limiter.check("otp", client_ip(request))
    q = request.query
    try:
        await server.emails.submit(q.get("sid"), q.get("client_secret"), q.get("token"))
    except MatrixError as e:
        return web.Response(status=400, text=f"Could not verify your email address: {e.error}\n")
    return web.Response(text="Your email address is verified. You can return to your Whispr app.\n")


async def login_resend(request: web.Request) -> web.Response:
    server = hs(request)
    body = await json_body(request)
    expires_in_ms = await server.login.resend(body.get("session"), client_ip(request))
    return ok({"expires_in_ms": expires_in_ms})


async def security(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    user = await server.accounts.get_user(who.user_id)
    assert user is not None
    return ok({"email_otp_mode": server.config.login.email_otp, "email_otp_enabled": user.email_otp_enabled,
               "totp_enabled": user.totp_enabled})


async def set_email_otp(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    body = await json_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise bad_json("enabled must be a boolean")
    if enabled and not any(t.validated_ts for t in await server.accounts.emails(who.user_id)):
        raise forbidden("Verify an email address first")
    await server.store.users.set_email_otp(who.user_id, enabled)
    return ok()


async def totp_enroll(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok(await hs(request).totp.begin_enrollment(who.user_id))


async def totp_confirm(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    body = await json_body(request)
    await server.limiter.check("otp", who.user_id)
    return ok({"recovery_codes": await server.totp.confirm_enrollment(who.user_id, body.get("code"))})


async def totp_disable(request: web.Request) -> web.Response:
    server = hs(request)
    who = await requester(request)
    body = await json_body(request)
    await server.limiter.check("otp", who.user_id)
    await server.totp.disable(who.user_id, body.get("code"))
    return ok()


def setup(app: web.Application) -> None:
    app.router.add_post(f"{WHISPR}/signup", signup)
    app.router.add_post(f"{WHISPR}/signup/email/requestToken", signup_resend)
    app.router.add_post(f"{WHISPR}/email/submit_token", submit_token)
    app.router.add_get(f"{WHISPR}/email/validate", validate_link)
    app.router.add_post(f"{WHISPR}/login/resend", login_resend)
    app.router.add_get(f"{WHISPR}/account/security", security)
    app.router.add_put(f"{WHISPR}/account/email_otp", set_email_otp)
    app.router.add_post(f"{WHISPR}/totp/enroll", totp_enroll)
    app.router.add_post(f"{WHISPR}/totp/confirm", totp_confirm)
    app.router.add_post(f"{WHISPR}/totp/disable", totp_disable)
