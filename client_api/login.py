"""Login, logout and token refresh."""

from aiohttp import web


from client_api.http import CLIENT_V3, client_ip, hs, json_body, ok, prove_password, requester
from homeserver.errors import MatrixError


async def get_login(request: web.Request) -> web.Response:
    return ok({"flows": hs(request).login.flows()})


async def post_login(request: web.Request) -> web.Response:
    body = await json_body(request)
    session = await hs(request).login.login(body, client_ip(request))
    return ok(session.to_json(hs(request).config.server_name))


async def logout(request: web.Request) -> web.Response:
    who = await requester(request, locked_ok=True)
    await hs(request).accounts.logout(who)
    return ok()


async def logout_all(request: web.Request) -> web.Response:
    who = await requester(request, locked_ok=True)
    await hs(request).accounts.logout_all(who.user_id)
    return ok()


async def refresh(request: web.Request) -> web.Response:
    body = await json_body(request)
    session = await hs(request).accounts.refresh(body.get("refresh_token"))
    return ok({"access_token": session.access_token, "refresh_token": session.refresh_token,
               "expires_in_ms": session.expires_in_ms})


async def get_login_token(request: web.Request) -> web.Response:
    """POST /login/get_token: behind the password, a single-use token to log in another device."""
    server = hs(request)
    if not server.login.tokens.enabled:
        raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
    who = await requester(request)
    body = await json_body(request, allow_empty=True)
    await prove_password(request, who, body.get("auth"), f"get_token:{who.user_id}")
    await server.limiter.check("login", who.user_id)
    return ok(await server.login.tokens.issue(who.user_id))


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/login", get_login)
    app.router.add_post(f"{CLIENT_V3}/login", post_login)
    app.router.add_post(f"{CLIENT_V3}/logout", logout)
    app.router.add_post(f"{CLIENT_V3}/logout/all", logout_all)
    app.router.add_post(f"{CLIENT_V3}/refresh", refresh)
    app.router.add_post("/_matrix/client/v1/login/get_token", get_login_token)
