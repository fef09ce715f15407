"""/.well-known/matrix/client: where clients find this homeserver."""

from aiohttp import web

from client_api.http import hs, ok


async def client(request: web.Request) -> web.Response:
    return ok({"m.homeserver": {"base_url": hs(request).config.public_baseurl}})


def setup(app: web.Application) -> None:
    app.router.add_get("/.well-known/matrix/client", client)
