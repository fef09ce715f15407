"""whoami, password change and reset, the account's email addresses, deactivation, OpenID tokens."""

from typing import Any

from aiohttp import web

from client_api.http import CLIENT_V3, access_token, client_ip, hs, json_body, ok, prove_password, requester
from homeserver.errors import MatrixError, bad_json, forbidden


async def whoami(request: web.Request) -> web.Response:
    who = await requester(request)
    return ok({"user_id": who.user_id, "device_id": who.device_id, "is_guest": who.is_guest})


async def change_password(request: web.Request) -> web.Response:
    """With an access token: prove the old password (or a mailed token). Without: reset by mail."""
    server = hs(request)
    body = await json_body(request)
    who = await requester(request) if access_token(request) else None
    logout_devices = body.get("logout_devices", True)
    if not isinstance(logout_devices, bool):
        raise bad_json("logout_devices must be a boolean")
    server.accounts.hasher.check_strength(body.get("new_password"))

    async def password(auth: dict[str, Any]) -> dict[str, Any]:
        await server.limiter.check("login", client_ip(request))
        user = await server.login.check_password(auth, client_ip(request))
        if who is None or user.user_id != who.user_id:
            raise forbidden("Invalid username or password")
        return {"user_id": user.user_id}

    async def email(auth: dict[str, Any]) -> dict[str, Any]:
        address = await server.emails.consume(auth.get("threepid_creds"), "reset")
        threepid = await server.store.threepids.get("email", address)
        if threepid is None or (who is not None and threepid.user_id != who.user_id):
            raise forbidden("This email address does not belong to the account")
        return {"user_id": threepid.user_id}

    flows = [["m.login.password"], ["m.login.email.identity"]] if who else [["m.login.email.identity"]]
    results = await server.uia.run(body.get("auth"), flows, {"m.login.password": password,
                                                             "m.login.email.identity": email},
                                   bind=f"password:{who.user_id if who else ''}")
    user_id = next(iter(results.values()))["user_id"]
    await server.accounts.set_password(user_id, body["new_password"], logout_devices,
                                       who.device_id if who else None)
    return ok()


async def deactivate(request: web.Request) -> web.Response:
    """Behind the account's password; `erase` also clears the profile."""
    server = hs(request)
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    erase = body.get("erase", False)
    if not isinstance(erase, bool):
        raise bad_json("erase must be a boolean")
    await prove_password(request, who, body.get("auth"), f"deactivate:{who.user_id}")
    await server.deactivation.deactivate(who.user_id, erase)
    # We bind no addresses at identity servers, so there is nothing to unbind there.
    return ok({"id_server_unbind_result": "no-support"})


async def openid_request_token(request: web.Request) -> web.Response:
    who = await requester(request)
    await json_body(request, allow_empty=True)  # `{}` by the spec; nothing in it is used
    return ok(await hs(request).openid.request_token(who.user_id, request.match_info["user_id"]))


async def password_email_request_token(request: web.Request) -> web.Response:
    server = hs(request)
    body = await json_body(request)
    await server.limiter.check("email", client_ip(request))
    sid = await server.emails.request_token(body.get("email"), body.get("client_secret"),
                                            body.get("send_attempt"), "reset")
    return ok({"sid": sid, "submit_url": server.emails.submit_url})


async def threepids(request: web.Request) -> web.Response:
    who = await requester(request)
    emails = await hs(request).accounts.emails(who.user_id)
    return ok({"threepids": [
        {"medium": t.medium, "address": t.address, "added_at": t.added_ts,
         "validated_at": t.validated_ts or 0, "org.whispr.validated": t.validated_ts is not None}
        for t in emails]})


async def threepid_email_request_token(request: web.Request) -> web.Response:
    server = hs(request)
    body = await json_body(request)
    await server.limiter.check("email", client_ip(request))
    sid = await server.emails.request_token(body.get("email"), body.get("client_secret"),
                                            body.get("send_attempt"), "add")
    return ok({"sid": sid, "submit_url": server.emails.submit_url})


async def threepid_add(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await prove_password(request, who, body.get("auth"), f"3pid-add:{who.user_id}")
    await hs(request).threepids.add_email(who.user_id, body.get("sid"), body.get("client_secret"))
    return ok()


async def threepid_delete(request: web.Request) -> web.Response:
    who = await requester(request)
    body = await json_body(request)
    await hs(request).threepids.delete(who.user_id, body.get("medium"), body.get("address"))
    return ok({"id_server_unbind_result": "no-support"})


async def threepid_bind(request: web.Request) -> web.Response:
    await requester(request)
    await json_body(request)
    raise MatrixError(400, "M_SERVER_NOT_TRUSTED", "This server does not bind identifiers at identity servers")


async def threepid_unbind(request: web.Request) -> web.Response:
    await requester(request)
    await json_body(request)
    return ok({"id_server_unbind_result": "no-support"})


async def msisdn_request_token(request: web.Request) -> web.Response:
    await json_body(request)
    raise MatrixError(400, "M_THREEPID_MEDIUM_NOT_SUPPORTED", "This server does not support phone numbers")


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/account/whoami", whoami)
    app.router.add_post(f"{CLIENT_V3}/account/password", change_password)
    app.router.add_post(f"{CLIENT_V3}/account/password/email/requestToken", password_email_request_token)
    app.router.add_get(f"{CLIENT_V3}/account/3pid", threepids)
    app.router.add_post(f"{CLIENT_V3}/account/3pid/email/requestToken", threepid_email_request_token)
    app.router.add_post(f"{CLIENT_V3}/account/3pid/add", threepid_add)
    app.router.add_post(f"{CLIENT_V3}/account/3pid/delete", threepid_delete)
    app.router.add_post(f"{CLIENT_V3}/account/3pid/bind", threepid_bind)
    app.router.add_post(f"{CLIENT_V3}/account/3pid/unbind", threepid_unbind)
    for path in ("account/3pid", "register", "account/password"):
        app.router.add_post(f"{CLIENT_V3}/{path}/msisdn/requestToken", msisdn_request_token)
    app.router.add_post(f"{CLIENT_V3}/account/deactivate", deactivate)
    app.router.add_post(f"{CLIENT_V3}/user/{{user_id}}/openid/request_token", openid_request_token)
