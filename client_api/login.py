"""Login, logout and token refresh."""

from aiohttp import web

from client_api.http import CLIENT_V3, client_ip, hs, json_body, ok, requester


async def get_login(request: web.Request) -> web.Response:
    return ok({"flows": hs(request).login.flows()})


async def post_login(request: web.Request) -> web.Response:
    body = await json_body(request)
    session = await hs(request).login.login(body, client_ip(request))
    return ok(session.to_json(hs(request).config.server_name))


async def logout(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).accounts.logout(who)
    return ok()


async def logout_all(request: web.Request) -> web.Response:
    who = await requester(request)
    await hs(request).accounts.logout_all(who.user_id)
    return ok()


async def refresh(request: web.Request) -> web.Response:
    body = await json_body(request)
    session = await hs(request).accounts.refresh(body.get("refresh_token"))
    return ok({"access_token": session.access_token, "refresh_token": session.refresh_token,
               "expires_in_ms": session.expires_in_ms})


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/login", get_login)
    app.router.add_post(f"{CLIENT_V3}/login", post_login)
    app.router.add_post(f"{CLIENT_V3}/logout", logout)
    app.router.add_post(f"{CLIENT_V3}/logout/all", logout_all)
    app.router.add_post(f"{CLIENT_V3}/refresh", refresh)
